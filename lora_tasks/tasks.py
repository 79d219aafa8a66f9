"""Thin Prefect tasks over :mod:`lora_tasks.pipeline`: cache policy, retries, artifacts, progress.

Each task is one call to a pipeline function (which has its own tests). What this module adds:

* **Caching across runs, keyed on content.** :class:`ContentCache` hashes the *bytes* of file and
  folder inputs (not their paths), plain inputs by value, plus the source of the task and of
  the library function it calls. Parameters that only name where outputs go are keyed by their
  value. A cached result whose files have vanished is detected when the key is computed, and a
  derived "repair" key makes the task run again (and the repaired result is itself cached).
* **Results in a project-local store**: ``result_storage`` is a ``Path`` (a string would be taken
  for a block name), ``<work_dir>/results``; set per run by :func:`configure`.
* **Retries for network tasks**: exponential backoff with jitter, only for errors that
  :func:`lora_tasks.kaggle_io.is_retryable` calls transient. The submit task never duplicates a
  submission: its run id is the flow run id plus the file's hash, and
  :func:`lora_tasks.kaggle_io.submit` submits at most once per run id.
* **Artifacts for the UI**: renderers here are plain functions (tested without Prefect); the flow
  publishes them, so they appear on every run, also when the tasks were cached.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import threading
import time
from dataclasses import dataclass, fields, is_dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from prefect import task
from prefect.cache_policies import NO_CACHE, CachePolicy
from prefect.tasks import exponential_backoff

from lora_tasks import pipeline as P
from lora_tasks.kaggle_io import prefect_retry_condition
from lora_tasks.progress import ProgressEvent

DEFAULT_WORK_DIR = os.environ.get("KAGGLE_LORA_HOME", ".kaggle-lora")
NETWORK_RETRIES = 4
RETRY_JITTER = 0.5  # each delay varies by up to +/-50%: parallel runs do not retry in lockstep
DOWNLOAD_CACHE_TTL = timedelta(hours=6)  # scheduled runs look for new data; a rerun soon after does not


def results_dir(work_dir: str | os.PathLike = DEFAULT_WORK_DIR) -> Path:
    """Where task results (and cache records) are persisted: ``<work_dir>/results``."""
    return Path(work_dir).expanduser().resolve() / "results"


# ============================================================================ content cache keys

_hash_memo: dict[tuple[str, int, int], str] = {}
_memo_lock = threading.Lock()


def _file_digest(path: Path) -> str:
    """sha256 of a file, memoized by (path, size, mtime) so unchanged inputs are read once."""
    stat = path.stat()
    memo_key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _memo_lock:
        hit = _hash_memo.get(memo_key)
    if hit is None:
        hit = P.sha256_file(path)
        with _memo_lock:
            _hash_memo[memo_key] = hit
    return hit


def fingerprint(value: Any) -> Any:
    """A JSON-able stand-in for ``value`` that changes exactly when its content changes.

    ``Path`` to a file: its sha256; to a folder: the hash of its files; missing: a marker.
    Dataclasses, lists and dicts recurse; other values stand for themselves.
    """
    if isinstance(value, Path):
        if value.is_file():
            return "file:" + _file_digest(value)
        if value.is_dir():
            return "dir:" + P.sha256_tree(value)
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
        return hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()
    except (OSError, TypeError):
        return getattr(fn, "__qualname__", repr(fn))


def _sha(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class ContentCache(CachePolicy):
    """Cache key = task source + library function source + inputs by content (see module doc).

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
        key = _sha(P.PIPELINE_VERSION, _source_hash(task_fn), _source_hash(self.library_fn), keyed)
        store = getattr(task_ctx, "result_store", None)
        return key if store is None else self.usable_key(store, key)

    def usable_key(self, store: Any, key: str) -> str:
        """``key`` unless its cached result points at vanished files: then the first key of the
        repair chain (``sha(key + '-repair')``, ...) that is unused or still valid."""
        for _ in range(self.max_repairs):
            try:
                if not store.exists(key):
                    return key
                if outputs_exist(store.read(key).result):
                    return key
            except Exception:  # noqa: BLE001 - an unreadable record: let Prefect recompute under it
                return key
            key = _sha(key, "repair")
        return key


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


