"""The GPU path's CPU twins (`pytest -k gpu`): the blockwise top-k's memory budget and exactness, RAPIDS detection
and the TF/RAPIDS memory split with stand-in modules, and cuML's tokens made equal to sklearn's."""
import sys, types, warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer

from shopee_nb import core
from shopee_nb.core import Backends, backends, rmm_pool_bytes, split_gpu_memory
from shopee_nb.matching import (TFIDF_PRESETS, TOPK_BUDGET, _topk_xp, cuml_ready, match_mask, neighbours_to_csr,
                                topk_block_rows, topk_dense, topk_scratch_bytes, tfidf_features, Neighbours)

# --- 1. one blockwise top-k for NumPy and CuPy -------------------------------------------------------------------

def test_gpu_topk_budget_at_kaggle_scale():
    rows = topk_block_rows(70_000, 50, 2 * 1024**3, d=512)
    assert rows == 638
    assert topk_scratch_bytes(rows, 70_000, 50, d=512) <= 2 * 1024**3 < topk_scratch_bytes(rows + 1, 70_000, 50, d=512)
    old = topk_scratch_bytes(8192, 70_000, 50, d=512)       # the old CuPy block of 8,192 rows
    assert old > 16e9                                         # a T4 has 16 GB in all

def test_gpu_topk_scratch_counts_every_temporary():
    # 48 bytes per element (measured under CuPy's segmented sort on an H200); 4 sims + 4 indices per kept one
    assert topk_scratch_bytes(1, 10, 2) == 10 * 48 + 2 * 48
    assert topk_scratch_bytes(3, 10, 2, d=5) == 3 * (5 * 4 + 10 * 48 + 2 * 48)

def test_gpu_topk_tiny_budget_still_progresses():
    assert topk_block_rows(70_000, 50, budget_bytes=1) == 1
    assert topk_block_rows(10, 3, budget_bytes=0) == 1

@pytest.mark.parametrize('budget', [1, 5_000, TOPK_BUDGET])
def test_gpu_topk_xp_equals_brute_force(budget):
    rng = np.random.default_rng(7)
    E = rng.normal(size=(301, 12)).astype(np.float32)
    S = E @ E.T
    brute = np.argsort(-S, axis=1, kind='stable')[:, :9]
    nb = _topk_xp(E, E, 9, np, budget)
    np.testing.assert_array_equal(nb.idx, brute)
    np.testing.assert_allclose(nb.sim, np.take_along_axis(S, brute, 1), atol=1e-5)

def test_gpu_topk_xp_ties_in_index_order():
    "Which of equal neighbours enter the top k is the partition's choice; those chosen come out in index order."
    E = np.ones((6, 3), np.float32)
    nb = _topk_xp(E, E, 4, np, 1)
    assert (np.diff(nb.idx, axis=1) > 0).all() and (nb.sim == 3).all()

def _numpy_module_as_cupy():
    "All of NumPy under the name `cupy`, with `asnumpy`: the xp code paths run on the CPU."
    m = types.ModuleType('cupy')
    m.__getattr__ = lambda name: getattr(np, name)
    m.asnumpy = lambda a: np.array(a, copy=True)
    return m

def test_gpu_topk_dense_cupy_branch_runs_the_same_kernel(monkeypatch):
    monkeypatch.setitem(sys.modules, 'cupy', _numpy_module_as_cupy())
    E = np.random.default_rng(3).normal(size=(120, 8)).astype(np.float32)
    a, b = topk_dense(E, 10, backend='cupy'), topk_dense(E, 10, backend='numpy')
    np.testing.assert_array_equal(a.idx, b.idx)
    np.testing.assert_array_equal(a.sim, b.sim)

def test_gpu_match_mask_takes_xp_and_matches_csr():
    nb = Neighbours(np.array([[0, 1, 3], [1, 0, 2], [2, 5, 0], [3, 4, 0], [4, 3, 1], [5, 2, 0]]),
                    np.array([[1, .9, .5], [1, .9, .2], [1, .3, .2], [1, .8, .1], [1, .8, .1], [1, .3, .1]]))
    keep = match_mask(nb.idx, nb.sim, .7, min2=.25, xp=np)
    M = neighbours_to_csr(nb, .7, min2=.25)
    assert keep.sum() == M.nnz
    assert keep[2].tolist() == [True, True, False]

