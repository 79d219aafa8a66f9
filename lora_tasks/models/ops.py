"""Activations and attention, with CPU-specific fast paths behind one backend check.

Why: on the Linux CPU build of MLX, element-wise transcendental math (``erf``, ``exp``) runs
scalar on one thread, so GELU and softmax can cost more than all the GEMMs of a BERT layer.
"""

from __future__ import annotations

import math
from typing import Callable

import mlx.core as mx
import mlx.nn as nn

_SQRT1_2 = 1.0 / math.sqrt(2.0)


def gelu(x: mx.array) -> mx.array:
    """GELU with the exact erf, as BERT's ``hidden_act="gelu"``."""
    return x * (1.0 + mx.erf(x * _SQRT1_2)) * 0.5


def gelu_tanh(x: mx.array) -> mx.array:
    return nn.gelu_approx(x)


ACTIVATIONS: dict[str, Callable[[mx.array], mx.array]] = {
    "gelu": gelu,
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "relu": nn.relu,
    "silu": nn.silu,
}


def attention(
    q: mx.array, k: mx.array, v: mx.array, mask: mx.array | None, scale: float, dropout: nn.Module
) -> mx.array:
    """softmax(q k^T * scale + mask) v over (batch, heads, seq, head_dim)."""
    if not dropout.training or dropout._p_1 == 1.0:
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    scores = (q * scale) @ k.swapaxes(-1, -2)
    if mask is not None:
        scores = scores + mask
    return dropout(mx.softmax(scores, axis=-1, precise=True)) @ v
