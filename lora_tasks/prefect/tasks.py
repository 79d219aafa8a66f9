"""Thin Prefect tasks over :mod:`lora_tasks.steps`: cache policy, retries, artifacts, progress.

Each task is one call to a step function (which has its own tests). What this module adds:

* **Caching across runs, keyed on content.** :class:`ContentCache` hashes the *bytes* of file and
  folder inputs (not their paths), plain inputs by value, plus the code that can run (every
  ``lora_tasks`` source file, native source and shipped config, and the versions of the libraries
  that decide a result: :mod:`lora_tasks.prefect.code_version`). A ``competition`` input is also
  keyed by the content of the config file it names, a ``model`` input by its weights. A run's ``refresh`` ignores the cache
  (Prefect's ``refresh_cache``) and stores fresh results. Parameters that only name where outputs go are keyed by their
  value. A completed task records the size and sha256 of its output files (a manifest,
  :mod:`lora_tasks.prefect.manifest`); a cached result whose files vanished or changed is
  detected when the key is computed, logged with the reason, and a derived "repair" key makes the
  task run again (and the repaired result is itself cached).
* **Results in a project-local store**: ``result_storage`` is a ``Path`` (a string would be taken
  for a block name), ``<work_dir>/results``; set per run by :func:`configure`.
* **Retries for network tasks**: exponential backoff with jitter, only for errors that
  :func:`lora_tasks.kaggle.is_retryable` calls transient. The submit task never duplicates a
  submission: its run id is the flow run id plus the file's hash, and
  :func:`lora_tasks.kaggle.submit` submits at most once per run id.
* **Artifacts for the UI** live in :mod:`lora_tasks.prefect.artifacts`.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from dataclasses import dataclass, fields, is_dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterable

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE, CachePolicy
from prefect.exceptions import MissingContextError
from prefect.tasks import exponential_backoff

from lora_tasks.hashing import sha256_bytes, sha256_file_memo, sha256_tree, sha256_value
from lora_tasks.kaggle import prefect_retry_condition
from lora_tasks.lifecycle import running_step
from lora_tasks.options import DEFAULT_WORK_DIR
from lora_tasks.prefect.code_version import code_version, competition_config, model_weights
from lora_tasks.prefect.manifest import manifest_problem, record_outputs
from lora_tasks.progress import ProgressEvent, Tee, progress_for_output
from lora_tasks.steps.combine import DEFAULT_BLEND_METHOD, CombineResult, combine
from lora_tasks.steps.download import download_data
from lora_tasks.steps.plan import plan_training
from lora_tasks.steps.prepare import prepare_data
from lora_tasks.steps.store import PIPELINE_VERSION
from lora_tasks.steps.submit import read_score, submit_run, validate, write_submission
from lora_tasks.steps.train import (
    AdapterResult,
    BaselineResult,
    TokenFiles,
    tokenize_data,
    train_adapter,
    train_baselines,
)

NETWORK_RETRIES = 4
RETRY_JITTER = 0.5  # each delay varies by up to +/-50%: parallel runs do not retry in lockstep
DOWNLOAD_CACHE_TTL = timedelta(hours=6)  # scheduled runs look for new data; a rerun soon after does not
log = logging.getLogger("lora_tasks.prefect.tasks")


def results_dir(work_dir: str | os.PathLike = DEFAULT_WORK_DIR) -> Path:
    """Where task results (and cache records) are persisted: ``<work_dir>/results``."""
    return Path(work_dir).expanduser().resolve() / "results"


# ============================================================================ content cache keys

def fingerprint(value: Any) -> Any:
    """A JSON-able stand-in for ``value`` that changes exactly when its content changes.

    ``Path`` to a file: its sha256; to a folder: the hash of its files; missing: a marker.
    Dataclasses, lists and dicts recurse; other values stand for themselves.
    """
    if isinstance(value, Path):
        if value.is_file():
            return "file:" + sha256_file_memo(value)
        if value.is_dir():
            return "dir:" + sha256_tree(value)
        return "missing:" + value.name
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: fingerprint(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k): fingerprint(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [fingerprint(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def outputs_exist(result: Any) -> bool:
    """True when every path inside a task result still exists (folders must not be empty)."""
    if isinstance(result, Path):
        return result.is_file() or (result.is_dir() and any(result.iterdir()))
    if is_dataclass(result) and not isinstance(result, type):
        return all(outputs_exist(getattr(result, f.name)) for f in fields(result))
    if isinstance(result, dict):
        return all(outputs_exist(v) for v in result.values())
    if isinstance(result, (list, tuple)):
        return all(outputs_exist(v) for v in result)
    return True


def _source_hash(fn: Callable | None) -> str:
    if fn is None:
        return ""
    try:
        return sha256_bytes(inspect.getsource(fn).encode())
    except (OSError, TypeError):
        return getattr(fn, "__qualname__", repr(fn))


@dataclass
class ContentCache(CachePolicy):
    """Cache key = the package's code and library versions + task and step source + inputs by
    content (see module doc).

    ``by_value``: parameters that name output locations (an output folder's *content* changes
    as the task writes to it, so hashing it would defeat the cache). ``exclude``: parameters
    that do not change the result (e.g. the Kaggle endpoint of a download: the data is the
    same competition wherever it comes from; its content keys the later steps).
    """

    library_fn: Callable | None = None
    by_value: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    max_repairs: int = 50

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> str | None:
        task_fn = getattr(getattr(task_ctx, "task", None), "fn", None)
        keyed = {}
        for name, value in sorted(inputs.items()):
            if name in self.exclude:
                continue
            keyed[name] = str(value) if name in self.by_value else fingerprint(value)
        # a name stands for a config file's and a model folder's content: key by that content
        if "competition" in keyed:
            keyed["competition-config"] = competition_config(inputs["competition"])
        if "model" in keyed:
            keyed["model-weights"] = model_weights(inputs["model"])
        key = sha256_value(PIPELINE_VERSION, code_version(), _source_hash(task_fn), _source_hash(self.library_fn), keyed)
        store = getattr(task_ctx, "result_store", None)
        return key if store is None else self.usable_key(store, key)

    def usable_key(self, store: Any, key: str) -> str:
        """``key`` unless its cached result points at vanished or changed files (checked against
        the manifest recorded when it was computed): then the first key of the repair chain
        (``sha(key + '-repair')``, ...) that is unused or still valid."""
        results = getattr(getattr(store, "result_storage", None), "basepath", None)
        for _ in range(self.max_repairs):
            try:
                if not store.exists(key):
                    return key
                result = store.read(key).result
            except Exception:
                return key
            problem = manifest_problem(Path(results), result, Path(results) / key) if results else (
                None if outputs_exist(result) else "an output file is missing")
            if problem is None:
                return key
            _cache_logger().warning("Not reusing the cached result: %s; running the task again.", problem)
            key = sha256_value(key, "repair")
        return key


def _cache_logger() -> Any:
    """The task run's logger (the line shows in the UI), or this module's outside a run."""
    try:
        return get_run_logger()
    except MissingContextError:
        return log


def record_manifest_hook(task_obj: Any, task_run: Any, state: Any) -> None:
    """``on_completion`` hook: the manifest of the task's output files, beside its result record."""
    storage = getattr(task_obj, "result_storage", None)
    if isinstance(storage, Path):
        record_outputs(storage, state.result())


