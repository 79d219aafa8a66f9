"""The run's sequence and decisions, written once for the Prefect flow and the plain run.

Why one place: the flow (:mod:`lora_tasks.prefect.flow`) and :func:`~lora_tasks.steps.run.run_pipeline`
each used to hold their own adapter-set planning, members-only fallback, fold-0 members decision
and score-poll cap, and they drifted apart (``--resubmit`` reached only one of them). Here both
give an :class:`Executor` to :func:`orchestrate`: the plain one calls the step function, the
Prefect one (:class:`lora_tasks.prefect.executor.PrefectExecutor`) submits the task made from it.
Steps are called by keyword, with the step functions' own parameter names.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from lora_tasks.options import RunOptions
from lora_tasks.steps.adapter_rounds import choose_adapter_folds, run_adapter_seeds, seeds_worth
from lora_tasks.steps.adapter_sets import (
    ADAPTERS_MEMBER,
    AdapterSet,
    adapter_set_overrides,
    check_adapter_set,
    parse_adapter_sets,
    recipe_adapter_sets,
)
from lora_tasks.steps.combine import CombineResult, combine
from lora_tasks.steps.download import download_data, kaggle_endpoint, needs_offline_server
from lora_tasks.steps.estimates import EstimateCheck, estimate_checks
from lora_tasks.steps.member_rounds import choose_rounds, run_member_rounds
from lora_tasks.steps.plan import OVERRIDABLE, Plan, plan_training
from lora_tasks.steps.prepare import prepare_data
from lora_tasks.steps.submit import read_score, submit_run, validate, write_submission
from lora_tasks.steps.time_use import TimeUse, time_use
from lora_tasks.steps.train import (
    AdapterResult,
    MemberResult,
    TokenFiles,
    members_decide,
    tokenize_data,
    train_adapter,
    train_members,
)

log = logging.getLogger("lora_tasks.steps")

#: The steps that talk to Kaggle: retried on transient errors (both executors), never cached.
NETWORK_STEPS: frozenset[Callable[..., Any]] = frozenset({download_data, submit_run, read_score})
NETWORK_RETRIES = 4
RETRY_JITTER = 0.5  # each delay varies by up to +/-50%: parallel runs do not retry in lockstep
#: The in-process fake server scores at once: its score is polled at least this often.
OFFLINE_POLL_S = 1.0


class Executor(Protocol):
    """How a step is executed: ``submit`` starts ``step(**kwargs)`` (``run_name`` names this call
    in logs and the UI) and returns a future-like; ``result`` waits for it. ``report`` is told
    when a stage of the run is done (``"plan"``, ``"combine"``, ``"submission"``), for artifacts."""

    log: Any

    def submit(self, step: Callable[..., Any], /, *, run_name: str | None = None, **kwargs: Any) -> Any: ...

    def result(self, future: Any) -> Any: ...

    def report(self, stage: str, run: PipelineResult) -> None: ...

    def cached_steps(self) -> int:
        """How many of the steps waited for so far came from an earlier run's cache."""
        ...


@dataclass
class Done:
    """A plain call's finished "future"."""

    value: Any


def retry_delays(base_delay_s: float) -> list[float]:
    """Delays of the network retries: base x (1, 2, 4, 8) (the Prefect tasks' schedule)."""
    return [base_delay_s * 2**i for i in range(NETWORK_RETRIES)]


@dataclass
class PlainExecutor:
    """Calls each step in this process, in order. Network steps are retried on transient errors
    with the run's ``retry_delay_s`` (as the Prefect tasks are); ``progress`` receives the
    training events of every fold."""

    retry_delay_s: float = 10.0
    progress: Callable[[Any], None] | None = None
    log: Any = log

    def submit(self, step: Callable[..., Any], /, *, run_name: str | None = None, **kwargs: Any) -> Done:
        if step is train_adapter and self.progress is not None:
            kwargs["progress"] = self.progress
        if step not in NETWORK_STEPS:
            return Done(step(**kwargs))
        from lora_tasks.kaggle import is_retryable  # the kaggle client is slow to import

        for delay in [*retry_delays(self.retry_delay_s), None]:
            try:
                return Done(step(**kwargs))
            except Exception as exc:
                if delay is None or not is_retryable(exc):
                    raise
                wait = delay * (1 + RETRY_JITTER * (2 * random.random() - 1))
                self.log.warning("%s failed (%s); retrying in %.1f s.", run_name or step.__name__, exc, wait)
                time.sleep(wait)
        raise AssertionError("unreachable")

    def result(self, future: Done) -> Any:
        return future.value

    def report(self, stage: str, run: PipelineResult) -> None:
        return None

    def cached_steps(self) -> int:
        return 0  # every step runs in this process, none is read from a cache


