"""Length-bucketed batches: every row once, trimmed arrays, seeded order, less padding."""

from __future__ import annotations

import numpy as np
import pytest
from _data_helpers import TWEETS, read_train, shared_dir, tokenizer

from lora_tasks.data.batching import bucket_indices, iter_batches, padding_report
from lora_tasks.data.competition import load_competition
from lora_tasks.data.token_cache import tokenize_cached


@pytest.fixture(scope="module")
def tweets(tmp_path_factory):
    cfg = load_competition(TWEETS, shared_dir())
    frame = read_train(TWEETS).head(1500)
    template = cfg.row_template(frame)
    return tokenize_cached(
        template.render_frame(frame), tokenizer(), max_len=128, cache_dir=tmp_path_factory.mktemp("tok"), template=template.fingerprint()
    )


def test_every_row_once_and_arrays_trimmed(tweets):
    enc, lengths = tweets.encoded, tweets.lengths
    batches = list(iter_batches(enc, lengths, 32, seed=3))
    seen = np.concatenate([b.indices for b in batches])
    assert sorted(seen.tolist()) == list(range(len(lengths)))
    assert [len(b) for b in batches].count(32) == len(lengths) // 32
    for b in batches:
        width = int(lengths[b.indices].max())
        assert b.input_ids.shape == (len(b), width)
        np.testing.assert_array_equal(b.input_ids, enc.input_ids[b.indices, :width])
        np.testing.assert_array_equal(b.attention_mask.sum(axis=1), lengths[b.indices])
        assert b.token_type_ids.shape == b.input_ids.shape
    global_max = int(lengths.max())
    assert sum(b.input_ids.shape[1] < global_max for b in batches) > len(batches) // 2  # not padded to the maximum


def test_seeded_and_deterministic(tweets):
    lengths = tweets.lengths
    a = bucket_indices(lengths, 32, seed=7)
    b = bucket_indices(lengths, 32, seed=7)
    c = bucket_indices(lengths, 32, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_batches_are_tight_but_order_is_random(tweets):
    lengths = tweets.lengths
    batches = bucket_indices(lengths, 32, seed=0, chunk_batches=10)
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    order = np.random.default_rng(0).permutation(len(lengths))
    random_spread = np.mean([np.ptp(lengths[order[s : s + 32]]) for s in range(0, len(order), 32)])
    assert spread < random_spread / 2
    maxima = [int(lengths[b].max()) for b in batches]
    assert maxima != sorted(maxima)  # batches are shuffled, not served shortest-first


def test_unshuffled_is_globally_sorted(tweets):
    lengths = tweets.lengths
    order = np.concatenate(bucket_indices(lengths, 50, shuffle=False))
    assert np.all(np.diff(lengths[order]) >= 0)


def test_drop_last_and_errors(tweets):
    lengths = tweets.lengths
    kept = bucket_indices(lengths, 64, seed=0, drop_last=True)
    assert all(len(b) == 64 for b in kept) and len(kept) == len(lengths) // 64
    assert bucket_indices(np.array([], dtype=int), 8) == []
    with pytest.raises(ValueError, match="batch_size"):
        bucket_indices(lengths, 0)
    with pytest.raises(ValueError, match="lengths"):
        next(iter_batches(tweets.encoded, lengths[:-1], 8))


def test_padding_report_on_real_tweets(tweets):
    lengths = tweets.lengths
    r = padding_report(lengths, 32, seed=0)
    assert r.rows == len(lengths) and r.real_tokens == int(lengths.sum())
    assert r.global_max_tokens == len(lengths) * int(lengths.max())
    assert r.real_tokens <= r.bucketed_tokens < r.random_dynamic_tokens < r.global_max_tokens
    assert 0 < r.saved_vs_random < r.saved_vs_global_max < 1
    assert r.bucketed_efficiency > 0.9  # bucketed batches are nearly all real tokens
    capped = padding_report(lengths, 32, max_len=16)
    assert capped.real_tokens == int(np.minimum(lengths, 16).sum())


def test_forward_batches_cap_rows_and_tokens():
    """Prediction and the frozen prefix: every row once, longest first, at most max_rows rows and
    max_tokens tokens at the batch's longest row (one row even when that row alone is over)."""
    from lora_tasks.data.batching import FORWARD_TOKENS, forward_batches

    lengths = np.array([512] * 40 + [256] * 70 + [40] * 130 + [900])
    batches = forward_batches(lengths, max_rows=64)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    longest = [int(lengths[b].max()) for b in batches]
    assert longest == sorted(longest, reverse=True)
    assert all(len(b) * w <= FORWARD_TOKENS for b, w in zip(batches, longest, strict=True))
    assert [len(b) for b in batches[:2]] == [FORWARD_TOKENS // 900, FORWARD_TOKENS // 512]  # 18, then 32
    assert max(len(b) for b in batches) == 64  # short rows fill the row cap
    assert forward_batches(np.array([5000]), max_rows=64, max_tokens=1000)[0].tolist() == [0]
    with pytest.raises(ValueError, match="max_rows=0"):
        forward_batches(lengths, max_rows=0)
