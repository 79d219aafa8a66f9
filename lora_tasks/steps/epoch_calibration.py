"""Adapter epochs priced at what the runs of the same table measured against the cost probe.

Why: the probe times a few train steps of the model on this machine, and the plan prices an epoch
from them. A run's epochs then come in 0.8x-1.2x of that price, by shape: the batch, the row width
and the frozen-prefix path move the real step away from the probe's few points, by an amount no
small probe shows. A run measures every epoch anyway, so what it measured, over the probe's price,
is kept with the table's member timings (:mod:`lora_tasks.steps.member_timings`), and the next plan
of the table multiplies the probe's train-step seconds by it. Like the members' whole-table round,
it makes a table's second run price its adapters at what this machine did on it.

Each run moves the factor halfway (in ratio, from 1 at first) to what it measured: one run slowed
by other work on the cores must not double the next plan's price. A factor outside :data:`FACTOR_RANGE` is not
kept: a clock that jumped, or a run under such load that its epochs say nothing of the probe.
"""

from __future__ import annotations

import dataclasses
import logging
import math

from lora_tasks.budget.costs import StepCosts
from lora_tasks.steps.member_timings import keep_timings, load_timings

log = logging.getLogger("lora_tasks.steps.plan")

#: Factors (measured epoch over the probe's price) a run may keep; outside, the probe's price stands.
FACTOR_RANGE = (0.5, 2.0)


def epoch_factor(key: str | None) -> float:
    """The factor kept for the table under ``key``; 1.0 when none was kept (or no key)."""
    timings = load_timings(key) if key else None
    factor = timings.epoch_factor if timings is not None else None
    return float(factor) if factor is not None and _in_range(factor) else 1.0


def calibrated(costs: StepCosts, factor: float) -> StepCosts:
    """``costs`` with the train steps (every timed depth, and the full step) times ``factor``; the
    forward pass, which the run's epochs barely measure, as it is."""
    if factor == 1.0:
        return costs
    return dataclasses.replace(costs, full_step_s=costs.full_step_s * factor,
                               top_step_s=tuple((k, s * factor) for k, s in costs.top_step_s))


def reason(factor: float) -> str | None:
    """The plan's reason for a factor other than 1 (None for 1)."""
    if factor == 1.0:
        return None
    return (f"budget: adapter epochs priced at {factor:.2f}x the cost probe's step times, what the earlier runs of "
            f"this table measured against it (steps.epoch_calibration)")


def remember_epochs(key: str | None, estimated_s: float, used_factor: float, measured_s: float) -> float | None:
    """Keep the factor for the table under ``key`` after a run whose epochs took ``measured_s`` against
    the plan's ``estimated_s`` (priced with ``used_factor``): halfway, in ratio, from the kept
    factor (1 when none) to this run's. Returns the factor kept, or None: no key or timings, a number that is
    not finite, or a factor outside :data:`FACTOR_RANGE`."""
    timings = load_timings(key) if key else None
    values = (estimated_s, used_factor, measured_s)
    if timings is None or not all(math.isfinite(v) and v > 0 for v in values):
        return None
    this_run = measured_s / (estimated_s / used_factor)  # over the probe's own price
    if not _in_range(this_run):
        log.info("adapter epochs at %.2fx the cost probe's price: outside %s, not kept", this_run, FACTOR_RANGE)
        return None
    kept = timings.epoch_factor if timings.epoch_factor is not None and _in_range(timings.epoch_factor) else 1.0
    factor = math.sqrt(kept * this_run)
    return factor if keep_timings(key or "", dataclasses.replace(timings, epoch_factor=factor)) else None


def _in_range(factor: float) -> bool:
    return math.isfinite(factor) and FACTOR_RANGE[0] <= factor <= FACTOR_RANGE[1]


__all__ = ["FACTOR_RANGE", "calibrated", "epoch_factor", "reason", "remember_epochs"]
