"""``kaggle-lora`` as a user runs it on their own competition, against the fake Kaggle server:
``--target`` where the target cannot be inferred, a ``./competitions/<slug>.toml`` next to where
the command runs (named in the plan), and ``--offline`` on a read-only copy of the data.

Each command runs in a subprocess (its own working directory, the session's Prefect harness as
API), as from a shell.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from _user_competition import SLUG, write_competition

from lora_tasks.testing import fake_kaggle as fk

REPO = Path(__file__).resolve().parents[1]
FAST = ["--tiny", "--folds", "2", "--epochs", "1", "--max-seq-len", "64", "--retry-delay", "0.05",
        "--score-poll", "0.05"]


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("served")
    write_competition(dest / SLUG, n_train=160, n_test=60)
    return dest


@pytest.fixture(scope="module")
def server(served, fake_creds):
    with fk.serve(served, pending_polls=1) as running:
        yield running


def kaggle_lora(*args: str, cwd: Path, api: bool = False, timeout: float = 600) -> subprocess.CompletedProcess:
    """``kaggle-lora ARGS`` in ``cwd`` with this checkout's package (and, with ``api``, the
    session's Prefect test server as the run's API)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("KAGGLE_LORA_COMPETITIONS_DIR", None)
    if api:
        from prefect.settings import PREFECT_API_URL

        env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    return subprocess.run([sys.executable, "-m", "lora_tasks.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def snapshot(folder: Path) -> dict[str, tuple[int, int, bytes | None]]:
    """Every entry under ``folder`` (itself included): mode, mtime and, for files, the bytes."""
    out = {}
    for path in [folder, *sorted(folder.rglob("*"))]:
        info = path.lstat()
        out[str(path.relative_to(folder))] = (info.st_mode, info.st_mtime_ns,
                                              path.read_bytes() if path.is_file() else None)
    return out


def make_read_only(folder: Path) -> bool:
    """chmod a-w everything under ``folder``; where it works (root on a file system that has the
    flag), also ``chattr +i``, which stops root's writes too. Returns whether the flag was set."""
    for path in [folder, *folder.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    chattr = shutil.which("chattr")
    return bool(chattr) and subprocess.run([chattr, "-R", "+i", str(folder)], capture_output=True).returncode == 0


def undo_immutable(folder: Path) -> None:
    subprocess.run([shutil.which("chattr") or "chattr", "-R", "-i", str(folder)], capture_output=True)


def test_run_with_target_where_inference_cannot_tell_then_offline_on_read_only_data(harness, server, served,
                                                                                    tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    work = tmp_path / "work"
    common = ["--competition", SLUG, "--kaggle-endpoint", server.url, "--work-dir", str(work)]

    # without --target the run stops after the download with the one fix
    failed = kaggle_lora("plan", *common, "--tiny", cwd=cwd)
    assert failed.returncode == 1, failed.stdout[-2000:]
    assert (f'Fix: pass `--target label` or write `target_columns = ["label"]` in competitions/{SLUG}.toml'
            in failed.stderr), failed.stderr[-2000:]

    out = tmp_path / "summary.json"
    done = kaggle_lora("run", *common, "--target", "label", *FAST, "--json-out", str(out), cwd=cwd, api=True)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    summary = json.loads(out.read_text())
    assert summary["submitted"] and summary["metric"] == "accuracy"
    sub = pd.read_csv(summary["submission_path"])
    assert list(sub.columns) == ["id", "prediction"]  # the sample's header, the target trained from `label`
    [stored] = [s for s in server.submissions_for(SLUG) if s.content == Path(summary["submission_path"]).read_bytes()]
    assert stored.status == "COMPLETE" and summary["public_score"] == pytest.approx(stored.public_score)
    assert stored.public_score == pytest.approx(
        fk.score_submission(sub, pd.read_csv(served / SLUG / "solution.csv"), "accuracy"))

    # --offline on a read-only copy of that download: no request reaches the server, nothing under
    # the data folder changes (as root chmod does not stop writes, so the check is the snapshot).
    # The scikit-learn members alone: what is checked here is the data, not the training
    # (--data-dir is the folder holding the files, as a user fills it: a download would write
    # <data-dir>/<slug> beside them)
    data = tmp_path / "read-only-data"
    shutil.copytree(work / "data" / SLUG, data)
    immutable = make_read_only(data)
    before, requests = snapshot(data), len(server.requests)
    try:
        if immutable:  # the flag really stops writes, even root's
            with pytest.raises(PermissionError):
                (data / "probe").write_text("x")
        offline = kaggle_lora("run", *common[:4], "--work-dir", str(tmp_path / "work2"), "--data-dir", str(data),
                              "--offline", "--target", "label", "--no-adapters", *FAST, cwd=cwd, api=True)
        assert offline.returncode == 0, (offline.stdout[-3000:], offline.stderr[-3000:])
        assert "Not submitted" in offline.stdout
        assert len(server.requests) == requests, server.requests[requests:]
        assert snapshot(data) == before
        if immutable or os.geteuid() != 0:  # without --offline the download cannot write there, and says what to do
            online = kaggle_lora("plan", *common[:4], "--work-dir", str(tmp_path / "work2"), "--data-dir", str(data),
                                 "--target", "label", "--tiny", cwd=cwd)
            assert online.returncode == 1 and "DataDirNotWritableError" in online.stderr, online.stderr[-2000:]
            assert "Fix: pass --offline to train on the data already there" in online.stderr
    finally:
        if immutable:
            undo_immutable(data)  # else the tmp folder cannot be removed

    # --offline with no data says how to get it
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = kaggle_lora("plan", "--competition", SLUG, "--offline", "--data-dir", str(empty), "--work-dir",
                          str(tmp_path / "work3"), "--tiny", cwd=cwd)
    assert missing.returncode == 1 and f"--offline: no data of {SLUG}" in missing.stderr, missing.stderr[-2000:]
    assert "run once without --offline" in missing.stderr


def test_plan_picks_up_and_names_the_config_next_to_where_it_runs(server, tmp_path):
    cwd = tmp_path / "cwd"
    (cwd / "competitions").mkdir(parents=True)
    config = cwd / "competitions" / f"{SLUG}.toml"
    config.write_text('target_columns = ["label"]\nmetric = "f1"\n')
    shown = kaggle_lora("plan", "--competition", SLUG, "--kaggle-endpoint", server.url, "--work-dir",
                        str(tmp_path / "work"), "--tiny", cwd=cwd)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert f"| config file | `{config.resolve()}` | ./competitions/ (working directory) |" in shown.stdout
    assert "| target(s) | `label` | config |" in shown.stdout and "| metric | f1 | config |" in shown.stdout
    # --config elsewhere wins over it, and the plan says so
    other = tmp_path / "other.toml"
    other.write_text('target_columns = ["label"]\nmetric = "mcc"\n')
    chosen = kaggle_lora("plan", "--competition", SLUG, "--config", str(other), "--kaggle-endpoint", server.url,
                         "--work-dir", str(tmp_path / "work"), "--tiny", cwd=cwd)
    assert chosen.returncode == 0, chosen.stderr[-3000:]
    assert f"| config file | `{other.resolve()}` | --config |" in chosen.stdout and "| metric | mcc |" in chosen.stdout
