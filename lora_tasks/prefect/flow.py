"""The ``kaggle-lora`` flow: download -> profile/auto-configure -> tokenize -> train adapters
(one task per fold, in parallel) -> combine -> submission -> validate -> submit -> score.

Wiring only: every step is a task of :mod:`lora_tasks.prefect.tasks`, which calls one function
of :mod:`lora_tasks.steps`; the one parameter is a :class:`~lora_tasks.options.RunOptions`
(the UI renders it as a form, deployments store it).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from lora_tasks.lifecycle import install_signal_handlers
from lora_tasks.options import RunOptions
from lora_tasks.prefect.artifacts import blend_rows, cv_rows, publish_plan, publish_submission, publish_training
from lora_tasks.prefect.preflight import require_credentials
from lora_tasks.prefect.runners import stop_temporary_api_servers
from lora_tasks.prefect.tasks import RunTasks, configure
from lora_tasks.steps.adapter_sets import AdapterSet, adapter_set_overrides, check_adapter_set
from lora_tasks.steps.download import kaggle_endpoint, needs_offline_server
from lora_tasks.steps.plan import OVERRIDABLE, Plan
from lora_tasks.steps.run import RunPaths, run_adapter_sets
from lora_tasks.steps.train import BaselineResult, members_decide


@dataclass
class RunSummary:
    """What a flow run produced; the CLI prints it, tests read it (also as JSON)."""

    competition: str
    slug: str
    metric: str
    cv: list[dict[str, Any]]
    oof_score: float
    combine: str
    submission_path: str
    members: list[dict[str, Any]] = field(default_factory=list)
    submitted: bool = False
    ref: int | None = None
    run_id: str | None = None
    reused: bool = False
    public_score: float | None = None
    task_states: dict[str, str] = field(default_factory=dict)
    work_dir: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class StateLog(dict):
    """Task name -> final state name of every task the flow waited for."""

    def result(self, name: str, future: Any) -> Any:
        value = future.result()
        self[name] = future.state.name if future.state is not None else "unknown"
        return value


def plan_adapter_set(tasks: RunTasks, states: StateLog, options: RunOptions, folder: Path, paths: RunPaths,
                     main_plan: Path, adapter_set: AdapterSet) -> Path:
    """The plan of one more adapter set (same folds as the main set), refused if it is the main set's own."""
    name = f"profile-and-configure-{adapter_set.member}"
    overrides = adapter_set_overrides(options.training_overrides(OVERRIDABLE), adapter_set,
                                      Plan.load(main_plan).n_folds)
    future = tasks.plan.with_options(task_run_name=name).submit(
        options.competition, folder, paths.artifacts, adapter_set.model or options.model, options.tiny, overrides,
        options.max_train_rows)
    plan = states.result(name, future)
    check_adapter_set(main_plan, plan, adapter_set)
    return plan


def submit_folds(tasks: RunTasks, states: StateLog, prepared: Path, plan: Path, tokens: Any, paths: RunPaths,
                 model: str | None, label: str = "", refresh: bool = False,
                 run_start: float | None = None, members: list[BaselineResult] | None = None) -> list[Any]:
    """The fold-training futures of one adapter set (tasks ``train-fold-0`` or ``train-<set>-fold-0``);
    none when the plan has no adapters (``no_adapters``). ``refresh`` also starts each fold afresh
    instead of resuming its checkpoint; ``run_start`` is the clock the run's time limit counts from.

    ``members`` (the fitted scikit-learn members): when fold 0 can compare the adapters with them
    (:func:`~lora_tasks.steps.train.members_decide`), the later folds are submitted once fold 0 has
    decided their epochs, as ``run_pipeline`` does; otherwise every fold is submitted at once."""
    loaded = Plan.load(plan)
    if loaded.no_adapters:
        return []
    train = tasks.train_adapter if not label else tasks.train_adapter.with_options(task_run_name=f"train-{label}-fold-{{fold}}")
    folds = range(loaded.n_folds)
    if not members or not members_decide(loaded, members):
        return [train.submit(prepared, plan, tokens, k, paths.artifacts, model, refresh, run_start) for k in folds]
    first = train.submit(prepared, plan, tokens, 0, paths.artifacts, model, refresh, run_start, members)
    decided = states.result(f"train-{label}-fold-0" if label else "train-fold-0", first)
    if not decided.keep_adapters:  # fold 0 showed they add nothing to the members' blend
        return [first]
    return [first] + [train.submit(prepared, plan, tokens, k, paths.artifacts, model, refresh, run_start, None,
                                   decided.later_epochs) for k in folds[1:]]