@dataclass(frozen=True)
class RunPaths:
    """Where one run's files go, from its options."""

    work: Path
    data_root: Path
    artifacts: Path
    tokens: Path
    state: Path

    @classmethod
    def of(cls, options: RunOptions) -> RunPaths:
        work = Path(options.work_dir).expanduser().resolve()
        data_root = Path(options.data_dir).expanduser().resolve() if options.data_dir else work / "data"
        return cls(work, data_root, work / "artifacts", work / "tokens", work / "state")


@dataclass
class PipelineResult:
    """Everything a run produced, by path, plus the scores; filled stage by stage."""

    data_dir: Path
    prepared_path: Path | None = None
    plan_path: Path | None = None
    tokens: TokenFiles | None = None
    adapters: list[AdapterResult] = field(default_factory=list)
    combined: CombineResult | None = None
    submission_path: Path | None = None
    submission: Any = None  # kaggle.SubmissionResult when submitted
    public_score: float | None = None
    members: list[MemberResult] = field(default_factory=list)
    set_plans: dict[str, Path] = field(default_factory=dict)
    set_results: dict[str, list[AdapterResult]] = field(default_factory=dict)
    check: Any = None  # the validation report of the submission file
    scored: Any = None  # the scored submission
    work_dir: Path | None = None
    #: the plan's estimates against what this run measured (none without a budget)
    estimates: list[EstimateCheck] = field(default_factory=list)
    #: the share of its time limit the run used up to its blend, and why it ended early (None: no limit)
    time_use: TimeUse | None = None
    #: decisions after the folds that left time unused (the later seeds not trained, and why)
    notes: list[str] = field(default_factory=list)


def run_adapter_sets(options: RunOptions, folder: Path) -> list[AdapterSet]:
    """The adapter sets of this run: the given ones, else the competition's recipe (left out with
    ``merge``: sets only blend); none with ``no_adapters``."""
    if options.no_adapters:
        return []
    if options.adapter_sets is not None:
        return parse_adapter_sets(options.adapter_sets)
    recipe = recipe_adapter_sets(options.competition_source(), folder)
    if recipe and options.combine != "blend":
        log.info("combine=merge: the recipe's adapter sets %s are left out (they only blend).", [s.member for s in recipe])
        return []
    return recipe


def score_poll_s(options: RunOptions) -> float:
    """Seconds between score polls: the option, at most :data:`OFFLINE_POLL_S` against the
    in-process fake server (it scores at once)."""
    if needs_offline_server(options.competition, options.kaggle_endpoint, options.offline):
        return min(options.score_poll_s, OFFLINE_POLL_S)
    return options.score_poll_s


def _submit_main_plan(options: RunOptions, ex: Executor, folder: Path, paths: RunPaths) -> Any:
    return ex.submit(plan_training, competition=options.competition_source(), data_dir=folder, out_dir=paths.artifacts,
                     model=options.model, tiny=options.tiny, overrides=options.training_overrides(OVERRIDABLE),
                     max_train_rows=options.max_train_rows, budget=True, time_limit=options.time_limit,
                     no_adapters=options.no_adapters, members_fallback=options.uses_members)


def plan_adapter_sets(options: RunOptions, ex: Executor, folder: Path, paths: RunPaths, main_plan: Path,
                      sets: list[AdapterSet]) -> dict[AdapterSet, Path]:
    """The plans of the adapter sets on the main plan's folds (none when the budget fell back to
    the members alone), each refused if it trains what the main set trains."""
    loaded = Plan.load(main_plan)
    if loaded.no_adapters and not options.no_adapters:  # the budget fell back to the members alone
        ex.log.warning(loaded.settings.reasons[-1].removeprefix("budget: "))
        return {}
    futures = {}
    for s in sets:
        overrides = adapter_set_overrides(options.training_overrides(OVERRIDABLE), s, loaded.n_folds)
        futures[s] = ex.submit(plan_training, run_name=f"profile-and-configure-{s.member}",
                               competition=options.competition_source(), data_dir=folder, out_dir=paths.artifacts,
                               model=s.model or options.model, tiny=options.tiny, overrides=overrides,
                               max_train_rows=options.max_train_rows)
    plans = {s: ex.result(f) for s, f in futures.items()}
    for s, plan in plans.items():
        check_adapter_set(main_plan, plan, s)
    return plans


