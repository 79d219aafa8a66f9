"""One fold's time keeping while it trains: its epochs before it starts, whether to stop after
each epoch, and (first fold only) whether the adapters earn the later folds' time.

Why a small object: the training engine only asks ``should_stop(epochs_done, epoch_seconds)``
and sends progress events; this turns those into the :class:`EpochBudget` and
:func:`members_earn_their_time` decisions, and keeps every decision's reason for the fold's
record. No MLX here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from lora_tasks.budget.deadline import EpochBudget, members_earn_their_time

log = logging.getLogger("lora_tasks.budget")


@dataclass(frozen=True)
class MembersCheck:
    """The scikit-learn members' best score on this fold's held-out rows, to compare with the
    adapters' after ``after_epochs`` epochs (same rows, same metric)."""

    members_score: float
    greater_is_better: bool
    metric: str
    after_epochs: int
    epochs: int  # the plan's epochs per fold
    #: free text: the adapters keep their epochs even when an early epoch trails the members
    keeps_epochs: bool = False


@dataclass
class FoldKeeper:
    """The time budget (None: no limit) and the members check (None: not this fold) of one fold."""

    fold: int
    budget: EpochBudget | None = None
    members: MembersCheck | None = None
    reasons: list[str] = field(default_factory=list)
    later_epochs: int | None = None  # the members decision: epochs of every later fold
    _valid_scores: dict[int, float] = field(default_factory=dict)

    def epochs(self, planned: int) -> int:
        """This fold's epochs before it starts: the plan's, cut when the run is behind."""
        if self.budget is None:
            return planned
        before = self.budget.after_epoch(self.fold, 0)
        self.reasons.append(f"fold {self.fold}, before training: {before.reason}")
        return max(1, min(planned, before.epochs_this_fold))

    def should_stop(self, done: int, epoch_seconds: list[float]) -> bool:
        """For :func:`lora_tasks.training.train.train`: decide the members check at its epoch, then
        whether the budget ends this fold now."""
        if self.members is not None and done == self.members.after_epochs and done in self._valid_scores:
            m = self.members
            decision = members_earn_their_time(self._valid_scores[done], m.members_score, m.greater_is_better,
                                               epochs=m.epochs, epochs_done=done, metric=m.metric,
                                               may_cut=not m.keeps_epochs)
            self.later_epochs = decision.epochs
            self.reasons.append(f"fold {self.fold}, after epoch {done}: {decision.reason}")
            log.info("fold %d, after epoch %d: %s", self.fold, done, decision.reason)
        if self.budget is None:
            return False
        decision = self.budget.after_epoch(self.fold, done, epoch_seconds)
        if decision.stop_fold:
            self.reasons.append(f"fold {self.fold}, after epoch {done}: {decision.reason}")
        return decision.stop_fold

    def progress(self, show: Callable[[Any], None] | None) -> Callable[[Any], None]:
        """A progress callback that remembers each epoch's validation score and adds the run's
        time left to every event before passing it to ``show``."""
        def callback(event: Any) -> None:
            if event.epoch_end and event.metric is not None and math.isfinite(event.metric):
                self._valid_scores[event.epoch] = float(event.metric)
            if show is not None:
                if self.budget is not None:
                    event = replace(event, run_eta_s=self.budget.run_left_s(self.fold, event.eta_s))
                show(event)

        return callback
