"""The offline Kaggle notebooks (kaggle/train.ipynb, kaggle/infer.ipynb) run end to end at smoke size on the CPU
against the generated sample: per-model fits, resuming, merging, matching, a valid submission.csv."""
import json, os, subprocess, sys, time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
KAGGLE = ROOT/'kaggle'

def run_notebook(name: str, params: dict, cwd: Path, timeout: int = 170) -> str:
    "Execute kaggle/`name` with its parameters cell replaced by `params`; return the text it printed."
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(KAGGLE/name, as_version=4)
    cells = [c for c in nb.cells if 'parameters' in c.metadata.get('tags', [])]
    assert len(cells) == 1, f'{name}: one cell tagged "parameters" expected'
    known = {line.split('=')[0].strip() for line in cells[0].source.splitlines() if '=' in line and not line.startswith(' ')}
    assert set(params) <= known, f'{name}: unknown parameters {set(params) - known}'
    cells[0].source += '\n' + '\n'.join(f'{k} = {v!r}' for k, v in params.items())
    NotebookClient(nb, timeout=timeout, kernel_name='python3', resources={'metadata': {'path': str(cwd)}}).execute()
    return '\n'.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code' for o in c.outputs)

@pytest.fixture(scope='module')
def kaggle_env(tmp_path_factory):
    "A sample in Kaggle layout, a weights folder with a stand-in Keras file, and HOME/PATH for the kernels."
    tmp = tmp_path_factory.mktemp('kaggle')
    subprocess.run([sys.executable, '-m', 'shopee_nb', 'sample', str(tmp/'data'), '--products', '24'], check=True,
                   capture_output=True)
    (tmp/'home').mkdir()
    (tmp/'weights'/'keras').mkdir(parents=True)
    (tmp/'weights'/'keras'/'efficientnet-b3_weights_tf_dim_ordering_tf_kernels_autoaugment_notop.h5').write_bytes(b'stand-in')
    saved = {k: os.environ.get(k) for k in ('HOME', 'PATH', 'SHOPEE_FORCE_CPU')}
    os.environ['HOME'] = str(tmp/'home')                         # the kernels' ~/.keras is the test's own
    os.environ['PATH'] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    os.environ['SHOPEE_FORCE_CPU'] = '1'
    yield tmp
    for k, v in saved.items():
        if v is None: os.environ.pop(k, None)
        else: os.environ[k] = v

TRAIN = lambda tmp: dict(DATA=str(tmp/'data'), WHEELS=None, WEIGHTS=str(tmp/'weights'), OUT=str(tmp/'working'),
                         PROFILE='smoke', MODELS={'text': 'tfidf-word,tfidf-char,phash', 'model2': 'phash,model2'},
                         HOURS=1, INSTALL=False)

def test_kaggle_train_per_model_then_resume(kaggle_env):
    tmp = kaggle_env
    t0 = time.time()
    out = run_notebook('train.ipynb', TRAIN(tmp), tmp)
    first = time.time() - t0
    for run in ('text', 'model2'): assert (tmp/'working'/'runs'/run/'model.json').is_file()
    assert (tmp/'working'/'model'/'model.json').is_file()
    assert (tmp/'home'/'.keras'/'models'/'efficientnet-b3_weights_tf_dim_ordering_tf_kernels_autoaugment_notop.h5').read_bytes() == b'stand-in'
    assert 'model written to' in out
    out = run_notebook('train.ipynb', TRAIN(tmp), tmp)       # a second session: nothing is refitted
    assert 'text: fitted already' in out and 'model2: fitted already' in out
    print(f'train.ipynb at smoke size: {first:.0f} s')

def test_kaggle_infer_writes_submission(kaggle_env):
    tmp = kaggle_env
    if not (tmp/'working'/'model'/'model.json').is_file():
        run_notebook('train.ipynb', TRAIN(tmp), tmp)
    run_notebook('infer.ipynb', dict(DATA=str(tmp/'data'), WHEELS=None, WEIGHTS=str(tmp/'weights'),
                                     MODEL=str(tmp/'working'/'model'), OUT=str(tmp/'submission.csv'),
                                     PROFILE='smoke', CACHE=str(tmp/'cache'), INSTALL=False), tmp)
    sub = pd.read_csv(tmp/'submission.csv')
    test = pd.read_csv(tmp/'data'/'test.csv')
    assert set(sub.posting_id) == set(test.posting_id)
    assert all(p in m.split() for p, m in zip(sub.posting_id, sub.matches))

def test_kaggle_notebooks_have_no_outputs_and_local_paths_only():
    for name in ('train.ipynb', 'infer.ipynb'):
        nb = json.loads((KAGGLE/name).read_text())
        assert all(not c.get('outputs') for c in nb['cells'] if c['cell_type'] == 'code')
        text = ''.join(''.join(c['source']) for c in nb['cells'])
        assert 'https://' not in text and 'http://' not in text     # nothing is fetched from the internet
        assert "'--no-index', '--find-links'" in text

def test_kaggle_train_interrupts_a_fit_at_its_time_limit(tmp_path, monkeypatch):
    "train.ipynb's helper stops a fit at `timeout` with Ctrl-C, so the fit records its seconds (06): not a kill."
    import nbformat
    nb = nbformat.read(KAGGLE/'train.ipynb', as_version=4)
    ns = {}
    helper = [c.source for c in nb.cells if c.cell_type == 'code' and 'def shopee_nb(' in c.source]
    imports = [c.source for c in nb.cells if c.cell_type == 'code' and c.source.startswith('import os')]
    for src in imports + helper: exec(src, ns)
    fake = tmp_path/'shopee_nb'                   # `python -m shopee_nb` run from tmp_path finds this one first
    fake.mkdir()
    (fake/'__init__.py').write_text('')
    (fake/'__main__.py').write_text(
        "import sys, time\n"
        "open('started', 'w').close()\n"
        "try:\n"
        "    time.sleep(60)\n"
        "except KeyboardInterrupt:\n"
        "    open('interrupted', 'w').close()\n"
        "    sys.exit(130)\n")
    monkeypatch.chdir(tmp_path)
    t0 = time.time()
    with pytest.raises(subprocess.TimeoutExpired):
        ns['shopee_nb']('fit', 'data', timeout=3)
    assert (tmp_path/'started').is_file() and (tmp_path/'interrupted').is_file()
    assert time.time() - t0 < 30
