"""Per-posting costs of the inference stages on this machine, and what they make at Kaggle's 70,000 postings.

    python benchmarks/bench_stages.py [--n 70000] [--dense-n 8000] [--workers 2]

Measures on the CPU: JPEG decode at 512 px (one thread, then `--workers` threads through `core.map_ordered`),
word + char TF-IDF and their sparse top-50 on the real titles (../shared/data/shopee, else synthetic ones),
the exact dense top-50 (`_topk_xp` on NumPy, 512-d) and thresholds. Prints the table of
`matching.stage_time_table` for `--n` postings. GPU costs (CuPy top-k and pair features, model forward passes)
are measured by `benchmarks/bench_gpu.py` on a GPU machine (results: `benchmarks/results/h200.json`); cuML's
TF-IDF needs RAPIDS, which that machine did not have.
"""
from __future__ import annotations
import argparse, os, sys, time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault('SHOPEE_FORCE_CPU', '1')

from shopee_nb.core import map_ordered
from shopee_nb.data import load_image
from shopee_nb.matching import (tfidf_features, topk_sparse, _topk_xp, neighbours_to_csr, ensure_self,
                                stage_time_table)

SHOPEE = ROOT.parent/'shared'/'data'/'shopee'

def per_item(f, n: int, repeat: int = 1) -> float:
    "Best of `repeat` runs of `f()`, divided by `n`."
    best = float('inf')
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best / n

def photos() -> list[str]:
    "JPEGs of 640-1000 px (the shared Shopee test photos), else a generated one."
    ps = sorted(str(p) for p in (SHOPEE/'test_images').glob('*.jpg')) if SHOPEE.is_dir() else []
    if ps: return ps
    from PIL import Image
    p = Path('/tmp/bench_stages.jpg')
    Image.fromarray((np.random.default_rng(0).random((800, 800, 3)) * 255).astype(np.uint8)).save(p, quality=90)
    return [str(p)]

def titles() -> list[str]:
    if (SHOPEE/'train.csv').is_file(): return pd.read_csv(SHOPEE/'train.csv')['title'].astype(str).tolist()
    rng = np.random.default_rng(0)
    return [f'produk {rng.integers(5000)} warna {rng.integers(30)} ukuran {rng.integers(6)} isi {rng.integers(12)}'
            for _ in range(24_000)]

def main(n: int = 70_000, dense_n: int = 8_000, workers: int = 2):
    cost, at, par = {}, {}, {}
    ps = photos() * 20
    cost['decode 512px (1 thread)'] = per_item(lambda: [load_image(p, 512) for p in ps], len(ps), 2)
    cost[f'decode 512px ({workers} threads)'] = per_item(lambda: list(map_ordered(lambda p: load_image(p, 512), ps, workers)),
                                                     len(ps), 2)
    ts = titles()
    Xs = {}
    def tfidf():
        Xs['w'] = tfidf_features(ts, 'word')
        Xs['c'] = tfidf_features(ts, 'char')
    cost['tfidf word+char'] = per_item(tfidf, len(ts))
    nbs = {}
    def sparse_topk():
        nbs['w'] = ensure_self(topk_sparse(Xs['w'], 50))
        nbs['c'] = ensure_self(topk_sparse(Xs['c'], 50))
    cost['sparse top-50 word+char'] = per_item(sparse_topk, len(ts))
    at['sparse top-50 word+char'] = len(ts)
    E = np.random.default_rng(0).normal(size=(dense_n, 512)).astype(np.float32)
    E /= np.linalg.norm(E, axis=1, keepdims=True)
    cost['dense top-50 (NumPy, 512-d)'] = per_item(lambda: _topk_xp(E, E, 50, np), dense_n)
    at['dense top-50 (NumPy, 512-d)'] = dense_n
    cost['thresholds'] = per_item(lambda: (neighbours_to_csr(nbs['w'], .4), neighbours_to_csr(nbs['c'], .45)), len(ts))
    print(f'measured on this CPU ({os.cpu_count()} cores): {len(ps)} decodes, {len(ts):,} titles, {dense_n:,} dense rows')
    t = stage_time_table(cost, n, measured_at=at)
    t = t[~t.stage.isin(['total'])]
    one = t[t.stage != f'decode 512px ({workers} threads)']
    total = stage_time_table({r.stage: r.ms_per_posting / 1000 for r in one.itertuples()}, n, measured_at=at)
    with pd.option_context('display.width', 140, 'display.float_format', '{:,.3f}'.format):
        print(f'\nplanned for {n:,} postings (CPU, decoding on one thread in the total):')
        print(pd.concat([t, total.tail(1)], ignore_index=True).to_string(index=False))
    print('\nGPU (CuPy top-k, CNN/BERT forward passes): benchmarks/bench_gpu.py on a GPU machine.')
    print(' '.join(f"{k.split(' (')[0].replace(' ', '_')}{'_par' if 'threads)' in k and not k.endswith('(1 thread)') else ''}"
                   f"_ms={v * 1000:.4f}" for k, v in cost.items()))

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--n', type=int, default=70_000)
    ap.add_argument('--dense-n', type=int, default=8_000)
    ap.add_argument('--workers', type=int, default=2)
    a = ap.parse_args()
    main(a.n, a.dense_n, a.workers)
