"""The ``kaggle-lora`` flow: download -> profile/auto-configure -> tokenize -> train adapters
(one task per fold, in parallel) -> combine -> submission -> validate -> submit -> score.

Wiring only: every step is a task of :mod:`lora_tasks.tasks`, which calls one function of
:mod:`lora_tasks.pipeline`. Run it with ``python flows/submit.py`` (CLI) or as a deployment
(``python flows/serve.py``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from lora_tasks import pipeline as P
from lora_tasks import tasks as T

TASK_RUNNERS = ("thread", "process", "dask")


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


#: Environment variables that size the BLAS thread pools of processes started after they are set.
BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")


def share_cores(n_workers: int) -> dict[str, str]:
    """Give each of ``n_workers`` local worker processes its share of the cores for BLAS
    (``cores // n_workers`` threads, read when a worker loads its BLAS; values already set win).

    Why: every worker trains a fold at once, and with as many BLAS threads as cores each, two
    workers on two cores fight over them: 0.69-0.71x of plain sequential training in
    ``benchmarks/ensemble.py``; with one BLAS thread each they are 1.09-1.10x faster than it. This
    process's own BLAS is loaded already and keeps its threads."""
    threads = str(max(1, (os.cpu_count() or 1) // max(1, n_workers)))
    for var in BLAS_THREAD_VARS:
        os.environ.setdefault(var, threads)
    return {var: os.environ[var] for var in BLAS_THREAD_VARS}


def make_task_runner(kind: str = "thread", max_workers: int | None = None, address: str | None = None):
    """``thread`` (default; MLX trainings take turns inside one process), ``process`` (one
    worker process per fold: true parallelism) or ``dask`` (needs the optional prefect-dask:
    ``pip install -e ".[dask]"``).

    ``dask`` with ``address`` (``tcp://host:8786``) submits every task of the run to that Dask
    scheduler's workers; without one it starts a local cluster of ``max_workers`` (default
    ``min(2, cpus)``) single-threaded worker processes for the run. Either way the workers
    report to this process's Prefect API (see :func:`_one_api_dask_runner`).
    """
    from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

    if kind == "thread":
        return ThreadPoolTaskRunner(max_workers=max_workers)
    if kind == "process":
        n_workers = max_workers or min(4, os.cpu_count() or 1)
        share_cores(n_workers)
        return ProcessPoolTaskRunner(max_workers=n_workers)
    if kind == "dask":
        try:
            import prefect_dask  # noqa: F401
        except ImportError:
            raise SystemExit(
                "The dask task runner needs prefect-dask, which is not installed here: "
                "`pip install prefect-dask` (it pulls in dask.distributed), or use --runner thread|process."
            ) from None
        import cloudpickle

        # The flow (and this module) travel to the workers by value, so a `dask worker` on another
        # machine needs the installed package but not flows/ on its sys.path.
        if __name__ != "__main__":
            cloudpickle.register_pickle_by_value(sys.modules[__name__])
        runner_class = _one_api_dask_runner()
        if address:
            return runner_class(address=address)
        n_workers = max_workers or min(2, os.cpu_count() or 1)
        share_cores(n_workers)
        return runner_class(cluster_kwargs={"n_workers": n_workers, "threads_per_worker": 1, "processes": True})
    raise ValueError(f"Unknown task runner {kind!r}; use one of {', '.join(TASK_RUNNERS)}.")


def _probe_api(api_url: str) -> dict[str, Any]:
    """Runs on a Dask worker: can it reach ``api_url``, and which API does its environment name?"""
    import httpx

    out: dict[str, Any] = {"env": os.environ.get("PREFECT_API_URL"), "error": None}
    try:
        httpx.get(f"{api_url.rstrip('/')}/health", timeout=10).raise_for_status()
    except Exception as exc:  # noqa: BLE001 - reported to the flow process, which raises
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def check_dask_workers(client: Any, api_url: str) -> dict[str, dict[str, Any]]:
    """Every worker of ``client``'s cluster must reach the flow's Prefect API (the one-API rule)."""
    probes = client.run(_probe_api, api_url)
    unreachable = {w: p["error"] for w, p in probes.items() if p["error"]}
    if unreachable:
        raise RuntimeError(
            f"Dask workers cannot reach the Prefect API {api_url}, which their task runs must report to: "
            + "; ".join(f"{w}: {e}" for w, e in unreachable.items())
            + ". Run a Prefect server the workers can reach (`prefect server start --host 0.0.0.0`) and set "
            "PREFECT_API_URL=http://<server>:4200/api here and in every `dask worker`'s environment."
        )
    return probes


_DASK_RUNNER: type | None = None


def _one_api_dask_runner() -> type:
    """A ``DaskTaskRunner`` whose workers all report to this process's Prefect API.

    prefect-dask ships the flow process's settings (``SettingsContext``, PREFECT_API_URL
    included) with every task and runs it under them, so the task runs land in the flow's API.
    In ephemeral mode (no PREFECT_API_URL) that setting is empty, and every worker process
    would start its own temporary API server (and database). So on entering, this runner starts
    the process's ephemeral server (the one the flow's own client uses) and puts its URL into
    the settings for the run; a local cluster it creates gets PREFECT_API_URL in its workers'
    environment too; on connecting it checks that every worker reaches that API.
    Built on first use, so prefect-dask (and distributed) load only for ``--runner dask``.
    """
    global _DASK_RUNNER
    if _DASK_RUNNER is not None:
        return _DASK_RUNNER
    from prefect_dask import DaskTaskRunner

    class OneApiDaskTaskRunner(DaskTaskRunner):
        api_url: str | None = None

        def __enter__(self):
            super().__enter__()
            from prefect.settings import PREFECT_API_URL, temporary_settings

            url = PREFECT_API_URL.value()
            if not url:  # ephemeral mode: share this process's temporary server with the workers
                from prefect.server.api.server import SubprocessASGIServer

                server = SubprocessASGIServer()
                server.start()
                url = server.api_url
                self._exit_stack.enter_context(temporary_settings(updates={PREFECT_API_URL: url}))
            self.api_url = url
            if not self.address and self._cluster is None:
                env = dict(self.cluster_kwargs.get("env") or {})
                env["PREFECT_API_URL"] = url
                self.cluster_kwargs["env"] = env
            return self

        @property
        def client(self):
            fresh = self._client is None
            client = super().client
            if fresh and self.api_url:
                check_dask_workers(client, self.api_url)
            return client

    _DASK_RUNNER = OneApiDaskTaskRunner
    return _DASK_RUNNER


def _plan_adapter_set(run: dict, adapter_set: P.AdapterSet, competition: str, folder: Path, artifacts: Path,
                      model: str | None, tiny: bool, overrides: dict, max_train_rows: int | None, n_folds: int,
                      main_plan: Path, states: dict[str, str]) -> Path:
    """The plan of one more adapter set (same folds as the main set), refused if it is the main set's own."""
    name = adapter_set.member
    f = run["profile-and-configure"].with_options(task_run_name=f"profile-and-configure-{name}").submit(
        competition, folder, artifacts, adapter_set.model or model, tiny,
        P.adapter_set_overrides(overrides, adapter_set, n_folds), max_train_rows)
    plan = f.result(); states[f"profile-and-configure-{name}"] = _state(f)
    P.check_adapter_set(main_plan, plan, adapter_set)
    return plan


def _submit_adapter_set(run: dict, adapter_set: P.AdapterSet, plan: Path, prepared: Path, artifacts: Path,
                        tokens_dir: Path, model: str | None, n_folds: int, states: dict[str, str]) -> list[Any]:
    """Tokenize for and submit the fold adapters of one more adapter set; returns the fold futures.
    Its tasks are named after the set (``train-lora_expressive-fold-0``)."""
    name, set_model = adapter_set.member, adapter_set.model or model
    f = run["tokenize"].with_options(task_run_name=f"tokenize-{name}").submit(prepared, plan, tokens_dir, set_model)
    tokens = f.result(); states[f"tokenize-{name}"] = _state(f)
    train = run["train-adapter"]
    return [train.with_options(task_run_name=f"train-{name}-fold-{k}").submit(prepared, plan, tokens, k, artifacts,
                                                                                set_model)
            for k in range(n_folds)]


def _state(future: Any) -> str:
    return future.state.name if future.state is not None else "unknown"


# log_prints stays off: with it, Prefect reroutes print() to the logger, past the
# redirect_stdout that keeps the kaggle client's import-time help text quiet.
@flow(name="kaggle-lora", log_prints=False)
def kaggle_lora(
    competition: str = "demo",
    model: str | None = None,
    preset: str | None = None,
    adapters: int | None = None,
    epochs: int | None = None,
    max_seq_len: int | None = None,
    top_layers: int | str | None = None,
    combine: str = "blend",
    baseline: bool = True,
    blend_method: str = P.DEFAULT_BLEND_METHOD,
    submit: bool = True,
    message: str = "kaggle-lora",
    data_dir: str | None = None,
    kaggle_endpoint: str | None = None,
    tiny: bool = False,
    max_train_rows: int | None = None,
    work_dir: str = T.DEFAULT_WORK_DIR,
    retry_delay_s: float = 10.0,
    score_timeout_s: float = 900.0,
    score_poll_s: float = 10.0,
    adapter_sets: list[str] | None = None,
) -> RunSummary:
    """From a competition name to a scored submission.

    ``adapters``: number of folds (= adapters); ``preset``/``epochs``/``max_seq_len`` override
    the competition's ``[training]`` recipe and the auto-configured settings. ``top_layers``:
    adapters on the top N encoder layers only (``"all"``: every layer); the frozen layers below
    run once per dataset (cached on disk) instead of once per fold, epoch and batch.
    ``combine="blend"`` blends the fold adapters with the
    scikit-learn ``baseline`` members trained on the same folds (``blend_method``: caruana, weights,
    mean, rank_mean or stacking, fit on out-of-fold rows); ``merge`` folds the adapters into
    one model (no baseline). ``data_dir``: where downloads go (default ``<work_dir>/data``).
    ``kaggle_endpoint``: a Kaggle-compatible server (the fake one); for ``demo`` without one, a
    fake server is started in-process. ``tiny``: a tiny random model (tests).
    ``adapter_sets``: more adapter sets, ``"PRESET[@MODEL][:KEY=VALUE,...]"`` (``"expressive"``,
    ``"balanced@all-mpnet-base-v2:epochs=2"``), each trained on the same folds beside the main one
    and blended as its own member (``lora_expressive``, ...); a copy of the main set is refused.
    None: the competition's ``[training] adapter_sets``; ``[]``: none.
    """
    logger = get_run_logger()
    if combine not in P.COMBINE_METHODS:
        raise ValueError(f"combine={combine!r}; use one of {', '.join(P.COMBINE_METHODS)}.")
    from lora_tasks.ensemble import METHODS as BLEND_METHODS

    if blend_method not in BLEND_METHODS:
        raise ValueError(f"blend_method={blend_method!r}; use one of {', '.join(BLEND_METHODS)}.")
    sets = P.parse_adapter_sets(adapter_sets)
    if sets and combine != "blend":
        raise ValueError("adapter_sets blend as members of their own; they need combine='blend'.")
    work = Path(work_dir).expanduser().resolve()
    run = T.configure(work, retry_delay_s=retry_delay_s)
    overrides = P.given_overrides({"preset": preset, "n_folds": adapters, "epochs": epochs,
                                   "max_seq_len": max_seq_len, "top_layers": top_layers})
    offline = competition == P.DEMO_SLUG and not kaggle_endpoint
    states: dict[str, str] = {}
    with (P.offline_kaggle(work) if offline else contextlib.nullcontext(kaggle_endpoint)) as endpoint:
        if offline:
            score_poll_s = min(score_poll_s, 1.0)  # the in-process fake server scores at once
        data_root = Path(data_dir).expanduser().resolve() if data_dir else work / "data"
        artifacts, tokens_dir = work / "artifacts", work / "tokens"

        f = run["download"].submit(competition, data_root, endpoint)
        folder = f.result(); states["download"] = _state(f)
        if adapter_sets is None:  # the competition's recipe; its sets only blend
            recipe = P.recipe_adapter_sets(competition, folder)
            sets = recipe if combine == "blend" else []
            if recipe and combine != "blend":
                logger.info("combine=merge: the recipe's adapter sets %s are left out (they only blend).",
                            [s.member for s in recipe])
        f = run["prepare"].submit(competition, folder, artifacts, max_train_rows)
        g = run["profile-and-configure"].submit(competition, folder, artifacts, model, tiny, overrides, max_train_rows)
        prepared, plan = f.result(), g.result()
        states["prepare"], states["profile-and-configure"] = _state(f), _state(g)
        T.publish_plan(plan)
        n_folds = P.Plan.load(plan).n_folds
        slug = P.Plan.load(plan).slug
        set_plans = {s: _plan_adapter_set(run, s, competition, folder, artifacts, model, tiny, overrides,
                                          max_train_rows, n_folds, plan, states) for s in sets}

        f = run["tokenize"].submit(prepared, plan, tokens_dir, model)
        tokens = f.result(); states["tokenize"] = _state(f)

        use_baseline = baseline and combine == "blend"
        b = run["train-baselines"].submit(competition, folder, prepared, plan, artifacts) if use_baseline else None
        folds = [run["train-adapter"].submit(prepared, plan, tokens, k, artifacts, model) for k in range(n_folds)]
        set_folds = {s.member: _submit_adapter_set(run, s, set_plan, prepared, artifacts, tokens_dir, model, n_folds,
                                                   states)
                     for s, set_plan in set_plans.items()}
        results = [fut.result() for fut in folds]
        for k, fut in enumerate(folds):
            states[f"train-fold-{k}"] = _state(fut)
        set_results = {name: [fut.result() for fut in futs] for name, futs in set_folds.items()}
        for name, futs in set_folds.items():
            for k, fut in enumerate(futs):
                states[f"train-{name}-fold-{k}"] = _state(fut)
        baselines = b.result() if b is not None else []
        if b is not None:
            states["train-baselines"] = _state(b)

        f = run["combine"].submit(prepared, plan, results, artifacts, combine, tokens, model, baselines, blend_method,
                                  set_results)
        combined = f.result(); states["combine"] = _state(f)
        cv = T.cv_rows(results) + [row for name, rs in set_results.items() for row in T.cv_rows(rs, f"{name} fold")]
        T.publish_training(slug, results, combined, cv)

        f = run["write-submission"].submit(prepared, plan, combined.test_path, artifacts, combined.threshold)
        submission_path = f.result(); states["write-submission"] = _state(f)
        f = run["validate-submission"].submit(submission_path, prepared)
        check = f.result(); states["validate-submission"] = _state(f)

        summary = RunSummary(
            competition=competition, slug=slug, metric=combined.metric, cv=cv,
            oof_score=combined.oof_score, combine=combine, submission_path=str(submission_path),
            members=T.blend_rows(combined),
            work_dir=str(work),
        )
        logger.info("OOF %s (%s of %d adapters): %.5f", combined.metric, combine, n_folds, combined.oof_score)
        if not submit:
            T.publish_submission(slug, check)
            summary.task_states = states
            return summary

        run_key = str(flow_run.get_id() or "local")
        f = run["submit"].submit(competition, submission_path, message, run_key, work / "state", endpoint)
        submitted = f.result(); states["submit"] = _state(f)
        f = run["read-score"].submit(competition, submitted.ref, endpoint, score_timeout_s, score_poll_s)
        scored = f.result(); states["read-score"] = _state(f)
        T.publish_submission(slug, check, submitted, scored)
        summary.submitted, summary.ref, summary.run_id = True, submitted.ref, submitted.run_id
        summary.reused, summary.public_score = submitted.reused, scored.public_score
        summary.task_states = states
        logger.info("Submission %s scored %s", submitted.ref, scored.public_score)
        return summary


if __name__ == "__main__":  # python flows/kaggle_lora.py: the demo with defaults
    sys.exit(print(kaggle_lora()))
