"""How a run's tasks execute: threads (default), one worker process per fold, or a Dask cluster.

Why a module of its own: the runners size BLAS thread pools and make Dask workers report to the
flow's one Prefect API; the flow only picks one.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from typing import Any

import httpx
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

TASK_RUNNERS = ("thread", "process", "dask")


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


def pin_temporary_api_server_port() -> int | None:
    """Give this process's temporary Prefect API server a port the OS handed out (``None``: a
    ``PREFECT_API_URL`` is set, or the server has its port already).

    Why: Prefect picks the port at random from 8000-8999 and checks it before its server binds.
    Two runs started together can pick the same one; the second server then fails to bind, logs
    an ERROR, and its run talks to the first run's server, which goes away when that run ends.
    A port the OS hands out (bind to port 0) is one no other socket holds, as Prefect's own test
    harness does; the server of every Prefect client in this process is the one pinned here."""
    if PREFECT_API_URL.value():
        return None
    from prefect.server.api.server import SubprocessASGIServer  # loads slowly: ephemeral mode only

    server = SubprocessASGIServer()  # the instance every client of this process starts
    if server.running or server.port is not None:
        return None
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        server.port = int(sock.getsockname()[1])
    return server.port


def stop_temporary_api_servers() -> None:
    """Stop the temporary Prefect API servers this process started (none: nothing to do).

    Why: on a forced exit (:mod:`lora_tasks.lifecycle`) Prefect's own shutdown does not run, and
    the server subprocess it started would outlive the run."""
    server = sys.modules.get("prefect.server.api.server")  # loaded only if a server was started
    if server is None:
        return
    for instance in list(server.SubprocessASGIServer._instances.values()):
        with contextlib.suppress(Exception):
            instance.stop()


#: Kaggle credential variables a local Dask worker of the offline demo gets blanked: it talks to the
#: fake server only, with the fake server's token, and never carries the user's real credentials.
USER_CREDENTIAL_VARS = ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN")


def offline_worker_env() -> dict[str, str]:
    """The Kaggle environment of the offline demo's worker processes: the fake server's token only."""
    from lora_tasks.testing.offline_demo import OFFLINE_TOKEN  # the test server: offline demo only

    env = dict.fromkeys(USER_CREDENTIAL_VARS, "")
    env["KAGGLE_API_TOKEN"] = OFFLINE_TOKEN
    return env


def make_task_runner(kind: str = "thread", max_workers: int | None = None, address: str | None = None,
                     offline_demo: bool = False):
    """``thread`` (default; MLX trainings take turns inside one process), ``process`` (one
    worker process per fold: true parallelism) or ``dask`` (needs the optional prefect-dask:
    ``pip install -e ".[dask]"``).

    ``dask`` with ``address`` (``tcp://host:8786``) submits every task of the run to that Dask
    scheduler's workers; without one it starts a local cluster of ``max_workers`` (default
    ``min(2, cpus)``) single-threaded worker processes for the run. Either way the workers
    report to this process's Prefect API (see :func:`_one_api_dask_runner`). ``offline_demo``: a
    local cluster's workers get the fake server's token (:func:`offline_worker_env`): they start
    before the flow puts that token into this process's environment, and would otherwise carry
    the user's own credentials.
    """
    if kind == "thread":
        return ThreadPoolTaskRunner(max_workers=max_workers)
    if kind == "process":
        n_workers = max_workers or min(4, os.cpu_count() or 1)
        share_cores(n_workers)
        return ProcessPoolTaskRunner(max_workers=n_workers)
    if kind == "dask":
        try:  # an optional dependency: import it only when asked for
            import prefect_dask  # noqa: F401 - only checks it is installed
        except ImportError:
            raise SystemExit(
                "The dask task runner needs prefect-dask, which is not installed here: "
                "`pip install prefect-dask` (it pulls in dask.distributed), or use --runner thread|process."
            ) from None
        runner_class = _one_api_dask_runner()
        if address:
            return runner_class(address=address)
        n_workers = max_workers or min(2, os.cpu_count() or 1)
        share_cores(n_workers)
        cluster_kwargs: dict[str, Any] = {"n_workers": n_workers, "threads_per_worker": 1, "processes": True}
        if offline_demo:
            cluster_kwargs["env"] = offline_worker_env()
        return runner_class(cluster_kwargs=cluster_kwargs)
    raise ValueError(f"Unknown task runner {kind!r}; use one of {', '.join(TASK_RUNNERS)}.")


def _probe_api(api_url: str) -> dict[str, Any]:
    """Runs on a Dask worker: can it reach ``api_url``, and which API does its environment name?"""

    out: dict[str, Any] = {"env": os.environ.get("PREFECT_API_URL"), "error": None}
    try:
        httpx.get(f"{api_url.rstrip('/')}/health", timeout=10).raise_for_status()
    except Exception as exc:
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
    from prefect_dask import DaskTaskRunner  # optional: loaded for --runner dask only

    class OneApiDaskTaskRunner(DaskTaskRunner):
        api_url: str | None = None

        def __enter__(self):
            super().__enter__()
            url = PREFECT_API_URL.value()
            if not url:  # ephemeral mode: share this process's temporary server with the workers
                # the server module loads slowly: only in ephemeral mode
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
