"""The Prefect executor of :func:`~lora_tasks.steps.orchestrate.orchestrate`: each step is
submitted as its task (:mod:`lora_tasks.prefect.tasks`), and each stage's artifacts are published.

Why an executor: the run's sequence and decisions live once, in the steps layer; what Prefect
adds (task runs, caching, retries, the UI's artifacts, the states the summary shows) is here.
"""

from __future__ import annotations

from typing import Any, Callable

from prefect import get_run_logger

from lora_tasks.prefect.artifacts import (
    publish_plan,
    publish_settings,
    publish_submission,
    publish_training,
    run_cv_rows,
    run_decisions,
)
from lora_tasks.prefect.tasks import RunTasks
from lora_tasks.steps.orchestrate import PipelineResult
from lora_tasks.steps.plan import Plan


class PrefectExecutor:
    """Submits each step as this run's task; ``states`` maps each task run's name to the final
    state of every task the run waited for (``Completed``, ``Cached``)."""

    def __init__(self, tasks: RunTasks) -> None:
        self.tasks = tasks
        self.states: dict[str, str] = {}
        self.log = get_run_logger()
        self._names: dict[int, str] = {}

    def submit(self, step: Callable[..., Any], /, *, run_name: str | None = None, **kwargs: Any) -> Any:
        task = self.tasks[step]
        if run_name is not None:
            task = task.with_options(task_run_name=run_name)
        future = task.submit(**kwargs)
        self._names[id(future)] = run_name or task.name
        return future

    def result(self, future: Any) -> Any:
        value = future.result()
        name = self._names.get(id(future), "unknown")
        self.states[name] = future.state.name if future.state is not None else "unknown"
        return value

    def cached_steps(self) -> int:
        return sum(state == "Cached" for state in self.states.values())

    def report(self, stage: str, run: PipelineResult) -> None:
        """The UI's artifacts of a finished stage: the plan, the training tables, the submission."""
        if stage == "plan":
            publish_plan(run.plan_path)
            return
        plan = Plan.load(run.plan_path)
        slug = plan.slug
        if stage == "combine":
            decisions = run_decisions(run.adapters) + [c.sentence() for c in run.estimates]
            decisions += [f"time: {run.time_use.sentence()}"] if run.time_use is not None else []
            # the members decision, retried and dropped folds, the estimates and the time used join the settings artifact
            if decisions:
                publish_settings(plan, decisions)
            publish_training(slug, run.adapters, run.combined, run_cv_rows(run.adapters, run.set_results))
        elif stage == "submission":
            publish_submission(slug, run.check, run.submission, run.scored)
