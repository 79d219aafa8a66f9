"""Activations, dropout and attention, with CPU fast paths behind one backend check.

Why: on the Linux CPU build of MLX, transcendental element-wise math (``erf``, ``exp``) runs
scalar on one thread, and on MiniLM erf-GELU and softmax took longer than all of a layer's GEMMs.
Rewritten as plain arithmetic (a rational ``erf``, a polynomial ``exp``) and fused by
``mx.compile``, they take a fraction of that. Their backward passes are written out
(``mx.custom_function``) so autodiff does not differentiate the polynomials. Accuracy: erf to
5e-7, softmax probabilities to ~4e-6 (tested against MLX's own). On Metal the stock kernels are
fast and are used unchanged.

Faster still on the CPU are the native kernels (:mod:`lora_tasks.native`): the same math as one
vectorized, multi-threaded pass each (GELU, dropout, LayerNorm with their backward), and BERT's
whole attention as one primitive per direction (:func:`multi_head_attention`, register-blocked
GEMMs with softmax and dropout fused; ``benchmarks/attention.py`` measures it against MLX's ops).
They are chosen on first use when they build; the arithmetic versions below stay as the fallback.

:func:`bf16_linear` is the GEMM of a frozen base stored in bf16 (:mod:`lora_tasks.training.precision`):
the native bf16 GEMM where the CPU has AVX512-BF16, else the weight widened for the BLAS.
"""

from __future__ import annotations

import functools
import math
import os
from types import SimpleNamespace
from typing import Callable

import mlx.core as mx
import mlx.nn as nn

from lora_tasks import native
from lora_tasks.backend import is_cpu_backend

_SQRT1_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

# Rational minimax erf on [-4, 4] (erf(4) = 1 - 1.5e-8), coefficients of Eigen's fast float erf.
_ERF_NUM = (
    -2.72614225801306e-10,
    2.77068142495902e-08,
    -2.10102402082508e-06,
    -5.69250639462346e-05,
    -7.34990630326855e-04,
    -2.95459980854025e-03,
    -1.60960333262415e-02,
)
_ERF_DEN = (
    -1.45660718464996e-05,
    -2.13374055278905e-04,
    -1.68282697438203e-03,
    -7.37332916720468e-03,
    -1.42647390514189e-02,
)
# exp(x) for x <= 0 as (Taylor_7(x / 256)) ** 256: only multiply-adds, so it vectorizes.
_EXP_TAYLOR = tuple(1.0 / math.factorial(i) for i in range(7, -1, -1))
_EXP_SQUARINGS = 8


def _horner(x: mx.array, coeffs: tuple[float, ...]) -> mx.array:
    acc = x * coeffs[0] + coeffs[1]
    for c in coeffs[2:]:
        acc = acc * x + c
    return acc


def erf_rational(x: mx.array) -> mx.array:
    """erf from multiply-adds and one division; max abs error 5e-7 in float32."""
    x = mx.clip(x, -4.0, 4.0)
    x2 = x * x
    return x * _horner(x2, _ERF_NUM) / _horner(x2, _ERF_DEN)


def exp_nonpositive(x: mx.array) -> mx.array:
    """exp(x) for x <= 0 from multiply-adds (inputs below -80 give ~1e-35, i.e. zero)."""
    p = _horner(mx.maximum(x, -80.0) * (1.0 / 2**_EXP_SQUARINGS), _EXP_TAYLOR)
    for _ in range(_EXP_SQUARINGS):
        p = p * p
    return p


@mx.custom_function
def _gelu_fast(x: mx.array) -> mx.array:
    return 0.5 * x * (1.0 + erf_rational(x * _SQRT1_2))


@mx.compile
def _gelu_backward(x: mx.array, cotangent: mx.array) -> mx.array:
    cdf = 0.5 * (1.0 + erf_rational(x * _SQRT1_2))
    pdf = exp_nonpositive(-0.5 * x * x) * _INV_SQRT_2PI
    return cotangent * (cdf + x * pdf)


