"Ensemble: candidate pairs, features, scorers, scores to match sets, the pool rule, the model folder and its validator, fit -> match."
import json, shutil
import numpy as np, pandas as pd, pytest, scipy.sparse as sp

from shopee_nb.core import get_config
from shopee_nb.data import load_postings, make_sample, match_metrics
from shopee_nb.matching import csr_to_lists, csr_metrics, Neighbours
from shopee_nb.embeddings import create_encoder
from shopee_nb.ensemble import (View, Context, view_neighbours, candidate_pairs, base_features, units_step, quantities,
                                pairs_to_csr, f1_curve, create_scorer, GBDTScorer, LogisticScorer, PoolRule, photo_folds,
                                fit_model, match_postings, load_model, merge_models, MatchModel, usable_members)

TEXT = [dict(name=n, params={}) for n in ['tfidf-word', 'tfidf-char', 'phash']]

def test_pairs_to_csr_is_symmetric_capped_and_keeps_self():
    rng = np.random.default_rng(0); n = 200
    I = rng.integers(0, n, 5000); J = rng.integers(0, n, 5000); keep = I < J; I, J = I[keep], J[keep]
    M = pairs_to_csr(n, I, J, rng.random(len(I)), 0.2, min2=0.1)
    assert np.diff(M.indptr).max() <= 50 and all(i in r for i, r in enumerate(csr_to_lists(M)))
    full = np.diff(M.indptr) < 50
    assert ((M != M.T)[full][:, full]).nnz == 0                         # symmetric where the cap did not cut

def test_min2_adds_only_the_best_partner_of_lonely_rows():
    M = pairs_to_csr(4, np.array([0, 0, 2]), np.array([1, 2, 3]), np.array([.2, .3, .9]), 0.5, min2=0.25)
    assert sorted(M[0].indices) == [0, 2] and sorted(M[2].indices) == [0, 2, 3] and sorted(M[1].indices) == [1]

def test_f1_curve_equals_match_sets_then_metric():
    rng = np.random.default_rng(3)
    I, J = np.triu_indices(60, 1); sc = rng.random(len(I)) ** 5; lab = rng.integers(0, 15, 60)
    grid = np.round(np.arange(.2, .95, .05), 2)
    for off in [None, .15]:
        fast = f1_curve(60, I, J, sc, lab, np.arange(30), grid, off)['f1'].to_numpy()
        slow = [csr_metrics(pairs_to_csr(60, I, J, sc, t, None if off is None else t - off), lab, rows=np.arange(30))['f1'] for t in grid]
        np.testing.assert_allclose(fast, slow, atol=1e-9)

def test_candidates_come_from_every_view_and_phash_without_self_pairs():
    df = pd.DataFrame({'title': ['a', 'b', 'c']})
    ctx = Context(df, [View('h', np.array([5, 5, 9], np.uint64), 'phash', np.array([True, True, True]))])
    ctx.nbs['a'] = Neighbours(np.array([[0, 2], [1, 0], [2, 0]]), np.array([[1, .9], [1, .9], [1, .1]]))
    I, J = candidate_pairs(ctx)
    assert sorted(zip(I.tolist(), J.tolist())) == [(0, 1), (0, 2)]

def test_missing_view_gives_missing_features():
    X = np.eye(4, dtype=np.float32); X[3] = 0
    v = View('img', X, 'image'); ctx = Context(pd.DataFrame(index=range(4)), [v], k=3)
    ctx.nbs['img'] = view_neighbours(v, 3); ctx.I, ctx.J = np.array([0, 0]), np.array([1, 3])
    base_features(ctx)
    assert np.isfinite(ctx.F['img'][0]) and np.isnan(ctx.F['img'][1]) and np.isnan(ctx.F['img_rank'][1])

def test_quantities_are_normalised_and_conflicts_found():
    assert quantities(['Susu 0,5 L', 'susu 500ml', 'susu 250 ML', 'susu']) == [{'ml:500'}, {'ml:500'}, {'ml:250'}, set()]
    ctx = Context(pd.DataFrame({'title': ['Susu 0,5 L', 'susu 500ml', 'susu 250 ML', 'susu']}), [])
    ctx.I, ctx.J = np.array([0, 0, 0]), np.array([1, 2, 3]); units_step(ctx)
    assert ctx.F['units_conflict'][0] == 0 and ctx.F['units_conflict'][1] == 1 and np.isnan(ctx.F['units_conflict'][2])

