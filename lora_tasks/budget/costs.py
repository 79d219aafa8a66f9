"""The cost model: measured step costs of one model on one machine -> seconds for a candidate plan.

Why a model instead of timing every candidate: a candidate differs from another in folds, epochs
and adapted layers, and all of them are sums of a few measured unit costs (a train step with
adapters on every layer, one from the frozen-prefix cache, a forward pass per row). Timing a
handful of steps once (:mod:`lora_tasks.budget.probe`) lets the planner price every candidate
in microseconds. No MLX here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lora_tasks.data.batching import bucket_indices
from lora_tasks.data.duration import format_duration

#: Length buckets the probe times at; a plan is priced at the bucket of its effective width, so
#: similar tables share one cached probe.
LENGTH_BUCKETS: tuple[int, ...] = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512)
PAD_MULTIPLE = 16  # the engine pads every batch to a multiple of this (TrainConfig.pad_to_multiple)
#: Bucketed batches are cut to their longest row, which sits above the mean length of a chunk.
BATCH_WIDTH_OVER_MEAN = 1.15


def length_bucket(width: float) -> int:
    """The smallest probe bucket holding ``width`` tokens (the largest bucket caps it)."""
    for bucket in LENGTH_BUCKETS:
        if width <= bucket:
            return bucket
    return LENGTH_BUCKETS[-1]


def effective_width(max_seq_len: int, mean_tokens: float | None) -> int:
    """Tokens per row a batch really computes: the engine cuts each length-sorted batch to its
    longest row, so short-text tables cost far less than ``max_seq_len`` suggests."""
    if mean_tokens is None or not math.isfinite(mean_tokens) or mean_tokens <= 0:
        return int(max_seq_len)
    width = math.ceil(mean_tokens * BATCH_WIDTH_OVER_MEAN / PAD_MULTIPLE) * PAD_MULTIPLE
    return int(min(max_seq_len, max(PAD_MULTIPLE, width)))


def padded_width(lengths: np.ndarray, batch_size: int, multiple: int = PAD_MULTIPLE, seed: int = 0) -> float:
    """Mean tokens per row the engine computes for these row lengths: the epoch's batches
    (:func:`lora_tasks.data.batching.bucket_indices`, as training draws them), each cut to its
    longest row rounded up to ``multiple``. Exact where :func:`effective_width` guesses from
    the mean."""
    lengths = np.asarray(lengths)
    if lengths.size == 0:
        raise ValueError("padded_width needs the token length of at least one row.")
    batches = bucket_indices(lengths, batch_size, seed=seed)
    widths = [math.ceil(max(int(lengths[b].max()), 1) / multiple) * multiple for b in batches]
    return float(np.average(widths, weights=[len(b) for b in batches]))


@dataclass(frozen=True)
class StepCosts:
    """Seconds measured on one machine for one model at one length bucket and batch size.

    ``full_step_s``: one compiled train step (forward, backward, AdamW) with adapters on every
    layer; ``top_step_s``: the same from the frozen-prefix cache, keyed by the number of adapted
    top layers that were timed; ``forward_row_s``: the full forward pass (eval mode) per row.
    """

    seq_len: int
    batch_size: int
    num_layers: int
    full_step_s: float
    top_step_s: tuple[tuple[int, float], ...]
    forward_row_s: float
    steps_timed: int = 0
    machine: str = ""
    model: str = ""

    def __post_init__(self) -> None:
        values = [self.full_step_s, self.forward_row_s, *(s for _, s in self.top_step_s)]
        bad = [v for v in values if not (math.isfinite(v) and v > 0)]
        if bad:
            raise ValueError(f"step costs must be positive finite seconds; got {bad} in {self}.")
        if self.num_layers < 1 or self.seq_len < 1 or self.batch_size < 1:
            raise ValueError(f"num_layers, seq_len and batch_size must be >= 1: {self}.")

    def step_s(self, top_layers: int | None) -> float:
        """One train step with adapters on the top ``top_layers`` layers (None: every layer).

        Between timed depths the cost grows linearly with the number of layers trained (each
        adds one layer's forward and backward); the full-depth step is the last point."""
        if top_layers is None or top_layers >= self.num_layers:
            return self.full_step_s
        timed = dict(self.top_step_s)
        if top_layers in timed:
            return timed[top_layers]
        points = sorted([*timed.items(), (self.num_layers, self.full_step_s)])
        below = [p for p in points if p[0] < top_layers]
        above = [p for p in points if p[0] > top_layers]
        if not below:  # fewer layers than the lowest timed depth: scale it down proportionally
            n, s = above[0]
            return s * top_layers / n
        (n0, s0), (n1, s1) = below[-1], above[0]
        return s0 + (s1 - s0) * (top_layers - n0) / (n1 - n0)

    def forward_rows_s(self, rows: int, layers: int | None = None) -> float:
        """Forward pass over ``rows`` rows through ``layers`` layers (None: all)."""
        share = 1.0 if layers is None else min(layers, self.num_layers) / self.num_layers
        return rows * self.forward_row_s * share

    def scaled_to(self, width: float) -> StepCosts:
        """These costs at another width (linear in tokens: at these lengths the dense layers,
        not the quadratic attention, dominate a BERT-sized layer)."""
        f = width / self.seq_len
        return StepCosts(max(1, round(width)), self.batch_size, self.num_layers, self.full_step_s * f,
                         tuple((n, s * f) for n, s in self.top_step_s), self.forward_row_s * f,
                         self.steps_timed, self.machine, self.model)


#: A cached point is scaled down to a narrower width only within ``REUSE_SCALE_LIMIT``, up to a
#: wider one only within ``REUSE_SCALE_UP_LIMIT``, and two points are interpolated only when they
#: are at most ``INTERPOLATE_SPAN`` apart: farther, attention's quadratic part and the per-step
#: overheads make a straight line wrong, so the probe measures. Why narrower up than down: scaled
#: down, the line keeps the per-step part whole and errs on the safe side; scaled up, it misses the
#: quadratic part and underprices the plan (two tables' epochs priced from 64 tokens at 128 took
#: 1.25x and 1.68x their estimate).
REUSE_SCALE_LIMIT = 2.0
REUSE_SCALE_UP_LIMIT = 1.5
INTERPOLATE_SPAN = 4.0


def scales_to(measured_at: float, width: float) -> bool:
    """Whether a point measured at ``measured_at`` tokens may be scaled to ``width`` (see
    :data:`REUSE_SCALE_LIMIT` and :data:`REUSE_SCALE_UP_LIMIT`)."""
    if width >= measured_at:
        return width / measured_at <= REUSE_SCALE_UP_LIMIT
    return measured_at / width <= REUSE_SCALE_LIMIT


def _between(a: StepCosts, b: StepCosts, width: int) -> StepCosts:
    """Per-row costs on the straight line between points ``a`` and ``b`` (narrower first), at ``width``,
    expressed at ``a``'s batch size."""
    t = (width - a.seq_len) / (b.seq_len - a.seq_len)

    def mix(va: float, vb: float) -> float:
        return ((1 - t) * va / a.batch_size + t * vb / b.batch_size) * a.batch_size

    tops = sorted(set(dict(a.top_step_s)) & set(dict(b.top_step_s)))
    return StepCosts(int(width), a.batch_size, a.num_layers, mix(a.full_step_s, b.full_step_s),
                     tuple((n, mix(a.step_s(n), b.step_s(n))) for n in tops),
                     (1 - t) * a.forward_row_s + t * b.forward_row_s, a.steps_timed, a.machine, a.model)


def costs_from_points(points: list[StepCosts] | tuple[StepCosts, ...], width: int) -> tuple[StepCosts, str] | None:
    """Costs at ``width`` tokens from points measured before on this machine (one model and dtype),
    and how they were found; None when no point is near enough and the probe must measure.

    A point at ``width`` is reused as it is; between two points at most :data:`INTERPOLATE_SPAN`
    apart, the per-row costs are interpolated; else the nearest point that :func:`scales_to` the
    width is scaled linearly (:meth:`StepCosts.scaled_to`)."""
    if not points:
        return None
    exact = [p for p in points if p.seq_len == width]
    if exact:
        return max(exact, key=lambda p: p.batch_size), f"the point cached at {width} tokens"
    below = sorted((p for p in points if p.seq_len < width), key=lambda p: p.seq_len)
    above = sorted((p for p in points if p.seq_len > width), key=lambda p: p.seq_len)
    if below and above and above[0].seq_len <= INTERPOLATE_SPAN * below[-1].seq_len:
        lo, hi = below[-1], above[0]
        return _between(lo, hi, width), f"interpolated between the points cached at {lo.seq_len} and {hi.seq_len} tokens"
    near = [p for p in points if scales_to(p.seq_len, width)]
    if not near:
        return None
    nearest = min(near, key=lambda p: abs(math.log(p.seq_len / width)))
    return nearest.scaled_to(width), f"scaled from the point cached at {nearest.seq_len} tokens"


@dataclass(frozen=True)
class Workload:
    """The table a plan trains on: rows, test rows, token widths and the members' features."""

    train_rows: int
    test_rows: int
    max_seq_len: int
    mean_tokens: float | None = None
    columns: int = 10
    text_columns: int = 0
    batch_width: float | None = None  # from :func:`padded_width` when the token lengths are known

    def __post_init__(self) -> None:
        if self.train_rows < 1 or self.test_rows < 0 or self.max_seq_len < 1:
            raise ValueError(f"a workload needs train_rows >= 1, test_rows >= 0 and max_seq_len >= 1: {self}.")

    @property
    def width(self) -> float:
        """Tokens per row a training batch computes: measured from the lengths when given."""
        if self.batch_width is not None:
            return float(self.batch_width)
        return float(effective_width(self.max_seq_len, self.mean_tokens))


@dataclass(frozen=True)
class Candidate:
    """One way to train the adapters: K >= 2 folds (every row gets an out-of-fold prediction),
    epochs, adapted layers (None: every layer), batch size and the tokens kept per row (None:
    the workload's own width)."""

    name: str
    n_folds: int
    epochs: int
    top_layers: int | None
    batch_size: int
    max_seq_len: int | None = None

    def __post_init__(self) -> None:
        if self.n_folds < 2 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"candidate {self.name!r}: n_folds must be >= 2 (out-of-fold predictions for every "
                             "row), epochs and batch_size >= 1.")
        if self.top_layers is not None and self.top_layers < 1:
            raise ValueError(f"candidate {self.name!r}: top_layers={self.top_layers}; use 1 or more, or None.")
        if self.max_seq_len is not None and self.max_seq_len < 8:
            raise ValueError(f"candidate {self.name!r}: max_seq_len={self.max_seq_len}; use 8 or more, or None.")

    def width(self, work: Workload) -> float:
        """Tokens per row a batch computes: the workload's, cut to ``max_seq_len``."""
        return work.width if self.max_seq_len is None else min(work.width, float(self.max_seq_len))

    def describe(self) -> str:
        layers = "every layer" if self.top_layers is None else f"top {self.top_layers} layer(s)"
        tokens = "" if self.max_seq_len is None else f", at most {self.max_seq_len} tokens a row"
        return f"{self.n_folds} folds × {self.epochs} epochs, adapters on {layers}, batch {self.batch_size}{tokens}"