@_gelu_fast.vjp
def _gelu_fast_vjp(primals, cotangent, output):
    x = primals[0] if isinstance(primals, (list, tuple)) else primals  # one-arg: a bare array
    return (_gelu_backward(x, cotangent),)


@mx.custom_function
def _softmax_fast(s: mx.array) -> mx.array:
    # float32 inside: the 8 squarings of exp_nonpositive would amplify bfloat16 rounding
    x = s.astype(mx.float32)
    e = exp_nonpositive(x - mx.stop_gradient(x.max(axis=-1, keepdims=True)))
    return (e / e.sum(axis=-1, keepdims=True)).astype(s.dtype)


@mx.compile
def _softmax_backward(y: mx.array, cotangent: mx.array) -> mx.array:
    return y * (cotangent - (cotangent * y).sum(axis=-1, keepdims=True))


@_softmax_fast.vjp
def _softmax_fast_vjp(primals, cotangent, output):
    return (_softmax_backward(output, cotangent),)


_gelu_fast_compiled = mx.compile(_gelu_fast)
_softmax_fast_compiled = mx.compile(_softmax_fast)


def gelu_exact(x: mx.array) -> mx.array:
    """GELU with MLX's erf (BERT's ``hidden_act="gelu"``)."""
    return x * (1.0 + mx.erf(x * _SQRT1_2)) * 0.5


def softmax_stock(s: mx.array) -> mx.array:
    return mx.softmax(s, axis=-1, precise=True)