@pytest.mark.parametrize('name', ['gbdt', 'logistic'])
def test_scorers_roundtrip_without_pickle_and_read_missing_features(tmp_path, name):
    rng = np.random.default_rng(1)
    F = {'a': rng.random(3000).astype(np.float32), 'b': np.where(rng.random(3000) < .3, np.nan, rng.random(3000)).astype(np.float32)}
    y = F['a'] + np.nan_to_num(F['b']) > 1
    s = create_scorer(name, **({'n_estimators': 20} if name == 'gbdt' else {})).fit(F, y)
    spec = json.loads(json.dumps(s.save(tmp_path, 'm')))
    s2 = type(s).load(spec, tmp_path)
    np.testing.assert_allclose(s2.predict(F), s.predict(F), atol=1e-6)
    assert np.isfinite(s.predict({'a': F['a']})).all()               # an absent feature is missing, not a crash
    assert ((s.predict(F) > .5) == y).mean() > .8

def test_gbdt_scores_pairs_missing_a_view_with_its_gap_booster(tmp_path):
    "Trained where every pair had a phash, and a phash distance of 0 meant a match: a pair without one is judged on its text."
    rng = np.random.default_rng(2)
    n = 6000
    y = rng.random(n) < .3
    text = np.where(y, rng.uniform(.4, 1, n), rng.uniform(0, .6, n)).astype(np.float32)
    F = {'tfidf-word': text, 'phash_dist': np.where(y, 0, rng.integers(8, 40, n)).astype(np.float32)}
    s = create_scorer('gbdt', n_estimators=40).fit(F, y)
    assert s.complete == ['phash_dist', 'tfidf-word'] and s.gap_booster is not None
    blank = {'tfidf-word': np.full(200, .1, np.float32), 'phash_dist': np.full(200, np.nan, np.float32)}
    assert (s.booster.predict(np.column_stack([blank['phash_dist'], blank['tfidf-word']])) > .5).all()   # a blank read as 0
    assert (s.predict(blank) < .2).all()
    s2 = type(s).load(json.loads(json.dumps(s.save(tmp_path, 'm'))), tmp_path)
    np.testing.assert_allclose(s2.predict(blank), s.predict(blank), atol=1e-6)
    assert create_scorer('gbdt', n_estimators=5).fit(F, y, gaps=False).gap_booster is None

def test_gbdt_leaves_add_bounded_log_odds():
    "A leaf fitted on a few pairs in a sparse corner cannot add hundreds of log-odds (pairs with nothing in common scored 1.0)."
    rng = np.random.default_rng(3)
    n = 20_000
    x = rng.random(n).astype(np.float32)
    y = (x > .7) | (rng.random(n) < .001)   # a few matches far from the others
    s = create_scorer('gbdt', n_estimators=50, min_child_samples=5).fit({'cos': x, 'other': rng.random(n).astype(np.float32)}, y)
    bound = s.params['learning_rate'] * s.params['max_delta_step']
    for booster in (s.booster, s.gap_booster):
        if booster is None: continue
        trees = booster.dump_model()['tree_info']
        leaves = [v for t in trees[1:] for v in _leaf_values(t['tree_structure'])]   # the first tree holds the base rate too
        assert leaves and max(abs(v) for v in leaves) <= bound + 1e-9

def _leaf_values(node):
    if 'leaf_value' in node: return [node['leaf_value']]
    return _leaf_values(node['left_child']) + _leaf_values(node['right_child'])

def test_pool_rule_moves_with_the_pool_size():
    r = PoolRule(a=.2, b=.03, lo=.05, hi=.95, f1_a=1.2, f1_b=-.04)
    assert r.threshold(70_000) > r.threshold(12_000) > r.threshold(5_000)
    assert 0 <= r.expected_f1(10**9) <= 1 and r.threshold(10**30) == .95

