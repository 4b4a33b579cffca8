"""Deployment-scale check of `fit`'s promise, on the shared Shopee titles:

    python benchmarks/deploy_scale.py

Fit (cpu profile, word + char TF-IDF and phash) on 70% of the label groups of ../shared/data/shopee, match all
24,078 postings at once -- the unseen 30% among the 70% -- and score the unseen 30%: measured F1 against the F1
the fitted model expected for that pool size, and the reference rule (word TF-IDF cosine or identical phash, its
threshold tuned on the 70%) in the same protocol. Prints one JSON object. The run folder is kept in the cache
(SHOPEE_CACHE/runs/shopee-70-tfidf), so a second run only matches.
"""
import sys, time, json, warnings
import numpy as np
from shopee_nb.core import get_config, find_shared
from shopee_nb.data import load_postings, make_folds
from shopee_nb.embeddings import profile_encoders
from shopee_nb.matching import csr_metrics
from shopee_nb.ensemble import fit_model, match_postings, cosine_phash_matches
warnings.simplefilter('ignore')
cpu = get_config('cpu')
shopee = find_shared('shopee')
if shopee is None: sys.exit('skipped: ../shared/data/shopee is absent')
full = load_postings(shopee, 'train')
labels = full['label_group'].to_numpy()
seen = make_folds(labels, n_splits=10, seed=0) >= 3
specs = [s for s in profile_encoders('cpu') if s['name'] in ('tfidf-word', 'tfidf-char', 'phash')]
t0 = time.time()
model = fit_model(full[seen], cpu, cpu.cache/'runs'/'shopee-70-tfidf', specs, log=lambda *a: None)
fit_s = time.time() - t0
t0 = time.time()
M, info = match_postings(full, cpu, model, log=lambda *a: None)
match_s = time.time() - t0
unseen = np.flatnonzero(~seen)
measured = csr_metrics(M, labels, rows=unseen)
fit70 = full[seen].reset_index(drop=True)
grid = np.round(np.arange(.3, .91, .05), 2)
tuned = max(grid, key=lambda t: csr_metrics(cosine_phash_matches(fit70, t), fit70['label_group'])['f1'])
ref = csr_metrics(cosine_phash_matches(full, tuned), labels, rows=unseen)
out = dict(fit_postings=int(seen.sum()), unseen=len(unseen), fit_seconds=round(fit_s), match_seconds=round(match_s),
           cv={k: model.members[0].cv[k] for k in ('pool_size', 'f1', 'precision', 'recall')},
           expected=info['expected_f1'], measured=measured, reference=dict(threshold=float(tuned), **ref))
print(json.dumps(out, default=float, indent=1))
