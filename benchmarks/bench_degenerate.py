"""Degenerate data stays near-linear: postings that all share one phash (a marketplace placeholder image), one
title or one image file, against the same number of distinct postings, matched by the shipped model in one process each.

    python benchmarks/bench_degenerate.py [--n 10000] [--cases distinct,one_phash,one_title]

Prints a table and, last, one machine-readable line of `key=value` pairs:
  s_distinct, peak_mib_distinct       seconds and peak resident memory of `match` on n distinct postings
  time_ratio_<case>, mem_ratio_<case>  the same for each degenerate case, divided by the distinct run (target <= 2)
Cases: one_phash (every posting has the same image_phash), one_title (every posting has the same title), both against
`distinct` (text and phash, no photos); one_image (every posting's `image` names the same JPEG) against
`distinct_images` (a distinct JPEG per posting, products of ~3 postings looking alike).
Each run is a separate process, so each peak is its own; the import of shopee_nb is not timed.
The image cases time matching, not the CNN: their embedding cache is filled first (untimed) with the vectors the image
encoder would give — one vector for one image, a product direction plus noise for distinct photos — because a CPU
forward pass of 10,000 photos takes far longer than the matching measured here, and is linear in the postings whatever
they hold. The timed run still hashes every photo file and reads the cache, as a rerun of `match` does.
"""
from __future__ import annotations
import argparse, json, os, resource, subprocess, sys, time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CASES = ['distinct', 'one_phash', 'one_title', 'distinct_images', 'one_image']
BASELINE = dict(one_phash='distinct', one_title='distinct', one_image='distinct_images')


def postings(case: str, n: int, seed: int = 0, image_dir: Path | None = None):
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
    images = [''] * n
    if case in ('distinct_images', 'one_image'):
        from PIL import Image
        image_dir.mkdir(parents=True, exist_ok=True)
        for i in range(1 if case == 'one_image' else n):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(image_dir/f'{i}.jpg', quality=90)
        images = ['0.jpg'] * n if case == 'one_image' else [f'{i}.jpg' for i in range(n)]
    df = pd.DataFrame(dict(posting_id=[f'p{i}' for i in range(n)], image=images, image_phash=phash, title=titles))
    out = validate_postings(df, image_dir=image_dir)
    out.attrs['product'] = prod
    return out


def fill_image_cache(df, model, cfg, case: str, seed: int = 0):
    "Write the image encoders' embedding cache for `df`: one vector for one image, product direction + noise otherwise."
    from shopee_nb import embeddings as E
    rng = np.random.default_rng(seed)
    for e in model.encoders:
        enc = model.build_encoder(e['name'])
        if enc.modality != 'image': continue
        keys, mask = E.content_keys(df, 'image'), enc.available(df)
        base = rng.standard_normal((len(df) // 3 + 1, 1280)).astype(np.float32)
        if case == 'one_image': X = np.repeat(base[:1], len(df), 0)
        else: X = base[df.attrs['product']] + 0.5 * rng.standard_normal((len(df), 1280)).astype(np.float32)
        X = X * mask[:, None]
        X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
        cdir = Path(cfg.cache)/'embeddings'/enc.fingerprint
        for c in range(0, len(df), cfg.embed_chunk):
            sl = slice(c, min(len(df), c + cfg.embed_chunk))
            E._save_chunk(cdir/f'{E._chunk_key(enc, keys[sl], mask[sl])}.npy', np.ascontiguousarray(X[sl]))
    E._FILE_HASHES.clear()   # the timed run hashes every photo again


def child(case: str, n: int) -> dict:
    "Match one case with the shipped model; seconds (import excluded) and peak resident memory."
    import tempfile, warnings
    from shopee_nb.core import get_config
    from shopee_nb.ensemble import default_model, match_postings
    tmp = Path(tempfile.mkdtemp(prefix='bench_degenerate_'))
    df = postings(case, n, image_dir=tmp/'images')
    model = default_model()
    cfg = get_config('cpu')
    cfg.cache = tmp/'cache'
    if case in ('distinct_images', 'one_image'): fill_image_cache(df, model, cfg, case)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        M, info = match_postings(df, cfg, model, log=lambda *a: None)
    s = time.perf_counter() - t0
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)
    sizes = np.diff(M.indptr)
    return dict(case=case, n=n, seconds=round(s, 2), peak_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                mean_matches=round(float(sizes.mean()), 2), max_matches=int(sizes.max()))


def main(n: int, cases=CASES) -> dict:
    rows = []
    for case in cases:
        r = subprocess.run([sys.executable, __file__, '--child', case, '--n', str(n)], capture_output=True, text=True,
                           env={**os.environ, 'SHOPEE_FORCE_CPU': '1'})
        if r.returncode: raise SystemExit(f'{case}: failed\n{r.stderr[-3000:]}')
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    print(f"{'case':<16} {'postings':>8} {'seconds':>8} {'peak MiB':>9} {'mean matches':>13} {'max':>4}")
    for r in rows: print(f"{r['case']:<16} {r['n']:>8,} {r['seconds']:>8.2f} {r['peak_mib']:>9,} {r['mean_matches']:>13.2f} {r['max_matches']:>4}")
    by = {r['case']: r for r in rows}
    out = {}
    for b in [b for b in ['distinct', 'distinct_images'] if b in by]: out.update({f's_{b}': by[b]['seconds'], f'peak_mib_{b}': by[b]['peak_mib']})
    for case, b in [(c, b) for c, b in BASELINE.items() if c in by and b in by]:
        out[f"time_ratio_{case}"] = round(by[case]['seconds'] / by[b]['seconds'], 2)
        out[f"mem_ratio_{case}"] = round(by[case]['peak_mib'] / by[b]['peak_mib'], 2)
    print(' '.join(f'{k}={v}' for k, v in out.items()))
    return out


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--n', type=int, default=10_000)
    ap.add_argument('--child', choices=CASES)
    ap.add_argument('--cases', default=','.join(CASES), help='comma-separated cases to run (each ratio needs its baseline)')
    a = ap.parse_args()
    if a.child: print(json.dumps(child(a.child, a.n)))
    else: main(a.n, a.cases.split(','))
