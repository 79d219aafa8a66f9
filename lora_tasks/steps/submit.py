"""Steps 7-8: test predictions -> ``submission-*.csv`` in the competition's format, checked
against the sample submission, submitted once per run, and its score read back."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from lora_tasks.hashing import sha256_file
from lora_tasks.metrics import to_labels
from lora_tasks.steps.download import competition_slug
from lora_tasks.steps.plan import Plan
from lora_tasks.steps.prepare import Prepared
from lora_tasks.steps.store import PipelineError, save_csv
from lora_tasks.steps.targets import inverse_transform, label_threshold


def submission_frame(test_pred: np.ndarray, prepared: Prepared, plan: Plan,
                     threshold: float | None = None) -> pd.DataFrame:
    """Test predictions (model scale) -> the submission table in the competition's format:
    inverse target transform, probabilities or labels (cut at ``threshold``, the tuned one from
    the combine step, else the configured one; original class values), the id column and the
    declared dtype."""
    fmt = prepared.submission
    columns = list(fmt.columns) or [prepared.id_column, prepared.target_column]
    id_col = prepared.id_column
    values = inverse_transform(np.asarray(test_pred, dtype=np.float64), plan.settings.target_transform)
    frame = pd.DataFrame({id_col: prepared.test_ids})
    value_cols = [c for c in columns if c != id_col]
    classes = prepared.classes
    if fmt.prediction == "values":
        frame[value_cols[0]] = values
    elif fmt.prediction == "probabilities":
        if values.ndim == 1:
            frame[value_cols[0]] = values
        else:
            if len(value_cols) != values.shape[1]:
                raise PipelineError(
                    f"{values.shape[1]} class probabilities but submission columns {value_cols}; set "
                    "[submission] columns to the id and one column per class."
                )
            for j, col in enumerate(value_cols):
                frame[col] = values[:, j]
    else:
        labels = to_labels(values, label_threshold(prepared, threshold))
        frame[value_cols[0]] = [classes[int(i)] for i in labels] if classes else labels
    for col in value_cols:
        if fmt.dtype == "int":
            frame[col] = np.round(frame[col].astype(float)).astype("int64")
        elif fmt.dtype == "float":
            frame[col] = frame[col].astype(float)
        else:
            frame[col] = frame[col].astype(str)
    return frame[[id_col, *value_cols]] if columns[0] == id_col else frame[columns]


def write_submission(
    prepared_path: str | os.PathLike,
    plan_path: str | os.PathLike,
    test_pred_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    threshold: float | None = None,
) -> Path:
    """Write ``submission-*.csv`` from the ensemble's test predictions (see :func:`submission_frame`;
    ``threshold``: :attr:`CombineResult.threshold`)."""
    frame = submission_frame(np.load(test_pred_path), Prepared.load(prepared_path), Plan.load(plan_path), threshold)
    return save_csv(frame, out_dir, "submission")


def validate(submission_path: str | os.PathLike, prepared_path: str | os.PathLike):  # noqa: ANN201 - kaggle.SubmissionCheck
    """Check the file against the sample submission before anything is uploaded."""
    from lora_tasks.kaggle import (
        validate_submission,  # the kaggle client is slow to import
    )

    prepared = Prepared.load(prepared_path)
    return validate_submission(
        submission_path, prepared.sample_submission, id_column=prepared.id_column,
        dtypes={c: prepared.submission.dtype for c in prepared.submission.columns if c != prepared.id_column},
    )


def submission_run_id(run_key: str, submission_path: str | os.PathLike) -> str:
    """A run id that is the same on every retry of one flow run and differs between files:
    ``<run key>-<sha12 of the file>`` (kaggle.submit submits at most once per run id)."""
    key = "".join(ch for ch in str(run_key) if ch.isalnum() or ch in "-_.")[:40] or "local"
    return f"{key}-{sha256_file(submission_path)[:12]}"


def submit_file(competition: str, submission_path: str | os.PathLike, message: str, run_id: str,
                state_dir: str | os.PathLike, endpoint: str | None = None):  # noqa: ANN201 - kaggle.SubmissionResult
    """Submit once per ``run_id`` (see :func:`lora_tasks.kaggle.submit`)."""
    from lora_tasks.kaggle import (  # the kaggle client is slow to import
        KaggleClient,
        submit,
    )

    slug = competition_slug(competition)
    return submit(slug, submission_path, message, run_id, state_dir, KaggleClient(endpoint))


def submit_run(competition: str, submission_path: str | os.PathLike, message: str, run_key: str,
               state_dir: str | os.PathLike, endpoint: str | None = None):  # noqa: ANN201 - kaggle.SubmissionResult
    """Submit under the run id :func:`submission_run_id` derives from ``run_key`` and the file:
    retries of one run reuse it (never a second submission), another file or run gets a new one."""
    run_id = submission_run_id(run_key, submission_path)
    return submit_file(competition, submission_path, message, run_id, state_dir, endpoint)


def read_score(competition: str, ref: int, endpoint: str | None = None, *, timeout_s: float = 900.0,
               poll_s: float = 10.0):  # noqa: ANN201 - kaggle.ScoredSubmission
    """Wait (bounded) for Kaggle to score submission ``ref``; returns it with ``public_score``."""
    from lora_tasks.kaggle import (  # the kaggle client is slow to import
        KaggleClient,
        wait_for_score,
    )

    return wait_for_score(competition_slug(competition), ref, KaggleClient(endpoint), timeout_s=timeout_s, poll_s=poll_s)
