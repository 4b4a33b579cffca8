"""Property-based robustness: whatever a user's CSV holds, and however a model folder is tampered with, `shopee_nb match`
ends in one of two ways -- a valid submission (exit code 0) or one line on stderr starting `shopee_nb` (exit code 2).
Never an escaping exception, a traceback, a partial or temporary file left behind, or a changed input file.

The command line is driven in-process (`shopee_nb.cli.main`) so that each example costs well under a second; the model
matched with is a text + phash fit made once per session at smoke size, so no CNN runs per example.
"""
import hashlib, io, json, math, re, shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

hypothesis = pytest.importorskip('hypothesis')
from hypothesis import HealthCheck, event, given, settings, strategies as st

from shopee_nb.cli import main

TEXT = [dict(name=n, params={}) for n in ['tfidf-word', 'tfidf-char', 'phash']]
REQUIRED = ['posting_id', 'image', 'image_phash', 'title']
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
                derandomize=True)

@pytest.fixture(scope='module')
def world(tmp_path_factory):
    "A smoke-size text + phash fit, the sample it was fitted on, and the environment every example runs in."
    from shopee_nb.core import get_config
    from shopee_nb.data import load_postings, make_sample
    from shopee_nb.ensemble import fit_model
    root = tmp_path_factory.mktemp('props')
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('SHOPEE_PROFILE', 'smoke')
        mp.setenv('SHOPEE_CACHE', str(root/'cache'))
        mp.delenv('SHOPEE_NB_DEBUG', raising=False)
        sample = make_sample(root/'sample', n_products=12, seed=4)
        cfg = get_config('smoke', cache=root/'cache')
        fit_model(load_postings(sample, 'train'), cfg, root/'run', TEXT, n_folds=2, log=lambda *a: None)
        yield dict(root=root, sample=sample, run=root/'run')

def digest(folder: Path) -> dict:
    "sha256 of every file under `folder` (by relative path): the inputs before and after a command."
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob('*')) if p.is_file()}

def check_outcome(rc: int, err: str, out: Path, ids=None):
    "Exit 2 with exactly one error line, or exit 0 with a valid submission; never a partial or temporary file."
    assert rc in (0, 2), rc
    assert 'Traceback' not in err, err
    leftovers = [p.name for p in out.parent.iterdir() if p.name != out.name]
    assert not leftovers, leftovers
    if rc == 2:
        lines = [l for l in err.splitlines() if l.startswith('shopee_nb')]
        assert len(lines) == 1 and err.rstrip('\n').splitlines()[-1] == lines[0], err
        assert not out.exists(), 'a failed command left a submission behind'
        return None
    sub = pd.read_csv(out, dtype=str, keep_default_na=False, encoding='utf-8')
    assert list(sub.columns) == ['posting_id', 'matches']
    assert sub.posting_id.is_unique
    if ids is not None: assert sorted(sub.posting_id) == sorted(ids)
    known = set(sub.posting_id)
    for pid, m in zip(sub.posting_id, sub.matches):
        toks = m.split(' ')
        assert toks[0] == pid and len(toks) <= 50 and len(set(toks)) == len(toks) and set(toks) <= known, (pid, m)
    return sub

def run_match(capsys, data: Path, run: Path, out: Path, *extra, record=True):
    "`shopee_nb match` in-process; returns the exit code and stderr (and tells hypothesis's statistics which it was)."
    capsys.readouterr()
    rc = main(['match', str(data), '--run', str(run), '--out', str(out), '--split', 'test', *extra])
    err = capsys.readouterr().err
    if record:
        last = err.strip().splitlines()[-1] if err.strip() else ''
        event(f'exit code {rc}' + (': ' + re.sub(r"\S*/\S*", '…', last)[:60] if rc == 2 else ''))
    return rc, err

# ---------------------------------------------------------------- CSV contents
SAFE_IMAGES = ['a.jpg', 'b.jpg', 'not_an_image.jpg', 'zero.jpg', 'folder.jpg', 'absent.jpg', 'sub/../a.jpg', '', ' a.jpg ']
IMAGES = SAFE_IMAGES + ['../x.jpg', '../../etc/passwd', '/etc/passwd', '~/a.jpg', 'C:\\a.jpg']