# --- 2. backend detection that means it ---------------------------------------------------------------------------

def _fake_rapids(monkeypatch, cc='75', fail=False):
    "Stand-in cupy / cudf / cuml modules in sys.modules for a GPU of compute capability `cc`."
    calls = []
    def fit(self, X):
        calls.append('fit')
        if fail: raise RuntimeError('cudaErrorNoKernelImageForDevice: no kernel image is available')
        return self
    cupy = types.ModuleType('cupy')
    cupy.cuda = types.SimpleNamespace(Device=lambda: types.SimpleNamespace(compute_capability=cc),
                                      runtime=types.SimpleNamespace(memGetInfo=lambda: (15 * 2**30, 16 * 2**30)),
                                      set_allocator=lambda a: calls.append(('allocator', a)))
    cupy.asarray = lambda a, dtype=None: np.asarray(a, dtype)
    cudf = types.ModuleType('cudf')
    cudf.Series = lambda data: calls.append('series') or list(data)
    neighbors = types.ModuleType('cuml.neighbors')
    neighbors.NearestNeighbors = type('NearestNeighbors', (), {'__init__': lambda self, **kw: None, 'fit': fit})
    for name, mod in [('cupy', cupy), ('cudf', cudf), ('cuml', types.ModuleType('cuml')), ('cuml.neighbors', neighbors)]:
        monkeypatch.setitem(sys.modules, name, mod)
    return calls

def test_gpu_probe_without_gpu_imports_nothing(monkeypatch):
    class Tripwire(types.ModuleType):
        def __getattr__(self, name): raise AssertionError(f'cupy.{name} touched without a GPU')
    monkeypatch.setitem(sys.modules, 'cupy', Tripwire('cupy'))
    assert core._probe_rapids(0, lambda m: True) == (False, 'no GPU')

def test_gpu_probe_missing_modules():
    assert core._probe_rapids(1, lambda m: m == 'cupy') == (False, 'cudf, cuml not installed')

def test_gpu_probe_refuses_p100(monkeypatch):
    calls = _fake_rapids(monkeypatch, cc='60')
    ok, why = core._probe_rapids(1, lambda m: True)
    assert not ok and why == 'GPU compute capability 6.0 < 7.0 (cuDF needs Volta or newer)'
    assert calls == []                               # refused before any cuDF call

def test_gpu_probe_accepts_working_t4(monkeypatch):
    calls = _fake_rapids(monkeypatch, cc='75')
    assert core._probe_rapids(1, lambda m: True) == (True, 'RAPIDS works (compute capability 7.5)')
    assert calls == ['series', 'fit']

def test_gpu_probe_refuses_when_tiny_call_fails(monkeypatch):
    _fake_rapids(monkeypatch, cc='80', fail=True)
    ok, why = core._probe_rapids(1, lambda m: True)
    assert not ok and why.startswith('RAPIDS failed a 2-row test (RuntimeError: cudaErrorNoKernelImageForDevice')

@pytest.fixture
def fresh_backends():
    backends.cache_clear()
    yield
    backends.cache_clear()

def test_gpu_backends_warns_once_with_reason(monkeypatch, fresh_backends):
    monkeypatch.setattr(core, '_count_gpus', lambda: 1)
    monkeypatch.setattr(core, '_probe_rapids', lambda n: (False, 'GPU compute capability 6.0 < 7.0 (cuDF needs Volta or newer)'))
    with pytest.warns(UserWarning) as rec: b = backends()
    assert len(rec) == 1 and 'RAPIDS not used: GPU compute capability 6.0' in str(rec[0].message)
    assert 'CPU path' in str(rec[0].message) and not b.rapids and b.gpu
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        backends()                                    # cached: no second warning

def test_gpu_backends_quiet_without_gpu(monkeypatch, fresh_backends):
    monkeypatch.setattr(core, '_count_gpus', lambda: 0)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        b = backends()
    assert (b.gpu, b.rapids, b.rapids_note) == (False, False, 'no GPU')
    assert 'rapids_note' not in str(b)