class QuietManifestHook(logging.Filter):
    """Drops Prefect's two INFO lines around :func:`record_manifest_hook` ("Running hook ...",
    "Hook ... finished running successfully"): bookkeeping that doubled every task's lines in a
    run's log. The hook's errors still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not (record.levelno <= logging.INFO and "'record_manifest_hook'" in text)


def quiet_manifest_hook_logs() -> None:
    """Install :class:`QuietManifestHook` on Prefect's task-run logger (once)."""
    logger = logging.getLogger("prefect.task_runs")
    if not any(isinstance(f, QuietManifestHook) for f in logger.filters):
        logger.addFilter(QuietManifestHook())


def _policy(fn: Callable, *, by_value: Iterable[str] = (), exclude: Iterable[str] = ()) -> ContentCache:
    return ContentCache(library_fn=fn, by_value=tuple(by_value), exclude=tuple(exclude))


def network_retry_options(base_delay_s: float = 10.0) -> dict[str, Any]:
    """Retry settings of the Kaggle tasks: 4 retries, delays base x (1, 2, 4, 8) with jitter,
    only for transient errors (429, 5xx, dropped connections, silent upload failures)."""
    return dict(
        retries=NETWORK_RETRIES,
        retry_delay_seconds=exponential_backoff(backoff_factor=base_delay_s),
        retry_jitter_factor=RETRY_JITTER,
        retry_condition_fn=prefect_retry_condition,
    )


# ============================================================================ progress


