"The hand-written English titles set (tests/data/english_titles): layout, groups, hard negatives, and that it loads."
import itertools, re, warnings
from pathlib import Path
import pandas as pd
from shopee_nb.data import load_postings

FOLDER = Path(__file__).resolve().parent/'data'/'english_titles'
COLUMNS = ['posting_id', 'image', 'image_phash', 'title', 'label_group']

def _raw():
    return pd.read_csv(FOLDER/'train.csv', dtype={'posting_id': str, 'image': str, 'title': str},
                       keep_default_na=False)

def _tokens(title):
    return set(re.findall(r'\w+', title.lower()))

def _jaccard(a, b):
    return len(a & b) / len(a | b)

def test_columns_and_ids():
    df = _raw()
    assert list(df.columns) == COLUMNS
    assert df.posting_id.is_unique
    assert not df.posting_id.str.contains(r'\s').any()
    assert (df.image_phash == '').all()
    assert df.image.str.fullmatch(r'en_\d{4}\.jpg').all()
    assert (df.title.str.strip() != '').all()
    assert pd.api.types.is_integer_dtype(df.label_group)

def test_group_sizes():
    df = _raw()
    sizes = df.label_group.value_counts()
    assert sizes.min() >= 2, sizes[sizes < 2]
    assert sizes.max() <= 6, sizes[sizes > 6]
    assert len(sizes) >= 60, len(sizes)
    assert len(df) >= 250, len(df)

def test_no_title_in_two_groups():
    "The same title under two labels would be a labelling mistake, not a hard negative."
    df = _raw()
    per_title = df.assign(t=df.title.str.lower().str.strip()).groupby('t').label_group.nunique()
    assert (per_title == 1).all(), per_title[per_title > 1]

def test_hard_negatives():
    "At least 15 pairs of groups have titles sharing >= 50% of their word tokens (Jaccard of some cross pair)."
    df = _raw()
    toks = {g: [_tokens(t) for t in d.title] for g, d in df.groupby('label_group')}
    hard = [(a, b) for a, b in itertools.combinations(toks, 2)
            if max(_jaccard(x, y) for x in toks[a] for y in toks[b]) >= 0.5]
    assert len(hard) >= 15, len(hard)

def test_loads_with_load_postings():
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')   # no images exist: load_postings warns that they are absent
        df = load_postings(FOLDER, 'train')
    raw = _raw()
    assert len(df) == len(raw)
    assert not df.has_image.any()
    assert df.label_group.dtype == 'int64'
    assert (df.title == raw.title).all()
