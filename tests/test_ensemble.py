"Ensemble: pair candidates, scores to match sets, the JSON pair scorer, the model folder, and fit → match on unseen products."
import json
import numpy as np, pandas as pd, pytest, scipy.sparse as sp

from shopee_nb.core import get_config
from shopee_nb.data import load_postings, make_sample, match_metrics, read_submission
from shopee_nb.matching import csr_to_lists, csr_metrics, Neighbours
from shopee_nb.ensemble import (Modality, modality_neighbours, blend, candidate_pairs, pair_features, pairs_to_csr,
                                PairScorer, MatchModel, Member, merge_models, fit_model, match_postings, photo_folds, number_tokens)

def test_pairs_to_csr_is_symmetric_capped_and_keeps_self():
    rng = np.random.default_rng(0); n = 200
    I = rng.integers(0, n, 5000); J = rng.integers(0, n, 5000); keep = I < J; I, J = I[keep], J[keep]
    M = pairs_to_csr(n, I, J, rng.random(len(I)), 0.2, min2=0.1)
    assert (M != M.T).nnz == 0 or np.diff(M.indptr).max() == 50      # symmetric unless the cap cut a row
    assert np.diff(M.indptr).max() <= 50 and all(i in r for i, r in enumerate(csr_to_lists(M)))

def test_min2_adds_only_the_best_partner_of_lonely_rows():
    M = pairs_to_csr(4, np.array([0, 0, 2]), np.array([1, 2, 3]), np.array([.2, .3, .9]), 0.5, min2=0.25)
    assert sorted(M[0].indices) == [0, 2] and sorted(M[2].indices) == [0, 2, 3] and sorted(M[1].indices) == [1]

def test_candidates_include_every_modality_and_no_self_pairs():
    a = Neighbours(np.array([[0, 1], [1, 0], [2, 0]]), np.array([[1, .9], [1, .9], [1, .1]]))
    b = Neighbours(np.array([[0, 2], [1, 2], [2, 1]]), np.array([[1, .8], [1, .7], [1, .7]]))
    I, J = candidate_pairs([a, b], [(np.array([1]), np.array([2]))])
    assert sorted(zip(I.tolist(), J.tolist())) == [(0, 1), (0, 2), (1, 2)]

def test_missing_modality_gives_missing_features():
    X = np.eye(4, dtype=np.float32); X[3] = 0
    m = Modality('img', X, 'image'); nb = modality_neighbours(m, 3)
    F = pair_features([m], [nb], np.array([0, 0]), np.array([1, 3]))
    assert np.isfinite(F['img'][0]) and np.isnan(F['img'][1])

def test_numbers_are_normalised():
    N = number_tokens(['Susu 0,5 L', 'susu 0.5 l', 'susu 250ml', ''])
    assert (N[0] != N[1]).nnz == 0 and (N[0] != N[2]).nnz > 0 and N[3].nnz == 0

def test_pair_scorer_json_roundtrip_and_missing_features():
    rng = np.random.default_rng(1)
    F = pd.DataFrame({'a': rng.random(3000), 'b': np.where(rng.random(3000) < .3, np.nan, rng.random(3000))})
    y = F['a'] + np.nan_to_num(F['b']) > 1
    s = PairScorer().fit(F, y); s2 = PairScorer.from_dict(json.loads(json.dumps(s.to_dict())))
    np.testing.assert_allclose(s2.predict(F), s.predict(F), atol=1e-6)
    assert np.isfinite(s.predict(F.drop(columns='b'))).all()        # a feature absent at prediction = missing, not a crash
    with pytest.raises(ValueError, match='unknown model kind'): PairScorer.from_dict({'kind': 'pickle'})

def test_photo_folds_keep_every_product_in_every_fold():
    lab = np.repeat(np.arange(30), 6); f = photo_folds(lab, 2, 0)
    assert all(set(lab[f == k]) == set(lab) for k in (0, 1))

@pytest.fixture(scope='module')
def fitted(tmp_path_factory):
    d = make_sample(tmp_path_factory.mktemp('s'), n_products=30, seed=11)
    cfg = get_config('smoke', cache=tmp_path_factory.mktemp('cache'))
    out = tmp_path_factory.mktemp('run')
    model, table = fit_model(load_postings(d, 'train'), cfg, out, n_folds=2, log=lambda *a: None)
    return d, cfg, out, model, table

def test_fit_writes_a_json_model_that_reloads(fitted):
    d, cfg, out, model, table = fitted
    assert (out/'model.json').exists() and (out/'cv_report.csv').exists()
    m2 = MatchModel.load(out)
    assert [m.name for m in m2.members] == [m.name for m in model.members] and sorted(m2.heads) == sorted(model.heads)
    assert 'learned pair scorer + min2' in set(table.method)

def test_match_on_unseen_products_beats_phash(fitted):
    d, cfg, out, model, _ = fitted
    test = load_postings(d, 'test'); labels = pd.read_csv(d/'test_labels.csv').set_index('posting_id').loc[test.posting_id, 'label_group'].to_numpy()
    M = match_postings(test.assign(label_group=-1), cfg, MatchModel.load(out))    # labels are dropped, never read
    phash_f1 = match_metrics([np.flatnonzero(test.image_phash.to_numpy() == h) for h in test.image_phash], labels)['f1']
    assert csr_metrics(M, labels)['f1'] > phash_f1 + 0.1

def test_merge_and_usable_members(fitted):
    d, cfg, out, model, _ = fitted
    m = model.members[0]
    text = Member('t', ['word', 'char'], m.scorer, m.threshold, kind='text')
    img = Member('i', ['lite0'], m.scorer, m.threshold, kind='image')
    mm = merge_models([MatchModel([text]), MatchModel([img], model.heads)])
    assert [x.name for x in mm.usable(pd.DataFrame({'word': [.5], 'char': [.4]}))] == ['t']
    assert [x.name for x in mm.usable(pd.DataFrame({'lite0': [.5]}))] == ['i']
    assert {x.name for x in mm.usable(pd.DataFrame({'word': [.5], 'char': [.4], 'lite0': [.3]}))} == {'t', 'i'}
    with pytest.raises(ValueError, match='two models carry'): merge_models([MatchModel([img], model.heads), MatchModel([img], model.heads)])

def test_model_folder_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match='shopee_nb fit'): MatchModel.load(tmp_path)
    (tmp_path/'model.json').write_text('{not json')
    with pytest.raises(ValueError, match='not valid JSON'): MatchModel.load(tmp_path)