def plan_only(options: RunOptions, ex: Executor) -> dict[str, Path]:
    """What a run would train, without training: download, profile, configure and plan the main
    set and every adapter set. ``{member name: plan file}``, the main set first (``lora``)."""
    paths = RunPaths.of(options)
    competition = options.competition_source()  # the config file and columns this run uses
    with kaggle_endpoint(competition, options.kaggle_endpoint, paths.work, offline=options.offline) as endpoint:
        folder = ex.result(ex.submit(download_data, competition=competition, data_dir=paths.data_root,
                                     endpoint=endpoint, offline=options.offline))
    plan = ex.result(_submit_main_plan(options, ex, folder, paths))
    sets = plan_adapter_sets(options, ex, folder, paths, plan, run_adapter_sets(options, folder))
    return {ADAPTERS_MEMBER: plan, **{s.member: p for s, p in sets.items()}}


def submit_folds(ex: Executor, run: PipelineResult, plan: Path, tokens: TokenFiles, paths: RunPaths, *,
                 model: str | None, label: str, refresh: bool, run_start: float,
                 members: list[MemberResult]) -> list[Any]:
    """The fold-training futures of one adapter set; none when the plan has no adapters. When
    fold 0 can compare the adapters with the members (:func:`~lora_tasks.steps.train.members_decide`),
    the later folds start once fold 0 has decided their epochs; otherwise every fold starts at once."""
    loaded = Plan.load(plan)
    if loaded.no_adapters:
        return []

    def fold(k: int, **decision: Any) -> Any:
        return ex.submit(train_adapter, run_name=f"train-{label}fold-{k}", prepared_path=run.prepared_path,
                         plan_path=plan, tokens=tokens, fold=k, out_dir=paths.artifacts, model=model,
                         refresh=refresh, run_start=run_start, **decision)

    folds = range(loaded.n_folds)
    if not members_decide(loaded, members):
        return [fold(k) for k in folds]
    first = fold(0, members=members)
    decided = ex.result(first)
    if not decided.keep_adapters:  # fold 0 showed they add nothing to the members' blend
        return [first]
    return [first] + [fold(k, epochs=decided.later_epochs) for k in folds[1:]]


def more_seeds(ex: Executor, run: PipelineResult, paths: RunPaths, *, model: str | None, refresh: bool,
               run_start: float) -> list[Any]:
    """The main set's folds averaged with the later seeds that still fit (:mod:`~lora_tasks.steps.adapter_rounds`)."""
    n = ex.result(ex.submit(choose_adapter_folds, plan_path=run.plan_path, main_folds=run.adapters, run_start=run_start))

    def seed_fold(k: int, **again: Any) -> Any:  # each trains at most its first seed's epochs
        return ex.submit(train_adapter, run_name=f"train-fold-{k}-seed-{again['round'] + 1}",
                         prepared_path=run.prepared_path, plan_path=run.plan_path, tokens=run.tokens, fold=k,
                         out_dir=paths.artifacts, model=model, refresh=refresh, run_start=run_start, **again)

    return run_adapter_seeds(ex, run.adapters, n, submit_fold=seed_fold, prepared_path=run.prepared_path,
                             plan_path=run.plan_path, out_dir=paths.artifacts)


def more_rounds(ex: Executor, run: PipelineResult, paths: RunPaths, *, competition: Any, data_dir: Path,
                run_start: float) -> list[Any]:
    """The members averaged over the rounds on new fold splits that still fit (:mod:`~lora_tasks.steps.member_rounds`)."""
    rounds = ex.result(ex.submit(choose_rounds, plan_path=run.plan_path, main_folds=run.adapters, first=run.members,
                                 run_start=run_start))
    return run_member_rounds(ex, run.members, rounds, competition=competition, data_dir=data_dir,
                             prepared_path=run.prepared_path, plan_path=run.plan_path, out_dir=paths.artifacts,
                             run_start=run_start)


