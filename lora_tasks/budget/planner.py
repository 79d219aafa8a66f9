"""The planner: the best candidate, in a written order, whose estimated cost fits the time limit.

Why a ladder written as a table (like the auto-config rules): which setting gives way first is
a judgment about quality per second, and it must be readable, testable and shown by ``--plan``.
The order: adapters on the top layers over the frozen-prefix cache and fewer epochs first (the
shipped recipes train the top 2 layers at little loss), then fewer folds, then shorter rows
(a wide table's text cut to its first tokens: every part of the cost shrinks with the width, but
the cut columns are lost to the adapters, so it comes last). The first rung that fits wins; each
rung tried is recorded with its estimate. Every rung keeps K >= 2 folds, so every row still gets
an out-of-fold prediction for the blend.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from lora_tasks.budget.costs import (
    Candidate,
    CostEstimate,
    MemberCosts,
    StepCosts,
    Workload,
    estimate_cost,
    scales_to,
)
from lora_tasks.data.duration import format_duration, limit_argument

#: The time a run gets without ``--time-limit``: 20 minutes. Why: the first run of a new user
#: should end while they wait. On 2 CPU cores an untuned run on up to ~10,000 short rows (~70
#: tokens) fits this with the top 2 layers trained over the frozen-prefix cache for 2-3 epochs
#: on 3-5 folds, which is the regime where the adapters still add to the scikit-learn members;
#: the full-depth default of the rule table would take hours there (issue 23).
DEFAULT_TIME_LIMIT_S = 20 * 60.0
#: Download, tokenizing, blending, writing and checking the submission: the part of a run the
#: plan does not choose.
DEFAULT_OVERHEAD_S = 60.0
#: Plan to this share of the limit: the estimate is a model of a shared machine, and the
#: run-time :class:`~lora_tasks.budget.deadline.EpochBudget` keeps the rest as its margin.
PLAN_SHARE = 0.9


@dataclass(frozen=True)
class Rung:
    """One line of the ladder: caps applied to the rules' settings (None: keep)."""

    name: str
    change: str
    top_layers: int | None = None
    epochs: int | None = None
    n_folds: int | None = None
    max_seq_len: int | None = None  # tokens per row, the rest of a longer row cut

    def apply(self, base: Candidate) -> Candidate:
        top = base.top_layers
        if self.top_layers is not None:
            top = self.top_layers if top is None else min(top, self.top_layers)
        epochs = base.epochs if self.epochs is None else min(base.epochs, self.epochs)
        folds = base.n_folds if self.n_folds is None else min(base.n_folds, self.n_folds)
        seq = base.max_seq_len
        if self.max_seq_len is not None:
            seq = self.max_seq_len if seq is None else min(seq, self.max_seq_len)
        return replace(base, name=self.name, top_layers=top, epochs=epochs, n_folds=folds, max_seq_len=seq)


LADDER: tuple[Rung, ...] = (
    Rung("as_planned", "the rules' (or the recipe's) settings unchanged"),
    Rung("top2", "adapters on the top 2 layers, trained over the frozen-prefix cache", top_layers=2),
    Rung("top2_epochs3", "top 2 layers, at most 3 epochs", top_layers=2, epochs=3),
    Rung("top2_epochs2", "top 2 layers, at most 2 epochs", top_layers=2, epochs=2),
    Rung("top2_epochs2_folds3", "top 2 layers, 2 epochs, at most 3 folds", top_layers=2, epochs=2, n_folds=3),
    Rung("top2_epochs2_folds2", "top 2 layers, 2 epochs, 2 folds", top_layers=2, epochs=2, n_folds=2),
    Rung("top2_epochs2_folds2_seq128", "top 2 layers, 2 epochs, 2 folds, rows cut to 128 tokens",
         top_layers=2, epochs=2, n_folds=2, max_seq_len=128),
    Rung("top1_epochs1_folds2_seq64", "the top layer, 1 epoch, 2 folds, rows cut to 64 tokens",
         top_layers=1, epochs=1, n_folds=2, max_seq_len=64),
)


