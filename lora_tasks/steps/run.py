"""Every step in order, without Prefect: what the ``kaggle-lora`` flow does, in one process.

Wiring only: the sequence and its decisions are :func:`~lora_tasks.steps.orchestrate.orchestrate`'s,
executed by plain calls (:class:`~lora_tasks.steps.orchestrate.PlainExecutor`).
``options.work_dir`` holds ``data/`` (downloads, unless ``data_dir`` is given), ``artifacts/``
(the content-addressed files) and ``tokens/`` (the token cache).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from lora_tasks.options import RunOptions
from lora_tasks.steps.orchestrate import (
    PipelineResult,
    PlainExecutor,
    RunPaths,
    orchestrate,
    plan_only,
    run_adapter_sets,
)

__all__ = ["PipelineResult", "RunPaths", "plan_run", "run_adapter_sets", "run_pipeline"]


def plan_run(options: RunOptions) -> dict[str, Path]:
    """What a run would train, without training: ``{member name: plan file}``, the main set first
    (``lora``). The same plan files a run then uses, so the run after a look costs no extra profiling."""
    return plan_only(options, PlainExecutor(retry_delay_s=options.retry_delay_s))


def run_pipeline(
    options: RunOptions,
    *,
    run_key: str = "local",
    progress: Callable[[Any], None] | None = None,
    download: bool = True,
) -> PipelineResult:
    """Every step of ``options``' run in order. ``run_key`` names the run for the submit-once
    rule; ``progress`` receives training events; ``download=False`` reads ``data_dir`` as is."""
    executor = PlainExecutor(retry_delay_s=options.retry_delay_s, progress=progress)
    return orchestrate(options, executor, run_key=run_key, download=download)