def test_gpu_backends_usable(monkeypatch, fresh_backends):
    monkeypatch.setattr(core, '_count_gpus', lambda: 1)
    monkeypatch.setattr(core, '_probe_rapids', lambda n: (True, 'RAPIDS works (compute capability 7.5)'))
    assert backends().rapids

# --- TF cap and RMM pool ------------------------------------------------------------------------------------------

def test_gpu_rmm_pool_bytes():
    assert rmm_pool_bytes(15 * 2**30, tf_mb=2048) == 12 * 2**30
    assert rmm_pool_bytes(15 * 2**30) == 14 * 2**30          # no TF in the process: only the reserve is kept
    assert rmm_pool_bytes(2**30 + 1000, reserve_mb=0) == 2**30 + 768
    assert rmm_pool_bytes(2**29, tf_mb=2048) == 0

def _gpu_backends(rapids, tf=True):
    return Backends(n_gpus=1, rapids=rapids, tf=tf, torch=True, timm=True, faiss=True, sparse_dot_topn=True)

def _fake_tf(calls):
    config = types.SimpleNamespace(
        list_physical_devices=lambda kind: ['GPU:0'],
        set_logical_device_configuration=lambda g, cfgs: calls.append(('tf_cap', g, cfgs[0].memory_limit)),
        LogicalDeviceConfiguration=lambda memory_limit: types.SimpleNamespace(memory_limit=memory_limit))
    return types.SimpleNamespace(config=config)

def test_gpu_split_no_gpu():
    if backends().gpu: pytest.skip('this machine has a GPU')
    assert split_gpu_memory() == {'applied': False, 'reason': 'no GPU on this machine'}

def test_gpu_split_tf_alone_is_not_capped(monkeypatch):
    monkeypatch.setattr(core, 'backends', lambda: _gpu_backends(rapids=False))
    monkeypatch.setattr(core, 'import_tf', lambda: pytest.fail('TF imported although RAPIDS is not in the process'))
    out = split_gpu_memory()
    assert out['tf_mb'] is None and not out['rapids_pool']

def test_gpu_split_tf_and_rapids_share(monkeypatch):
    calls = _fake_rapids(monkeypatch)
    rmm = types.ModuleType('rmm')
    rmm.reinitialize = lambda **kw: calls.append(('rmm', kw))
    alloc = types.ModuleType('rmm.allocators.cupy')
    alloc.rmm_cupy_allocator = 'rmm_cupy_allocator'
    for name, mod in [('rmm', rmm), ('rmm.allocators', types.ModuleType('rmm.allocators')), ('rmm.allocators.cupy', alloc)]:
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(core, 'backends', lambda: _gpu_backends(rapids=True))
    monkeypatch.setattr(core, '_installed', lambda m: True)
    monkeypatch.setattr(core, '_TF_CAP_MB', {})
    monkeypatch.setattr(core, 'import_tf', lambda: _fake_tf(calls))
    out = split_gpu_memory(tf_mb=2048)
    assert out == {'applied': True, 'tf_mb': 2048, 'rapids_pool': True, 'pool_bytes': 12 * 2**30}
    assert ('tf_cap', 'GPU:0', 2048) in calls
    assert ('rmm', dict(pool_allocator=True, initial_pool_size=12 * 2**30, maximum_pool_size=12 * 2**30)) in calls
    assert ('allocator', 'rmm_cupy_allocator') in calls
    assert split_gpu_memory(tf_mb=4096)['tf_mb'] == 2048     # TF takes one cap per process: the first stays

# --- 3. the same tokens on both paths -----------------------------------------------------------------------------

TRICKY = ['Kaos Polos S/M/L/XL', 'Baju Anak 2 Thn - Size M', 'Sabun 500ml (isi 2) + BONUS!!', 'café crème  brûlée',
          'HP Samsung A10s ~ 2GB/32GB', 'Tas_Wanita import • murah', 'the best of a B C', '100% ORIGINAL 1 pcs',
          'ÜBER Größe ＸＬ', '\tminyak   goreng\n2 liter', 'Ａｐｐｌｅ iPhone 11', '', 'a', '!!!']