@task(name="download", cache_policy=_policy(P.download_data, by_value=("data_dir",), exclude=("endpoint",)),
      cache_expiration=DOWNLOAD_CACHE_TTL, persist_result=True, **network_retry_options())
def download_task(competition: str, data_dir: Path, endpoint: str | None = None) -> Path:
    """Kaggle (or the fake server) -> ``data_dir/<slug>``."""
    return P.download_data(competition, data_dir, endpoint)


@task(name="prepare", cache_policy=_policy(P.prepare_data, by_value=("out_dir",)), persist_result=True)
def prepare_task(competition: str, data_dir: Path, out_dir: Path, max_train_rows: int | None = None, seed: int = 0) -> Path:
    return P.prepare_data(competition, data_dir, out_dir, max_train_rows=max_train_rows, seed=seed)


@task(name="profile-and-configure", cache_policy=_policy(P.plan_training, by_value=("out_dir",)), persist_result=True)
def plan_task(
    competition: str,
    data_dir: Path,
    out_dir: Path,
    model: str | None = None,
    tiny: bool = False,
    overrides: dict[str, Any] | None = None,
    max_train_rows: int | None = None,
) -> Path:
    return P.plan_training(
        competition, data_dir, out_dir, model=model, tiny=tiny, overrides=overrides, max_train_rows=max_train_rows
    )


@task(name="tokenize", cache_policy=_policy(P.tokenize_data, by_value=("cache_dir",)), persist_result=True)
def tokenize_task(prepared: Path, plan: Path, cache_dir: Path, model: str | None = None) -> P.TokenFiles:
    return P.tokenize_data(prepared, plan, cache_dir, model=model)


@task(name="train-adapter", task_run_name="train-fold-{fold}", cache_policy=_policy(P.train_adapter, by_value=("out_dir",)),
      persist_result=True)
def train_task(prepared: Path, plan: Path, tokens: P.TokenFiles, fold: int, out_dir: Path, model: str | None = None) -> P.AdapterResult:
    """One fold's adapter; a progress artifact follows the training."""
    return P.train_adapter(prepared, plan, tokens, fold, out_dir, model=model, progress=PrefectProgress(f"fold {fold}"))


@task(name="train-baselines", cache_policy=_policy(P.train_baselines, by_value=("out_dir",)), persist_result=True)
def baseline_task(competition: str, data_dir: Path, prepared: Path, plan: Path, out_dir: Path) -> list[P.BaselineResult]:
    """The scikit-learn members on the adapters' folds (seconds; runs beside the adapters)."""
    return P.train_baselines(competition, data_dir, prepared, plan, out_dir)


@task(name="combine", cache_policy=_policy(P.combine, by_value=("out_dir",)), persist_result=True)
def combine_task(
    prepared: Path,
    plan: Path,
    results: list[P.AdapterResult],
    out_dir: Path,
    method: str = "blend",
    tokens: P.TokenFiles | None = None,
    model: str | None = None,
    baselines: list[P.BaselineResult] | None = None,
    blend_method: str = P.DEFAULT_BLEND_METHOD,
    adapter_sets: dict[str, list[P.AdapterResult]] | None = None,
) -> P.CombineResult:
    return P.combine(prepared, plan, results, out_dir, method=method, tokens=tokens, model=model,
                     baselines=baselines or (), blend_method=blend_method, adapter_sets=adapter_sets)


@task(name="write-submission", cache_policy=_policy(P.write_submission, by_value=("out_dir",)), persist_result=True)
def submission_task(prepared: Path, plan: Path, test_pred: Path, out_dir: Path, threshold: float | None = None) -> Path:
    return P.write_submission(prepared, plan, test_pred, out_dir, threshold)


@task(name="validate-submission", cache_policy=_policy(P.validate), persist_result=True)
def validate_task(submission: Path, prepared: Path):
    return P.validate(submission, prepared)


