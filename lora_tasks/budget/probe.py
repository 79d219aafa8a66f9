"""The cost probe: time a few compiled train steps and forward passes of the model to be trained.

Why time instead of counting FLOPs: on a CPU the speed of MLX depends on the BLAS, the compiled
kernels, the cores and what else runs on them; a few real steps of the same compiled step the
engine builds (:func:`lora_tasks.training.train.train`) are the only estimate that holds. Timed once per
machine, model, length bucket and batch (:mod:`lora_tasks.budget.cache`), it takes seconds.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Callable

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
from mlx import nn

from lora_tasks.budget.cache import ProbeKey, load_costs, save_costs
from lora_tasks.budget.costs import StepCosts, length_bucket
from lora_tasks.hub import resolve_model_dir
from lora_tasks.training.factory import build_model
from lora_tasks.training.prefix_cache import FromPrefix, first_adapted_layer
from lora_tasks.training.train import TrainConfig, make_schedule

log = logging.getLogger("lora_tasks.budget")

#: ``top_layers`` -> a fresh model whose trainable parameters are the adapters on the top
#: ``top_layers`` encoder layers and the head (None: adapters on every layer).
ModelFactory = Callable[[int | None], nn.Module]
DEFAULT_TIMED_TOPS = (2,)  # the ladder's depth; other depths are interpolated
EVAL_BATCH = 64


def probe_costs(
    factory: ModelFactory,
    *,
    model_id: str,
    seq_len: int,
    batch_size: int,
    cache_dir: str | os.PathLike,
    timed_tops: tuple[int, ...] = DEFAULT_TIMED_TOPS,
    steps: int = 3,
    seed: int = 0,
) -> StepCosts:
    """Step costs of the model ``factory`` builds at the length bucket of ``seq_len``: read from
    ``cache_dir`` when this machine measured them before, else timed now and kept there."""
    bucket = length_bucket(seq_len)
    key = ProbeKey.here(model_id, bucket, batch_size, timed_tops)
    cached = load_costs(key, cache_dir)
    if cached is not None:
        return cached
    t0 = time.perf_counter()
    costs = measure_costs(factory, seq_len=bucket, batch_size=batch_size, timed_tops=timed_tops, steps=steps,
                          seed=seed, machine=key.machine, model_id=model_id)
    save_costs(key, costs, cache_dir)
    log.info("cost probe: %s at %d tokens, batch %d, measured in %.1f s: full step %.3f s, %s, forward %.4f s/row",
             model_id, bucket, batch_size, time.perf_counter() - t0, costs.full_step_s,
             ", ".join(f"top {n} step {s:.3f} s" for n, s in costs.top_step_s), costs.forward_row_s)
    return costs


def measure_costs(
    factory: ModelFactory,
    *,
    seq_len: int,
    batch_size: int,
    timed_tops: tuple[int, ...] = DEFAULT_TIMED_TOPS,
    steps: int = 3,
    seed: int = 0,
    machine: str = "",
    model_id: str = "",
) -> StepCosts:
    """Time (no cache): the full-depth step, a step from the prefix at each of ``timed_tops``,
    and the forward pass per row. Each timing is the median of ``steps`` after one warm-up
    step (which compiles)."""
    if steps < 1:
        raise ValueError(f"steps={steps}; time at least one step.")
    rng = np.random.default_rng(seed)
    full = factory(None)
    num_layers = _num_layers(full)
    ids, mask, types = _inputs(full, rng, batch_size, seq_len)
    full_step = _time_steps(full, (ids, mask, types), rng, steps)
    forward_row = _time_forward(full, rng, seq_len, steps) / EVAL_BATCH
    tops: list[tuple[int, float]] = []
    for n in sorted({t for t in timed_tops if 1 <= t < num_layers}):
        model = factory(n)
        if hasattr(model, "hidden_before"):
            start = first_adapted_layer(model)
            model.eval()
            hidden = model.hidden_before(start, ids, mask, types).astype(mx.float32)
            mx.eval(hidden)
            trainee: nn.Module = FromPrefix(model, start)
            inputs = (hidden, mask, types)
        else:  # no layer split (ModernBERT): the whole stack runs, with adapters on the top layers only
            trainee, inputs = model, (ids, mask, types)
        tops.append((n, _time_steps(trainee, inputs, rng, steps)))
    return StepCosts(seq_len, batch_size, num_layers, full_step, tuple(tops), forward_row, steps, machine, model_id)


def _num_layers(model: nn.Module) -> int:
    """Encoder layers: the layer-split models say it (``num_layers``); ModernBERT, which has no
    split, keeps them in ``model.model.layers``."""
    if hasattr(model, "num_layers"):
        return int(model.num_layers)
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise TypeError(f"{type(model).__name__} says neither num_layers nor model.layers; the cost probe cannot "
                        "count its layers.")
    return len(layers)


def _vocab_size(model: nn.Module) -> int:
    sizes = [m.weight.shape[0] for _, m in model.named_modules() if isinstance(m, nn.Embedding)]
    return max(sizes) if sizes else 100


def _inputs(model: nn.Module, rng: np.random.Generator, rows: int, width: int) -> tuple[mx.array, mx.array, mx.array]:
    vocab = _vocab_size(model)
    ids = rng.integers(min(5, vocab - 1), vocab, (rows, width)).astype(np.int32)
    return mx.array(ids), mx.ones((rows, width), dtype=mx.int32), mx.zeros((rows, width), dtype=mx.int32)


def _labels(model: nn.Module, logits: mx.array, rng: np.random.Generator) -> mx.array:
    if model.head_type == "multiclass_classification":
        return mx.array(rng.integers(0, logits.shape[-1], logits.shape[0]).astype(np.int32))
    return mx.array(rng.integers(0, 2, logits.shape).astype(np.float32))


def _time_steps(model: nn.Module, inputs: tuple[mx.array, mx.array, mx.array], rng: np.random.Generator,
                steps: int) -> float:
    """Median seconds of the engine's compiled train step (loss, gradients, clipping, AdamW with
    its schedule) on ``inputs``."""
    cfg = TrainConfig()
    model.train()
    y = _labels(model, model(*inputs), rng)
    optimizer = optim.AdamW(learning_rate=make_schedule(cfg, 100), weight_decay=cfg.weight_decay, bias_correction=True)

    def loss_fn(m: nn.Module, a: mx.array, b: mx.array, c: mx.array, labels: mx.array) -> mx.array:
        return m.loss(m(a, b, c), labels)

    loss_and_grad = nn.value_and_grad(model, loss_fn)

    def step(a: mx.array, b: mx.array, c: mx.array, labels: mx.array) -> mx.array:
        loss, grads = loss_and_grad(model, a, b, c, labels)
        optimizer.update(model, optim.clip_grad_norm(grads, cfg.grad_clip)[0])
        return loss

    state = [model.state, optimizer.state, mx.random.state]
    compiled = mx.compile(step, inputs=state, outputs=state)
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        mx.eval(compiled(*inputs, y), state)
        if i:  # the first step compiles
            times.append(time.perf_counter() - t)
    return float(np.median(times))


def _time_forward(model: nn.Module, rng: np.random.Generator, width: int, repeats: int) -> float:
    """Median seconds of one eval-mode forward pass of ``EVAL_BATCH`` rows (prediction's batch)."""
    ids, mask, types = _inputs(model, rng, EVAL_BATCH, width)
    model.eval()
    times = []
    try:
        for i in range(repeats + 1):
            t = time.perf_counter()
            mx.eval(model(ids, mask, types))
            if i:
                times.append(time.perf_counter() - t)
    finally:
        model.train()
    return float(np.median(times))


def model_identity(model: str | os.PathLike | None, tiny: bool = False) -> str:
    """A name for the cache key that changes when the model does: its folder's name and a hash
    of its config.json (``tiny`` for the tiny random test model)."""
    if tiny:
        return "tiny"
    folder = resolve_model_dir(model)
    config = folder / "config.json"
    digest = hashlib.sha256(config.read_bytes()).hexdigest()[:8] if config.exists() else "noconfig"
    return f"{folder.name}-{digest}"


def probe_for_plan(
    head_type: str,
    preset: str,
    num_labels: int,
    *,
    model: str | os.PathLike | None,
    tiny: bool,
    seq_len: float,
    batch_size: int,
    cache_dir: str | os.PathLike,
    timed_tops: tuple[int, ...] = DEFAULT_TIMED_TOPS,
) -> StepCosts:
    """:func:`probe_costs` for the model the pipeline would build (:func:`lora_tasks.training.factory.build_model`)."""
    def factory(top: int | None) -> nn.Module:
        return build_model(head_type, preset, num_labels, model=model, tiny=tiny, top_layers=top)[0]

    return probe_costs(factory, model_id=f"{model_identity(model, tiny)}:{preset}:{head_type}:{num_labels}",
                       seq_len=math.ceil(seq_len), batch_size=batch_size, cache_dir=cache_dir,
                       timed_tops=timed_tops)