def _native_ops(k) -> SimpleNamespace:
    """GELU, softmax, dropout and LayerNorm on the native primitives, with their backward passes."""

    @mx.custom_function
    def gelu_native(x: mx.array) -> mx.array:
        return k.gelu_forward(x).astype(x.dtype)

    @gelu_native.vjp
    def _gelu_vjp(primals, cotangent, output):
        x = primals[0] if isinstance(primals, (list, tuple)) else primals
        return (k.gelu_backward(x, cotangent).astype(x.dtype),)

    @mx.custom_function
    def softmax_native(s: mx.array) -> mx.array:
        return k.softmax_forward(s).astype(s.dtype)

    @softmax_native.vjp
    def _softmax_vjp(primals, cotangent, output):
        return (k.softmax_backward(output, cotangent).astype(output.dtype),)

    @functools.cache
    def masked(p: float) -> Callable[[mx.array, mx.array], mx.array]:
        @mx.custom_function
        def dropout_p(x: mx.array, seed: mx.array) -> mx.array:
            return k.dropout(x, seed, p).astype(x.dtype)

        @dropout_p.vjp
        def _dropout_vjp(primals, cotangent, output):
            # the mask is a function of (seed, index): the same call on the cotangent is the backward
            return (k.dropout(cotangent, primals[1], p).astype(cotangent.dtype), mx.zeros_like(primals[1]))

        return dropout_p

    def dropout_native(x: mx.array, p: float) -> mx.array:
        seed = mx.random.randint(0, 2**31 - 1, (1,)).astype(mx.uint32)
        return masked(round(p, 6))(x, seed)

    @functools.cache
    def normalize(eps: float) -> Callable[[mx.array, mx.array, mx.array], mx.array]:
        @mx.custom_function
        def layer_norm_eps(x: mx.array, w: mx.array, b: mx.array) -> mx.array:
            return k.layer_norm_forward(x, w, b, eps).astype(x.dtype)

        @layer_norm_eps.vjp
        def _layer_norm_vjp(primals, cotangent, output):
            x, w, b = primals
            dx = k.layer_norm_backward(x, w, cotangent, eps).astype(x.dtype)
            # dw and db with MLX ops: lazily built, so only a trained LayerNorm ever computes them
            xf = x.astype(mx.float32)
            mean = xf.mean(axis=-1, keepdims=True)
            xhat = (xf - mean) * mx.rsqrt(((xf - mean) ** 2).mean(axis=-1, keepdims=True) + eps)
            axes = tuple(range(x.ndim - 1))
            return dx, (cotangent * xhat).sum(axis=axes).astype(w.dtype), cotangent.sum(axis=axes).astype(b.dtype)

        return layer_norm_eps

    def layer_norm_native(x: mx.array, w: mx.array, b: mx.array | None, eps: float) -> mx.array:
        return normalize(float(eps))(x, w, mx.zeros_like(w) if b is None else b)

    @functools.cache
    def attend(heads: int, scale: float, p: float) -> Callable[..., tuple[mx.array, mx.array]]:
        @mx.custom_function
        def attention_hp(q: mx.array, k_: mx.array, v: mx.array, mask: mx.array, seed: mx.array):
            return tuple(k.attention_forward(q, k_, v, mask, seed, heads, scale, p))

        @attention_hp.vjp
        def _attention_vjp(primals, cotangents, outputs):
            q, k_, v, mask, seed = primals
            dq, dk, dv = k.attention_backward(q, k_, v, outputs[1], cotangents[0], seed, heads, scale, p)
            return dq.astype(q.dtype), dk.astype(k_.dtype), dv.astype(v.dtype), mx.zeros_like(mask), mx.zeros_like(seed)

        return attention_hp

    def attention_native(q: mx.array, k_: mx.array, v: mx.array, mask: mx.array, heads: int, scale: float,
                         p: float) -> mx.array:
        seed = mx.random.randint(0, 2**31 - 1, (1,)).astype(mx.uint32) if p > 0 else mx.zeros((1,), mx.uint32)
        return attend(heads, float(scale), round(p, 6))(q, k_, v, mask, seed)[0].astype(q.dtype)

    def _bf16_vjp(primals: list[mx.array], cotangent: mx.array) -> tuple[mx.array, ...]:
        x, w = primals[0], primals[1]
        dx = k.bf16_matmul(cotangent, w, None, False).astype(x.dtype)
        # dw and db with MLX ops: lazily built, so a frozen weight (the point of bf16) never computes them
        rows = cotangent.reshape(-1, cotangent.shape[-1])
        dw = (rows.T @ x.reshape(-1, x.shape[-1])).astype(w.dtype)
        if len(primals) == 2:
            return dx, dw
        return dx, dw, rows.sum(axis=0).astype(primals[2].dtype)

    @mx.custom_function
    def bf16_linear_nobias(x: mx.array, w: mx.array) -> mx.array:
        return k.bf16_matmul(x, w, None, True).astype(x.dtype)

    @bf16_linear_nobias.vjp
    def _bf16_nobias_vjp(primals, cotangent, output):
        return _bf16_vjp(primals, cotangent)

    @mx.custom_function
    def bf16_linear_bias(x: mx.array, w: mx.array, b: mx.array) -> mx.array:
        return k.bf16_matmul(x, w, b, True).astype(x.dtype)

    @bf16_linear_bias.vjp
    def _bf16_bias_vjp(primals, cotangent, output):
        return _bf16_vjp(primals, cotangent)

    def bf16_linear_native(x: mx.array, w: mx.array, b: mx.array | None) -> mx.array:
        return bf16_linear_nobias(x, w) if b is None else bf16_linear_bias(x, w, b)

    @functools.cache
    def add_normalize(p: float, eps: float) -> Callable[..., tuple[mx.array, mx.array]]:
        @mx.custom_function
        def add_norm_pe(h: mx.array, res: mx.array, w: mx.array, b: mx.array, seed: mx.array):
            return tuple(k.add_norm_forward(h, res, w, b, seed, p, eps))

        @add_norm_pe.vjp
        def _add_norm_vjp(primals, cotangents, outputs):
            h, res, w, b, seed = primals
            g, s = cotangents[0], outputs[1]
            ds, dh = k.add_norm_backward(s, w, g, seed, p, eps)
            # dw and db with MLX ops: lazily built, so only a trained LayerNorm ever computes them
            mean = s.mean(axis=-1, keepdims=True)
            xhat = (s - mean) * mx.rsqrt(((s - mean) ** 2).mean(axis=-1, keepdims=True) + eps)
            axes = tuple(range(s.ndim - 1))
            return (dh.astype(h.dtype), ds.astype(res.dtype), (g * xhat).sum(axis=axes).astype(w.dtype),
                    g.sum(axis=axes).astype(b.dtype), mx.zeros_like(seed))

        return add_norm_pe

    def add_norm_native(h: mx.array, res: mx.array, w: mx.array, b: mx.array | None, p: float, eps: float) -> mx.array:
        # the seed is drawn exactly when Dropout would draw one, so the mask (a hash of it) is the same
        seed = mx.random.randint(0, 2**31 - 1, (1,)).astype(mx.uint32) if p > 0 else mx.zeros((1,), mx.uint32)
        out = add_normalize(round(p, 6), float(eps))(h, res, w, mx.zeros_like(w) if b is None else b, seed)[0]
        return out.astype(h.dtype)

    return SimpleNamespace(gelu=gelu_native, softmax=softmax_native, dropout=dropout_native, layer_norm=layer_norm_native,
                           attention=attention_native, bf16_linear=bf16_linear_native, add_norm=add_norm_native,
                           bf16_kernel=k.bf16_kernel())


