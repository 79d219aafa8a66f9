"""What the plan estimated against what the run measured, part by part.

Why: the budget chooses folds, epochs and members from estimates (the cost probe's step times, the
members' timed samples). When an estimate is off, the run either leaves time unused or cuts epochs
late; the user should see by how much, and the quality benchmark collects the ratios across
competitions. Only parts the run measured on its own are compared: an adapter epoch (train steps
and the validation pass, every trained epoch of every fold) and one round of the members. The
members' first round is kept with their timings (:func:`lora_tasks.steps.member_timings.remember_round`):
the next plan of the same table prices each member at what this run measured on the whole table.
An adapter epoch well under its estimate drops the cost probe's cached points of the model
(:func:`lora_tasks.budget.cache.forget_points`), so the next plan measures them again; otherwise the
epochs' ratio to the probe's price is kept for the table (:func:`lora_tasks.steps.epoch_calibration.remember_epochs`),
and the next plan of it prices its epochs with it.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lora_tasks.budget.cache import forget_points
from lora_tasks.steps.epoch_calibration import remember_epochs
from lora_tasks.steps.member_timings import remember_round
from lora_tasks.steps.plan import Plan
from lora_tasks.steps.train import AdapterResult, MemberResult

log = logging.getLogger("lora_tasks.steps")

#: An estimate within this share of the measured time counts as on target.
TOLERANCE = 0.15
#: Epochs that took less than this share of their estimate drop the probe points that priced them.
#: Why only this way: other work on the cores only ever slows a step, so a run much faster than its
#: points shows points timed under load, which would make every later plan with the model too
#: cautious; a run slower than its points says nothing about them.
STALE_POINTS_BELOW = 0.7


@dataclass(frozen=True)
class EstimateCheck:
    """One part of the run: the plan's estimate and what the run measured, in seconds."""

    part: str
    estimated_s: float
    measured_s: float
    detail: str  # what was measured

    @property
    def ratio(self) -> float:
        """Measured over estimated (> 1: the part took longer than planned)."""
        return self.measured_s / self.estimated_s

    @property
    def within(self) -> bool:
        return abs(self.ratio - 1.0) <= TOLERANCE

    def sentence(self) -> str:
        return (f"estimate of {self.part}: {self.estimated_s:.1f} s, measured {self.measured_s:.1f} s "
                f"({self.ratio:.2f}x, {'within' if self.within else 'outside'} ±{TOLERANCE:.0%}; {self.detail})")

    def row(self) -> dict[str, object]:
        """A row of the summary's table."""
        return {"part": self.part, "estimated s": round(self.estimated_s, 1), "measured s": round(self.measured_s, 1),
                "measured / estimated": round(self.ratio, 2), f"within ±{TOLERANCE:.0%}": "yes" if self.within else "no",
                "measured": self.detail}


def estimate_checks(plan: Plan, adapters: Sequence[AdapterResult], first_members: Sequence[MemberResult]) -> list[EstimateCheck]:
    """The plan's estimates that this run measured: none without a budget (no limit, or ``--tiny``).

    ``first_members``: the members' first round (later rounds run on the time left, unplanned)."""
    checks = []
    epochs = [float(h["seconds"]) for a in adapters for h in a.history if float(h.get("seconds") or 0.0) > 0]
    if plan.epoch_s and epochs:
        measured = statistics.fmean(epochs)
        detail = f"mean of {len(epochs)} epoch(s) over {len(adapters)} fold(s)"
        stale = measured < STALE_POINTS_BELOW * plan.epoch_s and plan.cost_probe_points
        if stale and forget_points(plan.cost_probe_points, _trained_at(adapters)):
            detail += ("; faster than the cost probe's cached points said (timed while other work shared the cores), "
                       "so the next plan with this model measures them again")
        elif (factor := remember_epochs(plan.members_timing_key, plan.epoch_s, plan.epoch_factor, measured)) is not None:
            detail += f"; the next plan of this table prices its epochs at {factor:.2f}x the cost probe's"
        checks.append(EstimateCheck("one adapter epoch", float(plan.epoch_s), measured, detail))
    members_s = sum(m.seconds for m in first_members)
    if plan.members_s and members_s > 0:
        detail = f"{len(first_members)} member(s) on {plan.member_folds or plan.n_folds} folds"
        if remember_round(plan.members_timing_key or "", {m.name: m.seconds for m in first_members}):
            detail += "; the next plan of this table takes these seconds"
        checks.append(EstimateCheck("the members, one round", float(plan.members_s), members_s, detail))
    for c in checks:
        log.info("%s", c.sentence())
    return checks


def _trained_at(adapters: Sequence[AdapterResult]) -> float:
    """When the first of ``adapters`` was written (now, when none is on disk): probe points written
    after it came from a later run, and a rerun of this one from its cache must leave them."""
    times = []
    for a in adapters:
        try:
            times.append(Path(a.adapter_path).stat().st_mtime)
        except OSError:
            continue
    return min(times, default=time.time())


__all__ = ["STALE_POINTS_BELOW", "TOLERANCE", "EstimateCheck", "estimate_checks"]