@task(name="submit", cache_policy=NO_CACHE, **network_retry_options())
def submit_task(competition: str, submission: Path, message: str, run_key: str, state_dir: Path, endpoint: str | None = None):
    """Not cached: each flow run is a deliberate submission. Retries within the run reuse its
    run id (flow run id + file hash), so a lost answer never becomes a second submission."""
    return P.submit_run(competition, submission, message, run_key, state_dir, endpoint)


@task(name="read-score", cache_policy=NO_CACHE, **network_retry_options())
def score_task(competition: str, ref: int, endpoint: str | None = None, timeout_s: float = 900.0, poll_s: float = 10.0):
    return P.read_score(competition, ref, endpoint, timeout_s=timeout_s, poll_s=poll_s)


NETWORK_TASKS = (download_task, submit_task, score_task)
CACHED_TASKS = (download_task, prepare_task, plan_task, tokenize_task, train_task, baseline_task, combine_task,
                submission_task, validate_task)


def configure(work_dir: str | os.PathLike, *, retry_delay_s: float | None = None) -> dict[str, Any]:
    """The tasks with this run's result store (``<work_dir>/results``) and retry delay.

    Returns ``{name: task}``; the flow calls these. (Decorator arguments are fixed at import,
    while the store and, in tests, the retry delay belong to a run.)
    """
    storage = results_dir(work_dir)
    storage.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {}
    for t in (*CACHED_TASKS, submit_task, score_task):
        options: dict[str, Any] = {"result_storage": storage}
        if retry_delay_s is not None and t in NETWORK_TASKS:
            options["retry_delay_seconds"] = exponential_backoff(backoff_factor=retry_delay_s)
        out[t.name] = t.with_options(**options)
    return out


# ============================================================================ artifact renderers


def cv_rows(results: Sequence[P.AdapterResult], label: str = "fold") -> list[dict[str, Any]]:
    """One row per adapter for the CV table artifact and the CLI (``label``: ``fold``, or an
    adapter set's ``lora_expressive fold``)."""
    rows = []
    for r in sorted(results, key=lambda r: r.fold):
        rows.append({
            "adapter": f"{label} {r.fold}",
            "train rows": r.n_train,
            "valid rows": r.n_valid,
            "best epoch": r.best_epoch,
            f"valid {r.metric}": None if r.best_score is None else round(float(r.best_score), 5),
            "seconds": round(r.seconds, 1),
            "samples/s": round(r.samples_per_s, 1),
        })
    return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "(no rows)"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join("" if row.get(c) is None else str(row.get(c)) for c in cols) + " |" for row in rows]
    return "\n".join(lines)


def blend_rows(combined: P.CombineResult) -> list[dict[str, Any]]:
    """One row per ensemble member (``lora`` = the mean of the fold adapters), then the blend:
    OOF scores under the competition metric and the weights fit on them."""
    col = f"OOF {combined.metric}"
    how = combined.blend_method or ("merged adapters" if combined.method == "merge" else "mean of folds")
    rows = [{"member": name, col: round(score, 5), "weight": round(combined.weights.get(name, 0.0), 4)}
            for name, score in combined.member_scores.items()]
    cut = f", cut at {combined.threshold:.2f}" if combined.threshold is not None else ""
    rows.append({"member": f"blend ({how}{cut})", col: round(combined.oof_score, 5), "weight": None})
    if combined.blend_cv_score is not None:
        fitted = "weights and cut" if combined.blend_method and combined.threshold is not None else (
            "cut" if combined.threshold is not None else "weights")
        rows.append({"member": f"blend, {fitted} fit out-of-fold", col: round(combined.blend_cv_score, 5), "weight": None})
    return rows


_BAR = "█"


