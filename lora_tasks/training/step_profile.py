"""Where a LoRA train step's time goes: each kind of work timed alone, with the model's own modules.

Why parts timed alone (and not an ablation of the step): removing a kind of work from the step changes
the rest of it (without the LoRA branches no gradient flows back through the layers at all, without
attention Q and K get none), so the differences would not be the parts' costs. Timed alone, each part
is an independent measurement, and :attr:`StepProfile.ratio` (the parts' sum over the measured step)
is a real check that they cover the step once: it is not 1 by construction.

For the parts to add up, each times exactly the work the step runs, once:

- the model's own modules, compiled as the step is (a bf16 base through its bf16 GEMM), all layers of
  a kind in one graph, forward plus the gradients the step needs: input gradients, and the adapters'
  gradients in the LoRA branches. The first layer's input is the frozen embeddings' output, whose
  gradient the step never needs: there the Q, K, V GEMMs run forward only, their LoRA branches give
  the adapters' gradients only, and the first residual gets none, here as in the step;
- the LoRA branch as :class:`~lora_tasks.lora.layers.LoRALinear` adds it (the native fused op under
  the same condition), onto a base output evaluated beforehand: a lazy array captured by a compiled
  graph is recomputed on every call, and the branch was once timed with the random generation of its
  whole base output;
- with a warm buffer cache, as the step runs in training (:func:`~lora_tasks.training.step_memory.
  cache_step_memory` keeps its memory cached between steps): with MLX's small default CPU cache, a part's
  outputs would go back to the OS after each call and fresh pages be faulted in on the next. A step timed
  without that call pays those faults (~10% at seq 128), and no part accounts for them.

The parts: embeddings, every layer's GEMMs, LoRA branches, attention, GELU, the sub-layers' ends
(dropout, residual add and layer norm), the gradient sums, the head and loss, and the optimizer update.
The gradient sums are the adds autodiff makes where an array is read more than once (a layer's input
by Q, K, V, their LoRA branches and the residual: 6 adds of a hidden-state-sized array per layer for
LoRA on Q, K, V), each timed as that many adds of arrays of that shape. What the parts leave
(copies, casts, dispatch) is the step minus the parts.

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
from mlx.utils import tree_flatten, tree_map

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


@dataclass(frozen=True)
class _Work:
    """One piece of a layer's work: ``f(*args)``, differentiated with respect to the arguments at
    ``grad`` (the ones the step needs a gradient for; none: forward only)."""

    f: Callable[..., mx.array]
    args: list[mx.array]
    grad: tuple[int, ...]


def _time_group(items: list[_Work], repeats: int, best: bool = False) -> float:
    """Forward and the vjp with respect to the ``grad`` arguments, of every item, in one compiled
    graph evaluated at once: as the step runs them. Timing each small piece alone would add a
    dispatch (and a wake-up of the BLAS threads) per piece that the step does not pay."""
    cotangents = []
    for w in items:
        out = w.f(*w.args)
        cotangents.append(mx.random.normal(out.shape).astype(out.dtype))
    flat = [a for w in items for a in w.args]
    mx.eval(cotangents, flat)

    def run(*arrays):
        outs, i = [], 0
        for w, c in zip(items, cotangents, strict=True):
            args = list(arrays[i:i + len(w.args)])
            i += len(w.args)
            if not w.grad:
                outs.append(w.f(*args))
                continue

            def g(*diff, w=w, args=args):
                full = list(args)
                for j, d in zip(w.grad, diff, strict=True):
                    full[j] = d
                return w.f(*full)

            outs.append(mx.vjp(g, [args[j] for j in w.grad], [c]))
        return outs

    compiled = mx.compile(run)
    return median_time(lambda: compiled(*flat), repeats, best=best)


GRADIENT_SUMS = "gradient sums of arrays read twice or more"


def _sum(*terms: mx.array) -> mx.array:
    """What the backward does with the cotangents of an array read by several ops: adds them up."""
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total


def _base_linear(m: nn.Module) -> nn.Module:
    return m.linear if isinstance(m, LoRALinear) else m


def _branch(m: LoRALinear, y0: mx.array) -> Callable[..., mx.array]:
    """``y0 + scale * dropout(x) A^T B^T`` exactly as :meth:`LoRALinear.__call__` adds it to the base
    output ``y0`` (the native fused op under the same condition, else MLX's ops)."""

    def branch(a: mx.array, la: mx.array, lb: mx.array) -> mx.array:
        if type(m) is LoRALinear and a.dtype == y0.dtype == la.dtype == lb.dtype == mx.float32:
            fused = fused_lora_add()
            if fused is not None:
                return fused(y0, m.dropout(a), la, lb, m.scale)
        z = (m.dropout(a) @ la.T) @ lb.T
        return y0 + (m.scale * z).astype(a.dtype)

    return branch


def _layer_work(layer: nn.Module, bias: mx.array | None, shape: tuple[int, ...],
                input_grad: bool) -> dict[str, list[_Work]]:
    """One encoder layer's work, by kind, with that layer's modules, on fresh inputs of the hidden
    states' ``shape`` (fresh per layer, so a compiled graph cannot share one layer's result with another).
    ``input_grad``: whether the step needs the gradient of the layer's input (not for the first layer
    of a frozen embedding: its Q, K, V and first residual then run forward only, as in the step)."""
    att, inter, out = layer.attention.self, layer.intermediate, layer.output
    so = layer.attention.output
    x = mx.random.normal(shape)
    i_in = mx.random.normal((*shape[:-1], _base_linear(inter.dense).weight.shape[0]))
    work: dict[str, list[_Work]] = {"linear GEMMs (Q,K,V,O,FFN)": [], "LoRA branches": []}
    for k, m in enumerate((att.query, att.key, att.value, so.dense, inter.dense, out.dense)):
        src = i_in if m is out.dense else x
        src_grad = input_grad or k >= 3  # Q, K, V read the layer's input
        base = _base_linear(m)
        work["linear GEMMs (Q,K,V,O,FFN)"].append(_Work(lambda a, base=base: base(a), [src], (0,) if src_grad else ()))
        if isinstance(m, LoRALinear) and not m.merged:
            # the base output the branch is added to: a constant here, evaluated now (a lazy array captured
            # by the compiled graph would be recomputed on every call and timed with the branch)
            y0 = base(src)
            mx.eval(y0)
            work["LoRA branches"].append(_Work(_branch(m, y0), [src, m.lora_a, m.lora_b],
                                               (0, 1, 2) if src_grad else (1, 2)))
    qkv = [mx.random.normal(shape) for _ in range(3)]
    scale = 1.0 / math.sqrt(att.head_dim)
    work["attention (QK^T, softmax, dropout, PV)"] = [_Work(
        lambda a, b, c: ops.multi_head_attention(a, b, c, bias, att.num_heads, scale, att.dropout), qkv, (0, 1, 2))]
    work["GELU"] = [_Work(inter.act, [mx.random.normal(i_in.shape)], (0,))]
    # each sub-layer's end, LayerNorm(dropout(h) + residual), as the model runs it (one native op on the CPU);
    # the attention sub-layer's residual is the layer's input
    # the backward's sums where an array is read more than once (x by Q, K, V, their branches and the
    # residual; the attention's output by O and its branch; the sub-layer's output by the FFN and the
    # residual; GELU's output by the FFN's down projection and its branch): n reads, n - 1 adds
    lora = lambda m: int(isinstance(m, LoRALinear) and not m.merged)  # noqa: E731 - a short count
    reads = [(3 + sum(lora(m) for m in (att.query, att.key, att.value)) + 1 if input_grad else 0, shape),
             (1 + lora(so.dense), shape), (2 + lora(inter.dense), shape), (1 + lora(out.dense), i_in.shape)]
    work[GRADIENT_SUMS] = [_Work(_sum, [mx.random.normal(s) for _ in range(n)], ()) for n, s in reads if n > 1]
    work["dropout + residual add + layer norm (x2)"] = [
        _Work(lambda a, r, d=d, ln=ln: ops.dropout_add_norm(a, r, d, ln), [mx.random.normal(shape), mx.random.normal(shape)],
              (0, 1) if res_grad else (0,))
        for d, ln, res_grad in ((so.dropout, so.LayerNorm, input_grad), (out.dropout, out.LayerNorm, True))]
    return work


def _parts(model: nn.Module, ids: mx.array, mask: mx.array, labels: mx.array, repeats: int,
           optimizer: optim.Optimizer | None, best: bool) -> dict[str, float]:
    """Seconds per step of each part (see the module's docstring), by name."""
    bert = model.bert
    layers = list(bert.encoder.layer)
    x = bert.embeddings(ids)
    bias = bert.attention_bias(mask, x)
    mx.eval(x, bias)
    embed = mx.compile(lambda i: bert.embeddings(i))
    parts: dict[str, float] = {"embeddings": median_time(lambda: embed(ids), repeats, best=best)}
    # the first layer's input is the embeddings' output: it needs a gradient only where they are trained
    embed_trained = bool(tree_flatten(bert.embeddings.trainable_parameters()))
    per_layer = [_layer_work(layer, bias, x.shape, embed_trained or i > 0) for i, layer in enumerate(layers)]
    for name in per_layer[0]:
        parts[name] = _time_group([w for work in per_layer for w in work[name]], repeats, best)
    # the head and the loss: pooling, the head's layers, the loss; the gradient back to the hidden states
    # (the head's own parameter gradients are a rounding error of it: a few hidden x labels weights)
    parts["head and loss"] = _time_group([_Work(lambda h: model.loss(model.logits_from_hidden(h, mask), labels), [x], (0,))],
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
    return parts


def profile_step(model: nn.Module, ids: mx.array, mask: mx.array, labels: mx.array, step_s: float,
                 repeats: int = 5, optimizer: optim.Optimizer | None = None, best: bool = False) -> StepProfile:
    """The parts of one train step of ``model`` (BERT family, in train mode) on ``ids``/``mask`` and
    ``labels``, against ``step_s``, the step measured the usual way. ``optimizer`` (default AdamW)
    is what the step updates the trainable parameters with; ``best``: each part's fastest run, not its
    median (then time ``step_s`` the same way)."""
    # A part returns all its layers' outputs and gradients at once: with MLX's small CPU buffer cache
    # those would go back to the OS after every call and fault in fresh pages on the next, a cost the
    # step in training does not pay (cache_step_memory). Keep them cached meanwhile.
    cache_limit = mx.set_cache_limit(1 << 40)
    try:
        parts = _parts(model, ids, mask, labels, repeats, optimizer, best)
    finally:
        mx.set_cache_limit(cache_limit)
        mx.clear_cache()
    return StepProfile(step_s, tuple(ProfilePart(k, v) for k, v in parts.items()))