def test_photo_folds_keep_every_product_in_every_fold():
    lab = np.repeat(np.arange(30), 6); f = photo_folds(lab, 2, 0)
    assert all(set(lab[f == k]) == set(lab) for k in (0, 1))

@pytest.fixture(scope='module')
def fitted(tmp_path_factory):
    d = make_sample(tmp_path_factory.mktemp('s'), n_products=30, seed=11)
    cfg = get_config('smoke', cache=tmp_path_factory.mktemp('cache'))
    out = tmp_path_factory.mktemp('run')
    model = fit_model(load_postings(d, 'train'), cfg, out, TEXT, n_folds=2, log=lambda *a: None)
    return d, cfg, out, model

def test_fit_writes_a_json_model_that_reloads(fitted):
    d, cfg, out, model = fitted
    spec = json.loads((out/'model.json').read_text())
    assert [e['name'] for e in spec['encoders']] == ['tfidf-word', 'tfidf-char', 'phash']
    assert {'pool_size', 'f1', 'precision', 'recall'} <= set(spec['members'][0]['cv'])
    m2 = load_model(out)
    assert [m.name for m in m2.members] == ['text'] and vars(m2.members[0].rule) == vars(model.members[0].rule)

def test_match_on_unseen_products_beats_phash_and_never_reads_labels(fitted):
    d, cfg, out, model = fitted
    test = load_postings(d, 'test')
    labels = pd.read_csv(d/'test_labels.csv').set_index('posting_id').loc[test.posting_id, 'label_group'].to_numpy()
    M, info = match_postings(test.assign(label_group=-1), cfg, load_model(out), log=lambda *a: None)
    phash_f1 = match_metrics([np.flatnonzero(test.image_phash.to_numpy() == h) for h in test.image_phash], labels)['f1']
    assert csr_metrics(M, labels)['f1'] > phash_f1 + 0.1
    assert info['n'] == len(test) and 0 <= info['expected_f1']['text'] <= 1

def test_match_follows_the_spec_not_the_profile(fitted):
    d, cfg, out, model = fitted
    test = load_postings(d, 'test')
    M1, _ = match_postings(test, cfg, load_model(out), log=lambda *a: None)
    M2, _ = match_postings(test, get_config('cpu', cache=cfg.cache), load_model(out), log=lambda *a: None)
    assert (M1 != M2).nnz == 0

def test_refit_on_other_data_discards_the_state(fitted, tmp_path):
    d, cfg, out, model = fitted
    run = tmp_path/'run'; shutil.copytree(out, run)
    notes = []
    df = load_postings(d, 'train').iloc[:-3]
    fit_model(df, cfg, run, TEXT, n_folds=2, log=notes.append)
    assert any('other data or settings' in n for n in notes)

def test_refit_with_other_settings_reuses_only_matching_fold_encoders(tmp_path):
    "Another scorer: the run's state is discarded, but each fold's trained encoder, whose own key matches, is kept."
    d = make_sample(tmp_path/'s', n_products=12, seed=3)
    cfg = get_config('smoke', cache=tmp_path/'cache')
    specs = [dict(name='minilm-arcface', params={}), dict(name='phash', params={})]
    df, run = load_postings(d, 'train'), tmp_path/'run'
    fit_model(df, cfg, run, specs, n_folds=2, log=lambda *a: None)
    weights = sorted((run/'state').glob('fold*/minilm-arcface/minilm-arcface.safetensors'))
    stamps = [w.stat().st_mtime_ns for w in weights]
    notes = []
    fit_model(df, cfg, run, specs, scorer=dict(name='logistic', params={}), n_folds=2, log=notes.append)
    assert any('other data or settings' in n for n in notes)
    assert len(weights) == 2 and [w.stat().st_mtime_ns for w in weights] == stamps
    fit_model(df.iloc[:-3], cfg, run, specs, n_folds=2, log=lambda *a: None)   # other rows: every fold retrains
    assert [w.stat().st_mtime_ns for w in weights] != stamps