@functools.cache
def _impl() -> SimpleNamespace:
    """The one backend check for these kernels, made on first use (the native build may take ~15 s)."""
    if not _CPU:
        return SimpleNamespace(gelu=gelu_exact, softmax=softmax_stock, dropout=None, layer_norm=None, attention=None,
                               bf16_linear=None, add_norm=None, bf16_kernel=None)
    k = native.kernels()
    if k is not None:
        return _native_ops(k)
    return SimpleNamespace(gelu=_gelu_fast_compiled, softmax=_softmax_fast_compiled, dropout=None, layer_norm=None,
                           attention=None, bf16_linear=None, add_norm=None, bf16_kernel=None)


_CPU = is_cpu_backend()


def gelu(x: mx.array) -> mx.array:
    """BERT's erf GELU: native kernel or the arithmetic version on CPU, MLX's erf on Metal."""
    return _impl().gelu(x)


def softmax(s: mx.array) -> mx.array:
    """Softmax over the last axis, float32 inside."""
    return _impl().softmax(s)


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose CPU path is the native kernel: its mask is a hash of a per-call seed and
    the element index, recomputed in backward instead of stored (MLX's threefry bits took 57 ms
    per 3M elements on one thread)."""

    def __call__(self, x: mx.array) -> mx.array:
        if self._p_1 == 1 or not self.training:
            return x
        fast = _impl().dropout
        if fast is None:
            return super().__call__(x)
        return fast(x, 1.0 - self._p_1)


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` whose CPU path is one native pass per row forward and one backward (MLX's
    CPU layer norm backward is a chain of single-threaded reductions)."""

    def __call__(self, x: mx.array) -> mx.array:
        fast = _impl().layer_norm
        if fast is None or "weight" not in self:
            return super().__call__(x)
        return fast(x, self.weight, self.get("bias"), self.eps)


def dropout_add_norm(h: mx.array, residual: mx.array, dropout: nn.Module, norm: nn.Module) -> mx.array:
    """``norm(dropout(h) + residual)``, the end of every BERT sub-layer. On the CPU with the native
    kernels and this module's :class:`Dropout` and :class:`LayerNorm`: one pass per row forward and one
    backward (the dropout mask, the add and the norm together), with the same mask as the three ops
    apart. Else (Metal, no kernels, other modules) the three ops."""
    fast = _impl().add_norm
    if (fast is None or type(dropout) is not Dropout or type(norm) is not LayerNorm or "weight" not in norm
            or h.dtype != mx.float32 or residual.dtype != mx.float32 or h.shape != residual.shape):
        return norm(dropout(h) + residual)
    p = 1.0 - dropout._p_1 if dropout.training else 0.0
    if p >= 1.0:
        return norm(dropout(h) + residual)
    return fast(h, residual, norm.weight, norm.get("bias"), p, norm.eps)


ACTIVATIONS: dict[str, Callable[[mx.array], mx.array]] = {
    "gelu": lambda x: gelu(x),
    "gelu_new": nn.gelu_approx,
    "gelu_pytorch_tanh": nn.gelu_approx,
    "relu": nn.relu,
    "silu": nn.silu,
}


