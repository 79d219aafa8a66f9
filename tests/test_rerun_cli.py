"""README command 1's job run twice in one folder, through the CLI, as a new user does (issue 31).

The first run's submission is recorded in ``<work>/state``; the rerun starts a new in-process fake
Kaggle server, which must know that submission (Kaggle remembers a user's submissions), so the
rerun reuses it and prints the same score instead of waiting on a ref the server never made.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 600  # a bound on a hang (the bug waited 900 s per try), not a speed check


@pytest.fixture
def cli_env(tmp_path):
    """This checkout's package, a fresh Prefect home (a temporary server of its own), no API URL."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "KAGGLE_API_TOKEN")}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               HF_HUB_OFFLINE="1")
    return env


def _run(work: Path, env: dict[str, str], *extra: str) -> str:
    args = [sys.executable, str(REPO / "flows" / "submit.py"), "--competition", "demo", "--tiny",
            "--work-dir", str(work), *extra]
    done = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-4000:]
    return text


def _submitted(text: str) -> tuple[int, float]:
    ref = re.search(r"Submitted: ref (\d+)", text)
    score = re.search(r"Public score \(\w+\): ([0-9.]+)", text)
    assert ref and score, text[-3000:]
    return int(ref.group(1)), float(score.group(1))


def _cached(text: str) -> int:
    found = re.search(r"Tasks: (\d+) \((\d+) cached\)", text)
    assert found, text[-3000:]
    return int(found.group(2))


def test_the_demo_run_twice_in_one_folder_ends_with_the_same_score_then_resubmit_submits_again(tmp_path, cli_env):
    work = tmp_path / "work"
    work.mkdir()
    first = _run(work, cli_env)
    ref, score = _submitted(first)
    assert _cached(first) == 0

    again = _run(work, cli_env)
    assert _submitted(again) == (ref, score)  # the first run's submission, with its score
    assert "not submitted twice" in again
    assert _cached(again) >= 5  # download ... write-submission all come from the cache
    assert "Cached" in again  # the task states are logged as Cached

    forced = _run(work, cli_env, "--resubmit")
    new_ref, new_score = _submitted(forced)
    assert new_ref != ref and new_score == score  # a second submission of the same file
    kept = json.loads((work / "state" / "fake-kaggle-submissions.json").read_text())
    assert sorted(row["ref"] for row in kept) == sorted([ref, new_ref])