def test_gpu_cuml_ready_tokens():
    assert cuml_ready(['Kaos S/M/L, 2 pcs!'], 'english') == ['kaos s m l 2 pcs']
    assert cuml_ready(['The 500ml of x'], None) == ['the 500ml of x']
    for doc in cuml_ready(TRICKY, 'english'):
        assert doc == doc.strip() and '  ' not in doc        # cuML splits on single spaces: no empty tokens

@pytest.mark.parametrize('kind_opts', [{}, {'max_df': 1.0, 'max_features': None}, {'binary': False, 'ngram_range': (1, 2)}])
def test_gpu_cuml_ready_parity_with_sklearn(kind_opts):
    word = {**{k: v for k, v in TFIDF_PRESETS['word'].items() if k != 'max_df'}, **kind_opts}
    a = TfidfVectorizer(**word)
    b = TfidfVectorizer(**{**word, 'stop_words': None, 'lowercase': False, 'token_pattern': None,
                           'tokenizer': lambda s: s.split(' ') if s else []})
    A = a.fit_transform(TRICKY)
    B = b.fit_transform(cuml_ready(TRICKY, 'english'))
    assert a.vocabulary_ == b.vocabulary_
    assert (A != B).nnz == 0
    assert {'s', 'm', 'l', '2', '1', 'c', 'b'} <= set(a.vocabulary_) - {'a'}

def test_gpu_tfidf_cuml_branch_feeds_cuml_ready(monkeypatch):
    "The cuML branch hands cuML the CPU tokens, an identity preprocessor and no stop words (stand-in cuML records them)."
    seen = {}
    class FakeCuTfidf:
        def __init__(self, **params): seen['params'] = params
        def fit_transform(self, docs):
            seen['docs'] = list(docs)
            return types.SimpleNamespace(get=lambda: sp.csr_matrix((len(docs), 1), dtype=np.float32))
    text = types.ModuleType('cuml.feature_extraction.text')
    text.TfidfVectorizer = FakeCuTfidf
    cudf = types.ModuleType('cudf')
    cudf.Series = list
    for name, mod in [('cudf', cudf), ('cuml', types.ModuleType('cuml')),
                      ('cuml.feature_extraction', types.ModuleType('cuml.feature_extraction')),
                      ('cuml.feature_extraction.text', text)]:
        monkeypatch.setitem(sys.modules, name, mod)
    X = tfidf_features(TRICKY[:3], 'word', backend='cuml')
    assert X.shape == (3, 1)
    assert seen['docs'] == cuml_ready(TRICKY[:3], 'english')
    p = seen['params']
    assert 'stop_words' not in p and 'token_pattern' not in p and 'dtype' not in p
    assert p['preprocessor']('Ab  C') == 'Ab  C' and p['lowercase'] is False and p['delimiter'] == ' '

# --- 4. fast inference: decoding in threads, in order --------------------------------------------------------------

def test_gpu_decode_parallel_equals_serial(sample_dir):
    from shopee_nb.embeddings import images_to_batch
    paths = sorted(str(p) for p in (sample_dir/'train_images').glob('*.jpg'))[:24] + [str(sample_dir/'missing.jpg')]
    bad_serial, bad_parallel = [], []
    serial = images_to_batch(paths, 64, bad_serial, workers=0)
    parallel = images_to_batch(paths, 64, bad_parallel, workers=4)
    np.testing.assert_array_equal(serial, parallel)
    assert bad_serial == bad_parallel and len(bad_serial) == 1 and serial[:-1].any(axis=(1, 2, 3)).all()

def test_gpu_map_ordered_bounded_and_ordered():
    import threading, time
    from shopee_nb.core import map_ordered
    started, lock = [], threading.Lock()
    def f(x):
        with lock: started.append(x)
        time.sleep(0.002 * (x % 4))
        return -x
    g = map_ordered(f, range(200), workers=3, window=5)
    assert [next(g) for _ in range(3)] == [0, -1, -2]
    time.sleep(0.05)
    assert len(started) <= 5 + 3
    assert list(g) == [-x for x in range(3, 200)]

