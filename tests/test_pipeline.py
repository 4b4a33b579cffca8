"The pipeline end to end with the seed's models: the gpu recipe at smoke sizes, the spec a run folder saves, match from it."
import json
import numpy as np, pandas as pd, pytest

from shopee_nb.core import get_config
from shopee_nb.data import load_postings, make_sample
from shopee_nb.embeddings import profile_encoders
from shopee_nb.matching import csr_metrics
from shopee_nb.ensemble import fit_model, match_postings, load_model

# The gpu profile's encoders -- EfficientNetB3 (Model 1), BERT from TF-Hub (Model 1), eca_nfnet_l0 with Mish (Model 2) --
# with random weights, tiny inputs and one epoch, and the tiny local BERT SavedModel instead of BERT-large.
TINY = {'model1-image': dict(pretrained=None, img_size=32, epochs=1, batch_size=8, train_last=None, augment='light', tta='none'),
        'model1-text': dict(handle='tiny', preprocess=None, max_len=16, epochs=1, batch_size=8, warmup_epochs=1),
        'model2': dict(pretrained=None, img_size=32, fc_dim=32, epochs=1, batch_size=8, train_last=None, aug='light',
                       tta='none', store='full', dtype='float32')}

def gpu_recipe_at_smoke_size():
    return [{**s, 'params': {**s['params'], **TINY.get(s['name'], {})}} for s in profile_encoders('gpu')]

def test_gpu_recipe_smoke(tmp_path):
    d = make_sample(tmp_path/'sample', n_products=12, seed=5)
    cfg = get_config('smoke', cache=tmp_path/'cache')
    model = fit_model(load_postings(d, 'train'), cfg, tmp_path/'run', gpu_recipe_at_smoke_size(), n_folds=2, log=lambda *a: None)
    spec = json.loads((tmp_path/'run'/'model.json').read_text())
    enc = {e['name']: e for e in spec['encoders']}
    assert sorted(enc) == sorted(['tfidf-word', 'tfidf-char', 'phash', 'model1-image', 'model1-text', 'model2'])
    assert enc['model1-image']['params']['backbone'] == 'EfficientNetB3'
    assert enc['model2']['params']['backbone'] == 'eca_nfnet_l0' and enc['model2']['params']['mish'] is True
    assert all(len(sha) == 64 for name in ('model1-image', 'model1-text', 'model2') for sha in enc[name]['weights'].values())
    assert all(enc[name]['weights'] for name in ('model1-image', 'model1-text', 'model2'))
    test = load_postings(d, 'test')
    M, info = match_postings(test, get_config('cpu', cache=tmp_path/'cache'), load_model(tmp_path/'run'), log=lambda *a: None)
    assert M.shape == (len(test), len(test)) and info['members'] == ['joint']
    assert all(i in M[i].indices for i in range(len(test)))
