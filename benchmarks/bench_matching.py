"""Matching-engine benchmark: our path against the obvious baselines, on the same data, in one process.

    python benchmarks/bench_matching.py [--scale 100000,1000000] [--skip-baselines]

Prints one table per part and, last, one machine-readable line of `key=value` pairs:
  text_s            word+char TF-IDF fit + top-50 + thresholds + phash on the real titles (../shared/data/shopee)
  sklearn_brute_ratio   the same with scikit-learn NearestNeighbors(metric='cosine', algorithm='brute'), time ratio
  dense_vs_faiss    our dense top-50 (24,078 x 512) time / faiss IndexFlatIP time  (1.0 = as fast as faiss)
  numpy_vs_faiss, sklearn_vs_faiss   the fallbacks, same ratio
  peak_mib          peak resident memory of the 24k text run
  s_<n>, peak_mib_<n>   synthetic titles at each scale, end to end (separate process each, so peaks are its own)
"""
from __future__ import annotations
import argparse, json, os, resource, subprocess, sys, time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault('SHOPEE_FORCE_CPU', '1')

from shopee_nb.matching import (tfidf_features, topk_cosine, topk_dense, neighbours_to_csr, union_csr, phash_csr,
                                csr_metrics)

def peak_mib(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def text_pipeline(titles, phashes, thr_word=0.40, thr_char=0.45, k=50, brute=False):
    "Word + char TF-IDF, top-k, thresholds, union with identical phash; returns the match matrix and stage times."
    t = {}; t0 = time.perf_counter()
    Xw = tfidf_features(titles, 'word'); Xc = tfidf_features(titles, 'char'); t['tfidf'] = time.perf_counter() - t0
    t1 = time.perf_counter()
    if brute:
        from sklearn.neighbors import NearestNeighbors
        from shopee_nb.matching import Neighbours, ensure_self
        def nn(X):
            d, i = NearestNeighbors(n_neighbors=min(k, X.shape[0]), metric='cosine', algorithm='brute').fit(X).kneighbors(X)
            return ensure_self(Neighbours(i, 1 - d))
        nw, nc = nn(Xw), nn(Xc)
    else:
        nw, nc = topk_cosine(Xw, k), topk_cosine(Xc, k)
    t['topk'] = time.perf_counter() - t1; t2 = time.perf_counter()
    M = union_csr(neighbours_to_csr(nw, thr_word), neighbours_to_csr(nc, thr_char), phash_csr(phashes))
    t['match'] = time.perf_counter() - t2; t['total'] = time.perf_counter() - t0
    return M, t

def synthetic_titles(n, seed=0):
    "Seller-style titles: product families of brand + kind + variant + unit, with noise words, at any scale."
    rng = np.random.default_rng(seed)
    vocab = np.array([f'w{i}' for i in range(50_000)]); brands = np.array([f'brand{i}' for i in range(5_000)])
    kinds = ['sabun', 'kaos', 'case', 'botol', 'tas', 'sepatu', 'masker', 'shampoo', 'charger', 'kabel', 'lipstik', 'serum']
    units = ['ml', 'gr', 'pcs', 'cm', 'kg', 'l']
    n_prod = max(1, n // 3); prod = rng.integers(0, n_prod, n)
    pb = rng.integers(0, len(brands), n_prod); pk = rng.integers(0, len(kinds), n_prod)
    pv = rng.integers(1, 1000, n_prod); pu = rng.integers(0, len(units), n_prod)
    noise = rng.zipf(1.3, (n, 4)) % len(vocab)
    return [f'{brands[pb[p]]} {kinds[pk[p]]} {pv[p]}{units[pu[p]]} ' + ' '.join(vocab[noise[i, :rng.integers(1, 5)]])
            for i, p in enumerate(prod)], prod

def scale_child(n):
    titles, prod = synthetic_titles(n)
    rng = np.random.default_rng(1); ph = np.array([f'{x:016x}' for x in rng.integers(0, 2**62, n // 2)])[rng.integers(0, n // 2, n)]
    M, t = text_pipeline(titles, ph)
    f1 = csr_metrics(M, prod)['f1']
    print(json.dumps(dict(n=n, seconds=round(t['total'], 1), tfidf=round(t['tfidf'], 1), topk=round(t['topk'], 1),
                          match=round(t['match'], 1), f1=round(f1, 4), peak_mib=round(peak_mib()))))

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--scale', default='100000', help="comma-separated synthetic sizes ('' to skip), e.g. 100000,1000000")
    ap.add_argument('--skip-baselines', action='store_true'); ap.add_argument('--child', type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child: return scale_child(a.child)
    out = {}
    data = ROOT.parent / 'shared' / 'data' / 'shopee' / 'train.csv'
    if data.exists():
        import pandas as pd
        df = pd.read_csv(data)
        titles, ph, labels = df['title'].fillna('').tolist(), df['image_phash'].tolist(), df['label_group'].to_numpy()
        M, t = text_pipeline(titles, ph)
        out['peak_mib'] = round(peak_mib())
        m = csr_metrics(M, labels)
        print(f"text, {len(titles):,} real titles: tfidf {t['tfidf']:.2f}s  top-50 {t['topk']:.2f}s  thresholds+phash {t['match']:.2f}s  "
              f"total {t['total']:.2f}s  (in-sample F1 {m['f1']:.4f})")
        out['text_s'] = round(t['total'], 2)
        if not a.skip_baselines:
            M2, t2 = text_pipeline(titles, ph, brute=True)
            print(f"  scikit-learn brute cosine kNN, same pipeline: total {t2['total']:.2f}s (top-50 {t2['topk']:.2f}s)  F1 {csr_metrics(M2, labels)['f1']:.4f}")
            out['sklearn_brute_ratio'] = round(t2['total'] / t['total'], 1)
    else:
        print(f"text: skipped, {data} is absent (the real Shopee data sits beside the repo as ../shared/data/shopee)")
    # dense: 24,078 x 512 float32, clustered like embeddings of products
    rng = np.random.default_rng(0); n, d = 24_078, 512
    centres = rng.normal(size=(n // 3, d)).astype(np.float32)
    E = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.normal(size=(n, d)).astype(np.float32)
    E /= np.linalg.norm(E, axis=1, keepdims=True)
    def timed(f):
        t0 = time.perf_counter(); r = f(); return time.perf_counter() - t0, r
    t_ours, nb = timed(lambda: topk_cosine(E, 50))
    t_faiss, nbf = timed(lambda: topk_dense(E, 50, backend='faiss'))
    print(f"dense 24,078 x 512 top-50: ours (auto) {t_ours:.2f}s  faiss IndexFlatIP {t_faiss:.2f}s", end='')
    out['dense_vs_faiss'] = round(t_ours / t_faiss, 2)
    if not a.skip_baselines:
        t_np, nbn = timed(lambda: topk_dense(E, 50, backend='numpy'))
        from sklearn.neighbors import NearestNeighbors
        t_sk, _ = timed(lambda: NearestNeighbors(n_neighbors=50, metric='cosine', algorithm='brute').fit(E).kneighbors(E))
        agree = float(np.mean(nbn.idx[:, :10] == nbf.idx[:, :10]))
        print(f"  numpy blockwise {t_np:.2f}s  scikit-learn brute {t_sk:.2f}s  (numpy/faiss top-10 agreement {agree:.4f})", end='')
        out['numpy_vs_faiss'] = round(t_np / t_faiss, 2); out['sklearn_vs_faiss'] = round(t_sk / t_faiss, 2)
    print()
    for s in [int(x) for x in a.scale.split(',') if x.strip()]:
        r = subprocess.run([sys.executable, __file__, '--child', str(s)], capture_output=True, text=True)
        if r.returncode: print(f"scale {s:,}: failed\n{r.stderr[-2000:]}"); continue
        j = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"synthetic titles, {s:,} postings: total {j['seconds']}s (tfidf {j['tfidf']}s, top-50 {j['topk']}s, match {j['match']}s), "
              f"peak {j['peak_mib']} MiB, F1 {j['f1']}")
        out[f's_{s}'] = j['seconds']; out[f'peak_mib_{s}'] = j['peak_mib']
    print(' '.join(f'{k}={v}' for k, v in out.items()))

if __name__ == '__main__': main()
