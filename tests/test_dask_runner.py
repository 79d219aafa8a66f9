"""The kaggle-lora flow on a real Dask cluster (``--runner dask``, prefect-dask).

A local cluster of 2 worker processes, Prefect's test harness (one API server) and the fake
Kaggle server. Checked: the run completes with a sane summary; every task of the run, the two
train-adapter tasks included, executed inside the Dask worker processes (the scheduler's task
stream names the workers); their task runs were reported to the harness's API and are Completed
there; no worker started an API server of its own; the workers ran the flow's tasks without the
flows/ folder on their sys.path (the flow lives in the installed package, as on a remote `dask worker`);
and the CLI's ``--dask-address`` runs the same flow on the same cluster.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

distributed = pytest.importorskip("distributed", reason="prefect-dask (pip install -e '.[dask]') is not installed")
pytest.importorskip("prefect_dask")

REPO = Path(__file__).resolve().parents[1]
FLOWS = str(REPO / "flows")
# subprocesses run this checkout's package, whichever copy is installed
SUBPROCESS_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}

FAST = dict(tiny=True, epochs=1, max_seq_len=64, retry_delay_s=0.05, score_poll_s=0.05)
TRAIN_TASK_FN = "train_adapter"  # the step behind the "train-adapter" task (its task keeps the name): its Dask key prefix


def _hide_flows_folder(folder: str) -> bool:
    """On a worker: drop ``folder`` from sys.path (as on another machine); True if kaggle_lora is then unimportable."""
    import importlib.util
    import sys

    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != folder]
    sys.modules.pop("kaggle_lora", None)
    return importlib.util.find_spec("kaggle_lora") is None


def _worker_api_servers() -> dict:
    """On a worker: the Prefect API servers this process started, and its child processes."""
    import sys

    import psutil

    server = sys.modules.get("prefect.server.api.server")  # imported only to start a temporary server
    servers = [s.api_url for s in server.SubprocessASGIServer._instances.values()] if server else []
    children = [" ".join(c.cmdline()) for c in psutil.Process().children(recursive=True)]
    return {"servers": servers, "children": children, "pid": os.getpid()}


@pytest.fixture(scope="module")
def cluster(harness, fake_creds):
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = distributed.Client(cluster, set_as_default=False)  # not global: the runner must use the address
    try:
        client.wait_for_workers(2, timeout=60)
        yield cluster, client
    finally:
        client.close()
        cluster.close()


@pytest.fixture(scope="module")
def dask_run(cluster, demo_server, tmp_path_factory):
    from lora_tasks.options import RunOptions
    from lora_tasks.prefect.flow import kaggle_lora
    from lora_tasks.prefect.runners import make_task_runner

    cluster, client = cluster
    server, _ = demo_server
    hidden = client.run(_hide_flows_folder, FLOWS)
    assert all(hidden.values()), f"flows/ still importable on a worker: {hidden}"
    work = tmp_path_factory.mktemp("work")
    flow_fn = kaggle_lora.with_options(task_runner=make_task_runner("dask", address=cluster.scheduler_address))
    with distributed.get_task_stream(client=client) as stream:
        options = RunOptions(competition="demo", kaggle_endpoint=server.url, work_dir=str(work), **FAST)
        state = flow_fn(options, return_state=True)
    return state, stream.data, work


def test_flow_completes_on_the_cluster(dask_run, demo_server):
    state, _, _ = dask_run
    _, root = demo_server
    assert state.is_completed(), state
    summary = state.result()
    assert math.isfinite(summary.oof_score) and 0.0 <= summary.oof_score <= 1.0
    # fold 1 trains unless fold 0 failed (the tiny encoder at one class) or added nothing to the members' blend
    assert [row["adapter"] for row in summary.cv] in (["fold 0", "fold 1"], ["fold 0"])
    assert set(summary.task_states.values()) == {"Completed"}, summary.task_states
    sub = pd.read_csv(summary.submission_path)
    sample = pd.read_csv(root / "demo" / "sample_submission.csv")
    assert len(sub) == len(sample) and list(sub.columns) == list(sample.columns)
    assert summary.submitted and math.isfinite(summary.public_score)
    assert len(demo_server[0].submissions) == 1


def test_tasks_ran_in_the_dask_workers(dask_run, cluster):
    state, records, _ = dask_run
    cluster, client = cluster
    workers = set(cluster.scheduler_info["workers"])
    ran = [(r["key"] if isinstance(r["key"], str) else r["key"][0], r["worker"]) for r in records]
    trained = [w for key, w in ran if key.startswith(TRAIN_TASK_FN)]
    folds = len(state.result().cv)  # fold 1 only where fold 0 kept the adapters
    assert len(trained) == folds >= 1, f"{folds} train-adapter task(s) expected in the task stream: {ran}"
    assert set(trained) <= workers, (trained, workers)
    assert len(ran) >= 9 and {w for _, w in ran} == workers  # download ... read-score, all on the cluster
    assert _ran_side_by_side(records), "some tasks (the folds, the baseline) ran at the same time on both workers"


def _ran_side_by_side(records: list[dict]) -> bool:
    spans = [(r["worker"], s["start"], s["stop"]) for r in records for s in r["startstops"] if s["action"] == "compute"]
    return any(w1 != w2 and a1 < b2 and a2 < b1 for w1, a1, b1 in spans for w2, a2, b2 in spans)


def test_task_runs_were_reported_to_the_one_api(dask_run, cluster):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    state, records, _ = dask_run
    _, client = cluster
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as api:  # the harness's server
        runs = api.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    by_name: dict[str, list[str]] = {}
    for run in runs:
        by_name.setdefault(run.task_key.rsplit("-", 1)[0] if run.task_key else run.name, []).append(run.state_name)
    trains = [r for r in runs if r.name.startswith("train-fold-")]
    assert len(trains) == len(state.result().cv) and {r.state_name for r in trains} == {"Completed"}, by_name
    assert len(runs) == len(records), "every task the cluster ran is a task run of this flow run in this API"
    assert {r.state_name for r in runs} == {"Completed"}, by_name
    # No worker started a temporary API server of its own (ephemeral mode in a worker would).
    for worker, info in client.run(_worker_api_servers).items():
        assert info["servers"] == [] and not any("uvicorn" in c for c in info["children"]), (worker, info)


def test_cli_dask_address_runs_on_the_same_cluster(dask_run, cluster, demo_server):
    """``--dask-address`` through the CLI, against the same API: a rerun that is Cached in every
    task, each cache lookup made on a worker."""
    from prefect.settings import PREFECT_API_URL

    _, _, work = dask_run
    cluster, client = cluster
    server, _ = demo_server
    out = work / "rerun.json"
    env = {**SUBPROCESS_ENV, "PREFECT_API_URL": PREFECT_API_URL.value()}
    cmd = [sys.executable, str(REPO / "flows" / "submit.py"), "--competition", "demo", "--tiny", "--epochs", "1",
           "--max-seq-len", "64", "--work-dir", str(work), "--kaggle-endpoint", server.url, "--no-submit",
           "--dask-address", cluster.scheduler_address, "--json-out", str(out)]
    with distributed.get_task_stream(client=client) as stream:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rerun = json.loads(out.read_text())
    assert rerun["task_states"] and set(rerun["task_states"].values()) == {"Cached"}, rerun["task_states"]
    workers = set(cluster.scheduler_info["workers"])
    keys = [r["key"] if isinstance(r["key"], str) else r["key"][0] for r in stream.data]
    folds = sum(name.startswith("train-fold-") for name in rerun["task_states"])
    assert folds >= 1 and sum(k.startswith(TRAIN_TASK_FN) for k in keys) == folds
    assert {r["worker"] for r in stream.data} <= workers


def test_cli_local_cluster_in_ephemeral_mode_starts_one_api_server(dask_run, tmp_path):
    """No PREFECT_API_URL: ``--runner dask`` starts a local cluster, and its worker processes use the
    CLI's one temporary API server instead of starting one each (3 servers before the fix)."""
    _, _, work = dask_run
    env = {k: v for k, v in SUBPROCESS_ENV.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # a fresh ephemeral database, not ~/.prefect
    out = tmp_path / "run.json"
    cmd = [sys.executable, str(REPO / "flows" / "submit.py"), "--competition", "demo", "--tiny", "--epochs", "1",
           "--max-seq-len", "64", "--work-dir", str(work), "--no-submit", "--runner", "dask", "--json-out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = proc.stdout + proc.stderr
    assert "Creating a new Dask cluster with `distributed.deploy.local.LocalCluster`" in logs
    assert logs.count("Starting temporary server") == 1, [line for line in logs.splitlines() if "temporary server" in line]
    rerun = json.loads(out.read_text())
    assert set(rerun["task_states"].values()) == {"Cached"} and "train-fold-0" in rerun["task_states"]


def test_cli_rejects_dask_address_with_another_runner():
    proc = subprocess.run([sys.executable, str(REPO / "flows" / "submit.py"), "--competition", "demo", "--runner",
                           "thread", "--dask-address", "tcp://127.0.0.1:9"], capture_output=True, text=True, timeout=60,
                          env=SUBPROCESS_ENV)
    assert proc.returncode == 2 and "--dask-address needs --runner dask" in proc.stderr


def test_workers_that_cannot_reach_the_api_are_a_clear_error(cluster):
    from lora_tasks.prefect.runners import check_dask_workers

    _, client = cluster
    with pytest.raises(RuntimeError, match="cannot reach the Prefect API http://127.0.0.1:9/api"):
        check_dask_workers(client, "http://127.0.0.1:9/api")


USER_CREDENTIALS = {"KAGGLE_API_TOKEN": "KGAT_the_users_real_token_0123456789abcdef",
                    "KAGGLE_USERNAME": "the-real-user", "KAGGLE_KEY": "the-real-key-0123456789abcdef"}


def _kaggle_env() -> dict:
    """On a worker: its Kaggle variables, and whether any variable holds one of the user's values."""
    values = set(os.environ.values())
    return {"kaggle": {k: v for k, v in os.environ.items() if k.startswith("KAGGLE_")},
            "user_values": sorted(values & set(USER_CREDENTIALS.values()))}


def test_offline_demo_workers_get_the_fake_token_never_the_users(harness, demo_server, tmp_path, monkeypatch):
    """The user's own credentials are in the environment the local cluster starts from; the offline
    demo's workers carry the fake server's token instead, and a download on a worker succeeds with
    it (the fake server answers the user's token with 401). Without ``offline_demo`` the same
    workers would carry the user's credentials: the check bites."""
    from lora_tasks.prefect.runners import make_task_runner
    from lora_tasks.steps.download import download_data
    from lora_tasks.testing.fake_kaggle import DEFAULT_TOKEN

    for name, value in USER_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    server, _ = demo_server
    with make_task_runner("dask", max_workers=1, offline_demo=True) as runner:
        envs = runner.client.run(_kaggle_env)
        folder = runner.client.submit(download_data, "demo", tmp_path / "data", server.url).result(timeout=180)
    assert envs
    for worker, env in envs.items():
        assert env["kaggle"]["KAGGLE_API_TOKEN"] == DEFAULT_TOKEN, (worker, env["kaggle"].keys())
        assert env["user_values"] == [], f"{worker} carries the user's credentials"
    assert (folder / "train.csv").is_file()
    with make_task_runner("dask", max_workers=1) as runner:
        assert all(env["user_values"] for env in runner.client.run(_kaggle_env).values())
