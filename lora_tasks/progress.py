"""One progress interface for training: a rich bar in the terminal, log lines in batch jobs,
Prefect artifacts in flows.

The training loop only knows :class:`ProgressCallback`; what draws the progress is pluggable, and
:func:`progress_for_output` picks the bar or the log lines by whether stdout is a terminal.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, Self, TextIO


@dataclass(frozen=True)
class ProgressEvent:
    """Where a training run is; sent after every optimizer step and at every epoch end."""

    name: str  # which adapter / fold
    epoch: int  # 1-based
    epochs: int
    step: int  # optimizer steps done in this run
    steps: int  # optimizer steps planned for this run
    loss: float  # running mean training loss of the current epoch
    samples_per_s: float
    eta_s: float
    metric: float | None = None  # validation metric, at epoch ends
    metric_name: str | None = None
    epoch_end: bool = False
    run_eta_s: float | None = None  # the whole run's time left, when a time budget knows it


class ProgressCallback(Protocol):
    def __call__(self, event: ProgressEvent) -> None: ...


class RichProgress:
    """A rich progress bar per run, with loss, validation metric, samples/s and ETA."""

    def __init__(self, console=None) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} steps"),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._tasks: dict[str, int] = {}

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def __call__(self, event: ProgressEvent) -> None:
        if event.name not in self._tasks:
            self._tasks[event.name] = self._progress.add_task(event.name, total=event.steps, info="")
        info = f"epoch {event.epoch}/{event.epochs} loss {event.loss:.4f} {event.samples_per_s:.1f} samples/s"
        if event.metric is not None:
            info += f" {event.metric_name} {event.metric:.4f}"
        self._progress.update(self._tasks[event.name], completed=event.step, info=info)


class LogProgress:
    """A log line per run every ``every_s`` seconds and at every epoch end.

    For jobs whose output goes to a file (``nohup``, cron, CI, a deployment): a bar redraws in
    place and leaves nothing readable there, while an hour-long fold must still say where it is
    and when it will end. A line gives the run (``fold 2``), the epoch, the step, the loss,
    samples/s, the time left for this run (``done in``) and, with ``run_left``, for the whole
    run, and the latest validation metric. Lines go to ``logger`` (default
    ``lora_tasks.progress``), or straight to ``stream`` when one is given (a process whose
    logging is not configured would otherwise print nothing). ``clock`` is injectable so the
    throttling can be tested without waiting. Usable as a context manager like
    :class:`RichProgress`, so callers need not know which one they got.
    """

    def __init__(self, every_s: float = 30.0, logger: logging.Logger | None = None,
                 clock: Callable[[], float] = time.monotonic, *, stream: TextIO | None = None,
                 run_left: Callable[[ProgressEvent], float | None] | None = None) -> None:
        self.every_s = every_s
        self._log = logger or logging.getLogger("lora_tasks.progress")
        self._clock = clock
        self._stream = stream
        self._run_left = run_left
        self._last: dict[str, float] = {}
        self._metric: dict[str, str] = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __call__(self, event: ProgressEvent) -> None:
        now = self._clock()
        if not event.epoch_end and now - self._last.get(event.name, -float("inf")) < self.every_s:
            return
        self._last[event.name] = now
        self.write(self.line(event))

    def line(self, event: ProgressEvent) -> str:
        """The text of one progress line (remembers the latest validation metric per run)."""
        line = (f"{event.name}: epoch {event.epoch}/{event.epochs}, step {event.step}/{event.steps}, "
                f"loss {event.loss:.4f}, {event.samples_per_s:.1f} samples/s")
        if event.epoch_end:
            if event.metric is not None:
                self._metric[event.name] = f"{event.metric_name} {event.metric:.4f} (epoch {event.epoch})"
                line += f", valid {event.metric_name} {event.metric:.4f}"
        else:
            line += f", done in ~{_duration(event.eta_s)}"
            if event.name in self._metric:
                line += f", last valid {self._metric[event.name]}"
        run_left = self._run_left(event) if self._run_left is not None else event.run_eta_s
        if run_left is not None and math.isfinite(run_left):
            line += f", run done in ~{_duration(run_left)}"
        return line

    def write(self, line: str) -> None:
        if self._stream is None:
            self._log.info(line)
        else:
            self._stream.write(line + "\n")
            self._stream.flush()


class Tee:
    """Sends every event to several callbacks (a Prefect artifact and log lines, say)."""

    def __init__(self, *callbacks: ProgressCallback) -> None:
        self.callbacks = callbacks

    def __call__(self, event: ProgressEvent) -> None:
        for callback in self.callbacks:
            callback(event)


def progress_for_output(
    stream: TextIO | None = None,
    *,
    logger: logging.Logger | None = None,
    every_s: float = 30.0,
    run_left: Callable[[ProgressEvent], float | None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> RichProgress | LogProgress:
    """The progress display that suits where the output goes: the rich bar on a terminal, log
    lines every ``every_s`` seconds and at each epoch end otherwise (a file, a pipe, cron,
    ``nohup``). Lines go to ``logger`` when one is given (inside a Prefect run: its run logger,
    so they land in the run's logs), else straight to ``stream`` (default stdout). Use it as a
    context manager: ``with progress_for_output() as progress: train(..., progress=progress)``."""
    stream = stream if stream is not None else sys.stdout
    if logger is not None:
        return LogProgress(every_s, logger, clock, run_left=run_left)
    if _is_terminal(stream):
        from rich.console import Console  # rich is only needed on a terminal

        return RichProgress(Console(file=stream))
    return LogProgress(every_s, clock=clock, stream=stream, run_left=run_left)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or file-like stream without a terminal
        return False


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


class EventLog:
    """Keeps every event: for tests, learning curves and artifacts."""

    def __init__(self) -> None:
        self.events: list[ProgressEvent] = []

    def __call__(self, event: ProgressEvent) -> None:
        self.events.append(event)

    def epoch_ends(self) -> list[ProgressEvent]:
        return [e for e in self.events if e.epoch_end]
