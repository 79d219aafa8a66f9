"""How much of its time limit a run used, and, when it ended well before it, why.

Why: a user who gives a run 10 minutes and gets a file after 2 wonders whether the tool gave up
early or found nothing worth the rest. The run's own decisions answer that: its steps came from
the cache of an earlier run, fold 0 showed the adapters add nothing to the members' blend, early
stopping ended the folds before their planned epochs, a part took less than the plan's estimate
of it, the plan is the rules' own (nothing was cut to fit the limit, so a longer one trains the
same), the members ran all their rounds. The summary, the log and the settings artifact say which.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lora_tasks.budget import format_duration
from lora_tasks.steps.estimates import EstimateCheck
from lora_tasks.steps.member_costs import MAX_MEMBER_ROUNDS
from lora_tasks.steps.plan import Plan
from lora_tasks.steps.train import AdapterResult, MemberResult

#: A run that ends before this share of its limit says why.
EARLY_SHARE = 0.75


@dataclass(frozen=True)
class TimeUse:
    """The run's limit, the seconds it used, and why it ended early (empty: it did not)."""

    limit_s: float
    used_s: float
    reasons: tuple[str, ...]

    @property
    def share(self) -> float:
        return self.used_s / self.limit_s

    def sentence(self) -> str:
        # a cached rerun takes seconds: say 0.8 s, not "0 s"
        took = f"{self.used_s:.1f} s" if self.used_s < 10 else format_duration(self.used_s)
        used = f"used {took} of the {format_duration(self.limit_s)} limit ({self.share:.0%})"
        return used + (": it ended early because " + "; ".join(self.reasons) if self.reasons else "")


def time_use(plan: Plan, adapters: Sequence[AdapterResult], members: Sequence[MemberResult], used_s: float,
             estimates: Sequence[EstimateCheck] = (), *, cached_steps: int = 0,
             notes: Sequence[str] = ()) -> TimeUse | None:
    """What ``used_s`` seconds were of ``plan``'s limit (None: the run had none), with the reasons a run
    ending before :data:`EARLY_SHARE` of it has, from its main adapter folds, its (bagged) members, the
    plan's ``estimates`` against what the run measured, the executor's count of ``cached_steps`` and the
    run's ``notes`` (decisions after the folds, e.g. the later seeds not trained)."""
    if plan.time_limit_s is None or plan.time_limit_s <= 0:
        return None
    limit = float(plan.time_limit_s)
    if used_s >= EARLY_SHARE * limit:
        return TimeUse(limit, used_s, ())
    reasons = []
    recorded = sum(a.seconds for a in adapters) + sum(m.seconds for m in members)
    # cached steps, and training that records more time than this whole run took: the training was read back.
    # Either alone says less: a rerun with new options finds its download cached, and folds trained in parallel
    # worker processes (--runner process) record more seconds than the run's wall time.
    if cached_steps > 0 and recorded > used_s:
        reasons.append(f"its steps came from an earlier run's cache (they record {format_duration(recorded)} of work)")
    if plan.no_adapters:
        reasons.append("the plan is the scikit-learn members alone")
    elif any(r.startswith("budget: chose as_planned") for r in plan.settings.reasons):
        reasons.append("the rules' plan fit as it is (nothing was cut to fit the limit, so a longer limit trains the "
                       "same adapters)")
    first = adapters[0] if adapters else None
    if first is not None and len(adapters) < plan.n_folds:
        why = first.failed or (first.gain.reason if first.gain is not None else "")
        reasons.append(f"the adapters stopped after fold 0 ({why})" if why else "the adapters stopped after fold 0")
    # the epochs each fold was given (fold 0's members decision may give the later folds fewer), in the folds
    # the time budget did not cut
    later = int(first.later_epochs or plan.settings.epochs) if first is not None else 0
    natural = [a for a in adapters if not a.stopped_for_time]
    trained = sum(len(a.history) for a in natural)
    planned = sum(int(plan.settings.epochs) if a.fold == 0 else later for a in natural)
    if 0 < trained < planned:
        reasons.append(f"early stopping ended the adapter folds after {trained} of their {planned} planned epochs")
    reasons += [f"{c.part} took {c.ratio:.2f}x of the plan's estimate" for c in estimates if c.ratio < 1 and not c.within]
    reasons += list(notes)
    rounds = max((m.rounds for m in members), default=0)
    if rounds >= MAX_MEMBER_ROUNDS:
        reasons.append(f"the members ran {rounds} rounds on new fold splits, the most a run takes (more rounds "
                       "change their average by less than the folds' own noise)")
    return TimeUse(limit, used_s, tuple(reasons))


__all__ = ["EARLY_SHARE", "TimeUse", "time_use"]
