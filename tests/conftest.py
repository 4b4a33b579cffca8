"Shared fixtures: the evaluation data beside the repo (../shared/data), skipped with a reason when absent."
import os
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]

def _shared(name):
    p = ROOT.parent/'shared'/'data'/name
    return p if p.is_dir() else None

@pytest.fixture(scope='session')
def shopee_dir():
    p = _shared('shopee')
    if p is None: pytest.skip('../shared/data/shopee is absent (evaluation data lives beside the repo, never in it)')
    return p

@pytest.fixture(scope='session')
def grocery_dir():
    p = _shared('grocery')
    if p is None: pytest.skip('../shared/data/grocery is absent (evaluation data lives beside the repo, never in it)')
    return p

@pytest.fixture(scope='session')
def sample_dir(tmp_path_factory):
    "A small generated sample in Kaggle layout."
    from shopee_nb.data import make_sample
    return make_sample(tmp_path_factory.mktemp('sample'), n_products=24, seed=3)
