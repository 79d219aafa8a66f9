"""Fused parallel training of K adapters: forward, gradients, mixed batches, the engine, unfuse."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_unflatten

from lora_tasks.models import BertConfig
from lora_tasks.training.factory import create_bert_with_lora
from lora_tasks.training.fused_training import FusedAdapters, default_parallel_mode, predict_mixed, train_fused
from lora_tasks.training.train import TrainConfig, predict, train

TINY = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=32)
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # base dropout off: exact comparisons


def _batch(seed: int = 0, b: int = 4, s: int = 10):
    rng = np.random.default_rng(seed)
    ids = mx.array(rng.integers(5, 50, (b, s)).astype(np.int32))
    mask = np.ones((b, s), np.int32)
    mask[0, 6:] = 0
    mask[2, 3:] = 0
    return ids, mx.array(mask), mx.zeros((b, s), mx.int32)


def _models(k: int, preset="balanced", randomize=True, **overrides):
    """K single-adapter models on the same base (model 0's), with dropout 0 and distinct adapters."""
    overrides.setdefault("dropout", 0.0)
    out = []
    base = None
    for i in range(k):
        model, adapter = create_bert_with_lora(config=BertConfig(**TINY, **NO_DROPOUT), pretrained=False, seed=i,
                                               lora_preset=preset, **overrides)
        model.head.dropout = nn.Dropout(0.0)
        if base is None:
            base = [(k_, v) for k_, v in tree_flatten(model.parameters())
                    if "lora_" not in k_ and not k_.startswith("head.")]
        else:
            model.update(tree_unflatten(base))
        if randomize:
            rng = np.random.default_rng(100 + i)
            adapter.load_lora_state_dict({kk: mx.array(rng.normal(0, 0.2, v.shape).astype(np.float32))
                                          for kk, v in adapter.get_lora_state_dict().items()})
        out.append((model, adapter))
    return out


def test_forward_and_loss_match_separate_models():
    pairs = _models(3)
    fused = FusedAdapters.from_models([m for m, _ in pairs], [a for _, a in pairs])
    ids, mask, types = _batch()
    logits = fused(ids, mask, types)
    assert logits.shape == (3, 4)
    y = mx.array([0, 1, 1, 0])
    separate = [m.loss(m(ids, mask, types), y) for m, _ in pairs]
    for i, (m, _) in enumerate(pairs):
        np.testing.assert_allclose(np.array(logits[i]), np.array(m(ids, mask, types)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fused.loss(logits, y).item(), sum(s.item() for s in separate), rtol=1e-5)
    # the adapters differ, so a broken slice assignment would be caught
    assert not np.allclose(np.array(logits[0]), np.array(logits[1]))


def test_fused_gradients_equal_separate_gradients():
    pairs = _models(3, preset="balanced")
    fused = FusedAdapters.from_models([m for m, _ in pairs], [a for _, a in pairs])
    ids, mask, types = _batch(1)
    y = mx.array([1, 0, 1, 1])
    _, g_fused = nn.value_and_grad(fused, lambda f: f.loss(f(ids, mask, types), y))(fused)
    g_fused = dict(tree_flatten(g_fused))
    n_layer_grads = 0
    for i, (m, _) in enumerate(pairs):
        _, g = nn.value_and_grad(m, lambda mm: mm.loss(mm(ids, mask, types), y))(m)
        for key, value in tree_flatten(g):
            if key.startswith("head."):
                got = g_fused[f"heads.{i}.{key[5:]}"]
            else:
                path, attr = key.rsplit(".", 1)  # ...query.lora_a
                got = g_fused[f"model.{path}.{attr}"][i]
                n_layer_grads += 1
            assert float(mx.abs(value).max()) > 0
            np.testing.assert_allclose(np.array(got), np.array(value), rtol=1e-4, atol=1e-6, err_msg=key)
    assert n_layer_grads == 3 * 8 * 2  # K x (4 attention linears x 2 layers) x (A, B)
    # nothing but adapters and heads gets a gradient: the base is frozen and computed once
    assert all(".lora_" in k or k.startswith("heads.") for k in g_fused)


def test_incompatible_adapters_are_refused():
    a = _models(1, preset="balanced", randomize=False)[0]
    b = _models(1, preset="efficient", randomize=False)[0]
    with pytest.raises(ValueError, match="same rank and the same target layers"):
        FusedAdapters.from_models([a[0], b[0]], [a[1], b[1]])
    c = _models(1, preset="balanced", randomize=False, r=4)[0]
    with pytest.raises(ValueError, match="rank r=4"):
        FusedAdapters.from_models([a[0], c[0]], [a[1], c[1]])
    d, d_ad = create_bert_with_lora(config=BertConfig(**TINY, **NO_DROPOUT), pretrained=False, seed=7, lora_preset="balanced")
    with pytest.raises(ValueError, match="other base weights"):
        FusedAdapters.from_models([a[0], d], [a[1], d_ad])


def test_mixed_batch_inference_gathers_each_rows_adapter():
    pairs = _models(3)
    fused = FusedAdapters.from_models([m for m, _ in pairs], [a for _, a in pairs])
    ids, mask, types = _batch(2, b=6)
    index = np.array([2, 0, 1, 1, 0, 2])
    got = np.array(fused.mixed(ids, mask, types, index))
    for row, k in enumerate(index):
        expected = np.array(pairs[k][0](ids, mask, types))[row]
        np.testing.assert_allclose(got[row], expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="adapter_index values"):
        fused.mixed(ids, mask, types, [0, 1, 2, 3, 0, 0])


def test_engine_trains_fused_like_separately_and_unfuses():
    from tests._tiny import toy_data

    data = toy_data(96, seed=0)
    valid = toy_data(32, seed=1)
    cfg = TrainConfig(epochs=2, batch_size=16, learning_rate=5e-3, grad_clip=None, early_stopping_patience=None,
                      seed=0)
    fused_pairs = _models(2, randomize=False)
    sep_pairs = _models(2, randomize=False)
    before = np.array(fused_pairs[0][1].get_lora_state_dict()["bert.encoder.layer.0.attention.self.query.lora_b"])
    res = train_fused([m for m, _ in fused_pairs], [a for _, a in fused_pairs], data, valid, cfg)
    assert len(res.history) == 2
    for m, _ in sep_pairs:
        train(m, data, valid, cfg)
    for (_, fa), (_, sa) in zip(fused_pairs, sep_pairs, strict=False):
        fs, ss = fa.get_lora_state_dict(), sa.get_lora_state_dict()
        assert fs.keys() == ss.keys()
        for key in fs:
            np.testing.assert_allclose(np.array(fs[key]), np.array(ss[key]), rtol=1e-3, atol=2e-4, err_msg=key)
    after = np.array(fused_pairs[0][1].get_lora_state_dict()["bert.encoder.layer.0.attention.self.query.lora_b"])
    assert np.abs(after - before).max() > 1e-4  # the write-back really trained the adapters

    # unfuse: K single models computing what the fused slices compute
    fused = FusedAdapters.from_models([m for m, _ in fused_pairs], [a for _, a in fused_pairs])
    fused.eval()
    ids, mask, types = _batch(3)
    logits = np.array(fused(ids, mask, types))
    for i, (model, _adapter) in enumerate(fused.unfuse()):
        model.eval()
        np.testing.assert_allclose(np.array(model(ids, mask, types)), logits[i], rtol=1e-5, atol=1e-6)
    # predict_mixed on a dataset agrees with each adapter's own predictions
    index = np.arange(len(valid)) % 2
    mixed = predict_mixed(fused, valid, index)
    own = [predict(m, valid) for m, _ in fused_pairs]
    np.testing.assert_allclose(mixed, np.where(index == 0, own[0], own[1]), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="metric=None"):
        train_fused([m for m, _ in fused_pairs], [a for _, a in fused_pairs], data, valid,
                    TrainConfig(epochs=1, metric="accuracy"))


def test_fuse_adapters_of_a_multi_adapter_manager():
    from lora_tasks.training.factory import create_multi_adapter_model

    model, manager = create_multi_adapter_model({"a": "balanced", "b": "balanced", "c": "efficient"},
                                                config=BertConfig(**TINY), pretrained=False, seed=0)
    for j, name in enumerate(("a", "b")):
        rng = np.random.default_rng(j)
        manager.load_adapter_state_dict(name, {k: mx.array(rng.normal(0, 0.2, v.shape).astype(np.float32))
                                               for k, v in manager.adapter_state_dict(name).items()})
    with pytest.raises(ValueError, match="same rank"):
        FusedAdapters.from_manager(manager)
    fused = FusedAdapters.from_manager(manager, ["a", "b"])
    ids, mask, types = _batch()
    logits = np.array(fused(ids, mask, types))
    for i, name in enumerate(("a", "b")):
        manager.activate_adapter(name)
        np.testing.assert_allclose(logits[i], np.array(model(ids, mask, types)), rtol=1e-5, atol=1e-6)


def test_default_parallel_mode_follows_backend():
    from lora_tasks.backend import is_cpu_backend

    assert default_parallel_mode() == ("sequential" if is_cpu_backend() else "fused")
