"""The CPU fast kernels agree with MLX's exact ones, forward and backward."""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from lora_tasks.models import ops


def test_rational_erf_matches_mlx_erf():
    x = mx.linspace(-6, 6, 20001)
    assert mx.abs(ops.erf_rational(x) - mx.erf(x)).max().item() < 1e-6


def test_polynomial_exp_matches_exp_on_nonpositive_inputs():
    x = mx.linspace(-30, 0, 30001)
    rel = mx.abs(ops.exp_nonpositive(x) - mx.exp(x)) / mx.exp(x)
    assert rel.max().item() < 5e-5
    assert ops.exp_nonpositive(mx.array([-1e30, -mx.finfo(mx.float32).max])).max().item() < 1e-30


def test_fast_gelu_forward_and_gradient():
    x = mx.random.normal((4096,), key=mx.random.key(0)) * 3
    np.testing.assert_allclose(np.array(ops._gelu_fast(x)), np.array(ops.gelu_exact(x)), atol=2e-6)
    g_fast = mx.grad(lambda t: (ops._gelu_fast(t) * mx.arange(4096)).sum())(x)
    g_exact = mx.grad(lambda t: (ops.gelu_exact(t) * mx.arange(4096)).sum())(x)
    np.testing.assert_allclose(np.array(g_fast), np.array(g_exact), rtol=1e-4, atol=1e-2)


def test_fast_softmax_forward_and_gradient_with_mask():
    s = mx.random.normal((2, 3, 5, 7), key=mx.random.key(1)) * 4
    mask = mx.array([0.0] * 5 + [mx.finfo(mx.float32).min] * 2)
    s = s + mask
    np.testing.assert_allclose(np.array(ops._softmax_fast(s)), np.array(ops.softmax_stock(s)), atol=1e-5)
    w = mx.random.normal(s.shape, key=mx.random.key(2))
    g_fast = mx.grad(lambda t: (ops._softmax_fast(t) * w).sum())(s)
    g_exact = mx.grad(lambda t: (ops.softmax_stock(t) * w).sum())(s)
    np.testing.assert_allclose(np.array(g_fast), np.array(g_exact), atol=1e-5)
    assert np.array(ops._softmax_fast(s))[..., 5:].max() < 1e-30  # padding gets no weight


def test_native_kernels_are_the_cpu_default_when_they_build():
    """This machine has a compiler, so the CPU path is the native one (tests/test_native.py)."""
    from lora_tasks import native

    assert native.native_info().loaded, native.native_info().summary()
    assert ops._impl().dropout is not None
    assert ops._impl().gelu is not ops._gelu_fast_compiled
