"""The time budget of a run (``--time-limit``): parse it, price candidate plans, pick one, keep it.

- :mod:`.duration`: ``parse_duration("1h30m")`` and readable durations;
- :mod:`.costs`: measured unit costs (:class:`StepCosts`) -> seconds of a :class:`Candidate`;
- :mod:`.probe` (imports MLX, so not re-exported here): time the engine's step, cached on disk;
- :mod:`.planner`: the ladder of cheaper candidates and :func:`plan_within_budget`;
- :mod:`.deadline`: at run time, :class:`EpochBudget` cuts epochs when behind and
  :func:`members_earn_their_time` weighs the adapters against the scikit-learn members;
- :mod:`.fold`: :class:`FoldKeeper` asks both for one training fold.

Nothing here imports MLX except :mod:`.probe`, so planning code and the CLI stay light.
"""

from lora_tasks.budget.costs import (
    Candidate,
    CostEstimate,
    MemberCosts,
    StepCosts,
    Workload,
    effective_width,
    estimate_cost,
    estimate_members,
    length_bucket,
    padded_width,
    time_members,
)
from lora_tasks.budget.deadline import (
    Deadline,
    EpochBudget,
    EpochDecision,
    MembersDecision,
    members_earn_their_time,
)
from lora_tasks.budget.fold import FoldKeeper, MembersCheck
from lora_tasks.budget.planner import (
    DEFAULT_OVERHEAD_S,
    DEFAULT_TIME_LIMIT_S,
    LADDER,
    BudgetChoice,
    BudgetError,
    Rung,
    candidates,
    ladder_markdown,
    plan_within_budget,
    reprice_at_width,
)
from lora_tasks.data.duration import format_duration, parse_duration

__all__ = [
    "DEFAULT_OVERHEAD_S", "DEFAULT_TIME_LIMIT_S", "LADDER", "BudgetChoice", "BudgetError", "Candidate",
    "CostEstimate", "Deadline", "EpochBudget", "EpochDecision", "FoldKeeper", "MemberCosts", "MembersCheck", "MembersDecision", "Rung",
    "StepCosts", "Workload", "candidates", "effective_width", "estimate_cost", "estimate_members",
    "format_duration", "ladder_markdown", "length_bucket", "members_earn_their_time", "padded_width", "parse_duration",
    "plan_within_budget", "reprice_at_width", "time_members",
]