# log_prints stays off: with it, Prefect reroutes print() to the logger, past the
# redirect_stdout that keeps the kaggle client's import-time help text quiet.
@flow(name="kaggle-lora", log_prints=False)
def kaggle_lora(options: RunOptions) -> RunSummary:
    """From a competition name to a scored submission (see :class:`~lora_tasks.options.RunOptions`)."""
    # Prefect puts its own SIGTERM handler in place for the flow run; ours goes on top of it (and
    # chains to it), so a stop signal also stops the training threads (lora_tasks.lifecycle)
    install_signal_handlers(on_hard_exit=stop_temporary_api_servers)
    if options.submit:  # fail in seconds, not after training (a download without them fails first anyway)
        require_credentials(options.competition, options.kaggle_endpoint)
    logger = get_run_logger()
    run_start = time.time()  # --time-limit counts from here, in every fold
    paths = RunPaths.of(options)
    tasks = configure(paths.work, retry_delay_s=options.retry_delay_s, refresh=options.refresh)
    states = StateLog()
    competition, model = options.competition, options.model
    poll_s = min(options.score_poll_s, 1.0) if needs_offline_server(competition, options.kaggle_endpoint) else (
        options.score_poll_s)  # the in-process fake server scores at once
    with kaggle_endpoint(competition, options.kaggle_endpoint, paths.work) as endpoint:
        folder = states.result("download", tasks.download.submit(competition, paths.data_root, endpoint))
        sets = [] if options.no_adapters else run_adapter_sets(options, folder)
        prepare_future = tasks.prepare.submit(competition, folder, paths.artifacts, options.max_train_rows)
        plan_future = tasks.plan.submit(competition, folder, paths.artifacts, model, options.tiny,
                                        options.training_overrides(OVERRIDABLE), options.max_train_rows,
                                        True, options.time_limit, options.no_adapters, options.uses_baseline)
        prepared, plan = states.result("prepare", prepare_future), states.result("profile-and-configure", plan_future)
        publish_plan(plan)
        loaded = Plan.load(plan)
        slug, members_only = loaded.slug, loaded.no_adapters
        if members_only and not options.no_adapters:  # the budget fell back to the members alone
            sets = []
            logger.warning(loaded.settings.reasons[-1].removeprefix("budget: "))
        set_plans = {s: plan_adapter_set(tasks, states, options, folder, paths, plan, s) for s in sets}

        baseline_future = (tasks.train_baselines.submit(competition, folder, prepared, plan, paths.artifacts)
                           if options.uses_baseline else None)
        tokens = states.result("tokenize", tasks.tokenize.submit(prepared, plan, paths.tokens, model))
        # the members first (seconds): fold 0 compares the adapters with them (the members decision)
        baselines = states.result("train-baselines", baseline_future) if baseline_future is not None else []
        fold_futures = submit_folds(tasks, states, prepared, plan, tokens, paths, model, refresh=options.refresh,
                                    run_start=run_start, members=baselines)
        set_futures = {}
        for s, set_plan in set_plans.items():
            set_tokens = states.result(f"tokenize-{s.member}", tasks.tokenize.with_options(
                task_run_name=f"tokenize-{s.member}").submit(prepared, set_plan, paths.tokens, s.model or model))
            set_futures[s.member] = submit_folds(tasks, states, prepared, set_plan, set_tokens, paths,
                                                 s.model or model, s.member, refresh=options.refresh,
                                                 run_start=run_start)
        results = [states.result(f"train-fold-{k}", f) for k, f in enumerate(fold_futures)]
        set_results = {name: [states.result(f"train-{name}-fold-{k}", f) for k, f in enumerate(futures)]
                       for name, futures in set_futures.items()}

        combined = states.result("combine", tasks.combine.submit(
            prepared, plan, results, paths.artifacts, options.combine, tokens, model, baselines, options.blend_method,
            set_results))
        cv = cv_rows(results) + [row for name, rs in set_results.items() for row in cv_rows(rs, f"{name} fold")]
        publish_training(slug, results, combined, cv)
        submission_path = states.result("write-submission", tasks.write_submission.submit(
            prepared, plan, combined.test_path, paths.artifacts, combined.threshold))
        check = states.result("validate-submission", tasks.validate.submit(submission_path, prepared))
        summary = RunSummary(competition=competition, slug=slug, metric=combined.metric, cv=cv,
                             oof_score=combined.oof_score, combine=options.combine,
                             submission_path=str(submission_path), members=blend_rows(combined),
                             work_dir=str(paths.work))
        logger.info("OOF %s (%s of %d adapters): %.5f", combined.metric, options.combine, len(results),
                    combined.oof_score)
        if not options.submit:
            publish_submission(slug, check)
            summary.task_states = dict(states)
            return summary

        run_key = str(flow_run.get_id() or "local")
        submitted = states.result("submit", tasks.submit.submit(
            competition, submission_path, options.message, run_key, paths.state, endpoint))
        scored = states.result("read-score", tasks.read_score.submit(
            competition, submitted.ref, endpoint, options.score_timeout_s, poll_s))
        publish_submission(slug, check, submitted, scored)
        summary.submitted, summary.ref, summary.run_id = True, submitted.ref, submitted.run_id
        summary.reused, summary.public_score = submitted.reused, scored.public_score
        summary.task_states = dict(states)
        logger.info("Submission %s scored %s", submitted.ref, scored.public_score)
        return summary
