"""One orchestration, two executors: the Prefect flow and ``run_pipeline`` run the same sequence
(:func:`lora_tasks.steps.orchestrate.orchestrate`) and differ only in how a step is executed.

Checked on the demo (tiny model, the fake Kaggle server): both give the same plan and the same
submission file; each path reads every :class:`RunOptions` field (a field added without being
wired into the run fails here); ``kaggle-lora run --resubmit`` through the CLI submits again.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lora_tasks.options import RunOptions

REPO = Path(__file__).resolve().parents[1]
FAST = dict(tiny=True, epochs=1, max_seq_len=64, retry_delay_s=0.05, score_poll_s=0.05)


class Reads:
    """The RunOptions fields our code read while ``armed`` (validators of RunOptions itself and
    reads by Prefect's or pydantic's machinery do not count)."""

    armed = False
    fields: set[str] = set()


class RecordedOptions(RunOptions):
    """RunOptions that note which of their fields the run reads (a real RunOptions otherwise)."""

    def __getattribute__(self, name: str) -> Any:
        if Reads.armed and name in RunOptions.model_fields:
            caller = sys._getframe(1)
            module = caller.f_globals.get("__name__", "")
            validator = module == "lora_tasks.options" and caller.f_code.co_name.startswith("_")
            if module.startswith("lora_tasks") and not validator:
                Reads.fields.add(name)
        return super().__getattribute__(name)


def _read_fields(run) -> set[str]:
    Reads.fields, Reads.armed = set(), True
    try:
        run()
    finally:
        Reads.armed = False
    return set(Reads.fields)


@pytest.fixture(scope="module")
def both_runs(harness, fake_creds, demo_server, tmp_path_factory):
    """The demo through ``run_pipeline`` and through the flow, with recorded options."""
    from lora_tasks.prefect.flow import kaggle_lora
    from lora_tasks.steps import run_pipeline

    server, _ = demo_server
    out: dict[str, Any] = {}

    def options(name: str) -> RecordedOptions:
        return RecordedOptions(competition="demo", kaggle_endpoint=server.url,
                               work_dir=str(tmp_path_factory.mktemp(name)), **FAST)

    plain_options, flow_options = options("plain"), options("flow")
    out["plain_reads"] = _read_fields(lambda: out.setdefault("plain", run_pipeline(plain_options, run_key="plain")))
    out["flow_reads"] = _read_fields(lambda: out.setdefault("flow", kaggle_lora(flow_options)))
    return out


def test_both_executors_give_the_same_plan_and_submission(both_runs):
    from lora_tasks.steps import Plan

    plain, summary = both_runs["plain"], both_runs["flow"]
    [flow_plan] = (Path(summary.work_dir) / "artifacts").glob("plan-*.json")
    # the same settings, model and folds (the plans' time estimates are measured on each run)
    assert Plan.load(flow_plan).trains_same_as(Plan.load(plain.plan_path)), "the same plan"
    assert Path(summary.submission_path).name == plain.submission_path.name
    assert Path(summary.submission_path).read_bytes() == plain.submission_path.read_bytes(), "the same submission"
    assert summary.oof_score == pytest.approx(plain.combined.oof_score)
    assert summary.public_score == pytest.approx(plain.public_score)
    # fold 1 trains only where fold 0 keeps the adapters: the same decision on both paths
    assert [r.fold for r in plain.adapters] in ([0], [0, 1]) and len(summary.cv) == len(plain.adapters)
    # the members the plan let in (each measured; one over a quarter of the limit is left out)
    names = {m.name for m in plain.members}
    assert names == set(Plan.load(plain.plan_path).members or names)
    assert {"lightgbm", "catboost", "hist_gbm", "linear"} <= names <= {"lightgbm", "catboost", "hist_gbm",
                                                                     "extra_trees", "linear"}
    assert {"train-members", "train-fold-0", "submit", "read-score"} <= set(summary.task_states)


@pytest.mark.parametrize("path", ["plain", "flow"])
def test_every_run_option_is_read_on_both_paths(both_runs, path):
    """A field of RunOptions that neither the orchestration nor this path's wiring reads would be
    accepted by the CLI, the UI form and the API, and silently do nothing (as --resubmit once did)."""
    unread = sorted(set(RunOptions.model_fields) - both_runs[f"{path}_reads"])
    assert not unread, f"RunOptions fields never read on the {path} path: {unread}"


def test_the_recorder_sees_a_read_and_ignores_validators():
    """The recorder above is what the field test relies on: a read by our code counts, the
    options' own validation does not."""
    from lora_tasks.steps.orchestrate import score_poll_s

    options = RecordedOptions(competition="titanic", score_poll_s=3.0)
    assert _read_fields(lambda: RecordedOptions(competition="titanic")) == set(), "construction reads nothing"
    assert _read_fields(lambda: score_poll_s(options)) == {"competition", "kaggle_endpoint", "offline", "score_poll_s"}


def test_cli_resubmit_twice_makes_two_submissions(harness, fake_creds, demo_server, tmp_path):
    """``kaggle-lora run --resubmit``, twice: RunOptions.resubmit reaches the submit task, so the
    second run submits the same file again instead of reusing the first submission."""
    from prefect.settings import PREFECT_API_URL

    server, _ = demo_server
    before = len(server.submissions)
    # this checkout's package, the fake server's credentials (fake_creds) and the session's Prefect API
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "PREFECT_API_URL": PREFECT_API_URL.value()}
    cmd = [sys.executable, "-m", "lora_tasks.cli", "run", "--competition", "demo", "--resubmit", "--tiny",
           "--epochs", "1", "--max-seq-len", "64", "--score-poll", "0.05", "--work-dir", str(tmp_path / "work"),
           "--kaggle-endpoint", server.url]
    for _ in range(2):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "found from an earlier attempt" not in proc.stdout
    added = server.submissions[before:]
    assert len(added) == 2, f"{len(added)} submissions from two --resubmit runs"
    assert added[0].content == added[1].content, "the same file, submitted twice"


def test_the_plain_executor_retries_network_steps_on_transient_errors_only(creds, tmp_path):
    """RunOptions.retry_delay_s on the plain path: a 500 then a 429 are retried to success, a 404
    is not retried (as the Prefect tasks do, lora_tasks.kaggle.is_retryable deciding)."""
    from lora_tasks.kaggle import NotFoundError
    from lora_tasks.steps import DEMO_SLUG, download_data
    from lora_tasks.steps.orchestrate import PlainExecutor
    from lora_tasks.testing import fake_kaggle as fk
    from lora_tasks.testing.demo import build_demo_competition

    served = tmp_path / "served"
    build_demo_competition(served)
    executor = PlainExecutor(retry_delay_s=0.01)
    with fk.serve(served) as server:
        server.inject(fk.FAULT_500, times=1, method="ListDataFiles")
        server.inject(fk.FAULT_429, times=1, method="ListDataFiles", retry_after=0.01)
        folder = executor.result(executor.submit(download_data, competition=DEMO_SLUG, data_dir=tmp_path / "data",
                                                 endpoint=server.url))
        assert (folder / "train.csv").is_file()
        assert [r for _, r in server.requests].count("ListDataFiles") == 3
        server.requests.clear()
        server.inject(fk.FAULT_404, times=5, method="ListDataFiles")
        with pytest.raises(NotFoundError):
            executor.submit(download_data, competition=DEMO_SLUG, data_dir=tmp_path / "other", endpoint=server.url)
        assert [r for _, r in server.requests].count("ListDataFiles") == 1, "fatal errors are not retried"
