"""Step 3: profile + auto-configuration -> :class:`Plan` (the settings, and why each was chosen).

A QLoRA preset (chosen by the memory rule or asked for) trains over a 4-bit base; fewer than 2
folds becomes 2 (out-of-fold predictions need a held-out fold). With a time limit, the settings
are then priced on this machine (a cost probe, cached) and cut down the budget ladder until they
fit (:func:`lora_tasks.budget.plan_within_budget`); each cut is recorded in ``reasons``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from lora_tasks.budget import (
    DEFAULT_OVERHEAD_S,
    DEFAULT_TIME_LIMIT_S,
    LADDER,
    BudgetError,
    Candidate,
    MemberCosts,
    Workload,
    estimate_members,
    format_duration,
    parse_duration,
    plan_within_budget,
    reprice_at_width,
)
from lora_tasks.data.autoconfig import TrainSettings, apply_settings, auto_configure
from lora_tasks.data.competition import TRAINING_SETTINGS, CompetitionConfig
from lora_tasks.data.profile import DataProfile, profile_competition
from lora_tasks.data.sample_checks import check_sample_submission
from lora_tasks.data.source import CompetitionSource
from lora_tasks.data.tokenizer import Tokenizer
from lora_tasks.features import FeaturePlan, find_features
from lora_tasks.steps.epoch_calibration import calibrated, epoch_factor
from lora_tasks.steps.epoch_calibration import reason as factor_reason
from lora_tasks.steps.member_costs import measure_members, plan_member_rounds
from lora_tasks.steps.prepare import subset_rows
from lora_tasks.steps.spec import competition_spec
from lora_tasks.steps.store import (
    PIPELINE_VERSION,
    PipelineError,
    load_record,
    save_json,
)
from lora_tasks.training.factory import head_type_for, model_shape
from lora_tasks.training.precision import compute_dtype_choice

_log = logging.getLogger(__name__)

#: What a run may set over the auto-configuration and the competition's ``[training]`` recipe.
OVERRIDABLE = (*TRAINING_SETTINGS, "target_transform")


@dataclass(frozen=True)
class Plan:
    """What will be trained and why: the settings, the profile it came from, the model.

    ``competition_markdown``: what was inferred about the competition and from where (id,
    targets, task, metric and its source, submission format, excluded columns).
    """

    slug: str
    settings: TrainSettings
    profile_markdown: str
    model: str  # model id/folder, or "tiny" for the tiny random model
    tiny: bool
    train_metric: str | None  # the metric on the training scale (None: the loss)
    seed: int = 0
    competition_markdown: str = ""
    # the time budget (None: none was planned): the run's limit, and the estimates the training
    # step's EpochBudget starts from (one adapter-epoch, one fold's predictions, what runs after the folds)
    time_limit_s: float | None = None
    epoch_s: float | None = None
    predict_s: float | None = None
    reserve_s: float | None = None
    no_adapters: bool = False  # the scikit-learn members alone (--no-adapters)
    # the members' folds when the budget cut the adapters' (None: the same n_folds). Why: the
    # members cost seconds, and fewer folds would train each of them on less data for nothing;
    # out-of-fold predictions of any split blend row by row.
    member_folds: int | None = None
    # how the budget's step costs were found: "measured" (the cost probe timed the model now) or
    # "reused" (points an earlier run measured on this machine); None: no probe ran
    cost_probe: str | None = None
    cost_probe_points: str | None = None  # where those points are kept (budget.cache.forget_points)
    # what the features step adds to (and drops from) the table members' columns, and why
    # (None: a plan of a version without it; the members read the table as it is)
    features: FeaturePlan | None = None
    #: the members the budget let in, by name (None: every member that suits the table); the
    #: measured cost of each is in ``settings.reasons``
    members: list[str] | None = None
    has_text: bool = False  # free-text columns: the adapters keep their time (no members decision)
    members_s: float | None = None  # the kept members' measured estimate for the whole table, in seconds
    members_timing_key: str | None = None  # the cached timings members_s came from (steps.member_costs)
    #: extra rounds of the members on new fold splits, averaged (:mod:`lora_tasks.steps.member_rounds`),
    #: when every adapter fold trains, and when fold 0 stops the adapters or none are planned
    member_rounds: int = 0
    member_rounds_alone: int = 0
    epoch_factor: float = 1.0  # the probe's train steps were priced times this (steps.epoch_calibration)

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write ``out_dir/plan-<sha16>.json`` (content-addressed)."""
        return save_json({"version": PIPELINE_VERSION, **asdict(self)}, out_dir, "plan")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        data = load_record(path, "plan")
        optional = {"seed", "competition_markdown", "time_limit_s", "epoch_s", "predict_s", "reserve_s", "no_adapters",
                    "member_folds", "cost_probe", "cost_probe_points", "features", "members", "has_text", "members_s",
                    "members_timing_key", "member_rounds", "member_rounds_alone", "epoch_factor"}
        missing = sorted({f.name for f in fields(cls)} - set(data) - optional)
        if missing:
            raise PipelineError(f"{path} is not a plan of this version (missing {missing}); plan again.")
        known = {f.name for f in fields(TrainSettings)}
        settings = TrainSettings(**{k: v for k, v in data["settings"].items() if k in known})
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data and f.name not in ("settings", "features")},
                   settings=settings, features=FeaturePlan.from_dict(data.get("features")))

    @property
    def n_folds(self) -> int:
        return int(self.settings.n_folds)

    @property
    def members_n_folds(self) -> int:
        """Folds of the scikit-learn members (and of the blend's nested score)."""
        return int(self.member_folds or self.n_folds)

    def trains_same_as(self, other: Plan) -> bool:
        """Whether both plans train the same adapters (their ``reasons`` may differ: an explicit
        preset equal to the chosen one is recorded as an override)."""
        def what(p: Plan) -> tuple:
            settings = {k: v for k, v in asdict(p.settings).items() if k != "reasons"}
            return p.slug, p.model, p.tiny, p.seed, p.no_adapters, settings

        return what(self) == what(other)

    def settings_markdown(self) -> str:
        return self.settings.to_markdown()

    def features_markdown(self) -> str:
        """The features step's records with their reasons (``kaggle-lora plan`` shows them)."""
        return self.features.to_markdown() if self.features is not None else ""


