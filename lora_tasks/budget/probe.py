"""The cost probe: time a few compiled train steps and forward passes of the model to be trained.

Why time instead of counting FLOPs: on a CPU the speed of MLX depends on the BLAS, the compiled
kernels, the cores and what else runs on them; a few real steps of the same compiled step the
engine builds (:func:`lora_tasks.training.train.train`) are the only estimate that holds.

Why it is nearly free:
- it times a small batch (about :data:`PROBE_TOKENS` tokens; the costs are per row, and a plan
  scales them to its own batch), three steps after the one that compiles, the fastest of them kept;
- what it measured is kept in the user's cache dir (:mod:`lora_tasks.budget.cache`), keyed by the
  machine, the model, the compute dtype and the width; a later run, on any competition, reuses
  the points near its own width (:func:`lora_tasks.budget.costs.costs_from_points`) and measures
  only when none is near. :class:`ProbeResult` says which happened, for the plan's reasons.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
from mlx import nn

from lora_tasks.budget.cache import ProbeProfile, load_points, probe_cache_dir, save_point
from lora_tasks.budget.costs import StepCosts, costs_from_points, length_bucket
from lora_tasks.data.duration import format_duration
from lora_tasks.hub import resolve_model_dir
from lora_tasks.training.factory import build_model
from lora_tasks.training.precision import compute_dtype_choice
from lora_tasks.training.prefix_cache import FromPrefix, first_adapted_layer
from lora_tasks.training.step_memory import cache_step_memory
from lora_tasks.training.train import TrainConfig, make_schedule

log = logging.getLogger("lora_tasks.budget")

#: ``top_layers`` -> a fresh model whose trainable parameters are the adapters on the top
#: ``top_layers`` encoder layers and the head (None: adapters on every layer).
ModelFactory = Callable[[int | None], nn.Module]
DEFAULT_TIMED_TOPS = (2,)  # the ladder's depth; other depths are interpolated
#: Tokens in one timed batch: enough rows that the GEMMs run at their usual speed, few enough that
#: a step at 384 tokens takes a fraction of a second. Costs are linear in rows at these sizes.
PROBE_TOKENS = 1536
MIN_PROBE_ROWS = 2
#: Timed steps after the one that compiles. Each timing is the fastest of them: another process
#: on the cores, or a first step that still faults in fresh buffers, only ever slows a step, and a
#: slow point kept in the cache would make every later plan on this machine too cautious.
PROBE_STEPS = 3


def probe_rows(width: int, batch_size: int) -> int:
    """Rows of the timed batch at ``width`` tokens: about :data:`PROBE_TOKENS` tokens, at most the batch."""
    return int(max(1, min(batch_size, max(MIN_PROBE_ROWS, math.ceil(PROBE_TOKENS / max(width, 1))))))


@dataclass(frozen=True)
class ProbeResult:
    """Step costs and where they came from: ``source`` is ``"measured"`` (timed now, then cached) or
    ``"reused"`` (from the cache, no model built); ``how`` says which points, or how long it took."""

    costs: StepCosts
    source: str
    how: str
    seconds: float
    dtype: str
    points_key: str = ""  # where this model's points are kept (:func:`lora_tasks.budget.cache.forget_points`)

    @property
    def reason(self) -> str:
        """One line for a plan's reasons."""
        c = self.costs
        return (f"cost_probe: {self.source} ({self.how}); {c.model}, {self.dtype}, on {c.machine}: full step "
                f"{c.full_step_s:.3f} s for {c.batch_size} rows at {c.seq_len} tokens")


def probe_costs(
    factory: ModelFactory,
    *,
    model_id: str,
    seq_len: int,
    batch_size: int,
    cache_dir: str | os.PathLike | None = None,
    dtype: str = "float32",
    timed_tops: tuple[int, ...] = DEFAULT_TIMED_TOPS,
    steps: int = PROBE_STEPS,
    seed: int = 0,
) -> ProbeResult:
    """Step costs of the model ``factory`` builds at the length bucket of ``seq_len``: from the points
    this machine measured before for this model and ``dtype`` (``cache_dir``, default
    :func:`~lora_tasks.budget.cache.probe_cache_dir`) when one is near, else timed now and kept there.
    ``dtype`` is the compute dtype ``factory`` builds in (it keys the cache; the factory decides)."""
    t0 = time.perf_counter()
    folder = probe_cache_dir() if cache_dir is None else cache_dir
    bucket = length_bucket(seq_len)
    profile = ProbeProfile.here(model_id, dtype, timed_tops)
    found = costs_from_points(load_points(profile, folder), bucket)
    if found is not None:
        costs, how = found
        result = ProbeResult(costs, "reused", how, time.perf_counter() - t0, dtype, profile.points_key(folder))
        log.info("cost probe: reused %s (%s, %s), no measurement", how, model_id, dtype)
        return result
    rows = probe_rows(bucket, batch_size)
    costs = measure_costs(factory, seq_len=bucket, batch_size=rows, timed_tops=timed_tops, steps=steps,
                          seed=seed, machine=profile.machine, model_id=model_id)
    save_point(profile, costs, folder)
    took = time.perf_counter() - t0
    log.info("cost probe: %s (%s) at %d tokens, %d rows, measured in %.1f s: full step %.3f s, %s, forward %.4f s/row",
             model_id, dtype, bucket, rows, took, costs.full_step_s,
             ", ".join(f"top {n} step {s:.3f} s" for n, s in costs.top_step_s), costs.forward_row_s)
    return ProbeResult(costs, "measured", f"measured in {format_duration(took)}, {rows} rows at {bucket} tokens",
                       took, dtype, profile.points_key(folder))


