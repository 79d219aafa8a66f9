"""Progress where the output is a log: the line's content, its rhythm, and the automatic choice
between the rich bar (a terminal) and log lines (a file, a pipe, a Prefect run)."""

from __future__ import annotations

import io
import logging

from lora_tasks.budget import Deadline, EpochBudget
from lora_tasks.progress import (
    LogProgress,
    ProgressEvent,
    RichProgress,
    Tee,
    progress_for_output,
)


def _event(step: int, *, epoch: int = 1, end: bool = False, metric: float | None = None,
           name: str = "fold 0") -> ProgressEvent:
    return ProgressEvent(name, epoch=epoch, epochs=3, step=step, steps=300, loss=0.4321, samples_per_s=12.5,
                         eta_s=(300 - step) * 2.0, metric=metric, metric_name="accuracy" if metric else None,
                         epoch_end=end)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lines_every_30_s_and_at_each_epoch_end_with_fold_epoch_step_rate_time_left_and_metric():
    clock, out = FakeClock(), io.StringIO()
    budget = EpochBudget(Deadline(3600.0, 0.0, clock), n_folds=5, epochs=3, epoch_s=200.0, predict_s=10.0)
    progress = LogProgress(clock=clock, stream=out, run_left=lambda e: budget.run_left_s(0, e.eta_s))
    for t, event in [(0, _event(1)), (10, _event(5)), (29, _event(14)), (31, _event(15)),
                     (50, _event(100, end=True, metric=0.8123)), (55, _event(103, epoch=2)),
                     (90, _event(120, epoch=2))]:
        clock.now = t
        progress(event)
    lines = out.getvalue().splitlines()
    assert len(lines) == 4  # t=0, t=31, the epoch end, t=90 (t=55 is within 30 s of the epoch end)
    first, second, end, later = lines
    assert first.startswith("fold 0: epoch 1/3, step 1/300, loss 0.4321, 12.5 samples/s, done in ~10 min")
    assert second.startswith("fold 0: epoch 1/3, step 15/300")
    assert "valid accuracy 0.8123" in end
    assert later.startswith("fold 0: epoch 2/3, step 120/300") and "last valid accuracy 0.8123 (epoch 1)" in later
    # run left = this fold's 360 s + its predictions + 4 later folds x (3 x 200 s + 10 s)
    assert later.endswith(f"run done in ~{round((360 + 10 + 4 * 610) / 60)} min")


def test_throttling_is_per_run_and_logger_output_works(caplog):
    clock = FakeClock()
    progress = LogProgress(clock=clock)
    with caplog.at_level(logging.INFO, logger="lora_tasks.progress"):
        progress(_event(1, name="fold 0"))
        progress(_event(1, name="fold 1"))
        clock.now = 5
        progress(_event(2, name="fold 0"))
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["fold 0", "fold 1"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_for_output_picks_log_lines_without_a_terminal_and_the_bar_on_one():
    out = io.StringIO()
    clock = FakeClock()
    with progress_for_output(out, clock=clock) as progress:
        assert isinstance(progress, LogProgress)
        progress(_event(1))
        progress(_event(2))  # same instant: throttled
    assert out.getvalue().count("\n") == 1 and out.getvalue().startswith("fold 0: epoch 1/3")
    term = _Terminal()
    bar = progress_for_output(term)
    assert isinstance(bar, RichProgress)
    with bar:
        bar(_event(1))
    assert "fold 0" in term.getvalue()


def test_progress_for_output_uses_a_given_logger_even_on_a_terminal(caplog):
    logger = logging.getLogger("prefect.flow_runs.test")
    progress = progress_for_output(_Terminal(), logger=logger, clock=FakeClock())
    assert isinstance(progress, LogProgress)
    seen = []
    with caplog.at_level(logging.INFO, logger="prefect.flow_runs.test"):
        Tee(progress, seen.append)(_event(7))
    assert seen == [_event(7)] and caplog.records[0].getMessage().startswith("fold 0: epoch 1/3, step 7/300")