@dataclass(frozen=True)
class MemberCosts:
    """The scikit-learn members' seconds for the whole table (all folds), and how it was found."""

    seconds: float
    how: str


#: Seconds per fold for gradient boosting + a linear model, per million cells (rows × columns),
#: plus a fixed part; TF-IDF text members cost per row of text. Deliberately generous: a
#: member estimate that is too low eats the adapters' margin, one that is too high only
#: shortens them a little.
MEMBER_FIXED_S = 2.0
MEMBER_S_PER_MCELL = 40.0
TEXT_MEMBER_S_PER_KROW = 0.6


def time_members(fit_sample: Callable[[int], object], rows: int, sample_rows: int = 1_000,
                 clock: Callable[[], float] = time.perf_counter) -> MemberCosts:
    """The members' time measured on a sample: ``fit_sample(n)`` fits them (every fold) on ``n``
    rows; the time scales linearly to ``rows`` (gradient boosting's histogram passes and the
    linear models are close to linear in rows at these sizes)."""
    n = max(1, min(rows, sample_rows))
    t0 = clock()
    fit_sample(n)
    seconds = clock() - t0
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"timing the members on {n} rows gave {seconds} s; the clock must be monotonic.")
    return MemberCosts(seconds * rows / n, f"timed on {n} of {rows} rows")