def image_folder(folder: Path):
    "A test_images/ with two photos, a text file named .jpg, a 0-byte file and a folder named like an image."
    d = folder/'test_images'; d.mkdir(parents=True)
    Image.new('RGB', (24, 24), (200, 30, 30)).save(d/'a.jpg')
    Image.new('RGB', (24, 24), (30, 30, 200)).save(d/'b.jpg')
    (d/'not_an_image.jpg').write_text('hello')
    (d/'zero.jpg').write_bytes(b'')
    (d/'folder.jpg').mkdir()

ids = st.one_of(st.text(max_size=10), st.sampled_from(['p1', 'p2', 'p1', '', ' ', 'a b', ' p3 ', 'é', 'NA', 'null', '"q"',
                                                        'x\ty', '0', '-1', '1e5']))
titles = st.one_of(st.text(max_size=40), st.sampled_from(['', ' ', 'Kaos Polos', 'kaos polos', 'x' * 3000, '\x00\x01',
                                                           '😀🔥', 'NaN', 'None', '=cmd|', '\r\n']))
phashes = st.one_of(st.from_regex(r'\A[0-9a-f]{16}\Z'), st.just('94974f937d4c2433'), st.text(max_size=20),
                    st.sampled_from(['', 'ZZZZZZZZZZZZZZZZ', '94974F937D4C2433', '0x94974f937d4c24']))
images = st.one_of(st.sampled_from(IMAGES), st.text(max_size=12))
row = st.fixed_dictionaries(dict(posting_id=ids, image=images, image_phash=phashes, title=titles))
id_suffix = st.text(st.characters(exclude_categories=('Zs', 'Zl', 'Zp', 'Cc', 'Cs')), max_size=4)

@st.composite
def rows(draw):
    "1-8 rows; most with a unique id and a safe image name, so that many examples get as far as a submission."
    out = []
    for i in range(draw(st.integers(1, 8))):
        r = draw(row)
        if draw(st.integers(0, 9)) < 8: r['posting_id'] = f'p{i}' + draw(id_suffix)
        if draw(st.integers(0, 9)) < 8: r['image'] = draw(st.sampled_from(SAFE_IMAGES))
        out.append(r)
    return out

@st.composite
def csv_files(draw):
    "The bytes of a test.csv: rows of drawn values under a header that may miss, add or reorder columns."
    kind = draw(st.sampled_from(['csv'] * 6 + ['bom', 'latin-1', 'empty', 'header', 'junk']))
    if kind == 'empty': return b''
    if kind == 'junk': return draw(st.binary(max_size=200))
    cols = list(REQUIRED)
    if draw(st.integers(0, 9)) == 0: cols.remove(draw(st.sampled_from(REQUIRED)))
    if draw(st.integers(0, 3)) == 0: cols.append(draw(st.sampled_from(['label_group', 'price', 'Title', 'posting_id '])))
    cols = draw(st.permutations(cols))
    body = [] if kind == 'header' else draw(rows())
    df = pd.DataFrame([{c: r.get(c.strip(), '7') for c in cols} for r in body], columns=cols)
    text = df.to_csv(index=False)
    if kind == 'bom': return '\ufeff'.encode() + text.encode('utf-8')
    if kind == 'latin-1': return text.encode('latin-1', 'replace')
    return text.encode('utf-8')

def expected_ids(raw: bytes):
    "The posting ids a valid submission must hold, read the way the library reads a CSV."
    df = pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False, encoding='utf-8', encoding_errors='replace')
    df.columns = [str(c).strip() for c in df.columns]
    return [str(s).strip() for s in df['posting_id']]

@settings(max_examples=150, **SETTINGS)
@given(raw=csv_files())
def test_any_csv_ends_in_a_submission_or_one_line_error(world, capsys, tmp_path_factory, raw):
    case = tmp_path_factory.mktemp('csv')
    data, out = case/'data', case/'out'/'submission.csv'
    data.mkdir(); out.parent.mkdir()
    image_folder(data)
    (data/'test.csv').write_bytes(raw)
    before = digest(data)
    rc, err = run_match(capsys, data, world['run'], out)
    assert digest(data) == before, 'an input file changed'
    check_outcome(rc, err, out, expected_ids(raw) if rc == 0 else None)
    shutil.rmtree(case)

