"""Token cache: a second call loads instead of tokenizing; keys change with every input."""

from __future__ import annotations

import numpy as np
import pytest
from _data_helpers import TWEETS, read_train, shared_dir, tokenizer

from lora_tasks.data.competition import load_competition
from lora_tasks.data.token_cache import cache_key, tokenize_cached
from lora_tasks.data.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tweets():
    cfg = load_competition(TWEETS, shared_dir())
    frame = read_train(TWEETS).head(400)
    template = cfg.row_template(frame)
    return template.render_frame(frame), template.fingerprint()


def test_second_call_loads_from_disk(tweets, tmp_path):
    texts, template = tweets
    first = tokenize_cached(texts, tokenizer(), max_len=64, cache_dir=tmp_path, template=template)
    assert not first.from_cache and first.path.is_file() and first.path.parent == tmp_path
    stamp = first.path.stat().st_mtime_ns
    second = tokenize_cached(texts, tokenizer(), max_len=64, cache_dir=tmp_path, template=template)
    assert second.from_cache and second.key == first.key and second.path == first.path
    assert first.path.stat().st_mtime_ns == stamp  # not rewritten
    for a, b in zip(
        (first.encoded.input_ids, first.encoded.attention_mask, first.encoded.token_type_ids, first.lengths),
        (second.encoded.input_ids, second.encoded.attention_mask, second.encoded.token_type_ids, second.lengths),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.path.name]  # no temp files left


def test_arrays_equal_direct_tokenization(tweets, tmp_path):
    texts, template = tweets
    cached = tokenize_cached(texts, tokenizer(), max_len=32, cache_dir=tmp_path, template=template)
    direct = tokenizer()(texts, max_length=32, padding="longest")
    np.testing.assert_array_equal(cached.encoded.input_ids, direct.input_ids)
    np.testing.assert_array_equal(cached.encoded.attention_mask, direct.attention_mask)
    np.testing.assert_array_equal(cached.lengths, np.minimum(tokenizer().lengths(texts), 32))
    assert cached.encoded.input_ids.shape == (len(texts), int(cached.lengths.max())) and len(cached) == len(texts)


def test_key_depends_on_texts_tokenizer_max_len_and_template(tweets, fixtures_dir):
    texts, template = tweets
    tok = tokenizer()
    base = cache_key(texts, tok, 64, template)
    assert base == cache_key(list(texts), tok, 64, template)
    assert base != cache_key(texts, tok, 128, template)
    assert base != cache_key(texts, tok, 64, template + "x")
    assert base != cache_key(texts[:-1], tok, 64, template)
    assert base != cache_key(texts[::-1], tok, 64, template)
    assert cache_key(["ab", "c"], tok, 8) != cache_key(["a", "bc"], tok, 8)
    other = Tokenizer.from_file(fixtures_dir / "tiny_bert_bin" / "tokenizer.json")
    assert other.fingerprint() != tok.fingerprint()  # a different vocabulary
    assert base != cache_key(texts, other, 64, template)


def test_changed_input_makes_a_new_file(tweets, tmp_path):
    texts, template = tweets
    a = tokenize_cached(texts, tokenizer(), max_len=64, cache_dir=tmp_path, template=template)
    b = tokenize_cached(texts, tokenizer(), max_len=48, cache_dir=tmp_path, template=template)
    assert not b.from_cache and a.path != b.path and b.lengths.max() <= 48
    assert len(list(tmp_path.glob("tokens-*.npz"))) == 2


def test_corrupt_file_is_retokenized(tweets, tmp_path):
    texts, template = tweets
    first = tokenize_cached(texts, tokenizer(), max_len=64, cache_dir=tmp_path, template=template)
    first.path.write_bytes(b"not a zip file")
    again = tokenize_cached(texts, tokenizer(), max_len=64, cache_dir=tmp_path, template=template)
    assert not again.from_cache
    np.testing.assert_array_equal(again.encoded.input_ids, first.encoded.input_ids)
    assert tokenize_cached(texts, tokenizer(), max_len=64, cache_dir=tmp_path, template=template).from_cache
