"""LogProgress: log lines for jobs whose output goes to a file, throttled per run."""

from __future__ import annotations

import logging

from lora_tasks.progress import LogProgress, ProgressEvent


def _event(name: str, step: int, *, end: bool = False, eta: float = 600.0) -> ProgressEvent:
    return ProgressEvent(name, epoch=1, epochs=2, step=step, steps=100, loss=0.5, samples_per_s=4.2, eta_s=eta,
                         metric=0.81 if end else None, metric_name="f1" if end else None, epoch_end=end)


def test_one_line_per_interval_per_run_and_every_epoch_end(caplog):
    now = [0.0]
    progress = LogProgress(every_s=60, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="lora_tasks.progress"):
        for t, event in [(0, _event("fold 0", 1)), (10, _event("fold 0", 2)), (20, _event("fold 1", 1)),
                         (61, _event("fold 0", 9, eta=5400)), (62, _event("fold 0", 10, end=True)),
                         (70, _event("fold 0", 11))]:
            now[0] = t
            progress(event)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "fold 0: epoch 1/2, step 1/100, loss 0.5000, 4.2 samples/s, done in ~10 min",
        "fold 1: epoch 1/2, step 1/100, loss 0.5000, 4.2 samples/s, done in ~10 min",
        "fold 0: epoch 1/2, step 9/100, loss 0.5000, 4.2 samples/s, done in ~1.5 h",
        "fold 0: epoch 1/2, step 10/100, loss 0.5000, 4.2 samples/s, valid f1 0.8100",
    ]