def measure_costs(
    factory: ModelFactory,
    *,
    seq_len: int,
    batch_size: int,
    timed_tops: tuple[int, ...] = DEFAULT_TIMED_TOPS,
    steps: int = PROBE_STEPS,
    seed: int = 0,
    machine: str = "",
    model_id: str = "",
) -> StepCosts:
    """Time (no cache), on ``batch_size`` rows of ``seq_len`` tokens: the full-depth step, a step
    from the prefix at each of ``timed_tops``, and the forward pass per row. Each timing is the
    fastest of ``steps`` after one warm-up step (which compiles)."""
    if steps < 1:
        raise ValueError(f"steps={steps}; time at least one step.")
    rng = np.random.default_rng(seed)
    full = factory(None)
    num_layers = _num_layers(full)
    ids, mask, types = _inputs(full, rng, batch_size, seq_len)
    full_step = _time_steps(full, (ids, mask, types), rng, steps)
    forward_row = _time_forward(full, (ids, mask, types), steps) / batch_size
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
    """Seconds of the engine's compiled train step (loss, gradients, clipping, AdamW with its
    schedule) on ``inputs``: the fastest of ``steps`` after the one that compiles."""
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
        # as training does after each step: the next step reuses this one's buffers instead of faulting in fresh
        # pages, which a probe step would otherwise pay and a training step does not
        cache_step_memory()
    return float(min(times))


def _time_forward(model: nn.Module, inputs: tuple[mx.array, mx.array, mx.array], repeats: int) -> float:
    """Seconds of one eval-mode forward pass over ``inputs`` (prediction's path), the fastest of
    ``repeats``. No warm-up: nothing is compiled, and the train steps timed before it loaded the
    same kernels."""
    model.eval()
    times = []
    try:
        for _ in range(repeats):
            t = time.perf_counter()
            mx.eval(model(*inputs))
            times.append(time.perf_counter() - t)
    finally:
        model.train()
    return float(min(times))


def model_identity(model: str | os.PathLike | None, tiny: bool = False) -> str:
    """A name for the cache key that changes when the model does: its folder's name and a hash
    of its config.json (``tiny`` for the tiny random test model)."""
    if tiny:
        return "tiny"
    folder = resolve_model_dir(model)
    config = folder / "config.json"
    digest = hashlib.sha256(config.read_bytes()).hexdigest()[:8] if config.exists() else "noconfig"
    name = folder.parent.name if folder.name == "model" else folder.name  # a packaged model's folder is model/
    return f"{name}-{digest}"


def probe_for_plan(
    head_type: str,
    preset: str,
    num_labels: int,
    *,
    model: str | os.PathLike | None,
    tiny: bool,
    seq_len: float,
    batch_size: int,
    cache_dir: str | os.PathLike | None = None,
    compute_dtype: str = "float32",
    timed_tops: tuple[int, ...] = DEFAULT_TIMED_TOPS,
) -> ProbeResult:
    """:func:`probe_costs` for the model the pipeline would build (:func:`lora_tasks.training.factory.build_model`),
    in the dtype ``compute_dtype`` resolves to here. The head is not part of the key: a linear head
    is a rounding error of a step, so a binary and a regression competition share their points."""
    dtype = compute_dtype_choice(compute_dtype).name

    def factory(top: int | None) -> nn.Module:
        return build_model(head_type, preset, num_labels, model=model, tiny=tiny, top_layers=top, compute_dtype=dtype)[0]

    return probe_costs(factory, model_id=f"{model_identity(model, tiny)}:{preset}", seq_len=math.ceil(seq_len),
                       batch_size=batch_size, cache_dir=cache_dir, dtype=dtype, timed_tops=timed_tops)
