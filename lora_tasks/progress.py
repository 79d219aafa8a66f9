"""One progress interface for training: a rich bar in the terminal, log lines in batch jobs,
Prefect artifacts in flows.

The training loop only knows :class:`ProgressCallback`; what draws the progress is pluggable.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Protocol


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


class ProgressCallback(Protocol):
    def __call__(self, event: ProgressEvent) -> None: ...


class RichProgress:
    """A rich progress bar per run, with loss, validation metric, samples/s and ETA."""

    def __init__(self, console=None) -> None:  # noqa: ANN001 - rich.console.Console
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

    def __enter__(self) -> "RichProgress":
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

    For jobs whose output goes to a file (``nohup``, CI, a scheduler): a bar redraws in place and
    leaves nothing readable there, while an hour-long fold must still say where it is and when it
    will end. ``clock`` is injectable so the throttling can be tested without waiting.
    """

    def __init__(self, every_s: float = 60.0, logger: logging.Logger | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self._log = logger or logging.getLogger("lora_tasks.progress")
        self._clock = clock
        self._last: dict[str, float] = {}

    def __call__(self, event: ProgressEvent) -> None:
        now = self._clock()
        if not event.epoch_end and now - self._last.get(event.name, -float("inf")) < self.every_s:
            return
        self._last[event.name] = now
        line = (f"{event.name}: epoch {event.epoch}/{event.epochs}, step {event.step}/{event.steps}, "
                f"loss {event.loss:.4f}, {event.samples_per_s:.1f} samples/s")
        if event.epoch_end:
            if event.metric is not None:
                line += f", valid {event.metric_name} {event.metric:.4f}"
        else:
            line += f", done in ~{_duration(event.eta_s)}"
        self._log.info(line)


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