# ---------------------------------------------------------------- model folders
def leaves(d, path=()):
    "Every path into a JSON document (objects and lists too), depth first."
    yield path
    if isinstance(d, dict):
        for k, v in d.items(): yield from leaves(v, path + (k,))
    elif isinstance(d, list):
        for i, v in enumerate(d): yield from leaves(v, path + (i,))

def put(d, path, value):
    "A copy of JSON document `d` with the value at `path` replaced (or removed, for `DELETE`)."
    if not path: return value
    d = json.loads(json.dumps(d))
    parent = d
    for k in path[:-1]: parent = parent[k]
    if value is DELETE: del parent[path[-1]]
    else: parent[path[-1]] = value
    return d

DELETE = object()
odd_values = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, None, True, 0, -1, 10**12, 1e308, -1e-9, '', 'x', '../x', '../../etc/passwd',
                     '/etc/passwd', '~/x', [], {}, [1, 2, 3], {'a': 1}, [[0.5]], DELETE]),
    st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.text(max_size=8),
    st.lists(st.floats(allow_nan=True), max_size=4))

@st.composite
def tamperings(draw, spec):
    "One to three changes to a model.json, and maybe a file of the folder deleted or overwritten."
    paths = list(leaves(spec))
    for _ in range(draw(st.integers(1, 3))):
        spec = put(spec, draw(st.sampled_from(paths)), draw(odd_values))
        paths = list(leaves(spec))
    return spec, draw(st.sampled_from([None, None, 'delete', 'garble', 'empty']))

@pytest.fixture(scope='module')
def spec(world): return json.loads((world['run']/'model.json').read_text())

@settings(max_examples=120, **SETTINGS)
@given(data=st.data())
def test_any_tampered_model_folder_ends_in_a_submission_or_one_line_error(world, spec, capsys, tmp_path_factory, data):
    new, file_fault = data.draw(tamperings(spec))
    case = tmp_path_factory.mktemp('model')
    run, out = case/'run', case/'out'/'submission.csv'
    shutil.copytree(world['run'], run, ignore=shutil.ignore_patterns('state'))
    out.parent.mkdir()
    (run/'model.json').write_text(json.dumps(new, indent=1))
    files = sorted(p for p in run.rglob('*') if p.is_file() and p.name != 'model.json')
    if file_fault and files:
        f = data.draw(st.sampled_from(files))
        if file_fault == 'delete': f.unlink()
        elif file_fault == 'garble': f.write_bytes(b'\x00garbled' + f.read_bytes()[:50])
        else: f.write_bytes(b'')
    inputs = digest(world['sample'])
    rc, err = run_match(capsys, world['sample'], run, out)
    assert digest(world['sample']) == inputs
    ids = pd.read_csv(world['sample']/'test.csv', dtype=str)['posting_id'].tolist()
    check_outcome(rc, err, out, ids if rc == 0 else None)
    shutil.rmtree(case)

def test_the_untampered_model_matches(world, capsys, tmp_path):
    "The baseline the properties perturb: the fitted folder itself gives a valid submission."
    (tmp_path/'out').mkdir()
    rc, err = run_match(capsys, world['sample'], world['run'], tmp_path/'out'/'submission.csv', record=False)
    assert rc == 0, err
    check_outcome(rc, err, tmp_path/'out'/'submission.csv', pd.read_csv(world['sample']/'test.csv', dtype=str)['posting_id'].tolist())

def test_titles_sharing_no_ngram(world, tmp_path):
    "Titles with no character 3-gram in common (the char preset prunes every n-gram): a submission, not a RecursionError."
    import subprocess, sys, os
    data = tmp_path/'data'; data.mkdir(); (tmp_path/'out').mkdir()
    pd.DataFrame(dict(posting_id=[f'p{i}' for i in range(6)], image='', image_phash='',
                      title=['abc', 'def', 'ghi', 'jkl', 'mno', 'pqr'])).to_csv(data/'test.csv', index=False)
    r = subprocess.run([sys.executable, '-m', 'shopee_nb', 'match', str(data), '--run', str(world['run']), '--out',
                        str(tmp_path/'out'/'submission.csv')], capture_output=True, text=True, timeout=300,
                       env={**os.environ, 'SHOPEE_PROFILE': 'smoke', 'SHOPEE_CACHE': str(world['root']/'cache')})
    assert r.returncode == 0, r.stderr[-500:]
