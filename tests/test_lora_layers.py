"""LoRALinear and DoRALinear: zero-init identity, the maths, dropout modes, fuse and merge."""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from lora_tasks.lora import DoRALinear, LoRALinear


def _linear(i=12, o=10, bias=True, seed=0):
    mx.random.seed(seed)
    lin = nn.Linear(i, o, bias=bias)
    mx.eval(lin.parameters())
    return lin


def _x(shape=(3, 5, 12), seed=1):
    return mx.random.normal(shape, key=mx.random.key(seed))


def _randomize_b(layer, seed=2):
    layer.lora_b = mx.random.normal(layer.lora_b.shape, key=mx.random.key(seed)) * 0.3


@pytest.mark.parametrize("cls", [LoRALinear, DoRALinear])
def test_fresh_layer_leaves_outputs_unchanged(cls):
    lin = _linear()
    layer = cls.from_base(lin, r=4, dropout=0.0)
    x = _x()
    assert layer.linear is lin  # weights shared, not copied
    assert layer.lora_a.shape == (4, 12) and layer.lora_b.shape == (10, 4)  # PEFT's layout
    assert float(mx.abs(layer.lora_b).max()) == 0.0
    assert float(mx.abs(layer.lora_a).max()) > 0.0
    np.testing.assert_allclose(np.array(layer(x)), np.array(lin(x)), atol=1e-6)


def test_lora_forward_is_base_plus_scaled_low_rank_update():
    lin = _linear()
    layer = LoRALinear.from_base(lin, r=4, alpha=6)
    _randomize_b(layer)
    x = _x()
    W, b = np.array(lin.weight), np.array(lin.bias)
    A, B = np.array(layer.lora_a), np.array(layer.lora_b)
    expected = np.array(x) @ W.T + b + 1.5 * (np.array(x) @ A.T @ B.T)
    assert layer.scale == 1.5
    np.testing.assert_allclose(np.array(layer(x)), expected, atol=1e-5)
    np.testing.assert_allclose(np.array(layer.delta_weight()), 1.5 * B @ A, atol=1e-6)


def test_rslora_scale():
    layer = LoRALinear.from_base(_linear(), r=16, alpha=8, use_rslora=True)
    assert layer.scale == pytest.approx(8 / math.sqrt(16))


def test_dropout_acts_only_in_training_mode():
    layer = LoRALinear.from_base(_linear(), r=4, dropout=0.5)
    _randomize_b(layer)
    reference = LoRALinear.from_base(layer.linear, r=4, dropout=0.0)
    reference.lora_a, reference.lora_b = layer.lora_a, layer.lora_b
    x = _x()
    layer.eval()
    np.testing.assert_allclose(np.array(layer(x)), np.array(reference(x)), atol=1e-6)
    np.testing.assert_array_equal(np.array(layer(x)), np.array(layer(x)))
    layer.train()
    assert not np.allclose(np.array(layer(x)), np.array(reference(x)), atol=1e-4)


def test_dora_forward_matches_the_formula():
    lin = _linear()
    layer = DoRALinear.from_base(lin, r=4, alpha=8)
    _randomize_b(layer)
    layer.magnitude = layer.magnitude * 1.3
    x = np.array(_x())
    W, b = np.array(lin.weight), np.array(lin.bias)
    A, B, m = np.array(layer.lora_a), np.array(layer.lora_b), np.array(layer.magnitude)
    V = W + 2.0 * B @ A
    expected = x @ (m[:, None] * V / np.linalg.norm(V, axis=1, keepdims=True)).T + b
    np.testing.assert_allclose(np.array(layer(mx.array(x))), expected, atol=1e-5)


def test_dora_magnitude_starts_at_row_norms_and_receives_gradients():
    lin = _linear()
    layer = DoRALinear.from_base(lin, r=4)
    np.testing.assert_allclose(np.array(layer.magnitude), np.linalg.norm(np.array(lin.weight), axis=1), rtol=1e-6)
    _randomize_b(layer)
    layer.freeze()
    layer.unfreeze(recurse=False, keys=list(DoRALinear.ADAPTER_KEYS))
    _, grads = nn.value_and_grad(layer, lambda x: layer(x).sum())(_x())
    flat = dict(tree_flatten(grads))
    assert set(flat) == {"lora_a", "lora_b", "magnitude"}
    assert all(float(mx.abs(g).max()) > 0 for g in flat.values())


@pytest.mark.parametrize("cls", [LoRALinear, DoRALinear])
@pytest.mark.parametrize("bias", [True, False])
def test_fuse_returns_an_equivalent_plain_linear(cls, bias):
    layer = cls.from_base(_linear(bias=bias), r=4, dropout=0.3)
    _randomize_b(layer)
    layer.eval()
    fused = layer.fuse()
    assert type(fused) is nn.Linear and ("bias" in fused) == bias
    x = _x()
    np.testing.assert_allclose(np.array(fused(x)), np.array(layer(x)), atol=1e-5)


@pytest.mark.parametrize("cls", [LoRALinear, DoRALinear])
def test_merge_then_unmerge_restores_the_exact_base_weight(cls):
    lin = _linear()
    original = np.array(lin.weight)
    layer = cls.from_base(lin, r=4)
    _randomize_b(layer)
    layer.eval()
    x = _x()
    before = np.array(layer(x))
    layer.merge()
    assert layer.merged
    assert not np.allclose(np.array(lin.weight), original)
    np.testing.assert_allclose(np.array(layer(x)), before, atol=1e-5)
    np.testing.assert_allclose(np.array(layer.fuse()(x)), before, atol=1e-5)  # fuse works while merged
    assert "_unmerged_weight" not in dict(layer.parameters())  # the saved copy is not a parameter
    layer.unmerge()
    np.testing.assert_array_equal(np.array(lin.weight), original)
    np.testing.assert_allclose(np.array(layer(x)), before, atol=1e-6)


def test_rank_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        LoRALinear(4, 4, r=0)