class PrefectProgress:
    """The training :class:`ProgressCallback` that keeps a Prefect progress artifact current.

    Updates are throttled (one API call per ``every_s`` seconds, plus every epoch end) so a
    fast loop is not slowed by the API. Epoch-end events are kept for the learning curve.
    """

    def __init__(self, name: str, every_s: float = 2.0) -> None:
        from prefect.artifacts import create_progress_artifact

        self.name = name
        self.every_s = every_s
        self.epochs: list[ProgressEvent] = []
        self._last = 0.0
        self._id = create_progress_artifact(progress=0.0, description=f"Training {name}")

    def __call__(self, event: ProgressEvent) -> None:
        from prefect.artifacts import update_progress_artifact

        if event.epoch_end:
            self.epochs.append(event)
        now = time.monotonic()
        if not event.epoch_end and now - self._last < self.every_s and event.step < event.steps:
            return
        self._last = now
        percent = 100.0 * event.step / max(event.steps, 1)
        text = f"{event.name}: epoch {event.epoch}/{event.epochs}, loss {event.loss:.4f}, {event.samples_per_s:.1f} samples/s"
        if event.metric is not None:
            text += f", valid {event.metric_name} {event.metric:.4f}"
        update_progress_artifact(self._id, progress=min(percent, 100.0), description=text)


# ============================================================================ tasks


@task(name="download", cache_policy=_policy(download_data, by_value=("data_dir",), exclude=("endpoint",)),
      cache_expiration=DOWNLOAD_CACHE_TTL, persist_result=True, **network_retry_options())
def download_task(competition: Any, data_dir: Path, endpoint: str | None = None, offline: bool = False) -> Path:
    """Kaggle (or the fake server) -> ``data_dir/<slug>``; ``offline``: the data already there.
    ``competition`` here and below: a name or the run's :class:`~lora_tasks.data.source.CompetitionSource`."""
    with running_step("download"):
        return download_data(competition, data_dir, endpoint, offline=offline)


@task(name="prepare", cache_policy=_policy(prepare_data, by_value=("out_dir",)), persist_result=True)
def prepare_task(competition: str, data_dir: Path, out_dir: Path, max_train_rows: int | None = None, seed: int = 0) -> Path:
    with running_step("prepare"):
        return prepare_data(competition, data_dir, out_dir, max_train_rows=max_train_rows, seed=seed)


@task(name="profile-and-configure", cache_policy=_policy(plan_training, by_value=("out_dir",)), persist_result=True)
def plan_task(
    competition: str,
    data_dir: Path,
    out_dir: Path,
    model: str | None = None,
    tiny: bool = False,
    overrides: dict[str, Any] | None = None,
    max_train_rows: int | None = None,
    budget: bool = False,
    time_limit: str | None = None,
    no_adapters: bool = False,
    members_fallback: bool = False,
) -> Path:
    return plan_training(
        competition, data_dir, out_dir, model=model, tiny=tiny, overrides=overrides, max_train_rows=max_train_rows,
        budget=budget, time_limit=time_limit, no_adapters=no_adapters, members_fallback=members_fallback,
    )


@task(name="tokenize", cache_policy=_policy(tokenize_data, by_value=("cache_dir",)), persist_result=True)
def tokenize_task(prepared: Path, plan: Path, cache_dir: Path, model: str | None = None) -> TokenFiles:
    with running_step("tokenize"):
        return tokenize_data(prepared, plan, cache_dir, model=model)


@task(name="train-adapter", task_run_name="train-fold-{fold}",
      cache_policy=_policy(train_adapter, by_value=("out_dir",), exclude=("refresh", "run_start")), persist_result=True)
def train_task(prepared: Path, plan: Path, tokens: TokenFiles, fold: int, out_dir: Path, model: str | None = None,
               refresh: bool = False, run_start: float | None = None, members: list[BaselineResult] | None = None,
               epochs: int | None = None) -> AdapterResult:
    """One fold's adapter; a progress artifact follows the training, and progress lines (every 30 s
    and at each epoch end) go to the run's logs, where a deployment's or a redirected run's output
    is read. ``refresh`` (the run's ``--refresh``) also starts the fold afresh instead of resuming
    an existing checkpoint; ``run_start`` (the run's ``time.time()``) lets the fold keep the run's
    time limit. Neither is part of the cache key. ``members`` (fold 0) and ``epochs`` (the later
    folds) carry the members decision, as in :func:`~lora_tasks.steps.train.train_adapter`."""
    progress = Tee(PrefectProgress(f"fold {fold}"), progress_for_output(logger=get_run_logger()))
    with running_step(f"train fold {fold}"):
        return train_adapter(prepared, plan, tokens, fold, out_dir, model=model, progress=progress,
                             refresh=refresh, run_start=run_start, members=members or (), epochs=epochs)