def test_merge_keeps_members_and_refuses_conflicts(fitted, tmp_path):
    d, cfg, out, model = fitted
    with pytest.raises(ValueError, match="two models have a 'text' member"): merge_models([model, model], tmp_path/'m')
    assert [m.name for m in usable_members(model, {'image', 'phash'})] == []
    assert [m.name for m in usable_members(model, {'text'})] == ['text']

def test_merged_members_combine_any_on_the_same_data_all_on_different_data(fitted, tmp_path):
    d, cfg, out, model = fitted
    image = _tamper(out, tmp_path, lambda j: j['members'][0].update(name='image'), 'image')
    assert merge_models([model, load_model(image)], tmp_path/'same').combine == 'any'
    other = _tamper(out, tmp_path, lambda j: (j['members'][0].update(name='image'), j['meta'].update(data='other')), 'other-data')
    both = merge_models([model, load_model(other)], tmp_path/'other')
    assert both.combine == 'all' and load_model(tmp_path/'other').combine == 'all'
    assert merge_models([model, load_model(other)], tmp_path/'forced', combine='any').combine == 'any'
    with pytest.raises(ValueError, match='combine must be one of'): merge_models([model, load_model(other)], tmp_path/'x', combine='vote')
    test = load_postings(d, 'test')
    M_any, _ = match_postings(test, cfg, load_model(tmp_path/'same'), log=lambda *a: None)
    M_all, _ = match_postings(test, cfg, both, log=lambda *a: None)
    M_one, _ = match_postings(test, cfg, model, log=lambda *a: None)
    assert (M_any != M_one).nnz == 0 and (M_all != M_one).nnz == 0   # identical members: any == all == one

def _tamper(out, tmp_path, fn, name='t'):
    run = tmp_path/name; shutil.copytree(out, run, ignore=shutil.ignore_patterns('state'))
    d = json.loads((run/'model.json').read_text()); fn(d); (run/'model.json').write_text(json.dumps(d))
    return run

@pytest.mark.parametrize('change,message', [
    (lambda d: d['members'][0]['rule'].update(a=float('nan')), 'rule.a must be a finite number'),
    (lambda d: d['members'][0]['rule'].update(lo=.9, hi=.1), 'rule.lo is above rule.hi'),
    (lambda d: d['members'][0]['scorer'].update(file='../../etc/passwd'), 'inside the model folder'),
    (lambda d: d['members'][0]['scorer'].update(sha256='0' * 64), 'does not match its sha256'),
    (lambda d: d['members'][0].update(encoders=['bert-huge']), 'encoders must be encoders of the model'),
    (lambda d: d['members'][0].update(encoders=[['tfidf-word']]), 'encoders must be encoders of the model'),
    (lambda d: d['members'][0]['scorer'].update(gap_sha256='0' * 64), 'does not match its sha256'),
    (lambda d: d['members'][0]['scorer'].update(complete=['no-such-feature']), 'complete features are not among its features'),
    (lambda d: d['encoders'][0].update(name='bert-huge'), 'unknown encoder'),
    (lambda d: d['encoders'][0].update(weights={'../w.bin': 'a' * 64}), 'inside the model folder'),
    (lambda d: d.update(version=1), 'not supported'),
    (lambda d: d['steps'].append({'name': 'pickle.load'}), 'unknown or malformed step'),
    (lambda d: d.update(combine='majority'), 'combine must be one of'),
    (lambda d: d['steps'].append({'name': ['blend']}), 'unknown or malformed step'),
    (lambda d: d['members'][0]['scorer'].update(name=['gbdt']), 'scorer must name one of'),
    (lambda d: d['encoders'][0]['params'].update(no_such_parameter=1), 'unknown parameter'),
    (lambda d: [e['params'].update(kind=['word']) for e in d['encoders'] if e['name'] == 'tfidf-word'], 'parameter kind must be of type str'),
])
def test_tampered_model_folders_are_refused_in_one_line(fitted, tmp_path, change, message):
    d, cfg, out, model = fitted
    with pytest.raises(ValueError, match=message): load_model(_tamper(out, tmp_path, change))

def test_model_folder_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match='shopee_nb fit'): load_model(tmp_path)
    (tmp_path/'model.json').write_text('{not json')
    with pytest.raises(ValueError, match='not valid JSON'): load_model(tmp_path)
