"Title normalisation (shopee_nb.nlp) on real-looking Indonesian, English, mixed and empty titles."
import time
import pytest
from shopee_nb.nlp import (normalize_titles, normalize_title, normalize_unicode, unescape_bytes, strip_punct,
                           split_units, tokenize, stop_words, stem_token, lemmatize_token, sastrawi_stemmer, STOP_ID)

ID = 'Sabun Mandi Cair untuk Keluarga dengan Wangi yang Menyegarkan 250 ml'
EN = 'Headphone Bluetooth NIA X2 - Wireless Calls &amp; Music, Tf Card, FM'
ESC = 'Nescafe \\xc3\\x89clair Latte 220ml'          # a literal byte escape, as in train.csv
EMOJI = '\\xe2\\x9d\\xa4 RATU \\xe2\\x9d\\xa4 MAYCREATE MOISTURIZING SPRAY 150ML ORIGINAL'

def test_unicode_repair():
    assert unescape_bytes(ESC) == 'Nescafe Éclair Latte 220ml'
    assert normalize_unicode(ESC) == 'Nescafe Eclair Latte 220ml'
    assert normalize_unicode(EN).startswith('Headphone Bluetooth NIA X2 - Wireless Calls & Music')
    assert normalize_unicode('ＳＡＭＰＯ ５００ｍｌ') == 'SAMPO 500ml'
    assert unescape_bytes('\\xe2\\x9d') == ''  # truncated UTF-8 dropped, no crash

def test_text_steps():
    assert strip_punct('Leher Kancing (DPT001-00)') == 'Leher Kancing DPT001 00'
    assert split_units('220ml 0,5L') == '220 ml 0,5 L'
    assert tokenize('') == [] and tokenize(' a  b ') == ['a', 'b']

def test_defaults_indonesian_english_empty():
    out = normalize_titles([ID, EN, ESC, EMOJI, ''])
    assert out[0] == 'sabun mandi cair keluarga wangi segar 250 ml'
    assert out[1] == 'headphon bluetooth nia x 2 wireless call music tf card fm'
    assert out[2] == 'nescaf eclair latt 220 ml'
    assert out[3] == 'ratu maycreat moistur spray 150 ml origin'
    assert out[4] == ''

def test_readable_setting_and_all_off():
    assert normalize_title(ID, stem=None, units=False) == 'sabun mandi cair keluarga wangi menyegarkan 250 ml'
    off = dict(lower=False, unicode=False, punct=False, units=False, stop=None, stem=None, lemma=False)
    assert normalize_titles([ID, '  '], **off) == [ID, '']

def test_missing_values_become_empty():
    assert normalize_titles([None, float('nan'), '!!!', '\\xe2\\x9d\\xa4']) == ['', '', '', '']

def test_stop_words():
    sw = stop_words('en+id')
    assert {'dan', 'untuk', 'yang', 'the', 'and'} <= sw and 'sabun' not in sw and 'dua' not in sw
    assert stop_words(None) == frozenset() and stop_words('id') == STOP_ID
    assert normalize_title('Tas Selempang untuk Wanita', stop='id', lower=False, stem=None) == 'Tas Selempang Wanita'

def test_stemmers_and_lemmas():
    assert stem_token('menyegarkan', 'sastrawi') == 'segar'
    assert stem_token('kancing', 'both') == 'kancing'      # an Indonesian root: Snowball must not cut it
    assert stem_token('wheels', 'both') == 'wheel'
    assert stem_token('220ml', 'both') == '220ml'
    assert lemmatize_token('bottles') == 'bottle' and lemmatize_token('mencari') == 'cari'
    assert lemmatize_token('') == ''

def test_fast_sastrawi_matches_stock():
    from Sastrawi.Stemmer.StemmerFactory import StemmerFactory
    stock = StemmerFactory().create_stemmer()
    for w in ['pencetak', 'berbahasa', 'keamanan']:
        assert sastrawi_stemmer().stem(w) == stock.stem(w)

@pytest.mark.parametrize('kw,msg', [
    (dict(stem='porter'), 'stem must be None'),
    (dict(stop='english'), 'stop must be'),
    (dict(stop=3), 'stop must be'),
    (dict(lower='yes'), 'lower must be True or False'),
    (dict(lemma=1), 'lemma must be True or False'),
])
def test_bad_options(kw, msg):
    with pytest.raises(ValueError, match=msg):
        normalize_titles([ID], **kw)

def test_one_string_is_refused():
    with pytest.raises(ValueError, match='not one string'):
        normalize_titles(ID)

def test_many_titles_fast():
    titles = [ID, EN, ESC, EMOJI, ''] * 2000
    t0 = time.perf_counter()
    out = normalize_titles(titles)
    assert len(out) == len(titles) and out[4] == ''
    assert time.perf_counter() - t0 < 5
