"""From a data profile to training settings, by explicit rules kept in one table.

Why a rule table: the choices (how long a sequence, which LoRA preset, how many epochs and
folds, when to quantize) must be explainable and testable. Each :class:`Rule` states its
condition and its effect in words; :func:`rules_markdown` renders the same list for the
README, and :class:`TrainSettings.reasons` records which rules fired for a run. Rules run in
order and later rules see earlier choices (memory rules need the sequence length and batch).

The LoRA presets themselves (ranks, target modules) are defined by the LoRA package; here they
are only names.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from lora_tasks.lora.config import PRESETS as PRESETS  # re-exported: the one preset table

from .profile import DataProfile

if TYPE_CHECKING:  # pragma: no cover
    from .competition import CompetitionConfig


MINILM_PARAMS = 22_713_216  # sentence-transformers/all-MiniLM-L6-v2
DEFAULT_MEMORY_BUDGET = 8 * 1024**3
SMALL_ROWS = 2_000
LARGE_ROWS = 20_000
HUGE_ROWS = 200_000
LONG_TAIL_RATIO = 1.25  # p99 more than 25% above p95: the tail is outliers, cut at p95
TOKENS_PER_BATCH = 8_192
ROWS_PER_BATCH_MIN = 50  # at least ~50 steps' worth of rows per batch: small data gets small batches
IMBALANCE_SHARE = 0.2
SKEW_FOR_LOG = 1.0
DEFAULT_SEQ_LEN = 256


@dataclass
class TrainSettings:
    """What the trainer needs; ``reasons`` says which rule set what (in order)."""

    preset: str = "balanced"
    max_seq_len: int = DEFAULT_SEQ_LEN
    batch_size: int = 32
    epochs: int = 4
    learning_rate: float = 5e-4
    n_folds: int = 5
    n_adapters: int = 5
    quantize: bool = False
    class_weight: str | None = None
    target_transform: str = "none"
    # Adapt only the top N encoder layers (None: all). The frozen layers below then run once per
    # dataset (the frozen-prefix cache) instead of once per adapter, epoch and batch.
    top_layers: int | None = None
    # Dtype of the frozen base's weights and GEMMs: "float32", "bfloat16" (adapters, head, norms, loss
    # and AdamW stay fp32) or "auto" (bf16 where the CPU has avx512_bf16, and on Metal; fp32
    # elsewhere); passed to the model factories, see lora_tasks.training.precision. "auto" by
    # default: with the AVX512-BF16 kernel, titanic's out-of-fold and nested blend scores matched
    # fp32 within 0.005 (benchmarks/adapters_cv.py --compute-dtypes float32,bfloat16).
    compute_dtype: str = "auto"
    estimated_memory_bytes: int = 0
    reasons: list[str] = field(default_factory=list)

    @property
    def fired(self) -> list[str]:
        """Names of the rules that fired, in order (not the config's recipe or a run's overrides)."""
        skip = ("config", "override", "excluded_column")
        return [name for name in (r.split(":", 1)[0] for r in self.reasons) if name not in skip]

    def to_dict(self) -> dict:
        return asdict(self)

    def to_markdown(self) -> str:
        lines = ["| setting | value |", "|---|---|"]
        for k, v in asdict(self).items():
            if k != "reasons":
                lines.append(f"| {k} | {v} |")
        lines += ["", "Why (the rules that fired, then the competition's recipe and the run's overrides):", *[f"- {r}" for r in self.reasons]]
        return "\n".join(lines)


@dataclass(frozen=True)
class Context:
    """Inputs of the rules besides the settings being built."""

    profile: DataProfile
    model_params: int
    memory_budget_bytes: int
    model_max_len: int
    hidden_size: int
    num_layers: int
    target_transform: str  # fixed by the competition config ("none" lets a rule choose)


@dataclass(frozen=True)
class Rule:
    """One line of the rule table: a name, a condition and an effect, in words and in code."""

    name: str
    condition: str
    effect: str
    when: Callable[[Context, TrainSettings], bool] = field(repr=False)
    apply: Callable[[Context, TrainSettings], str] = field(repr=False)


# ---------------------------------------------------------------------------------- helpers


def round_up(value: float, multiple: int = 8) -> int:
    return int(math.ceil(value / multiple) * multiple)


def _pow2_floor(x: float) -> int:
    return 1 << max(0, int(math.floor(math.log2(max(x, 1)))))


def estimate_memory_bytes(ctx: Context, s: TrainSettings, *, quantized: bool | None = None) -> int:
    """Rough peak memory of training: base weights (fp32, or ~4.5 bits when quantized), stored
    activations of one batch (~16 floats per hidden unit per token and layer, plus attention
    scores and probabilities), and all token arrays of train and test (three int32 arrays each).
    """
    quantized = s.quantize if quantized is None else quantized
    weights = ctx.model_params * (0.5625 if quantized else 4.0)
    heads = max(1, ctx.hidden_size // 64)
    tokens = s.batch_size * s.max_seq_len
    activations = 4 * ctx.num_layers * (16 * tokens * ctx.hidden_size + 2 * s.batch_size * heads * s.max_seq_len**2)
    rows = ctx.profile.n_rows + (ctx.profile.n_test_rows or 0)
    data = rows * s.max_seq_len * 3 * 4
    return int(weights + activations + data)


def _lengths(ctx: Context):
    return ctx.profile.token_lengths


def _set_size(preset: str, epochs: int, lr: float, folds: int) -> Callable[[Context, TrainSettings], str]:
    def apply(ctx: Context, s: TrainSettings) -> str:
        s.preset, s.epochs, s.learning_rate, s.n_folds, s.n_adapters = preset, epochs, lr, folds, folds
        return f"{ctx.profile.n_rows} rows -> {preset}, {epochs} epochs, lr {lr:g}, {folds} fold(s)"

    return apply


def _seq_from(attr: str) -> Callable[[Context, TrainSettings], str]:
    def apply(ctx: Context, s: TrainSettings) -> str:
        value = getattr(ctx.profile.token_lengths, attr)
        s.max_seq_len = max(8, round_up(value, 8))
        return f"{attr} of tokens per row is {value:.0f} -> max_seq_len {s.max_seq_len}"

    return apply


def _batch(ctx: Context, s: TrainSettings) -> str:
    limit = min(TOKENS_PER_BATCH / s.max_seq_len, ctx.profile.n_rows / ROWS_PER_BATCH_MIN)
    s.batch_size = min(64, max(8, _pow2_floor(limit)))
    return f"max_seq_len {s.max_seq_len}, {ctx.profile.n_rows} rows -> batch size {s.batch_size}"


def _qlora_quality(ctx: Context, s: TrainSettings) -> str:
    before = estimate_memory_bytes(ctx, s, quantized=False)
    s.quantize, s.preset = True, "qlora_quality"
    return f"~{before / 2**30:.2f} GiB in fp32 > budget {ctx.memory_budget_bytes / 2**30:.2f} GiB -> qlora_quality"


def _qlora_memory(ctx: Context, s: TrainSettings) -> str:
    s.quantize, s.preset = True, "qlora_memory"
    while s.batch_size > 1 and estimate_memory_bytes(ctx, s) > ctx.memory_budget_bytes:
        s.batch_size //= 2
    return f"still over budget at 4 bits -> qlora_memory, batch size {s.batch_size}"


def _minority(ctx: Context) -> float | None:
    t = ctx.profile.target
    return None if t is None or ctx.profile.task_type not in ("binary", "multiclass") else t.minority_share


def _skewed(ctx: Context) -> bool:
    t = ctx.profile.target
    if t is None or ctx.profile.task_type != "regression" or not t.stats:
        return False
    return t.stats["min"] >= 0 and t.stats["skew"] > SKEW_FOR_LOG


def _log1p(ctx: Context, s: TrainSettings) -> str:
    s.target_transform = "log1p"
    return f"target skew {ctx.profile.target.stats['skew']:.2f} > {SKEW_FOR_LOG:g} and min >= 0 -> train on log1p(target)"


def _over_budget(ctx: Context, s: TrainSettings, quantized: bool) -> bool:
    return estimate_memory_bytes(ctx, s, quantized=quantized) > ctx.memory_budget_bytes


# ---------------------------------------------------------------------------------- the table

RULES: tuple[Rule, ...] = (
    Rule(
        "seq_len_p99",
        "token lengths known and p99 <= 1.25 x p95",
        "max_seq_len = p99 rounded up to a multiple of 8",
        lambda c, s: _lengths(c) is not None and _lengths(c).p99 <= LONG_TAIL_RATIO * _lengths(c).p95,
        _seq_from("p99"),
    ),
    Rule(
        "seq_len_p95_long_tail",
        "token lengths known and p99 > 1.25 x p95 (a few outliers)",
        "max_seq_len = p95 rounded up to a multiple of 8 (outliers truncated)",
        lambda c, s: _lengths(c) is not None and _lengths(c).p99 > LONG_TAIL_RATIO * _lengths(c).p95,
        _seq_from("p95"),
    ),
    Rule(
        "seq_len_unknown",
        "no token lengths in the profile",
        f"max_seq_len = {DEFAULT_SEQ_LEN}",
        lambda c, s: _lengths(c) is None,
        lambda c, s: (setattr(s, "max_seq_len", DEFAULT_SEQ_LEN), f"no tokenizer in the profile -> {DEFAULT_SEQ_LEN}")[1],
    ),
    Rule(
        "seq_len_model_cap",
        "max_seq_len > the model's maximum (512)",
        "max_seq_len = model maximum",
        lambda c, s: s.max_seq_len > c.model_max_len,
        lambda c, s: (setattr(s, "max_seq_len", c.model_max_len), f"capped at the model maximum {c.model_max_len}")[1],
    ),
    Rule(
        "small_data",
        f"rows < {SMALL_ROWS:,}",
        "efficient preset, 10 epochs, lr 3e-3, 5 folds (5 adapters): few parameters against overfitting",
        lambda c, s: c.profile.n_rows < SMALL_ROWS,
        _set_size("efficient", 10, 3e-3, 5),
    ),
    Rule(
        "medium_data",
        f"{SMALL_ROWS:,} <= rows < {LARGE_ROWS:,}",
        "balanced preset, 4 epochs, lr 2e-3, 5 folds",
        lambda c, s: SMALL_ROWS <= c.profile.n_rows < LARGE_ROWS,
        _set_size("balanced", 4, 2e-3, 5),
    ),
    Rule(
        "large_data",
        f"{LARGE_ROWS:,} <= rows < {HUGE_ROWS:,}",
        "expressive preset, 3 epochs, lr 1e-3, 3 folds",
        lambda c, s: LARGE_ROWS <= c.profile.n_rows < HUGE_ROWS,
        _set_size("expressive", 3, 1e-3, 3),
    ),
    Rule(
        "huge_data",
        f"rows >= {HUGE_ROWS:,}",
        "expressive preset, 2 epochs, lr 1e-3, one holdout split (1 adapter)",
        lambda c, s: c.profile.n_rows >= HUGE_ROWS,
        _set_size("expressive", 2, 1e-3, 1),
    ),
    Rule(
        "batch_by_tokens",
        "always",
        f"batch = largest power of 2 <= min({TOKENS_PER_BATCH} / max_seq_len, rows / {ROWS_PER_BATCH_MIN}), within 8..64",
        lambda c, s: True,
        _batch,
    ),
    Rule(
        "imbalanced_classes",
        f"classification and the rarest class < {IMBALANCE_SHARE:.0%} of rows",
        "class_weight = balanced (loss weighted by inverse class frequency)",
        lambda c, s: (m := _minority(c)) is not None and m < IMBALANCE_SHARE,
        lambda c, s: (setattr(s, "class_weight", "balanced"), f"rarest class is {_minority(c):.1%} of rows -> balanced class weights")[1],
    ),
    Rule(
        "skewed_target_log1p",
        f"regression, target >= 0, skew > {SKEW_FOR_LOG:g}, no transform set by the competition",
        "train on log1p(target), predict expm1",
        lambda c, s: c.target_transform == "none" and _skewed(c),
        _log1p,
    ),
    Rule(
        "competition_transform",
        "the competition config sets a target transform",
        "use it (e.g. log1p for RMSLE)",
        lambda c, s: c.target_transform != "none",
        lambda c, s: (setattr(s, "target_transform", c.target_transform), f"competition sets {c.target_transform}")[1],
    ),
    Rule(
        "qlora_over_budget",
        "estimated memory (fp32 weights + one batch of activations + token arrays) > budget",
        "qlora_quality: 4-bit base weights, attention adapters",
        lambda c, s: _over_budget(c, s, quantized=False),
        _qlora_quality,
    ),
    Rule(
        "qlora_memory_far_over_budget",
        "still over budget with 4-bit weights",
        "qlora_memory: small adapters; halve the batch until it fits (down to 1)",
        lambda c, s: s.quantize and _over_budget(c, s, quantized=True),
        _qlora_memory,
    ),
)


def auto_configure(
    profile: DataProfile,
    *,
    competition: "CompetitionConfig | None" = None,
    model_params: int = MINILM_PARAMS,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
    model_max_len: int = 512,
    hidden_size: int = 384,
    num_layers: int = 6,
    rules: tuple[Rule, ...] = RULES,
) -> TrainSettings:
    """Apply the rule table to ``profile``; every rule that fires appends to ``reasons``.

    ``model_params``/``hidden_size``/``num_layers`` describe the encoder (MiniLM-L6 by default)
    and with ``memory_budget_bytes`` decide QLoRA. ``competition`` contributes a fixed target
    transform (its ``submission.target_transform``).
    """
    ctx = Context(
        profile=profile,
        model_params=int(model_params),
        memory_budget_bytes=int(memory_budget_bytes),
        model_max_len=int(model_max_len),
        hidden_size=int(hidden_size),
        num_layers=int(num_layers),
        target_transform=competition.submission.target_transform if competition is not None else "none",
    )
    settings = TrainSettings()
    for excluded in profile.excluded:  # not a rule: the data decides, and the user should see it first
        settings.reasons.append(f"excluded_column: {excluded.name} ({excluded.reason})")
    for rule in rules:
        if rule.when(ctx, settings):
            settings.reasons.append(f"{rule.name}: {rule.apply(ctx, settings)}")
    if competition is not None and competition.training:
        where = competition.config_path.name if competition.config_path else competition.slug
        recipe = {k: v for k, v in competition.training.items() if k != "adapter_sets"}
        apply_settings(settings, recipe, "config", f" ([training] of {where})")
    settings.estimated_memory_bytes = estimate_memory_bytes(ctx, settings)
    return settings


def apply_settings(settings: TrainSettings, values: Mapping[str, Any], why: str, note: str = "") -> TrainSettings:
    """Set ``values`` on ``settings``, each recorded in ``reasons`` (``"<why>: epochs = 3<note>"``):
    a competition's ``[training]`` recipe or a run's overrides. ``n_folds`` also sets the number
    of adapters; ``top_layers = "all"`` adapts every layer. None values are skipped (not given)."""
    for key, value in values.items():
        if value is None:
            continue
        if key == "n_folds":
            settings.n_adapters = int(value)
        if key == "top_layers":  # a number (a deployment's form may send "2") or "all": every layer
            setattr(settings, key, None if value == "all" else int(value))
        else:
            setattr(settings, key, value)
        settings.reasons.append(f"{why}: {key} = {value}{note}")
    return settings


def rules_markdown(rules: tuple[Rule, ...] = RULES) -> str:
    """The rule table as markdown (included in the README)."""
    lines = ["| # | rule | when | then |", "|---|---|---|---|"]
    for i, r in enumerate(rules, 1):
        lines.append(f"| {i} | `{r.name}` | {r.condition} | {r.effect} |")
    return "\n".join(lines)
