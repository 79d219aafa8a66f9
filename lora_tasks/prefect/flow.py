"""The ``kaggle-lora`` flow: download -> profile/auto-configure -> tokenize -> train adapters
(one task per fold, in parallel) -> combine -> submission -> validate -> submit -> score.

Wiring only: the sequence and its decisions are :func:`~lora_tasks.steps.orchestrate.orchestrate`'s,
each step submitted as its task (:class:`~lora_tasks.prefect.executor.PrefectExecutor`); the one
parameter is a :class:`~lora_tasks.options.RunOptions` (the UI renders it as a form, deployments store it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from lora_tasks.lifecycle import install_signal_handlers
from lora_tasks.options import RunOptions
from lora_tasks.prefect.artifacts import blend_rows, run_cv_rows
from lora_tasks.prefect.executor import PrefectExecutor
from lora_tasks.prefect.preflight import require_credentials
from lora_tasks.prefect.runners import stop_temporary_api_servers
from lora_tasks.prefect.tasks import configure
from lora_tasks.steps.orchestrate import RunPaths, orchestrate
from lora_tasks.steps.plan import Plan


@dataclass
class RunSummary:
    """What a flow run produced; the CLI prints it, tests read it (also as JSON)."""

    competition: str
    slug: str
    metric: str
    cv: list[dict[str, Any]]
    oof_score: float
    combine: str
    submission_path: str
    members: list[dict[str, Any]] = field(default_factory=list)
    submitted: bool = False
    ref: int | None = None
    run_id: str | None = None
    reused: bool = False
    public_score: float | None = None
    task_states: dict[str, str] = field(default_factory=dict)
    work_dir: str = ""
    #: the plan's estimates against what the run measured (lora_tasks.steps.estimates), one row a part
    estimates: list[dict[str, Any]] = field(default_factory=list)
    #: how much of its time limit the run used, and why it ended early (lora_tasks.steps.time_use); "": no limit
    time_use: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# log_prints stays off: with it, Prefect reroutes print() to the logger, past the
# redirect_stdout that keeps the kaggle client's import-time help text quiet.
@flow(name="kaggle-lora", log_prints=False)
def kaggle_lora(options: RunOptions) -> RunSummary:
    """From a competition name to a scored submission (see :class:`~lora_tasks.options.RunOptions`)."""
    # Prefect puts its own SIGTERM handler in place for the flow run; ours goes on top of it (and
    # chains to it), so a stop signal also stops the training threads (lora_tasks.lifecycle)
    install_signal_handlers(on_hard_exit=stop_temporary_api_servers)
    if options.submit:  # fail in seconds, not after training (a download without them fails first anyway)
        require_credentials(options.competition, options.kaggle_endpoint)
    paths = RunPaths.of(options)
    executor = PrefectExecutor(configure(paths.work, retry_delay_s=options.retry_delay_s, refresh=options.refresh))
    run = orchestrate(options, executor, run_key=str(flow_run.get_id() or "local"))
    combined = run.combined
    summary = RunSummary(competition=options.competition, slug=Plan.load(run.plan_path).slug, metric=combined.metric,
                         cv=run_cv_rows(run.adapters, run.set_results), oof_score=combined.oof_score,
                         combine=options.combine, submission_path=str(run.submission_path),
                         members=blend_rows(combined), work_dir=str(paths.work), task_states=executor.states,
                         estimates=[c.row() for c in run.estimates],
                         time_use=run.time_use.sentence() if run.time_use is not None else "")
    executor.log.info("OOF %s (%s of %d adapters): %.5f", combined.metric, options.combine, len(run.adapters),
                      combined.oof_score)
    if run.submission is not None:
        summary.submitted, summary.ref, summary.run_id = True, run.submission.ref, run.submission.run_id
        summary.reused, summary.public_score = run.submission.reused, run.public_score
        executor.log.info("Submission %s scored %s", run.submission.ref, run.public_score)
    return summary
