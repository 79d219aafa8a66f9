"""Two runs of the same competition in the same work dir at once (issue 22 item 4): both finish,
and every file they leave loads. They share the download (one competition lock), the token cache,
the frozen-prefix cache (one writer, many readers), the content-addressed store and the fold
checkpoints, each written under a unique temp name and renamed into place."""

from __future__ import annotations

import multiprocessing as mp
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lora_tasks.testing import fake_kaggle as fk
from lora_tasks.testing.demo import build_demo_competition


def _run(work: str, endpoint: str, barrier, out: str) -> None:  # a spawned process: imports are its own
    import json

    from lora_tasks import steps
    from lora_tasks.options import RunOptions

    options = RunOptions(competition="demo", work_dir=work, kaggle_endpoint=endpoint, tiny=True, epochs=2,
                         max_seq_len=64, top_layers=1, submit=False, time_limit="1h")
    barrier.wait(timeout=120)
    result = steps.run_pipeline(options, run_key=f"run-{os.getpid()}")
    Path(out).write_text(json.dumps({"submission": str(result.submission_path),
                                     "adapters": [str(a.adapter_path) for a in result.adapters],
                                     "oof": [str(a.oof_path) for a in result.adapters]}))


def test_two_runs_at_once_in_one_work_dir_both_finish(creds, tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")  # two processes on two cores
    served = tmp_path / "served"
    build_demo_competition(served)
    work = tmp_path / "work"
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    outs = [tmp_path / f"run{i}.json" for i in range(2)]
    with fk.serve(served) as server:
        procs = [ctx.Process(target=_run, args=(str(work), server.url, barrier, str(o))) for o in outs]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=600)
        codes = [p.exitcode for p in procs]
    assert codes == [0, 0], f"exit codes {codes}"
    results = [json.loads(o.read_text()) for o in outs]
    for r in results:
        frame = pd.read_csv(r["submission"])
        assert len(frame) > 0 and frame.notna().all().all()
        for path in r["oof"]:  # a fold's OOF file holds its held-out rows (NaN elsewhere)
            assert np.isfinite(np.load(path)).any()
        for path in r["adapters"]:
            assert Path(path).stat().st_size > 0
    # same inputs, same content-addressed results: the two runs agree on what they wrote
    assert results[0]["submission"] == results[1]["submission"]
    leftovers = [p for p in work.rglob("*") if ".tmp" in p.name or p.name.endswith(".partial")]
    assert not leftovers, f"temp files left behind: {leftovers[:5]}"


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])


def test_two_cli_runs_at_once_in_one_work_dir_through_prefect(tmp_path):
    """Issue 35 item 10: the test above drives run_pipeline; the CLI runs the Prefect flow, whose
    result store (``<work>/results``, records and manifests) and SQLite database (one
    ``PREFECT_HOME``, each run with its own temporary API server on it) the two runs share too.
    Two ``kaggle-lora run`` processes of the offline demo, started together, must both finish."""
    import json
    import sqlite3
    import subprocess
    import sys

    work, home = tmp_path / "work", tmp_path / "prefect-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", HF_HUB_OFFLINE="1",
               OPENBLAS_NUM_THREADS="1", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300")
    outs = [tmp_path / f"summary{i}.json" for i in range(2)]
    logs = [open(tmp_path / f"run{i}.log", "w") for i in range(2)]
    # --no-submit: two demo servers on one work dir's submissions are tested in test_kaggle_submission
    # (test_two_servers_on_one_state_file_list_each_others_submissions); this one is about Prefect
    command = [sys.executable, "-m", "lora_tasks.cli", "run", "--competition", "demo", "--tiny", "--epochs", "1",
               "--max-seq-len", "32", "--no-submit", "--work-dir", str(work)]
    procs = [subprocess.Popen([*command, "--json-out", str(out)], env=env, stdout=log, stderr=subprocess.STDOUT,
                              text=True) for out, log in zip(outs, logs, strict=True)]
    try:
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for log in logs:
            log.close()
    texts = [(tmp_path / f"run{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], "\n\n".join(t[-4000:] for t in texts)
    for text in texts:  # a hook or artifact failure is logged, not raised; a torn record is re-run, not failed
        assert "| ERROR" not in text, text[-4000:]
        assert "Not reusing the cached result" not in text, "a record the other run wrote was unreadable"
    servers = [re.findall(r"Starting temporary server on (\S+)", text) for text in texts]
    assert all(len(s) == 1 for s in servers) and servers[0] != servers[1], servers  # each run its own
    summaries = [json.loads(out.read_text()) for out in outs]
    assert summaries[0]["submission_path"] == summaries[1]["submission_path"], "one content, one file"
    # fold 1 trains only where fold 0 keeps the adapters: both runs decide the same
    assert all(s["oof_score"] > 0.5 and len(s["cv"]) == len(summaries[0]["cv"]) >= 1 for s in summaries)
    frame = pd.read_csv(summaries[0]["submission_path"])
    assert len(frame) > 0 and frame.notna().all().all()
    with sqlite3.connect(home / "prefect.db") as db:
        states = [row[0] for row in db.execute("SELECT state_type FROM flow_run")]
    assert states == ["COMPLETED", "COMPLETED"], states
    leftovers = [p for p in work.rglob("*") if ".tmp" in p.name or p.name.endswith(".partial")]
    assert not leftovers, f"temp files left behind: {leftovers[:5]}"
    manifests = list((work / "results" / "manifests").glob("*")) if (work / "results" / "manifests").is_dir() else []
    assert manifests, "the cached tasks recorded their outputs"


def test_a_run_pins_its_temporary_server_to_a_port_the_os_handed_out():
    """The CI failure of 2026-12-07: both runs of the test above picked port 8270 (Prefect picks at
    random from 8000-8999), the second server failed to bind and logged an ERROR, and its run used
    the first run's server. A run's temporary server now gets a port no socket holds."""
    import socket

    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from lora_tasks.prefect.runners import pin_temporary_api_server_port

    saved = SubprocessASGIServer._instances.pop(None, None)  # a test harness's server: restored below
    try:
        with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
            assert pin_temporary_api_server_port() is None  # a server of the user's: no temporary one
        with temporary_settings(restore_defaults={PREFECT_API_URL}):
            assert not PREFECT_API_URL.value()
            port = pin_temporary_api_server_port()
            assert port is not None and SubprocessASGIServer().port == port
            assert not SubprocessASGIServer().running  # pinned only: the flow's first client starts it
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", port))  # free now: the pinning socket is closed
            assert pin_temporary_api_server_port() is None  # a port once: the pinned one stays
            assert SubprocessASGIServer().port == port
    finally:
        SubprocessASGIServer._instances.pop(None, None)
        if saved is not None:
            SubprocessASGIServer._instances[None] = saved
