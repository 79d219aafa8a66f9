"""Stopping cleanly: SIGTERM/SIGINT end a run in seconds, and nothing the CLI started outlives it.

Why: `docker stop`, systemd and a cancelled deployment send SIGTERM. Prefect's flow engine turns
that signal into a crash state, then waits for the running task threads, and a training thread
only returns when its fold ends: the process sat idle for minutes. And the temporary Prefect
server of a CLI killed with SIGKILL kept running, since nothing was left to stop it.

Three pieces, all process-wide and cheap:

* :func:`install_signal_handlers` logs one line saying where the run stopped, sets a stop flag
  that training checks after every optimizer step (:class:`StopCheck`), chains to the handler
  that was there (Prefect's, which records the crash), and arms a timer that ends the process
  with 128 + signal number if the graceful path has not finished within ``grace_s``.
* :func:`running_step` names the step in progress, for that line.
* :func:`start_orphan_watchdog` starts a small detached process that remembers this process's
  descendants and ends them once this process is gone, however it died (Linux ``/proc``; elsewhere
  it does nothing).

Checkpoints and cached results are written atomically, so stopping at any point keeps them and
the next run resumes.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("lora_tasks.lifecycle")

_stop = threading.Event()
_stop_signal: list[int] = []
_steps: list[str] = []
_finished: list[str] = []  # the step that ended last, for a stop that lands between two steps
_steps_lock = threading.Lock()
_watchdog: list[int] = []
DEFAULT_GRACE_S = 20.0


class StopRequested(RuntimeError):
    """Raised inside training once SIGTERM/SIGINT arrived: the fold ends at its last checkpoint."""


def stop_requested() -> bool:
    return _stop.is_set()


def stopped_by() -> int | None:
    """The signal number that asked this process to stop, or None."""
    return _stop_signal[0] if _stop.is_set() and _stop_signal else None


def request_stop(signum: int = signal.SIGTERM) -> None:
    """Ask every training loop of this process to stop after its current step."""
    _stop_signal.append(signum)
    _stop.set()


def reset_stop() -> None:
    """Clear the stop flag and the last finished step (tests, and a new run in a long-lived worker
    process)."""
    _stop.clear()
    _stop_signal.clear()
    with _steps_lock:
        _finished.clear()


def current_steps() -> list[str]:
    with _steps_lock:
        return list(_steps)


@contextlib.contextmanager
def running_step(name: str) -> Iterator[None]:
    """Mark ``name`` as running for the stop message (several may run at once, one per thread)."""
    with _steps_lock:
        _steps.append(name)
    try:
        yield
    finally:
        with _steps_lock:
            if name in _steps:
                _steps.remove(name)
            _finished[:] = [name]


class StopCheck:
    """A progress callback that raises :class:`StopRequested` once a stop was requested.

    Training calls its progress callback after every optimizer step, so wrapping the callback is
    enough for a fold to notice a stop within one step, without the engine knowing about signals.
    """

    def __init__(self, inner: Callable[[Any], None] | None = None, name: str = "training") -> None:
        self.inner = inner
        self.name = name

    def __call__(self, event: Any) -> None:
        if self.inner is not None:
            self.inner(event)
        if _stop.is_set():
            raise StopRequested(
                f"{self.name} stopped at epoch {getattr(event, 'epoch', '?')} on a stop signal; its last finished "
                "epoch is checkpointed and the next run resumes from there."
            )


def stop_message(signum: int) -> str:
    """The line a stop signal prints: the steps running, else the gap after the last one that ended
    (a signal is handled only when the main thread next runs Python, which can be just after a
    short step finished), else start-up."""
    name = signal.Signals(signum).name
    with _steps_lock:
        running, finished = list(_steps), list(_finished)
    where = ", ".join(running) or (f"the gap after {finished[0]}" if finished else "start-up")
    return (f"Stopping on {name} during {where}: checkpoints and cached results are kept; "
            "run the same command again to resume.")


def install_signal_handlers(grace_s: float = DEFAULT_GRACE_S,
                            on_hard_exit: Callable[[], None] | None = None) -> bool:
    """Handle SIGTERM and SIGINT in this process (main thread only; returns False elsewhere).

    ``on_hard_exit`` runs just before the forced exit (e.g. stop the temporary Prefect server).
    Called again (for instance at the start of the flow body, where Prefect has put its own
    handler), it chains to whatever handler is there now.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)
        if getattr(previous, "_kaggle_lora", False):
            continue
        signal.signal(signum, _make_handler(signum, previous, grace_s, on_hard_exit))
    return True