def test_gpu_stage_time_table():
    from shopee_nb.matching import stage_time_table
    t = stage_time_table({'decode': 0.014, 'topk': 1e-4}, 70_000, measured_at={'topk': 7_000}, workers={'decode': 4})
    s = t.set_index('stage')['seconds']
    assert s['decode'] == pytest.approx(245.0) and s['topk'] == pytest.approx(70.0) and s['total'] == pytest.approx(315.0)

# --- the GPU benchmark's own CPU twin ------------------------------------------------------------------------------

def test_gpu_bench_script_runs_at_smoke_size(tmp_path):
    "benchmarks/bench_gpu.py (run on a GPU machine for the report) runs end to end at toy sizes on the CPU."
    import json, subprocess
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    out = tmp_path/'bench.json'
    r = subprocess.run([sys.executable, str(root/'benchmarks'/'bench_gpu.py'), '--smoke', '--parts', 'env,topk,costs',
                        '--json', str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert not any('error' in v for v in res.values()), res
    assert res['topk']['numpy_seconds_at_n'] > 0
    costs = res['costs']['ms_per_posting']
    assert costs['eca_nfnet_l0 + Mish 512px embed'] > 0 and costs['BERT-large 70 tokens embed'] > 0

# --- pair features on the array module of the GPU path -------------------------------------------------------------

def _neighbours_with_gaps(n=200, k=12, seed=5):
    rng = np.random.default_rng(seed)
    idx = np.stack([rng.permutation(n)[:k] for _ in range(n)]).astype(np.int32)
    sim = np.sort(rng.random((n, k)).astype(np.float32), axis=1)[:, ::-1].copy()
    idx[rng.random((n, k)) < 0.1] = -1                      # padded slots (fewer than k neighbours)
    return Neighbours(idx, sim)

def test_gpu_pair_features_neighbour_lookup_same_on_xp():
    from shopee_nb.ensemble import neighbour_lookup
    nb = _neighbours_with_gaps()
    rows, slots = np.nonzero(nb.idx[:25] >= 0)                # pairs that are in the lists, at known positions
    rng = np.random.default_rng(1)
    I = np.r_[rows, rng.integers(0, 200, 5000)]
    J = np.r_[nb.idx[rows, slots], rng.integers(0, 200, 5000)]
    r_np, s_np = neighbour_lookup(nb, I, J)
    r_xp, s_xp = neighbour_lookup(nb, I, J, _numpy_module_as_cupy())
    np.testing.assert_array_equal(r_np, r_xp)
    np.testing.assert_array_equal(s_np, s_xp)
    np.testing.assert_array_equal(r_np[:len(rows)], slots)
    np.testing.assert_array_equal(s_np[:len(rows)], nb.sim[rows, slots])
    assert np.isnan(s_np[r_np == 12]).all()                   # absent: rank k, no similarity

def test_gpu_pair_features_cosine_same_on_xp():
    from shopee_nb.ensemble import pair_cosine
    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 16)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    I, J = rng.integers(0, 300, 2000), rng.integers(0, 300, 2000)
    expect = (X[I] * X[J]).sum(1)
    np.testing.assert_allclose(pair_cosine(X, I, J, chunk=333), expect, atol=1e-6)
    on_xp = pair_cosine(X, I, J, chunk=333, xp=_numpy_module_as_cupy())
    np.testing.assert_array_equal(on_xp, pair_cosine(X, I, J, chunk=333))
    np.testing.assert_allclose(pair_cosine(sp.csr_matrix(X), I, J, chunk=333), expect, atol=1e-6)

def test_gpu_xp_only_where_rapids_works(monkeypatch):
    import shopee_nb.ensemble as E
    fake = _numpy_module_as_cupy()
    monkeypatch.setitem(sys.modules, 'cupy', fake)
    on = Backends(n_gpus=1, rapids=True, tf=False, torch=True, timm=True, faiss=False, sparse_dot_topn=False)
    off = Backends(n_gpus=1, rapids=False, tf=False, torch=True, timm=True, faiss=False, sparse_dot_topn=False)
    monkeypatch.setattr(E, 'backends', lambda: on)
    assert E.gpu_xp() is fake
    monkeypatch.setattr(E, 'backends', lambda: off)
    assert E.gpu_xp() is np
