"""Every step in order, without Prefect: what the ``kaggle-lora`` flow does, in one process.

``options.work_dir`` holds ``data/`` (downloads, unless ``data_dir`` is given), ``artifacts/``
(the content-addressed files) and ``tokens/`` (the token cache).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lora_tasks.options import RunOptions
from lora_tasks.steps.adapter_sets import (
    ADAPTERS_MEMBER,
    AdapterSet,
    adapter_set_overrides,
    check_adapter_set,
    parse_adapter_sets,
    recipe_adapter_sets,
)
from lora_tasks.steps.combine import CombineResult, combine
from lora_tasks.steps.download import download_data, kaggle_endpoint
from lora_tasks.steps.plan import OVERRIDABLE, Plan, plan_training
from lora_tasks.steps.prepare import prepare_data
from lora_tasks.steps.submit import (
    read_score,
    submission_run_id,
    submit_file,
    validate,
    write_submission,
)
from lora_tasks.steps.train import (
    AdapterResult,
    TokenFiles,
    tokenize_data,
    train_adapter,
    train_baselines,
)

log = logging.getLogger("lora_tasks.steps")


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


def run_adapter_sets(options: RunOptions, folder: Path) -> list[AdapterSet]:
    """The adapter sets of this run: the given ones, else the competition's recipe (left out with
    ``merge``: sets only blend)."""
    if options.adapter_sets is not None:
        return parse_adapter_sets(options.adapter_sets)
    recipe = recipe_adapter_sets(options.competition, folder)
    if recipe and options.combine != "blend":
        log.info("combine=merge: the recipe's adapter sets %s are left out (they only blend).", [s.member for s in recipe])
        return []
    return recipe


def plan_adapter_set(options: RunOptions, folder: Path, artifacts: Path, main_plan: Path, adapter_set: AdapterSet) -> Path:
    """The plan of one more adapter set on the main plan's folds, refused if it trains what the main set trains."""
    overrides = adapter_set_overrides(options.training_overrides(OVERRIDABLE), adapter_set,
                                      Plan.load(main_plan).n_folds)
    plan = plan_training(options.competition, folder, artifacts, model=adapter_set.model or options.model,
                         tiny=options.tiny, overrides=overrides, max_train_rows=options.max_train_rows)
    check_adapter_set(main_plan, plan, adapter_set)
    return plan


def plan_run(options: RunOptions) -> dict[str, Path]:
    """What a run would train, without training: download, profile, configure and plan the main
    set and every adapter set. Returns ``{member name: plan file}``, the main set first (``lora``).
    The same plan files a run then uses, so the run after a look costs no extra profiling."""
    paths = RunPaths.of(options)
    with kaggle_endpoint(options.competition, options.kaggle_endpoint, paths.work) as endpoint:
        folder = download_data(options.competition, paths.data_root, endpoint)
    sets = [] if options.no_adapters else run_adapter_sets(options, folder)
    plan = plan_training(options.competition, folder, paths.artifacts, model=options.model, tiny=options.tiny,
                         overrides=options.training_overrides(OVERRIDABLE), max_train_rows=options.max_train_rows,
                         budget=True, time_limit=options.time_limit, no_adapters=options.no_adapters,
                         members_fallback=options.uses_baseline)
    sets = [] if Plan.load(plan).no_adapters else sets  # the budget fell back to the members alone
    extra = {s.member: plan_adapter_set(options, folder, paths.artifacts, plan, s) for s in sets}
    return {ADAPTERS_MEMBER: plan, **extra}


@dataclass
class PipelineResult:
    """Everything a run produced, by path, plus the scores."""

    data_dir: Path
    prepared_path: Path
    plan_path: Path
    tokens: TokenFiles
    adapters: list[AdapterResult]
    combined: CombineResult
    submission_path: Path
    submission: Any = None  # kaggle.SubmissionResult when submitted
    public_score: float | None = None


def run_pipeline(
    options: RunOptions,
    *,
    run_key: str = "local",
    progress: Callable[[Any], None] | None = None,
    download: bool = True,
) -> PipelineResult:
    """Every step of ``options``' run in order. ``run_key`` names the run for the submit-once
    rule; ``progress`` receives training events; ``download=False`` reads ``data_dir`` as is."""
    run_start = time.time()  # the time limit counts from here, in every fold
    paths = RunPaths.of(options)
    competition, model = options.competition, options.model
    with kaggle_endpoint(competition, options.kaggle_endpoint, paths.work) as endpoint:
        folder = download_data(competition, paths.data_root, endpoint) if download else paths.data_root
        sets = [] if options.no_adapters else run_adapter_sets(options, folder)
        prepared = prepare_data(competition, folder, paths.artifacts, max_train_rows=options.max_train_rows)
        plan = plan_training(competition, folder, paths.artifacts, model=model, tiny=options.tiny,
                             overrides=options.training_overrides(OVERRIDABLE), max_train_rows=options.max_train_rows,
                             budget=True, time_limit=options.time_limit, no_adapters=options.no_adapters,
                             members_fallback=options.uses_baseline)
        n_folds, members_only = Plan.load(plan).n_folds, Plan.load(plan).no_adapters
        sets = [] if members_only else sets  # the budget fell back to the members alone
        set_plans = {s: plan_adapter_set(options, folder, paths.artifacts, plan, s) for s in sets}

        # the members first (seconds): the first fold compares the adapters with them
        baselines = (train_baselines(competition, folder, prepared, plan, paths.artifacts)
                     if options.uses_baseline else [])

        def train_set(set_model: str | None, set_plan: Path, members: list) -> tuple[TokenFiles, list[AdapterResult]]:
            set_tokens = tokenize_data(prepared, set_plan, paths.tokens, model=set_model)
            if members_only:  # the scikit-learn members alone
                return set_tokens, []
            folds: list[AdapterResult] = []
            for k in range(n_folds):
                folds.append(train_adapter(prepared, set_plan, set_tokens, k, paths.artifacts, model=set_model,
                                           progress=progress, run_start=run_start, members=members if k == 0 else (),
                                           epochs=folds[0].later_epochs if folds else None,
                                           refresh=options.refresh))
                if not folds[0].keep_adapters:  # fold 0 showed they add nothing to the members' blend
                    break
            return set_tokens, folds

        tokens, results = train_set(model, plan, baselines)
        extra = {s.member: train_set(s.model or model, set_plan, [])[1] for s, set_plan in set_plans.items()}
        combined = combine(prepared, plan, results, paths.artifacts, method=options.combine, tokens=tokens, model=model,
                           baselines=baselines, blend_method=options.blend_method, adapter_sets=extra)
        submission_path = write_submission(prepared, plan, combined.test_path, paths.artifacts, combined.threshold)
        validate(submission_path, prepared)
        out = PipelineResult(folder, prepared, plan, tokens, results, combined, submission_path)
        if options.submit:
            out.submission = submit_file(competition, submission_path, options.message,
                                         submission_run_id(run_key, submission_path), paths.state, endpoint,
                                         resubmit=options.resubmit)
            scored = read_score(competition, out.submission.ref, endpoint, timeout_s=options.score_timeout_s,
                                poll_s=min(options.score_poll_s, 2.0))
            out.public_score = scored.public_score
    return out