def _make_handler(signum: int, previous: Any, grace_s: float,
                  on_hard_exit: Callable[[], None] | None) -> Callable[[int, Any], None]:
    def handler(received: int, frame: Any) -> None:
        first = not _stop.is_set()
        if first:
            log.warning(stop_message(received))  # no handler configured: logging's last resort prints it
            request_stop(received)
            atexit.register(_end_descendants)
            threading.Thread(target=_hard_exit_after, args=(received, grace_s, on_hard_exit),
                             name="kaggle-lora-hard-exit", daemon=True).start()
        if callable(previous):
            previous(received, frame)
        elif previous == signal.SIG_DFL and not first:
            _exit_now(received, on_hard_exit)
        elif received == signal.SIGINT and previous == signal.SIG_DFL:
            raise KeyboardInterrupt
        elif previous == signal.SIG_DFL:
            raise SystemExit(128 + received)

    handler._kaggle_lora = True  # type: ignore[attr-defined]  # marks ours, so it is not chained twice
    return handler


def _hard_exit_after(signum: int, grace_s: float, on_hard_exit: Callable[[], None] | None) -> None:
    time.sleep(grace_s)
    _exit_now(signum, on_hard_exit)


def _exit_now(signum: int, on_hard_exit: Callable[[], None] | None) -> None:
    with contextlib.suppress(Exception):
        if on_hard_exit is not None:
            on_hard_exit()
    _end_descendants()
    sys.stderr.flush()
    os._exit(128 + signum)


def _end_descendants() -> None:
    """SIGTERM every child process but the watchdog (which ends whatever is left after us)."""
    for pid in _descendants(os.getpid()):
        if pid not in _watchdog:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)


# ------------------------------------------------------------------------------ descendants


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of ``pid`` from /proc, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2:].split()
    return int(fields[1]), int(fields[19])


def _descendants(root: int) -> dict[int, int]:
    """Every live descendant of ``root``: pid -> start time (Linux; empty elsewhere)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return {}
    parents: dict[int, tuple[int, int]] = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                parents[int(entry.name)] = stat
    found: dict[int, int] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, start) in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = start
                frontier.append(pid)
    return found


def start_orphan_watchdog(poll_s: float = 1.0) -> subprocess.Popen | None:
    """Start the detached watchdog for this process (Linux only; None elsewhere).

    It runs in its own session, so a signal to this process's group does not reach it, and it
    exits by itself once this process is gone and its remembered descendants are ended.
    """
    if not Path("/proc/self/stat").exists():
        return None
    me = os.getpid()
    stat = _stat(me)
    if stat is None:
        return None
    process = subprocess.Popen(
        [sys.executable, "-m", "lora_tasks.lifecycle", "--watch", str(me), str(stat[1]), str(poll_s)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True,
    )
    _watchdog.append(process.pid)
    return process


def watch(pid: int, start_time: int, poll_s: float = 1.0) -> int:
    """Remember ``pid``'s descendants while it lives; end them once it is gone. Returns how many."""
    known: dict[int, int] = {}
    while (stat := _stat(pid)) is not None and stat[1] == start_time:
        known.update(_descendants(pid))
        known.pop(os.getpid(), None)
        known = {p: s for p, s in known.items() if (cur := _stat(p)) is not None and cur[1] == s}
        time.sleep(poll_s)
    alive = {p: s for p, s in known.items() if (cur := _stat(p)) is not None and cur[1] == s}
    for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
        for p in alive:
            with contextlib.suppress(OSError):
                os.kill(p, sig)
        deadline = time.monotonic() + wait_s
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = {p: s for p, s in alive.items() if (cur := _stat(p)) is not None and cur[1] == s}
        if not alive:
            break
    return len(known)


if __name__ == "__main__":  # the watchdog process: python -m lora_tasks.lifecycle --watch PID START POLL_S
    if len(sys.argv) == 5 and sys.argv[1] == "--watch":
        watch(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
