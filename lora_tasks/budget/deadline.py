"""Keeping the budget while training: cut epochs when behind, and let the members earn their time.

Why at run time as well as in the plan: the plan's estimate is a model of a shared machine, and a
fold can run 20% slower than its probe. The training loop consults an :class:`EpochBudget`
after every epoch; it answers from the measured epoch times and the wall-clock
:class:`Deadline`. Every fold still trains at least one epoch (each row needs its out-of-fold
prediction) and keeps its best checkpoint, so a cut costs quality, never a missing fold.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from lora_tasks.data.duration import format_duration


@dataclass(frozen=True)
class Deadline:
    """The run's end: a wall-clock start (``time.time()``, so worker processes agree) and a limit."""

    limit_s: float
    started_at: float
    clock: Callable[[], float] = field(default=time.time, compare=False, repr=False)

    @classmethod
    def start(cls, limit_s: float, clock: Callable[[], float] = time.time) -> Deadline:
        if not (math.isfinite(limit_s) and limit_s > 0):
            raise ValueError(f"limit_s={limit_s}; a deadline needs a positive number of seconds.")
        return cls(float(limit_s), clock(), clock)

    def elapsed(self) -> float:
        return self.clock() - self.started_at

    def remaining(self) -> float:
        return self.limit_s - self.elapsed()


@dataclass(frozen=True)
class EpochDecision:
    """After an epoch: whether this fold stops, and the epochs of this and every later fold."""

    stop_fold: bool
    epochs_this_fold: int
    epochs_later_folds: int
    behind: bool  # even the minimum epochs overrun the limit
    reason: str


@dataclass(frozen=True)
class EpochBudget:
    """The plan's training facts; :meth:`after_epoch` turns them and the clock into a decision.

    ``epoch_s``: the plan's estimate of one adapter-epoch (replaced by the measured epochs once
    there are some). ``predict_s``: one fold's predictions after its training. ``reserve_s``:
    what still runs after the last fold (members not yet fitted, blend, submission). Folds are
    counted in the order they train (``position`` 0 is the first fold trained).
    """

    deadline: Deadline
    n_folds: int
    epochs: int
    epoch_s: float
    predict_s: float = 0.0
    reserve_s: float = 0.0
    min_epochs: int = 1

    def __post_init__(self) -> None:
        if self.n_folds < 1 or self.epochs < 1 or not 1 <= self.min_epochs <= self.epochs:
            raise ValueError(f"n_folds={self.n_folds}, epochs={self.epochs}, min_epochs={self.min_epochs}: "
                             "need n_folds >= 1 and 1 <= min_epochs <= epochs.")
        if not (math.isfinite(self.epoch_s) and self.epoch_s > 0):
            raise ValueError(f"epoch_s={self.epoch_s}; the estimate must be a positive number of seconds.")

    def with_epochs(self, epochs: int) -> EpochBudget:
        """The same budget planning ``epochs`` per fold (after a members decision)."""
        return replace(self, epochs=max(self.min_epochs, int(epochs)), min_epochs=min(self.min_epochs, max(1, int(epochs))))

    def after_epoch(self, position: int, epochs_done: int, epoch_seconds: Sequence[float] = ()) -> EpochDecision:
        """Decide after ``epochs_done`` epochs of the fold at ``position``: the most epochs per fold
        (at most the plan's) such that the rest of this fold, every later fold and the reserve end
        by the deadline; this fold stops when it already has them. ``epochs_done=0`` gives a
        fold's epochs before it starts."""
        if not 0 <= position < self.n_folds:
            raise ValueError(f"fold position {position} is outside 0..{self.n_folds - 1}.")
        measured = [s for s in epoch_seconds if math.isfinite(s) and s > 0]
        per_epoch = sum(measured) / len(measured) if measured else self.epoch_s
        later = self.n_folds - position - 1
        available = self.deadline.remaining() - self.reserve_s - (later + 1) * self.predict_s
        fit = self.affordable_epochs(position, epochs_done, per_epoch, available)
        basis = f"{'measured' if measured else 'estimated'} {format_duration(per_epoch)} per epoch"
        left = f"{format_duration(max(available, 0))} left for training"
        if fit is None:
            need = (max(0, self.min_epochs - epochs_done) + later * self.min_epochs) * per_epoch
            reason = (f"behind: {left}, but {self.min_epochs} epoch(s) for each of the {later} later fold(s) "
                      f"need {format_duration(need)} ({basis}); this fold stops at the minimum and later folds get "
                      f"{self.min_epochs} epoch(s): the run may overrun by {format_duration(need - max(available, 0))}")
            return EpochDecision(epochs_done >= self.min_epochs, max(epochs_done, self.min_epochs),
                                 self.min_epochs, True, reason)
        stop = epochs_done >= fit
        if fit < self.epochs:
            what = "this fold stops now" if stop else f"this fold trains {fit} epoch(s)"
            reason = (f"cut: {left}, {basis}: {what} and the {later} later fold(s) get {fit} of the planned "
                      f"{self.epochs} epochs")
        else:
            reason = f"on time: {left}, {basis}: every fold keeps its {self.epochs} epochs"
        return EpochDecision(stop and epochs_done > 0, max(fit, epochs_done), fit, False, reason)

    def run_left_s(self, position: int, fold_left_s: float, epoch_seconds: Sequence[float] = ()) -> float:
        """Expected seconds until the run ends: the rest of the fold at ``position`` (the
        progress event's ``eta_s``), its predictions, the later folds and the reserve. For the
        "run done in" part of a progress line."""
        measured = [s for s in epoch_seconds if math.isfinite(s) and s > 0]
        per_epoch = sum(measured) / len(measured) if measured else self.epoch_s
        later = max(0, self.n_folds - position - 1)
        return max(0.0, fold_left_s) + self.predict_s + later * (self.epochs * per_epoch + self.predict_s) + self.reserve_s

    def affordable_epochs(self, position: int, epochs_done: int, per_epoch: float, available: float,
                          cap: int | None = None) -> int | None:
        """The most epochs per fold (``min_epochs``..``cap``, default the plan's) whose remaining
        training fits ``available`` seconds; None when not even the minimum fits."""
        later = self.n_folds - position - 1
        for epochs in range(cap or self.epochs, self.min_epochs - 1, -1):
            if (max(0, epochs - epochs_done) + later * epochs) * per_epoch <= available:
                return epochs
        return None


