"""Degenerate data stays near-linear: postings that all share one phash (a marketplace placeholder image) or one
title, against the same number of distinct postings, matched by the shipped model in one process each.

    python benchmarks/bench_degenerate.py [--n 10000]

Prints a table and, last, one machine-readable line of `key=value` pairs:
  s_distinct, peak_mib_distinct       seconds and peak resident memory of `match` on n distinct postings
  time_ratio_<case>, mem_ratio_<case>  the same for each degenerate case, divided by the distinct run (target <= 2)
Cases: one_phash (every posting has the same image_phash), one_title (every posting has the same title).
Each run is a separate process, so each peak is its own; the import of shopee_nb is not timed.
"""
from __future__ import annotations
import argparse, json, os, resource, subprocess, sys, time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CASES = ['distinct', 'one_phash', 'one_title']


def postings(case: str, n: int, seed: int = 0):
    "n postings with titles of products of ~3 postings each, random phashes; `case` makes one column degenerate."
    import pandas as pd
    from shopee_nb.data import validate_postings
    rng = np.random.default_rng(seed)
    words = np.array([f'w{i}' for i in range(20_000)])
    prod = rng.integers(0, max(1, n // 3), n)
    base = rng.integers(0, len(words), (n // 3 + 1, 4))
    noise = rng.integers(0, len(words), (n, 2))
    titles = [' '.join(words[np.r_[base[p], noise[i]]]) for i, p in enumerate(prod)]
    phash = [f'{v:016x}' for v in rng.integers(0, 2**63, n)]
    if case == 'one_phash': phash = ['94974f937d4c2433'] * n
    if case == 'one_title': titles = ['Kaos Polos Cotton Combed 30s Unisex S M L XL'] * n
    df = pd.DataFrame(dict(posting_id=[f'p{i}' for i in range(n)], image='', image_phash=phash, title=titles))
    return validate_postings(df)


def child(case: str, n: int) -> dict:
    "Match one case with the shipped model; seconds (import excluded) and peak resident memory."
    import warnings
    from shopee_nb.core import get_config
    from shopee_nb.ensemble import default_model, match_postings
    df = postings(case, n)
    model = default_model()
    cfg = get_config('cpu')
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        M, info = match_postings(df, cfg, model, log=lambda *a: None)
    s = time.perf_counter() - t0
    sizes = np.diff(M.indptr)
    return dict(case=case, n=n, seconds=round(s, 2), peak_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                mean_matches=round(float(sizes.mean()), 2), max_matches=int(sizes.max()))


def main(n: int) -> dict:
    rows = []
    for case in CASES:
        r = subprocess.run([sys.executable, __file__, '--child', case, '--n', str(n)], capture_output=True, text=True,
                           env={**os.environ, 'SHOPEE_FORCE_CPU': '1'})
        if r.returncode: raise SystemExit(f'{case}: failed\n{r.stderr[-3000:]}')
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    print(f"{'case':<10} {'postings':>8} {'seconds':>8} {'peak MiB':>9} {'mean matches':>13} {'max':>4}")
    for r in rows: print(f"{r['case']:<10} {r['n']:>8,} {r['seconds']:>8.2f} {r['peak_mib']:>9,} {r['mean_matches']:>13.2f} {r['max_matches']:>4}")
    base = rows[0]
    out = dict(s_distinct=base['seconds'], peak_mib_distinct=base['peak_mib'])
    for r in rows[1:]:
        out[f"time_ratio_{r['case']}"] = round(r['seconds'] / base['seconds'], 2)
        out[f"mem_ratio_{r['case']}"] = round(r['peak_mib'] / base['peak_mib'], 2)
    print(' '.join(f'{k}={v}' for k, v in out.items()))
    return out


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--n', type=int, default=10_000)
    ap.add_argument('--child', choices=CASES)
    a = ap.parse_args()
    if a.child: print(json.dumps(child(a.child, a.n)))
    else: main(a.n)