def ladder_markdown(ladder: tuple[Rung, ...] = LADDER) -> str:
    """The ladder as markdown, for docs/autoconfig.md after the rule table."""
    lines = ["| # | rung | then |", "|---|---|---|"]
    lines += [f"| {i} | `{r.name}` | {r.change} |" for i, r in enumerate(ladder, 1)]
    return "\n".join(lines)


class BudgetError(RuntimeError):
    """No plan with adapters fits the time limit; the message gives the options."""


@dataclass(frozen=True)
class BudgetChoice:
    """The planner's answer: the chosen estimate (None when nothing fits) and why."""

    limit_s: float
    plan_s: float  # the share of the limit the plan may fill
    chosen: CostEstimate | None
    considered: tuple[CostEstimate, ...]
    members_only_s: float
    reason: str

    @property
    def fits(self) -> bool:
        return self.chosen is not None

    @property
    def reasons(self) -> list[str]:
        """One line per rung tried, then the decision: for ``TrainSettings.reasons``."""
        lines = [f"budget: {e.candidate.name} ({e.candidate.describe()}) {e.reason}" for e in self.considered]
        return [*lines, f"budget: {self.reason}"]

    @property
    def adapters_need(self) -> str:
        """The ``--time-limit`` the cheapest considered plan with adapters needs, e.g. ``40m``."""
        cheapest = min(e.total_s for e in self.considered)
        return limit_argument(cheapest / PLAN_SHARE)

    @property
    def members_fit(self) -> bool:
        """Whether the scikit-learn members alone fit the plan's share of the limit."""
        return self.members_only_s <= self.plan_s

    def raise_if_unfit(self) -> CostEstimate:
        if self.chosen is None:
            raise BudgetError(self.reason)
        return self.chosen


def candidates(base: Candidate, ladder: tuple[Rung, ...] = LADDER) -> list[Candidate]:
    """The ladder applied to ``base``, in order, without repeats (a rung that changes nothing
    over an earlier one is skipped)."""
    seen: set[tuple] = set()
    out: list[Candidate] = []
    for rung in ladder:
        c = rung.apply(base)
        key = (c.n_folds, c.epochs, c.top_layers, c.batch_size, c.max_seq_len)
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


def grow_within(est: CostEstimate, base: Candidate, work: Workload, costs: StepCosts, members: MemberCosts,
                plan_s: float, overhead_s: float) -> CostEstimate:
    """``est`` grown back towards ``base`` (the rules' settings) while its estimate fits ``plan_s``: one
    more fold, else one more epoch, until neither fits or both are the rules' again.

    Why: the ladder's rungs are coarse. The first that fits can sit far below the limit (a text set
    at 10 minutes: 2 folds x 2 epochs estimated at 5.7 of its 9 planned minutes, the costlier rung at
    over 9), and a short limit then ends with a third or more of it unused. Folds first, as the ladder
    cuts them after the epochs: more of the rows train each fold's adapter, and more adapters average.
    Never past the rules' folds or epochs, nor back over a layer or row-length cut (those change
    what one step costs, which the cut rung was priced at)."""
    while True:
        cand = est.candidate
        larger = ([replace(cand, n_folds=cand.n_folds + 1)] if cand.n_folds < base.n_folds else []) + (
            [replace(cand, epochs=cand.epochs + 1)] if cand.epochs < base.epochs else [])
        fitting = [e for e in (estimate_cost(c, work, costs, members, overhead_s) for c in larger) if e.total_s <= plan_s]
        if not fitting:
            return est
        est = fitting[0]