# ------------------------------------------------------------------------- members earn their time

#: Adapters whose early validation score trails the scikit-learn members by more than this
#: share of the members' score get fewer epochs in the remaining folds: they will likely carry
#: little weight in the blend, and the time is better left unspent.
FAR_BEHIND = 0.03

Verdict = Literal["behind", "close", "ahead"]


@dataclass(frozen=True)
class MembersDecision:
    """Epochs for the remaining folds after comparing the adapters with the members on the same rows."""

    verdict: Verdict
    epochs: int
    adapters_score: float
    members_score: float
    gap: float  # how far the adapters trail, as a share of the members' score (negative: they lead)
    reason: str


def members_earn_their_time(
    adapters_score: float,
    members_score: float,
    greater_is_better: bool,
    *,
    epochs: int,
    epochs_done: int,
    metric: str = "score",
    max_epochs: int | None = None,
    far_behind: float = FAR_BEHIND,
    may_cut: bool = True,
) -> MembersDecision:
    """Compare the first fold's adapters (after ``epochs_done`` early epochs) with the members'
    out-of-fold score on the same rows. Far behind: the remaining folds get half the planned
    ``epochs`` (at least one), unless ``may_cut`` is False (free text, where the adapters keep
    their time: an early epoch there often trails what the last one reaches). Ahead: they get
    ``max_epochs`` (what the budget affords, default the plan's). Close: the plan stands. The
    reason names both scores."""
    bad = [n for n, v in (("adapters_score", adapters_score), ("members_score", members_score)) if not math.isfinite(v)]
    if bad:
        raise ValueError(f"{', '.join(bad)} is not a finite number; compare scores of the same rows on the same metric.")
    if epochs < 1:
        raise ValueError(f"epochs={epochs}; the plan must have at least one epoch per fold.")
    trail = members_score - adapters_score if greater_is_better else adapters_score - members_score
    gap = trail / max(abs(members_score), 1e-12)
    scores = (f"the adapters' valid {metric} {adapters_score:.4f} after {epochs_done} epoch(s) against the "
              f"scikit-learn members' {members_score:.4f} ({'higher' if greater_is_better else 'lower'} is better)")
    if gap > far_behind and not may_cut:
        return MembersDecision("close", epochs, adapters_score, members_score, gap,
                               f"members: {scores}: the adapters trail by {gap:.1%}, but with free text they keep "
                               f"their time: the remaining folds keep their {epochs} epochs")
    if gap > far_behind:
        new = max(1, epochs // 2)
        return MembersDecision("behind", new, adapters_score, members_score, gap,
                               f"members: {scores}: the adapters trail by {gap:.1%} (> {far_behind:.0%}); the "
                               f"remaining folds get {new} epoch(s) instead of {epochs}")
    if gap < 0:
        new = max(epochs, max_epochs or epochs)
        more = f"{new} epochs instead of {epochs}" if new > epochs else f"their {epochs} epochs"
        return MembersDecision("ahead", new, adapters_score, members_score, gap,
                               f"members: {scores}: the adapters lead by {-gap:.1%}; the remaining folds get {more}")
    return MembersDecision("close", epochs, adapters_score, members_score, gap,
                           f"members: {scores}: the adapters trail by {gap:.1%} (<= {far_behind:.0%}); the remaining "
                           f"folds keep their {epochs} epochs")