def estimate_members(work: Workload, n_folds: int) -> MemberCosts:
    """The members' time from the table's size, without running them (see
    :func:`lora_tasks.budget.probe.time_members` to measure them on a sample instead)."""
    folds = max(n_folds, 2)
    cells = (work.train_rows + work.test_rows) * max(work.columns, 1) / 1e6
    per_fold = MEMBER_FIXED_S + MEMBER_S_PER_MCELL * cells
    per_fold += TEXT_MEMBER_S_PER_KROW * work.text_columns * (work.train_rows + work.test_rows) / 1e3
    return MemberCosts(folds * per_fold, f"from {work.train_rows} rows × {work.columns} columns")


@dataclass(frozen=True)
class CostEstimate:
    """What one candidate is expected to cost, by part, in seconds."""

    candidate: Candidate
    prefix_s: float  # frozen-prefix states of train and test rows, once
    epoch_s: float  # one adapter-epoch of one fold: train steps + validation pass
    predict_s: float  # every fold's held-out and test predictions
    members_s: float
    overhead_s: float  # download, tokenizing, blending, submission
    step_s: float = 0.0  # one train step at the candidate's batch size
    steps_per_epoch: int = 0

    @property
    def adapters_s(self) -> float:
        c = self.candidate
        return self.prefix_s + c.n_folds * c.epochs * self.epoch_s + self.predict_s

    @property
    def total_s(self) -> float:
        return self.adapters_s + self.members_s + self.overhead_s

    @property
    def reason(self) -> str:
        c = self.candidate
        folds = f"{c.n_folds} folds"
        parts = []
        if self.prefix_s > 0:
            parts.append(f"prefix {format_duration(self.prefix_s)}")
        parts += [f"{folds} × {c.epochs} epochs × {format_duration(self.epoch_s)}",
                  f"predict {format_duration(self.predict_s)}", f"members {format_duration(self.members_s)}"]
        if self.overhead_s > 0:
            parts.append(f"overhead {format_duration(self.overhead_s)}")
        return f"estimated {format_duration(self.total_s)}: " + ", ".join(parts)


