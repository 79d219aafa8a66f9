"""The members' cost, measured before the plan is priced: each member fit on two samples of the
table, its seconds extrapolated to the whole table; a table of at most :data:`WHOLE_TABLE_ROWS`
rows is fit once, whole.

Why measured: the members range from a linear model (a second) to CatBoost (minutes on a wide
table with many categoricals), and what a member costs depends on the table's columns as much as
its rows; a formula in rows × columns was off by several times either way. Two sample sizes give
each member a fixed part (per-fold set-up, inner CV) and a part per row, so neither is scaled
wrongly; once a run has fit a member on the whole table, the next plan of that table takes those
seconds instead (:mod:`lora_tasks.steps.member_timings`). Members whose estimate exceeds
:data:`MEMBER_SHARE` of the run's limit are left out before they start: a member that ends with
weight 0 must not have taken more than a quarter of the run, and one that costs more than that is
not known to earn it.

Why small tables are timed whole: there a fit's fixed part (CatBoost's start-up, HistGradientBoosting's
bags, early stopping's patience) is most of its seconds, and the number of rounds early stopping keeps
still grows with the rows, so a line through two samples overshot the whole table by 1.3-2x, and the two
samples together cost as much as one fit of the table. The samples also fit with the whole table's
size-dependent settings (``size_scale``): a sample fit with a small table's slower learning rate priced
a larger table's boosters several times too high.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lora_tasks.budget import format_duration
from lora_tasks.data.competition import CompetitionConfig
from lora_tasks.features.records import FeaturePlan
from lora_tasks.steps.member_timings import CachedTimings, builds, keep_timings, load_timings, timing_key
from lora_tasks.task import Task

log = logging.getLogger("lora_tasks.steps.plan")

#: Rows of the larger timing sample (the smaller holds half); tables up to four times this size
#: are timed on a quarter of their rows (at least :data:`MIN_SAMPLE_ROWS`).
SAMPLE_ROWS = 1_000
MIN_SAMPLE_ROWS = 200
#: Tables up to this many rows are timed once, on all their rows (see the module's docstring): the
#: plan's fit of the table costs about what the two samples did, and prices the run's round exactly.
WHOLE_TABLE_ROWS = 2_000
#: The most of the run's time limit one member may be expected to take.
MEMBER_SHARE = 0.25
#: Members whose cost grows faster than linearly in rows (an RBF SVR: kernel matrix).
ROW_EXPONENT = {"svr": 2.0}
#: The most rounds the members get in all (the first included): past this, averaging more
#: splits changes the predictions by less than the folds' own noise.
MAX_MEMBER_ROUNDS = 8
#: Rounds are planned into this share of the limit (the rest is the run's margin).
ROUNDS_SHARE = 0.85


@dataclass(frozen=True)
class MemberRounds:
    """The members' extra rounds the plan affords: ``with_adapters`` when every adapter fold
    trains, ``alone`` when fold 0 stops the adapters or none are planned."""

    with_adapters: int
    alone: int
    reason: str


def plan_member_rounds(limit_s: float, members_s: float, full_s: float, alone_s: float) -> MemberRounds:
    """The extra rounds that fit :data:`ROUNDS_SHARE` of ``limit_s`` after the plan's estimate
    (``full_s`` with every adapter fold, ``alone_s`` with fold 0 only, or the members alone), each
    round costing ``members_s`` (the members' measured estimate)."""
    def fit(spent: float) -> int:
        if members_s <= 0 or not math.isfinite(members_s):
            return 0
        return int(max(0, min(MAX_MEMBER_ROUNDS - 1, (ROUNDS_SHARE * limit_s - spent) // members_s)))

    with_adapters, alone = fit(full_s), fit(alone_s)
    reason = (f"member_rounds: {with_adapters} more round(s) of the members on new fold splits with every adapter "
              f"fold, {alone} when the adapters stop after fold 0 (each ~{format_duration(members_s)}, planned into "
              f"{ROUNDS_SHARE:.0%} of the {format_duration(limit_s)} limit; at most {MAX_MEMBER_ROUNDS} rounds in all)")
    return MemberRounds(with_adapters, alone, reason)


@dataclass(frozen=True)
class MemberCost:
    """One member's measured seconds on the samples and its estimate for the whole table:
    ``whole_table`` when the estimate is what an earlier run measured there, not extrapolated."""

    name: str
    sample_s: tuple[float, float]
    estimate_s: float
    kept: bool
    whole_table: bool = False


@dataclass(frozen=True)
class MeasuredMembers:
    """Every member's cost, the sample sizes they were timed on, and the table's rows."""

    costs: tuple[MemberCost, ...]
    sample_rows: tuple[int, int]
    rows: int
    limit_s: float
    #: the name of the cached timings these came from or went to
    #: (:func:`~lora_tasks.steps.member_timings.remember_round` adds a run's round to them)
    timing_key: str = ""

    @property
    def kept(self) -> list[str]:
        return [c.name for c in self.costs if c.kept]

    @property
    def seconds(self) -> float:
        """The kept members' estimated seconds for the whole table."""
        return float(sum(c.estimate_s for c in self.costs if c.kept))

    @property
    def timed_whole(self) -> bool:
        """Whether the table was no larger than a sample, so the members were timed once, on all of it."""
        return self.sample_rows == (self.rows, self.rows)

    @property
    def how(self) -> str:
        n1, n2 = self.sample_rows
        whole = sum(c.whole_table for c in self.costs if c.kept)
        if whole and whole == len(self.kept):
            return f"measured on all {self.rows} rows by an earlier run"
        timed = f"timed on all {self.rows} rows" if self.timed_whole else f"timed on {n1} and {n2} of {self.rows} rows"
        return f"{whole} measured on all {self.rows} rows by an earlier run, the others {timed}" if whole else timed

    @property
    def reasons(self) -> list[str]:
        """One line per member for the plan's reasons (``--plan`` and the plan artifact)."""
        cap = MEMBER_SHARE * self.limit_s
        n1, n2 = self.sample_rows
        lines = []
        for c in self.costs:
            timed = (f"{format_duration(c.sample_s[1])} on all {n2} rows" if self.timed_whole else
                     f"{format_duration(c.sample_s[0])} and {format_duration(c.sample_s[1])} on {n1} and {n2} rows")
            if c.whole_table:
                timed = f"what an earlier run of this table measured; {timed}"
            verdict = ("kept" if c.kept else f"left out: over {MEMBER_SHARE:.0%} of the "
                       f"{format_duration(self.limit_s)} limit ({format_duration(cap)})")
            lines.append(f"members: {c.name} estimated {format_duration(c.estimate_s)} for {self.rows} rows "
                         f"({timed}): {verdict}")
        return lines


def extrapolate(name: str, n1: int, t1: float, n2: int, t2: float, rows: int) -> float:
    """Seconds at ``rows`` from timings at ``n1 < n2`` rows: a fixed part plus a part per row
    (a power of rows for :data:`ROW_EXPONENT` members). A noisy pair (slope below zero) falls back
    to the larger sample's seconds per row."""
    if rows <= n2:
        return t2
    power = ROW_EXPONENT.get(name, 1.0)
    x1, x2, x = n1 ** power, n2 ** power, rows ** power
    slope = (t2 - t1) / (x2 - x1) if x2 > x1 else 0.0
    if slope <= 0:
        return t2 * x / x2
    return max(t2, t2 + slope * (x - x2))


def sample_labels(frame: pd.DataFrame, config: CompetitionConfig) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows with every target, and their labels as the members take them (class indices,
    0/1 per label column, floats)."""
    targets = list(config.target_columns)
    frame = frame[frame[targets].notna().all(axis=1)].reset_index(drop=True)
    task = Task.parse(config.task_type)
    if task.is_regression:
        values = frame[targets].astype(float).to_numpy()
        return frame, values if task.multi_output else values[:, 0]
    if task is Task.MULTILABEL:
        return frame, np.column_stack([pd.factorize(frame[c], sort=True)[0] for c in targets])
    return frame, pd.factorize(frame[targets[0]], sort=True)[0]


def measure_members(config: CompetitionConfig, train: pd.DataFrame, n_folds: int, limit_s: float,
                    seed: int = 0, class_weight: str | None = None,
                    features: FeaturePlan | None = None, whole_rows: int = WHOLE_TABLE_ROWS) -> MeasuredMembers:
    """Fit every member of the table (:func:`lora_tasks.ensemble.members.table_members`, the test
    rows left out) on two seeded samples, with ``n_folds`` folds as the run will, and
    extrapolate each member's seconds to ``train``'s rows. ``features``: the features step's plan,
    built on each sample as the members step builds it on the table, since the generated
    columns (and the target encodings fit in each fold) are part of what a member costs. The
    timings are kept per machine and table (:func:`~lora_tasks.steps.member_timings.cache_dir`):
    planning the same table again reuses them, as the cost probe does, and takes a member's seconds on the whole table from the
    last run that fit it, where there is one (:func:`~lora_tasks.steps.member_timings.remember_round`).
    A table of at most ``whole_rows`` rows is timed once, on all of them."""
    frame, y = sample_labels(train, config)
    rows = len(frame)
    n2 = rows if rows <= whole_rows else int(min(rows, max(MIN_SAMPLE_ROWS, min(SAMPLE_ROWS, rows // 4))))
    # a table timed whole is fit once: its estimate is that fit's seconds, and a half-table fit beside
    # it would cost time and tell the estimate nothing
    n1 = n2 if n2 >= rows else max(n2 // 2, min(n2, 2 * n_folds))
    key = timing_key(frame, config, n_folds, seed, class_weight, features, (n1, n2))
    timings = load_timings(key)
    if timings is None:
        timings = CachedTimings(_time_samples(config, frame, y, (n1, n2), n_folds, seed, class_weight, features))
        keep_timings(key, timings)
    return dataclasses.replace(_decide(timings, (n1, n2), rows, limit_s), timing_key=key)


def _time_samples(config: CompetitionConfig, frame: pd.DataFrame, y: np.ndarray, sizes: tuple[int, int],
                  n_folds: int, seed: int, class_weight: str | None,
                  features: FeaturePlan | None = None) -> dict[str, tuple[float, float]]:
    """Each member's seconds on the two samples (all folds, no test rows; the generated features
    built on the sample and counted in every member's share, as the members step counts them), the
    boosters' settings chosen for the whole table's rows."""
    import time

    from lora_tasks.ensemble.members import table_members  # scikit-learn's estimators load slowly
    from lora_tasks.features import build_features
    from lora_tasks.training.cv import make_folds

    rows = len(frame)
    task = Task.parse(config.task_type)
    text_columns = tuple(config.row_template(frame).text_columns)
    timings: dict[str, list[float]] = {}
    for n in dict.fromkeys(sizes):  # one fit when both sizes are the whole table
        idx = np.sort(np.random.default_rng(seed).choice(rows, size=n, replace=False))
        sub, ys = frame.iloc[idx].reset_index(drop=True), y[idx]
        if task is Task.BINARY and len(np.unique(ys)) < 2:
            raise ValueError(f"a {n}-row sample of {config.slug} holds one class only; the members cannot be timed.")
        folds = make_folds(ys, task.head_type, n_folds, seed)
        start = time.perf_counter()
        generated = build_features(features, sub) if builds(features) else None
        built_s = time.perf_counter() - start
        members = table_members(sub, ys, folds, task.value, None, text_columns=text_columns,
                                exclude=config.excluded_columns, seed=seed, class_weight=class_weight,
                                generated=generated, size_scale=rows / n)
        for m in members:
            timings.setdefault(m.name, []).append(m.seconds + built_s / max(len(members), 1))
    return {name: (t[0], t[-1]) for name, t in timings.items()}


def _decide(timings: CachedTimings, sizes: tuple[int, int], rows: int, limit_s: float) -> MeasuredMembers:
    """Each member's estimate for ``rows`` rows (an earlier run's seconds on the whole table where
    there are some, else extrapolated from the samples), and whether it fits :data:`MEMBER_SHARE`
    of the limit."""
    n1, n2 = sizes
    cap = MEMBER_SHARE * limit_s
    costs = []
    for name, (t1, t2) in timings.samples.items():
        whole = name in timings.round
        est = timings.round[name] if whole else extrapolate(name, n1, t1, n2, t2, rows)
        costs.append(MemberCost(name, (t1, t2), est, est <= cap, whole))
    if costs and not any(c.kept for c in costs):  # the cheapest member always runs: a blend needs one
        cheapest = min(costs, key=lambda c: c.estimate_s)
        costs = [dataclasses.replace(c, kept=c is cheapest) for c in costs]
    measured = MeasuredMembers(tuple(costs), (n1, n2), rows, float(limit_s))
    for line in measured.reasons:
        log.info("%s", line)
    return measured


__all__ = ["MAX_MEMBER_ROUNDS", "MEMBER_SHARE", "WHOLE_TABLE_ROWS", "MemberCost", "MemberRounds", "MeasuredMembers", "extrapolate",
           "measure_members", "plan_member_rounds"]