def attention(
    q: mx.array, k: mx.array, v: mx.array, mask: mx.array | None, scale: float, dropout: nn.Module
) -> mx.array:
    """softmax(q k^T * scale + mask) v over (batch, heads, seq, head_dim), dropout on the weights."""
    if not _CPU and (not dropout.training or dropout._p_1 == 1.0):
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    scores = (q * scale) @ k.swapaxes(-1, -2)
    if mask is not None:
        scores = scores + mask
    return dropout(softmax(scores)) @ v


def multi_head_attention(
    q: mx.array, k: mx.array, v: mx.array, mask: mx.array | None, num_heads: int, scale: float, dropout: nn.Module
) -> mx.array:
    """Attention over (batch, seq, heads*head_dim) projections, returned in the same layout.

    On the CPU with the native kernels, one primitive per direction reads the heads in place and
    runs (batch, head) pairs over the cores with register-blocked GEMMs, softmax and dropout
    fused; elsewhere the heads are split out for :func:`attention`. ``mask``: additive, shaped
    (batch, 1, 1, seq) (a key-padding mask), or None; other masks take the general path.
    """
    b, s, hd = q.shape
    fast = _impl().attention
    p = (1.0 - dropout._p_1) if dropout.training else 0.0
    if fast is not None and (mask is None or mask.shape == (b, 1, 1, s)):
        key_mask = mx.zeros((b, s), mx.float32) if mask is None else mask.reshape(b, s).astype(mx.float32)
        return fast(q, k, v, key_mask, num_heads, scale, p)

    def heads(x: mx.array) -> mx.array:
        return x.reshape(b, s, num_heads, hd // num_heads).transpose(0, 2, 1, 3)

    out = attention(heads(q), heads(k), heads(v), mask, scale, dropout)
    return out.transpose(0, 2, 1, 3).reshape(b, s, hd)


BF16_GEMM_ENV = "KAGGLE_LORA_BF16_GEMM"
BF16_GEMM_MODES = ("auto", "native", "upcast")


def bf16_gemm_mode() -> str:
    """How :func:`bf16_linear` computes on the CPU: ``"native"`` (the bf16 GEMM primitive) or ``"upcast"``
    (the weight widened to fp32 for the BLAS's sgemm).

    ``auto`` (the default of ``KAGGLE_LORA_BF16_GEMM``) is native only where the AVX512-BF16 micro-kernel
    runs: elsewhere the portable kernel is correct but slower than the BLAS on the widened weight.
    ``native`` forces the primitive (its portable kernel on CPUs without the instructions; tests use it).
    """
    mode = os.environ.get(BF16_GEMM_ENV, "auto").strip().lower() or "auto"
    if mode not in BF16_GEMM_MODES:
        raise ValueError(f"{BF16_GEMM_ENV}={mode!r}; use one of {', '.join(BF16_GEMM_MODES)}.")
    impl = _impl()
    if impl.bf16_linear is None:
        return "upcast"
    if mode == "auto":
        return "native" if impl.bf16_kernel == "avx512bf16" else "upcast"
    return mode


def bf16_linear(x: mx.array, w: mx.array, bias: mx.array | None = None) -> mx.array:
    """``x @ w.T + bias`` for a frozen bf16 weight ``w`` (out, in); fp32 activations in and out.

    CPU: the native bf16 GEMM (x rounded to bf16, fp32 accumulation; its vjp gives the input gradient
    through the same kernel) or the fp32 upcast, see :func:`bf16_gemm_mode`. Metal: MLX's own bf16
    matmul, the output widened back.
    """
    if not _CPU:
        y = (x.astype(w.dtype) @ w.T).astype(x.dtype)
        return y if bias is None else y + bias.astype(x.dtype)
    if bf16_gemm_mode() == "native":
        return _impl().bf16_linear(x, w, bias)
    wt = w.astype(x.dtype).T
    return x @ wt if bias is None else mx.addmm(bias.astype(x.dtype), x, wt)
