"""Where a LoRA train step's time goes: each kind of work timed alone, with the model's own modules.

Why this way: a profile whose parts are timed on stand-ins (random fp32 weights where the model has
bf16 ones, eager calls where the step is compiled) adds up to more or less than the step, and the
difference hides in "the rest". Here every part runs the model's own modules (so a bf16 base is
timed through its bf16 GEMM), compiled as the step is, forward plus the gradients the step needs
(input gradients; adapter and head parameters where they are trained), and the parts cover the
whole step: embeddings, every layer's GEMMs, LoRA branches, attention, GELU, the sub-layers' ends
(dropout, residual add and layer norm), the head and loss, and the optimizer update. :attr:`StepProfile.ratio` (the
parts' sum over the measured step) says how well they add up.

Works on the BERT-family models with a layer split (``model.bert.encoder.layer``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_map

from lora_tasks.lora.layers import LoRALinear
from lora_tasks.models import ops
from lora_tasks.native.lora_branch import fused_lora_add


@dataclass(frozen=True)
class ProfilePart:
    name: str
    seconds: float  # per step (all layers)


@dataclass(frozen=True)
class StepProfile:
    """The measured step and its parts; ``ratio`` near 1 means the parts add up to the step."""

    step_s: float
    parts: tuple[ProfilePart, ...]

    @property
    def parts_s(self) -> float:
        return sum(p.seconds for p in self.parts)

    @property
    def ratio(self) -> float:
        return self.parts_s / self.step_s

    @property
    def unaccounted_s(self) -> float:
        """The step minus its parts (negative when the parts take longer alone than in the step)."""
        return self.step_s - self.parts_s


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 2, best: bool = False) -> float:
    """Median seconds of ``mx.eval(fn())`` over ``repeats`` calls after ``warmup`` untimed ones
    (``best``: the fastest call instead, which other processes on the cores disturb least)."""
    for _ in range(warmup):
        mx.eval(fn())
    times = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        mx.eval(fn())
        times.append(time.perf_counter() - t)
    return min(times) if best else sorted(times)[len(times) // 2]


Work = tuple[Callable[..., mx.array], list[mx.array]]  # a function and its arguments


def _time_group(items: list[Work], repeats: int, best: bool = False) -> float:
    """Forward and the vjp with respect to every argument, of every ``(f, args)`` in ``items``, in
    one compiled graph evaluated at once: as the step runs them. Timing each small piece alone
    would add a dispatch (and a wake-up of the BLAS threads) per piece that the step does not pay."""
    cotangents = []
    for f, args in items:
        out = f(*args)
        cotangents.append(mx.random.normal(out.shape).astype(out.dtype))
    flat = [a for _, args in items for a in args]
    mx.eval(cotangents, flat)
    sizes = [len(args) for _, args in items]

    def run(*arrays):
        outs, i = [], 0
        for (f, _), n, c in zip(items, sizes, cotangents, strict=True):
            outs.append(mx.vjp(f, list(arrays[i:i + n]), [c]))
            i += n
        return outs

    compiled = mx.compile(run)
    return median_time(lambda: compiled(*flat), repeats, best=best)


def _base_linear(m: nn.Module) -> nn.Module:
    return m.linear if isinstance(m, LoRALinear) else m


def _layer_work(layer: nn.Module, bias: mx.array | None, shape: tuple[int, ...]) -> dict[str, list[Work]]:
    """One encoder layer's work, by kind, with that layer's modules, on fresh inputs of the hidden
    states' ``shape`` (fresh per layer, so a compiled graph cannot share one layer's result with another)."""
    att, inter, out = layer.attention.self, layer.intermediate, layer.output
    so = layer.attention.output
    x = mx.random.normal(shape)
    i_in = mx.random.normal((*shape[:-1], _base_linear(inter.dense).weight.shape[0]))
    work: dict[str, list[Work]] = {"linear GEMMs (Q,K,V,O,FFN)": [], "LoRA branches": []}
    for m in (att.query, att.key, att.value, so.dense, inter.dense, out.dense):
        src = i_in if m is out.dense else x
        base = _base_linear(m)
        work["linear GEMMs (Q,K,V,O,FFN)"].append((lambda a, base=base: base(a), [src]))
        if isinstance(m, LoRALinear) and not m.merged:
            y0 = mx.random.normal((*src.shape[:-1], m.out_features)).astype(src.dtype)

            def branch(a, la, lb, m=m, y0=y0):  # the base output plus the scaled low-rank path, as LoRALinear adds them
                fused = fused_lora_add()
                if fused is not None:  # the native op, when the model uses it
                    return fused(y0, m.dropout(a), la, lb, m.scale)
                z = (m.dropout(a) @ la.T) @ lb.T
                return y0 + (m.scale * z).astype(a.dtype)

            work["LoRA branches"].append((branch, [src, m.lora_a, m.lora_b]))
    qkv = [mx.random.normal(shape) for _ in range(3)]
    scale = 1.0 / math.sqrt(att.head_dim)
    work["attention (QK^T, softmax, dropout, PV)"] = [(
        lambda a, b, c: ops.multi_head_attention(a, b, c, bias, att.num_heads, scale, att.dropout), qkv)]
    work["GELU"] = [(inter.act, [mx.random.normal(i_in.shape)])]
    # each sub-layer's end, LayerNorm(dropout(h) + residual), as the model runs it (one native op on the CPU)
    work["dropout + residual add + layer norm (x2)"] = [
        (lambda a, r, d=d, ln=ln: ops.dropout_add_norm(a, r, d, ln), [mx.random.normal(shape), mx.random.normal(shape)])
        for d, ln in ((so.dropout, so.LayerNorm), (out.dropout, out.LayerNorm))]
    return work


def profile_step(model: nn.Module, ids: mx.array, mask: mx.array, labels: mx.array, step_s: float,
                 repeats: int = 5, optimizer: optim.Optimizer | None = None, best: bool = False) -> StepProfile:
    """The parts of one train step of ``model`` (BERT family, in train mode) on ``ids``/``mask`` and
    ``labels``, against ``step_s``, the step measured the usual way. ``optimizer`` (default AdamW)
    is what the step updates the trainable parameters with; ``best``: each part's fastest run, not its
    median (then time ``step_s`` the same way)."""
    bert = model.bert
    layers = list(bert.encoder.layer)
    x = bert.embeddings(ids)
    bias = bert.attention_bias(mask, x)
    mx.eval(x, bias)
    embed = mx.compile(lambda i: bert.embeddings(i))
    parts: dict[str, float] = {"embeddings": median_time(lambda: embed(ids), repeats, best=best)}
    per_layer = [_layer_work(layer, bias, x.shape) for layer in layers]
    for name in per_layer[0]:
        parts[name] = _time_group([w for work in per_layer for w in work[name]], repeats, best)
    # the head and the loss: pooling, the head's layers, the loss; the gradient back to the hidden states
    # (the head's own parameter gradients are a rounding error of it: a few hidden x labels weights)
    parts["head and loss"] = _time_group([(lambda h: model.loss(model.logits_from_hidden(h, mask), labels), [x])],
                                         repeats, best)

    # the optimizer's update of every trainable parameter (the adapters and the head)
    opt = optimizer or optim.AdamW(learning_rate=1e-4)
    trainable = model.trainable_parameters()
    grads = tree_map(lambda p: mx.random.normal(p.shape).astype(p.dtype), trainable)
    params = tree_map(lambda p: p, trainable)
    opt.init(params)
    state = [opt.state]

    def update(g, p):
        return opt.apply_gradients(g, p)

    run = mx.compile(update, inputs=state, outputs=state)
    parts["optimizer update (AdamW)"] = median_time(lambda: run(grads, params), repeats, best=best)
    return StepProfile(step_s, tuple(ProfilePart(k, v) for k, v in parts.items()))
