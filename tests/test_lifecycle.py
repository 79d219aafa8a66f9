"""Stopping cleanly (issue 22 item 8): a stop signal ends the process within its grace period with
one line saying where, and nothing a killed process started outlives it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lora_tasks import lifecycle

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")


def _alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    if not stat.exists():
        return False
    return stat.read_text().split(")")[-1].split()[0] != "Z"  # a zombie is gone for our purpose


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.2)
    return False


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(body))
    return path


def test_stop_check_raises_only_after_a_stop_request():
    seen = []
    check = lifecycle.StopCheck(seen.append, name="fold 2")
    check("event-1")
    lifecycle.request_stop(signal.SIGTERM)
    try:
        with pytest.raises(lifecycle.StopRequested, match="fold 2 stopped"):
            check("event-2")
    finally:
        lifecycle.reset_stop()
    assert seen == ["event-1", "event-2"]
    assert not lifecycle.stop_requested()


def test_running_step_names_every_step_in_progress_then_the_last_that_ended():
    lifecycle.reset_stop()
    assert "during start-up" in lifecycle.stop_message(signal.SIGTERM)
    with lifecycle.running_step("train fold 1"), lifecycle.running_step("train fold 2"):
        assert "during train fold 1, train fold 2:" in lifecycle.stop_message(signal.SIGTERM)
    # fold 2's context closed first: fold 1 ended last
    assert "during the gap after train fold 1:" in lifecycle.stop_message(signal.SIGTERM)
    lifecycle.reset_stop()
    assert "during start-up" in lifecycle.stop_message(signal.SIGTERM)


def test_sigterm_ends_a_stuck_process_within_grace_and_kills_its_children(tmp_path):
    """A worker thread that never checks the flag (as a fold stuck in one long step) cannot hold
    the process: after the grace period it exits with 143 and its child process is ended."""
    pidfile = tmp_path / "child.pid"
    script = _script(tmp_path, f"""
        import subprocess, threading, time
        from lora_tasks import lifecycle
        lifecycle.install_signal_handlers(grace_s=2.0)
        child = subprocess.Popen(["sleep", "300"])
        open({str(pidfile)!r}, "w").write(str(child.pid))
        def stuck():
            time.sleep(300)
        worker = threading.Thread(target=stuck)
        worker.start()
        with lifecycle.running_step("train fold 3"):
            print("ready", flush=True)
            worker.join()
    """)
    proc = subprocess.Popen([sys.executable, str(script)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM
    assert err.count("Stopping on SIGTERM during train fold 3") == 1
    assert _wait_gone(int(pidfile.read_text()), 10)


def test_watchdog_ends_the_children_of_a_sigkilled_process(tmp_path):
    pidfile = tmp_path / "child.pid"
    script = _script(tmp_path, f"""
        import subprocess, time
        from lora_tasks import lifecycle
        lifecycle.start_orphan_watchdog(poll_s=0.2)
        child = subprocess.Popen(["sleep", "300"])
        open({str(pidfile)!r}, "w").write(str(child.pid))
        time.sleep(1.5)  # the watchdog has seen the child
        print("ready", flush=True)
        time.sleep(300)
    """)
    proc = subprocess.Popen([sys.executable, str(script)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    child = int(pidfile.read_text())
    assert _alive(child)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert _wait_gone(child, 30), "the orphaned child outlived its killed parent"
