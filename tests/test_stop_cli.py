"""Stopping the CLI (issue 22 item 8), end to end on the offline demo: SIGTERM during training ends
the run within 30 s with a non-zero exit and one line saying where, and the rerun resumes; a
SIGKILLed CLI leaves no process behind (its temporary Prefect server included)."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

psutil = pytest.importorskip("psutil")

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
STOP_WAIT_S = 30.0  # what the issue allows a stop to take
START_WAIT_S = 300.0  # the temporary Prefect server and the data libraries load slowly on a busy machine


class Cli:
    """``python flows/submit.py`` in a subprocess, its merged output read line by line."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, str(REPO / "flows" / "submit.py"), *args], cwd=REPO, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, text: str, timeout_s: float = START_WAIT_S) -> str:
        """The first line containing ``text`` (output before it is kept in ``lines``)."""
        for line in self.lines:
            if text in line:
                return line
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=1.0)
            except queue.Empty:
                continue
            if line is None:
                break
            self.lines.append(line)
            if text in line:
                return line
        pytest.fail(f"no line with {text!r}; output:\n" + "".join(self.lines[-60:]))

    def finish(self, timeout_s: float) -> int:
        """Wait for the exit (failing after ``timeout_s``) and collect the rest of the output."""
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"still running {timeout_s:.0f} s later; output:\n" + "".join(self.lines[-60:]))
        while (line := self._queue.get(timeout=10)) is not None:
            self.lines.append(line)
        return code

    def kill(self) -> None:
        for child in _descendants(self.proc.pid):
            child.kill()
        self.proc.kill()

    @property
    def text(self) -> str:
        return "".join(self.lines)


def _descendants(pid: int) -> list:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _gone(processes: list, timeout_s: float) -> list:
    """The processes still running (zombies count as gone) after up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    alive = processes
    while True:
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.5)


@pytest.fixture
def cli_env(tmp_path):
    """This checkout's package, a fresh Prefect home (a temporary server of its own), no API URL."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               HF_HUB_OFFLINE="1")
    return env


def _demo_args(work: Path, mode: int = 0o700) -> list[str]:
    work.mkdir(exist_ok=True)
    work.chmod(mode)
    return ["--competition", "demo", "--tiny", "--no-submit", "--no-members", "--work-dir", str(work)]


def test_sigterm_during_training_stops_in_seconds_and_the_rerun_resumes(tmp_path, cli_env):
    work = tmp_path / "work"
    run = Cli(_demo_args(work), cli_env)
    try:
        run.wait_for("fold 0: epoch 1 of")  # training is under way and epoch 1 is checkpointed
        run.proc.send_signal(signal.SIGTERM)
        code = run.finish(STOP_WAIT_S)
    finally:
        run.kill()
    assert code != 0, run.text[-3000:]
    stops = [line for line in run.lines if "Stopping on SIGTERM during" in line]
    assert len(stops) == 1, run.text[-3000:]
    assert "train fold" in stops[0] and "run the same command again to resume" in stops[0], stops
    assert "kaggle-lora failed" not in run.text, "a requested stop is not reported as a failure"
    assert "writable by" not in run.text, "a private work dir gets no warning"
    assert list((work / "artifacts" / "checkpoints").glob("*/checkpoint.safetensors")), "the checkpoint was kept"

    rerun = Cli(_demo_args(work), cli_env)
    try:
        code = rerun.finish(START_WAIT_S)
    finally:
        rerun.kill()
    assert code == 0, rerun.text[-3000:]
    text = rerun.text
    assert "Task run 'tokenize-" in text and "tokenize" in _cached_tasks(text), text[-3000:]
    resumed = "fold 0: resumed from the checkpoint of epoch" in text or "train-fold-0" in _cached_tasks(text)
    assert resumed, text[-3000:]


def _cached_tasks(text: str) -> str:
    return " ".join(line.split("Task run '")[1].split("'")[0] for line in text.splitlines()
                    if "Task run '" in line and "Finished in state Cached" in line)


def test_sigkilled_cli_leaves_no_process_behind(tmp_path, cli_env):
    """Also: a work dir its group can write is warned about (its result store is trusted)."""
    work = tmp_path / "work"
    run = Cli(_demo_args(work, mode=0o770), cli_env)
    try:
        warning = run.wait_for("is writable by its group")
        assert str(work) in warning and "chmod go-w" in warning
        run.wait_for("Starting temporary server on")
        run.wait_for("Beginning flow run")  # the server has run for a while: the watchdog knows it
        children = _descendants(run.proc.pid)
        commands = [" ".join(c.cmdline()) for c in children]
        assert any("uvicorn" in c or "prefect" in c for c in commands), commands
        os.kill(run.proc.pid, signal.SIGKILL)
        run.proc.wait(timeout=10)
        left = _gone(children, STOP_WAIT_S)
    finally:
        run.kill()
    assert not left, [" ".join(p.cmdline()) for p in left]