def estimate_cost(candidate: Candidate, work: Workload, costs: StepCosts, members: MemberCosts,
                  overhead_s: float = 0.0) -> CostEstimate:
    """Price ``candidate`` on ``work`` with ``costs`` (scaled to the candidate's width and batch
    size: a step's cost is close to linear in tokens and in rows per batch)."""
    c = candidate
    unit = costs.scaled_to(c.width(work))
    start = None if c.top_layers is None or c.top_layers >= unit.num_layers else unit.num_layers - c.top_layers
    adapted = unit.num_layers if start is None else c.top_layers
    all_rows = work.train_rows + work.test_rows
    prefix_s = 0.0 if start is None else unit.forward_rows_s(all_rows, start)
    valid_rows = max(1, round(work.train_rows / c.n_folds))
    train_rows = work.train_rows - valid_rows
    step_s = unit.step_s(c.top_layers) * c.batch_size / unit.batch_size
    steps = math.ceil(max(train_rows, 1) / c.batch_size)
    epoch_s = steps * step_s + unit.forward_rows_s(valid_rows, adapted)
    predict_s = c.n_folds * unit.forward_rows_s(valid_rows + work.test_rows, adapted)
    return CostEstimate(c, prefix_s, epoch_s, predict_s, members.seconds, overhead_s, step_s, steps)
