"""Dropout, residual add and LayerNorm as one native op (CPU): the same values and gradients as the
three ops apart, with the same dropout mask."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from lora_tasks.models import ops
from lora_tasks.native import kernels

needs_native = pytest.mark.skipif(kernels() is None, reason="native kernels unavailable (no g++ or not a CPU)")


def _modules(p: float, training: bool, hidden: int):
    drop, norm = ops.Dropout(p), ops.LayerNorm(hidden, eps=1e-12)
    norm.weight = 1.0 + 0.1 * mx.random.normal((hidden,))
    norm.bias = 0.1 * mx.random.normal((hidden,))
    drop.train(training)
    return drop, norm


def _run(fn, h, res, w, b, cot, norm):
    def f(h, res, w, b):
        norm.weight, norm.bias = w, b
        return (fn(h, res) * cot).sum()

    mx.random.seed(7)  # the dropout seed is drawn inside: the same draw on both sides
    val, grads = mx.value_and_grad(f, argnums=(0, 1, 2, 3))(h, res, w, b)
    mx.random.seed(7)
    norm.weight, norm.bias = w, b
    out = fn(h, res)
    return np.array(out), float(val), [np.array(g) for g in grads]


@needs_native
@pytest.mark.parametrize(("p", "training", "shape"), [(0.1, True, (4, 12, 32)), (0.1, False, (4, 12, 32)),
                                                      (0.3, True, (3, 7, 37)), (0.0, True, (2, 5, 384))])
def test_fused_dropout_add_norm_matches_the_three_ops(p, training, shape):
    drop, norm = _modules(p, training, shape[-1])
    h, res, cot = mx.random.normal(shape), mx.random.normal(shape), mx.random.normal(shape)
    w, b = norm.weight, norm.bias
    fused = _run(lambda a, r: ops.dropout_add_norm(a, r, drop, norm), h, res, w, b, cot, norm)
    apart = _run(lambda a, r: norm(drop(a) + r), h, res, w, b, cot, norm)
    np.testing.assert_allclose(fused[0], apart[0], rtol=1e-5, atol=1e-5)
    assert fused[1] == pytest.approx(apart[1], rel=1e-5, abs=1e-4)
    for name, g, ref in zip(("h", "res", "weight", "bias"), fused[2], apart[2], strict=True):
        np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-4, err_msg=name)
    if training and p > 0:  # the mask really drops: some of h's gradient is exactly zero
        assert (fused[2][0] == 0).mean() > p / 3


def test_other_modules_take_the_three_ops():
    import mlx.nn as nn

    drop, norm = nn.Dropout(0.0), nn.LayerNorm(8)
    h, res = mx.random.normal((2, 3, 8)), mx.random.normal((2, 3, 8))
    np.testing.assert_allclose(np.array(ops.dropout_add_norm(h, res, drop, norm)), np.array(norm(h + res)), atol=1e-6)