def orchestrate(options: RunOptions, ex: Executor, *, run_key: str = "local", download: bool = True) -> PipelineResult:
    """Every step of ``options``' run in order, through ``ex``. ``run_key`` names the run for the
    submit-once rule; ``download=False`` reads ``data_dir`` as is."""
    run_start = time.time()  # the time limit counts from here, in every fold
    paths = RunPaths.of(options)
    competition, model = options.competition_source(), options.model  # the config file and columns this run uses
    with kaggle_endpoint(competition, options.kaggle_endpoint, paths.work, offline=options.offline) as endpoint:
        folder = ex.result(ex.submit(download_data, competition=competition, data_dir=paths.data_root,
                                     endpoint=endpoint, offline=options.offline)) if download else paths.data_root
        run = PipelineResult(data_dir=folder, work_dir=paths.work)
        sets = run_adapter_sets(options, folder)
        prepare_future = ex.submit(prepare_data, competition=competition, data_dir=folder, out_dir=paths.artifacts,
                                   max_train_rows=options.max_train_rows)
        plan_future = _submit_main_plan(options, ex, folder, paths)
        run.prepared_path, run.plan_path = ex.result(prepare_future), ex.result(plan_future)
        ex.report("plan", run)
        set_plans = plan_adapter_sets(options, ex, folder, paths, run.plan_path, sets)
        run.set_plans = {s.member: p for s, p in set_plans.items()}

        members_future = (ex.submit(train_members, competition=competition, data_dir=folder,
                                    prepared_path=run.prepared_path, plan_path=run.plan_path, out_dir=paths.artifacts)
                          if options.uses_members else None)
        run.tokens = ex.result(ex.submit(tokenize_data, prepared_path=run.prepared_path, plan_path=run.plan_path,
                                         cache_dir=paths.tokens, model=model))
        # the members first (seconds): fold 0 compares the adapters with them (the members decision)
        run.members = ex.result(members_future) if members_future is not None else []
        common = dict(paths=paths, refresh=options.refresh, run_start=run_start)
        main_folds = submit_folds(ex, run, run.plan_path, run.tokens, model=model, label="",
                                  members=run.members, **common)
        set_folds = {}
        for s, set_plan in set_plans.items():
            set_tokens = ex.result(ex.submit(tokenize_data, run_name=f"tokenize-{s.member}",
                                             prepared_path=run.prepared_path, plan_path=set_plan,
                                             cache_dir=paths.tokens, model=s.model or model))
            set_folds[s.member] = submit_folds(ex, run, set_plan, set_tokens, model=s.model or model,
                                               label=f"{s.member}-", members=[], **common)
        run.adapters = [ex.result(f) for f in main_folds]
        run.set_results = {name: [ex.result(f) for f in futures] for name, futures in set_folds.items()}
        main_plan = Plan.load(run.plan_path)
        run.estimates = estimate_checks(main_plan, run.adapters, run.members)
        # the time the folds left (early stopping, fold 0's decision) goes to more seeds of the adapter folds where
        # they add to the members' blend (not under merge: one adapter per fold), then to more rounds of the members
        if options.combine == "blend" and len(run.adapters) == main_plan.n_folds:
            seeds = seeds_worth(run.prepared_path, run.plan_path, run.adapters, run.members)
            if seeds.train:
                run.adapters = more_seeds(ex, run, paths, model=model, refresh=options.refresh, run_start=run_start)
            else:
                run.notes.append(seeds.reason)
        run.members = more_rounds(ex, run, paths, competition=competition, data_dir=folder, run_start=run_start)

        run.combined = ex.result(ex.submit(
            combine, prepared_path=run.prepared_path, plan_path=run.plan_path, results=run.adapters,
            out_dir=paths.artifacts, method=options.combine, tokens=run.tokens, model=model, members=run.members,
            blend_method=options.blend_method, adapter_sets=run.set_results))
        run.time_use = time_use(main_plan, run.adapters, run.members, time.time() - run_start, run.estimates,
                                cached_steps=ex.cached_steps(), notes=run.notes)
        if run.time_use is not None:
            log.info("time: %s", run.time_use.sentence())
        ex.report("combine", run)
        run.submission_path = ex.result(ex.submit(
            write_submission, prepared_path=run.prepared_path, plan_path=run.plan_path,
            test_pred_path=run.combined.test_path, out_dir=paths.artifacts, threshold=run.combined.threshold))
        run.check = ex.result(ex.submit(validate, submission_path=run.submission_path,
                                        prepared_path=run.prepared_path))
        if options.submit:
            run.submission = ex.result(ex.submit(
                submit_run, competition=competition, submission_path=run.submission_path, message=options.message,
                run_key=run_key, state_dir=paths.state, endpoint=endpoint, resubmit=options.resubmit))
            run.scored = ex.result(ex.submit(read_score, competition=competition, ref=run.submission.ref,
                                             endpoint=endpoint, timeout_s=options.score_timeout_s,
                                             poll_s=score_poll_s(options)))
            run.public_score = run.scored.public_score
        ex.report("submission", run)
    return run