def plan_within_budget(
    base: Candidate,
    work: Workload,
    costs: StepCosts,
    members: MemberCosts,
    limit_s: float = DEFAULT_TIME_LIMIT_S,
    *,
    overhead_s: float = DEFAULT_OVERHEAD_S,
    ladder: tuple[Rung, ...] = LADDER,
) -> BudgetChoice:
    """Walk the ladder from ``base`` (the rules' settings) and pick the first candidate whose
    estimate fits ``PLAN_SHARE`` of ``limit_s``, grown back towards ``base`` while it fits
    (:func:`grow_within`); when none does, the reason names the cheapest
    one's estimate and the two ways out (``--no-adapters``, a larger ``--time-limit``)."""
    if not (math.isfinite(limit_s) and limit_s > 0):
        raise ValueError(f"limit_s={limit_s}; the time limit must be a positive number of seconds.")
    plan_s = limit_s * PLAN_SHARE
    members_only_s = members.seconds + overhead_s
    considered: list[CostEstimate] = []
    for cand in candidates(base, ladder):
        est = estimate_cost(cand, work, costs, members, overhead_s)
        considered.append(est)
        if est.total_s <= plan_s:
            skipped = f" ({len(considered) - 1} costlier rung(s) did not fit)" if len(considered) > 1 else ""
            grown = grow_within(est, base, work, costs, members, plan_s, overhead_s)
            regrown = (f"; then grown back towards the rules' settings to fill the limit: "
                       f"{grown.candidate.describe()}, {grown.reason}") if grown is not est else ""
            reason = (f"chose {cand.name}: {cand.describe()}, {est.reason}, within {format_duration(plan_s)} "
                      f"of the {format_duration(limit_s)} limit{skipped}{regrown}")
            return BudgetChoice(limit_s, plan_s, grown, tuple(considered), members_only_s, reason)
    cheapest = min(considered, key=lambda e: e.total_s)
    members_note = (f"--no-adapters (the scikit-learn blend alone, estimated {format_duration(members_only_s)})"
                    if members_only_s <= plan_s else
                    f"--no-adapters (the scikit-learn blend alone, estimated {format_duration(members_only_s)}, "
                    "also over the limit)")
    unfit = BudgetChoice(limit_s, plan_s, None, tuple(considered), members_only_s, "")
    reason = (f"no plan with adapters fits {format_duration(plan_s)} of the {format_duration(limit_s)} limit: "
              f"the cheapest, {cheapest.candidate.name} ({cheapest.candidate.describe()}), is {cheapest.reason}. "
              f"Options: {members_note}, or --time-limit {unfit.adapters_need} or more.")
    return replace(unfit, reason=reason)


def reprice_at_width(choice: BudgetChoice, base: Candidate, work: Workload, costs: StepCosts, members: MemberCosts,
                     measure_at: Callable[[float], StepCosts], *, overhead_s: float = DEFAULT_OVERHEAD_S,
                     ladder: tuple[Rung, ...] = LADDER) -> BudgetChoice:
    """``choice`` priced again with costs measured at its own width, when ``costs`` were measured too
    far from it to be scaled (:func:`~lora_tasks.budget.costs.scales_to`; a rung that cut the rows
    to 128 tokens, priced from a step at 512): ``measure_at(width)`` gives them (the
    probe, or its cache). The ladder is walked again from the chosen rung down with them, and the
    rungs above it keep their verdict: they did not fit at the width they were priced at. ``choice``
    as it is when the widths are close.

    Why: a step's cost is only close to linear in tokens over a small range; scaled over a factor of
    four, an essay set's epoch at 128 tokens came out well under what it took."""
    if choice.chosen is None:
        return choice
    chosen = choice.chosen.candidate
    width = chosen.width(work)
    if scales_to(costs.seq_len, width):
        return choice
    near = measure_at(width)
    start = next((i for i, rung in enumerate(ladder) if rung.name == chosen.name), 0)
    again = plan_within_budget(base, work, near, members, choice.limit_s, overhead_s=overhead_s, ladder=ladder[start:])
    above = choice.considered[:-1]  # the last rung considered is the chosen one, priced again here
    note = (f"priced again at {near.seq_len} tokens (the probe's costs there; the rungs above were priced at "
            f"{costs.seq_len})")
    reason = f"{again.reason}; {note}" if again.fits else again.reason
    return replace(again, considered=tuple(above) + again.considered, reason=reason)
