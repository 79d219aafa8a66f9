"""The LoRA branch as one native op: ``y + scale * (x A^T) B^T``, forward and backward.

Why: MLX runs the branch as separate passes (two skinny GEMMs, each a threaded BLAS call, a
scale, an add) and its backward as four more GEMMs; the kernel (``lora_branch.h``) reads each row
once while it is in cache. Off unless ``KAGGLE_LORA_FUSED_LORA=1``: at MiniLM's shapes (2048 x 384,
r 8) it is on par with OpenBLAS's skinny GEMMs on a loaded machine, sometimes ahead, sometimes
behind, so MLX's passes stay the default until a quiet machine's train step says otherwise.
With it on, :class:`lora_tasks.lora.layers.LoRALinear` uses it on the CPU when the native kernels
are loaded and everything is float32; MLX's own ops run elsewhere (Metal, no compiler).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import mlx.core as mx

from lora_tasks.native import kernels

FUSED_ENV = "KAGGLE_LORA_FUSED_LORA"


@functools.cache
def _op(scale: float) -> Callable[..., tuple[mx.array, mx.array]]:
    k = kernels()

    @mx.custom_function
    def lora_branch(x: mx.array, a: mx.array, b: mx.array, y: mx.array):
        return tuple(k.lora_forward(x, a, b, y, scale))

    @lora_branch.vjp
    def _lora_vjp(primals, cotangents, outputs):
        x, a, b, _ = primals
        dx, da, db = k.lora_backward(x, a, b, outputs[1], cotangents[0], scale)
        return dx, da, db, cotangents[0]

    return lora_branch


def lora_add(y: mx.array, x: mx.array, a: mx.array, b: mx.array, scale: float) -> mx.array:
    """``y + scale * (x @ a.T) @ b.T`` for float32 ``x`` (..., in), ``y`` (..., out), ``a`` (r, in), ``b`` (out, r)."""
    x2 = x.reshape(-1, x.shape[-1])
    y2 = y.reshape(-1, y.shape[-1])
    return _op(float(scale))(x2, a, b, y2)[0].reshape(y.shape)


def fused_lora_add() -> Callable[..., mx.array] | None:
    """:func:`lora_add` when ``KAGGLE_LORA_FUSED_LORA=1`` and the native kernels serve this process
    (the CPU), else None."""
    if os.environ.get(FUSED_ENV, "0") != "1":
        return None
    k = kernels()
    return lora_add if k is not None and hasattr(k, "lora_forward") else None


__all__ = ["FUSED_ENV", "fused_lora_add", "lora_add"]
