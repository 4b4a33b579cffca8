"The data layer on the real Shopee files and on bad input."
import warnings
import numpy as np, pandas as pd, pytest
from shopee_nb.data import (load_postings, DataError, group_targets, match_metrics, f1_score, make_folds,
                            write_submission, read_submission)

def test_real_shopee_loads(shopee_dir):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        df = load_postings(shopee_dir)
    assert len(df) == 24_078
    assert df.label_group.nunique() == 7_709
    present = df.drop_duplicates('image').has_image.sum()
    assert present == 25, present
    assert (df.title.map(type) == str).all()

def test_real_shopee_phash_f1(shopee_dir):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        df = load_postings(shopee_dir)
    f1 = f1_score(group_targets(df.image_phash), df.label_group)
    assert abs(f1 - 0.55) <= 0.01, f1
    assert abs(f1_score([[i] for i in range(len(df))], df.label_group) - 0.46) <= 0.01

def test_real_test_split(shopee_dir):
    te = load_postings(shopee_dir, 'test')
    assert len(te) == 3 and 'label_group' not in te.columns and te.has_image.all()

def test_folds_on_real_groups(shopee_dir):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        df = load_postings(shopee_dir)
    folds = make_folds(df.label_group, 5)
    assert pd.Series(folds).groupby(df.label_group.values).nunique().max() == 1
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 50  # balanced by rows

@pytest.mark.parametrize('text,err', [
    ('', 'is empty'),
    ('posting_id,image,image_phash,title,label_group\n', 'no rows'),
    ('posting_id,img,image_phash,title,label_group\na,x.jpg,0000000000000000,t,1\n', "found 'img'"),
    ('posting_id,image,image_phash,title,label_group\na,x.jpg,0000000000000000,t,1\na,y.jpg,0000000000000000,t,2\n', 'duplicate posting_id'),
    ('posting_id,image,image_phash,title,label_group\na,../../etc/passwd,0000000000000000,t,1\n', 'points outside'),
    ('posting_id,image,image_phash,title,label_group\na,/etc/passwd,0000000000000000,t,1\n', 'absolute path'),
    ('posting_id,image,image_phash,title,label_group\na,x.jpg,0000000000000000,t,\n', 'no numeric label_group'),
])
def test_bad_train_csv(tmp_path, text, err):
    (tmp_path/'train.csv').write_text(text)
    with pytest.raises(DataError, match=err.replace('(', r'\(')):
        load_postings(tmp_path)

def test_missing_folder_and_file(tmp_path):
    with pytest.raises(ValueError, match='does not exist'): load_postings(tmp_path/'nope')
    with pytest.raises(ValueError, match='test.csv not found'): load_postings(tmp_path, 'test')

def test_sample_roundtrip(sample_dir, tmp_path):
    tr = load_postings(sample_dir)
    assert tr.has_image.all() and tr.groupby('label_group').size().min() >= 2
    truth = group_targets(tr.label_group)
    assert match_metrics(truth, tr.label_group) == {'f1': 1.0, 'precision': 1.0, 'recall': 1.0}
    write_submission(tr.posting_id, truth, tmp_path/'s.csv')
    back = read_submission(tmp_path/'s.csv', tr.posting_id)
    assert f1_score(back, tr.label_group) == 1.0