@task(name="train-baselines", cache_policy=_policy(train_baselines, by_value=("out_dir",)), persist_result=True)
def baseline_task(competition: str, data_dir: Path, prepared: Path, plan: Path, out_dir: Path) -> list[BaselineResult]:
    """The scikit-learn members on the adapters' folds (seconds; runs beside the adapters)."""
    with running_step("train baselines"):
        return train_baselines(competition, data_dir, prepared, plan, out_dir)


@task(name="combine", cache_policy=_policy(combine, by_value=("out_dir",)), persist_result=True)
def combine_task(
    prepared: Path,
    plan: Path,
    results: list[AdapterResult],
    out_dir: Path,
    method: str = "blend",
    tokens: TokenFiles | None = None,
    model: str | None = None,
    baselines: list[BaselineResult] | None = None,
    blend_method: str = DEFAULT_BLEND_METHOD,
    adapter_sets: dict[str, list[AdapterResult]] | None = None,
) -> CombineResult:
    with running_step("combine"):
        return combine(prepared, plan, results, out_dir, method=method, tokens=tokens, model=model,
                       baselines=baselines or (), blend_method=blend_method, adapter_sets=adapter_sets)


@task(name="write-submission", cache_policy=_policy(write_submission, by_value=("out_dir",)), persist_result=True)
def submission_task(prepared: Path, plan: Path, test_pred: Path, out_dir: Path, threshold: float | None = None) -> Path:
    return write_submission(prepared, plan, test_pred, out_dir, threshold)


@task(name="validate-submission", cache_policy=_policy(validate), persist_result=True)
def validate_task(submission: Path, prepared: Path):
    return validate(submission, prepared)


@task(name="submit", cache_policy=NO_CACHE, **network_retry_options())
def submit_task(competition: str, submission: Path, message: str, run_key: str, state_dir: Path, endpoint: str | None = None,
                resubmit: bool = False):
    """Not cached: each flow run is a deliberate submission. Retries within the run reuse its
    run id (flow run id + file hash), so a lost answer never becomes a second submission;
    ``resubmit`` (the run's ``--resubmit``) submits a file Kaggle already holds from an earlier run."""
    with running_step("submit"):
        return submit_run(competition, submission, message, run_key, state_dir, endpoint, resubmit=resubmit)


@task(name="read-score", cache_policy=NO_CACHE, **network_retry_options())
def score_task(competition: str, ref: int, endpoint: str | None = None, timeout_s: float = 900.0, poll_s: float = 10.0):
    with running_step("read score"):
        return read_score(competition, ref, endpoint, timeout_s=timeout_s, poll_s=poll_s)


NETWORK_TASKS = (download_task, submit_task, score_task)
CACHED_TASKS = (download_task, prepare_task, plan_task, tokenize_task, train_task, baseline_task, combine_task,
                submission_task, validate_task)


@dataclass(frozen=True)
class RunTasks:
    """The tasks of one run, with its result store, retry delay and cache refresh applied.
    (Decorator arguments are fixed at import, while these belong to a run.)"""

    download: Any
    prepare: Any
    plan: Any
    tokenize: Any
    train_adapter: Any
    train_baselines: Any
    combine: Any
    write_submission: Any
    validate: Any
    submit: Any
    read_score: Any


def configure(work_dir: str | os.PathLike, *, retry_delay_s: float | None = None, refresh: bool = False) -> RunTasks:
    """The tasks with this run's result store (``<work_dir>/results``) and retry delay;
    ``refresh`` runs every cached task again (and caches the new results). Every cached task
    records the manifest of its output files when it completes (:func:`record_manifest_hook`)."""
    storage = results_dir(work_dir)
    storage.mkdir(parents=True, exist_ok=True)
    quiet_manifest_hook_logs()

    def configured(task_obj: Any) -> Any:
        options: dict[str, Any] = {"result_storage": storage}
        if retry_delay_s is not None and task_obj in NETWORK_TASKS:
            options["retry_delay_seconds"] = exponential_backoff(backoff_factor=retry_delay_s)
        if task_obj in CACHED_TASKS:
            options["on_completion"] = [*task_obj.on_completion_hooks, record_manifest_hook]
            if refresh:
                options["refresh_cache"] = True
        return task_obj.with_options(**options)

    return RunTasks(
        download=configured(download_task), prepare=configured(prepare_task), plan=configured(plan_task),
        tokenize=configured(tokenize_task), train_adapter=configured(train_task),
        train_baselines=configured(baseline_task), combine=configured(combine_task),
        write_submission=configured(submission_task), validate=configured(validate_task),
        submit=configured(submit_task), read_score=configured(score_task),
    )
