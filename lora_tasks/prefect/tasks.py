"""Prefect tasks made from the step functions of :mod:`lora_tasks.steps`: cache policy, retries, progress.

Each task *is* its step function, with its signature (:func:`step_task` wraps it; the steps
have their own tests); :data:`STEP_TASKS` says what each task adds. What this module adds:

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

import functools
import inspect
import logging
import os
import time
from dataclasses import dataclass, fields, is_dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

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
from lora_tasks.steps.adapter_rounds import bag_adapters, choose_adapter_folds
from lora_tasks.steps.combine import combine
from lora_tasks.steps.download import download_data
from lora_tasks.steps.member_rounds import bag_members, choose_rounds, take_round
from lora_tasks.steps.orchestrate import NETWORK_RETRIES, NETWORK_STEPS, RETRY_JITTER
from lora_tasks.steps.plan import plan_training
from lora_tasks.steps.prepare import prepare_data
from lora_tasks.steps.store import PIPELINE_VERSION
from lora_tasks.steps.submit import read_score, submit_run, validate, write_submission
from lora_tasks.steps.train import tokenize_data, train_adapter, train_members

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


@dataclass(frozen=True)
class StepTask:
    """How one step becomes a task: its name, what its cache key takes by value or leaves out
    (see :class:`ContentCache`), and what the task adds around the call."""

    name: str
    by_value: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    run_name: str | None = None
    cached: bool = True
    cache_expiration: timedelta | None = None
    training_progress: bool = False  # a progress artifact and log lines follow the training


#: Every step the run executes -> its task. The Kaggle endpoint keys nothing (the data is the same
#: competition wherever it comes from; its content keys the later steps); ``refresh``, ``run_start``
#: and ``progress`` do not change a fold's result. The members' rounds are chosen by the clock, and
#: cached without it (their count, then each round's last check): a rerun takes the first run's
#: rounds. The network steps are not cached: each flow run is a deliberate submission, and retries
#: reuse its run id (flow run id + file hash), so a lost answer never becomes a second submission.
STEP_TASKS: dict[Callable[..., Any], StepTask] = {
    download_data: StepTask("download", by_value=("data_dir",), exclude=("endpoint", "timeout"),
                            cache_expiration=DOWNLOAD_CACHE_TTL),
    prepare_data: StepTask("prepare", by_value=("out_dir",)),
    plan_training: StepTask("profile-and-configure", by_value=("out_dir",)),
    tokenize_data: StepTask("tokenize", by_value=("cache_dir",)),
    train_adapter: StepTask("train-adapter", by_value=("out_dir",), exclude=("refresh", "run_start", "progress"),
                            run_name="train-fold-{fold}", training_progress=True),
    train_members: StepTask("train-members", by_value=("out_dir",)),
    choose_adapter_folds: StepTask("choose-adapter-seeds", exclude=("run_start",)),
    bag_adapters: StepTask("bag-adapters", by_value=("out_dir",)),
    choose_rounds: StepTask("choose-member-rounds", exclude=("run_start",)),
    take_round: StepTask("take-member-round", exclude=("run_start",)),
    bag_members: StepTask("bag-members", by_value=("out_dir",)),
    combine: StepTask("combine", by_value=("out_dir",)),
    write_submission: StepTask("write-submission", by_value=("out_dir",)),
    validate: StepTask("validate-submission"),
    submit_run: StepTask("submit", cached=False),
    read_score: StepTask("read-score", cached=False),
}


def step_task(step: Callable[..., Any], spec: StepTask) -> Any:
    """The Prefect task of ``step``: the step's own signature (``functools.wraps``), called as
    is inside :func:`~lora_tasks.lifecycle.running_step`; the task adds the cache policy, the
    retries of the network steps and, for training, a progress artifact and log lines (every 30 s
    and at each epoch end, where a deployment's or a redirected run's output is read)."""
    signature = inspect.signature(step)

    @functools.wraps(step)
    def run_step(*args: Any, **kwargs: Any) -> Any:
        label = spec.name
        if spec.training_progress:
            fold = signature.bind(*args, **kwargs).arguments["fold"]
            label = f"train fold {fold}"
            kwargs["progress"] = Tee(PrefectProgress(f"fold {fold}"), progress_for_output(logger=get_run_logger()))
        with running_step(label):
            return step(*args, **kwargs)

    options: dict[str, Any] = dict(name=spec.name)
    if spec.run_name:
        options["task_run_name"] = spec.run_name
    if spec.cached:
        options["cache_policy"] = ContentCache(library_fn=step, by_value=spec.by_value, exclude=spec.exclude)
        options.update(cache_expiration=spec.cache_expiration, persist_result=True)
    else:
        options["cache_policy"] = NO_CACHE
    if step in NETWORK_STEPS:
        options.update(network_retry_options())
    return task(run_step, **options)


#: The tasks, made once at import (Prefect keys a task by its function; :func:`configure` copies them per run).
TASKS: dict[Callable[..., Any], Any] = {step: step_task(step, spec) for step, spec in STEP_TASKS.items()}
NETWORK_TASKS = tuple(TASKS[s] for s in STEP_TASKS if s in NETWORK_STEPS)
CACHED_TASKS = tuple(TASKS[s] for s, spec in STEP_TASKS.items() if spec.cached)


class RunTasks(dict):
    """The tasks of one run by step function, with its result store, retry delay and cache
    refresh applied. (Decorator arguments are fixed at import, while these belong to a run.)"""


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

    return RunTasks({step: configured(t) for step, t in TASKS.items()})