def learning_curve_markdown(results: Sequence[P.AdapterResult], width: int = 30) -> str:
    """A learning curve as a markdown table with text bars (no plotting library needed):
    training loss and the validation metric per fold and epoch, bars scaled to the largest loss."""
    rows = [(r.fold, h) for r in sorted(results, key=lambda r: r.fold) for h in r.history]
    if not rows:
        return "No epochs recorded."
    top = max(h["train_loss"] for _, h in rows) or 1.0
    metric = next((k for _, h in rows for k in h if k.startswith("valid_")), None)
    lines = ["### Learning curve", "", f"| fold | epoch | train loss | | {metric or 'valid'} |", "|---|---|---|---|---|"]
    for fold, h in rows:
        bar = _BAR * max(1, round(width * h["train_loss"] / top))
        valid = "" if metric is None or metric not in h else f"{h[metric]:.4f}"
        lines.append(f"| {fold} | {h['epoch']} | {h['train_loss']:.4f} | `{bar}` | {valid} |")
    return "\n".join(lines)


def learning_curve_plot_markdown(results: Sequence[P.AdapterResult]) -> str:
    """The learning curve as an SVG plot (one line per fold) inlined as a data URI: both Prefect
    UIs (V1 and V2) render it in a markdown artifact, and no file server is needed."""
    from lora_tasks.plots import learning_curve_svg, svg_data_uri

    ordered = sorted(results, key=lambda r: r.fold)
    svg = learning_curve_svg([r.history for r in ordered], [f"fold {r.fold}" for r in ordered])
    return f"### Learning curve\n\n![learning curve: training loss and validation metric per fold]({svg_data_uri(svg)})"


def submission_markdown(check: Any, submission: Any = None, scored: Any = None) -> str:
    """What was checked and what Kaggle said, for the submission artifact."""
    lines = ["### Submission", "", "| | |", "|---|---|", f"| file | `{check.path}` |", f"| rows | {check.rows} |",
             f"| columns | {', '.join(check.columns)} |", f"| sha256 | `{check.sha256[:16]}...` |", "| check | passed |"]
    if submission is not None:
        lines += [f"| Kaggle ref | {submission.ref} |", f"| run id | `{submission.run_id}` |",
                  f"| reused (retry found it) | {submission.reused} |"]
    if scored is not None:
        lines += [f"| status | {scored.status} |", f"| public score | {scored.public_score} |"]
    return "\n".join(lines)


def artifact_key(slug: str, what: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    raw = f"{slug}-{what}".lower()
    return "".join(ch if ch.isalnum() else "-" for ch in raw).strip("-")[:100]


def publish_plan(plan_path: Path) -> None:
    from prefect.artifacts import create_markdown_artifact

    plan = P.Plan.load(plan_path)
    create_markdown_artifact(key=artifact_key(plan.slug, "data-profile"), markdown=plan.profile_markdown,
                             description="What the pipeline saw in train.csv")
    create_markdown_artifact(key=artifact_key(plan.slug, "settings"),
                             markdown=f"### Settings ({plan.model})\n\n" + plan.settings_markdown(),
                             description="Preset and training settings, and the rules that chose them")


def publish_training(slug: str, results: Sequence[P.AdapterResult], combined: P.CombineResult,
                     cv: list[dict[str, Any]] | None = None) -> None:
    """The CV table (``cv``: rows of every adapter set; default the main set's), the blend table
    and the learning curves of the main set's folds."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    create_table_artifact(key=artifact_key(slug, "cv"), table=cv or cv_rows(results), description="Per-adapter CV metrics")
    create_table_artifact(key=artifact_key(slug, "blend"), table=blend_rows(combined),
                          description="Ensemble members: OOF score and blend weight")
    create_markdown_artifact(key=artifact_key(slug, "learning-curve"), markdown=learning_curve_markdown(results),
                             description="Training loss and validation metric per epoch")
    create_markdown_artifact(key=artifact_key(slug, "learning-curve-plot"), markdown=learning_curve_plot_markdown(results),
                             description="Learning curve plot: training loss and validation metric per fold and epoch")


def publish_submission(slug: str, check: Any, submission: Any = None, scored: Any = None) -> None:
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(key=artifact_key(slug, "submission"), markdown=submission_markdown(check, submission, scored),
                             description="Submission check, Kaggle ref and score")