def train_metric_for(metric: str, transform: str) -> str | None:
    """The validation metric in the space the model predicts in. Under log1p, RMSE of log
    values *is* RMSLE; other metrics would be wrong on the transformed scale, so use the loss."""
    if transform == "none":
        return metric
    return "rmse" if metric in ("rmsle", "rmse") else None


def given_overrides(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """The settings a caller actually gave (None: not given; the competition's ``[training]``
    recipe and the auto-configuration decide)."""
    return {k: v for k, v in (overrides or {}).items() if v is not None}


def plan_training(
    competition: str | CompetitionSource,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    model: str | None = None,
    tiny: bool = False,
    overrides: Mapping[str, Any] | None = None,
    max_train_rows: int | None = None,
    seed: int = 0,
    budget: bool = False,
    time_limit: str | float | None = None,
    no_adapters: bool = False,
    members_fallback: bool = False,
) -> Path:
    """Profile the training table with the model's tokenizer, choose settings by the rule table,
    apply ``overrides`` (each recorded in ``reasons``) and write ``plan-*.json``.

    ``budget``: fit the settings to the run's time limit (``time_limit``, else the config's
    ``[training] time_limit``, else :data:`~lora_tasks.budget.DEFAULT_TIME_LIMIT_S`); raises
    :class:`~lora_tasks.budget.BudgetError` before any training when no adapter plan fits, unless
    ``no_adapters`` (the scikit-learn members alone: nothing is probed) or ``members_fallback``
    (the run blends the members: when no plan with adapters fits but the members alone do, the
    plan becomes members-only, with a warning and the limit adapters would need in ``reasons``)."""
    config = competition_spec(competition, data_dir)
    check_sample_submission(config)  # `kaggle-lora plan` reports it too, before anything is trained
    tokenizer = Tokenizer.from_pretrained(None if tiny else model)
    train = subset_rows(config.read_train(), max_train_rows, seed)
    profile = profile_competition(config, tokenizer=tokenizer, train=train)
    # [training] time_limit is the run's budget, not a training setting
    recipe = replace(config, training={k: v for k, v in config.training.items() if k != "time_limit"})
    settings = auto_configure(profile, competition=recipe, **model_shape(model, tiny))
    unknown = sorted(set(overrides or {}) - set(OVERRIDABLE))
    if unknown:
        raise PipelineError(f"Cannot override {unknown}; overridable settings: {', '.join(OVERRIDABLE)}.")
    apply_settings(settings, overrides or {}, "override")
    # what the frozen base's GEMMs run in on this machine, and why ("auto": cpuid's avx512_bf16)
    dtype = compute_dtype_choice(settings.compute_dtype)
    settings.reasons.append(f"compute_dtype: {dtype.requested} -> {dtype.name} ({dtype.reason}); bf16 GEMM: {dtype.gemm}")
    if settings.n_folds < 2:
        settings.n_folds = settings.n_adapters = 2
        settings.reasons.append("min_two_folds: out-of-fold predictions need 2+ folds -> 2")
    estimates: dict[str, Any] = {}
    features = member_features(config, train)
    if budget or no_adapters:
        limit_s, rules_folds = run_time_limit(time_limit, config), int(settings.n_folds)
        estimates = fit_to_budget(settings, config, profile, limit_s, model=model, tiny=tiny, no_adapters=no_adapters,
                                  members_fallback=members_fallback,
                                  member_columns=features.member_columns(profile.n_features), train=train, seed=seed,
                                  features=features)
        if settings.n_folds != rules_folds:  # the members keep theirs
            estimates["member_folds"] = rules_folds
    plan = Plan(
        slug=config.slug,
        settings=settings,
        profile_markdown=profile.to_markdown(),
        model="tiny" if tiny else str(model or "minilm"),
        tiny=bool(tiny),
        train_metric=train_metric_for(config.metric, settings.target_transform),
        seed=int(seed),
        competition_markdown=config.describe(),
        features=features,
        has_text=bool(profile.text_columns),
        **{"no_adapters": bool(no_adapters), **estimates},
    )
    return plan.save(out_dir)


def member_features(config: CompetitionConfig, train) -> FeaturePlan:
    """The features step's plan for the table members (:func:`lora_tasks.features.find_features`):
    on the feature columns only, never the target; none where the members read free text alone."""
    from lora_tasks.ensemble.members import reads_text  # scikit-learn loads slowly

    columns = [c for c in train.columns if c not in set(config.excluded_columns)]
    text = list(config.row_template(train).text_columns)
    if reads_text(columns, text):
        return FeaturePlan(inputs=tuple(columns), notes=(
            f"no table features: the members read the free text {text} alone (TF-IDF)",))
    try:
        return find_features(train, config.read_test(), columns=columns, id_column=config.id_column,
                             text_columns=text, task=config.task_type, disable=config.disable_features)
    except ValueError as exc:  # [features] disable names a feature this data does not have
        where = config.config_path or f"competitions/{config.slug}.toml"
        raise PipelineError(f"{where}: {exc}") from None


def run_time_limit(time_limit: str | float | None, config: CompetitionConfig) -> float:
    """The run's budget in seconds: the one given, else the config's ``[training] time_limit``,
    else the default."""
    if time_limit is not None:
        return parse_duration(time_limit)
    if config.training.get("time_limit") is not None:
        return parse_duration(config.training["time_limit"])
    return DEFAULT_TIME_LIMIT_S


def fit_to_budget(
    settings: TrainSettings,
    config: CompetitionConfig,
    profile: DataProfile,
    limit_s: float,
    *,
    model: str | None,
    tiny: bool,
    no_adapters: bool,
    cache_dir: Path | None = None,
    members_fallback: bool = False,
    member_columns: int | None = None,
    train: pd.DataFrame | None = None,
    seed: int = 0,
    features: FeaturePlan | None = None,
) -> dict[str, Any]:
    """Price the settings on this machine and cut them down :data:`LADDER` until they fit
    ``limit_s``; every estimate and cut goes to ``settings.reasons``. Returns the :class:`Plan`
    fields of the budget (the limit and the estimates the training step keeps the time with;
    ``no_adapters`` when ``members_fallback`` turned the plan into the members alone; ``cost_probe``:
    whether the probe measured or reused cached points; the members whose measured cost fits,
    :func:`~lora_tasks.steps.member_costs.measure_members` on ``train``). The probe's points are kept in
    ``cache_dir`` (default: the user's cache dir, :func:`lora_tasks.budget.cache.probe_cache_dir`).
    ``member_columns``: the members' columns after the features step (default the profile's);
    ``features``: the features step's plan, which the members are timed with."""
    work = Workload(
        train_rows=profile.n_rows,
        test_rows=int(profile.n_test_rows or 0),
        max_seq_len=int(settings.max_seq_len),
        mean_tokens=profile.token_lengths.mean if profile.token_lengths is not None else None,
        columns=max(1, member_columns or profile.n_features),
        text_columns=len(profile.text_columns),
    )
    chosen_members: dict[str, Any] = {}
    if train is None:
        members = estimate_members(work, int(settings.n_folds))
    else:
        measured = measure_members(config, train, int(settings.n_folds), limit_s, seed, settings.class_weight,
                                   features=features)
        settings.reasons.extend(measured.reasons)
        members = MemberCosts(measured.seconds, measured.how)
        chosen_members = {"members": measured.kept, "members_s": measured.seconds,
                          "members_timing_key": measured.timing_key}
    alone_s = members.seconds + DEFAULT_OVERHEAD_S
    if no_adapters:
        settings.reasons.append(f"budget: --no-adapters: the scikit-learn members alone, estimated "
                                f"{format_duration(alone_s)} of the {format_duration(limit_s)} limit")
        return {"time_limit_s": limit_s, **chosen_members, **_rounds(settings, limit_s, members.seconds, alone_s, alone_s, tiny)}
    # the probe builds and times the model (MLX): only when adapters are planned
    from lora_tasks.budget.probe import ProbeResult, probe_for_plan

    head_type = head_type_for(config.task_type)
    num_labels = len(config.classes) if config.task_type == "multiclass" and config.classes else _class_count(profile)

    def probe_at(width: float) -> ProbeResult:  # the rows' width, then a cut rung's own when far from it
        result = probe_for_plan(head_type, settings.preset, num_labels, model=None if tiny else model, tiny=tiny,
                                seq_len=width, batch_size=int(settings.batch_size), cache_dir=cache_dir,
                                compute_dtype=settings.compute_dtype)
        settings.reasons.append(result.reason)
        _log.info("%s", result.reason)
        return result

    probe = probe_at(work.width)
    factor = epoch_factor(chosen_members.get("members_timing_key"))
    settings.reasons.extend(filter(None, [factor_reason(factor)]))
    costs = calibrated(probe.costs, factor)
    base = Candidate("as_planned", int(settings.n_folds), int(settings.epochs), settings.top_layers,
                     int(settings.batch_size), int(settings.max_seq_len))
    choice = plan_within_budget(base, work, costs, members, limit_s, ladder=LADDER)
    choice = reprice_at_width(choice, base, work, costs, members, lambda width: calibrated(probe_at(width).costs, factor))
    settings.reasons.extend(choice.reasons)
    if choice.chosen is None:
        if not (members_fallback and choice.members_fit):
            raise BudgetError(choice.reason)
        fallback = (f"budget: the scikit-learn members alone (as --no-adapters), estimated "
                    f"{format_duration(choice.members_only_s)}: no plan with adapters fits the "
                    f"{format_duration(limit_s)} limit; --time-limit {choice.adapters_need} or more trains adapters")
        settings.reasons.append(fallback)
        _log.warning(fallback.removeprefix("budget: "))
        return {"time_limit_s": limit_s, "no_adapters": True, "cost_probe": probe.source,
                "cost_probe_points": probe.points_key, **chosen_members,
                **_rounds(settings, limit_s, members.seconds, alone_s, alone_s, tiny)}
    # a run's log (not only --plan) says what the limit allowed, before the long part starts
    _log.info("budget: %s", choice.reason)
    chosen = choice.chosen.candidate
    changes = {key: new for key, old, new in (("top_layers", base.top_layers, chosen.top_layers),
                                               ("epochs", base.epochs, chosen.epochs),
                                               ("n_folds", base.n_folds, chosen.n_folds),
                                               ("max_seq_len", base.max_seq_len, chosen.max_seq_len)) if old != new}
    apply_settings(settings, changes, "budget", f" ({chosen.name}, to fit {format_duration(limit_s)})")
    est = choice.chosen
    later = chosen.n_folds - 1  # the folds the members decision may leave out
    first_fold_s = est.total_s - later * (chosen.epochs * est.epoch_s + est.predict_s / max(chosen.n_folds, 1))
    return {"time_limit_s": limit_s, "epoch_s": est.epoch_s, "predict_s": est.predict_s / max(chosen.n_folds, 1),
            # the members train before the first fold (both orchestrations), so by then their time
            # is spent: only what runs after the folds is reserved
            "reserve_s": est.overhead_s, "cost_probe": probe.source, "cost_probe_points": probe.points_key,
            "epoch_factor": factor, **chosen_members,
            **_rounds(settings, limit_s, members.seconds, est.total_s, first_fold_s, tiny)}


def _rounds(settings: TrainSettings, limit_s: float, members_s: float, full_s: float, alone_s: float,
            tiny: bool) -> dict[str, int]:
    """The members' extra rounds the estimates leave room for, recorded in ``settings.reasons``;
    none for a run on the tiny random model, a smoke run that checks the steps, not the score."""
    if tiny:
        settings.reasons.append("member_rounds: none with the tiny random model (a smoke run: one round of the members)")
        return {"member_rounds": 0, "member_rounds_alone": 0}
    rounds = plan_member_rounds(limit_s, members_s, full_s, alone_s)
    settings.reasons.append(rounds.reason)
    return {"member_rounds": rounds.with_adapters, "member_rounds_alone": rounds.alone}


def _class_count(profile: DataProfile) -> int:
    """Labels of a multiclass head from the profiled target (1 for every other head)."""
    if profile.task_type == "multiclass" and profile.target is not None and profile.target.class_counts:
        return len(profile.target.class_counts)
    return 1
