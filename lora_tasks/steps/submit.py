"""Steps 7-8: test predictions -> ``submission-*.csv`` in the competition's format, checked
against the sample submission, submitted once per run, and its score read back."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from lora_tasks.data.csv_io import read_csv
from lora_tasks.data.sample_checks import sample_order
from lora_tasks.data.source import CompetitionSource
from lora_tasks.data.submission_format import SubmissionRenderError, write_csv
from lora_tasks.hashing import sha256_file
from lora_tasks.steps.plan import Plan
from lora_tasks.steps.prepare import Prepared
from lora_tasks.steps.spec import competition_slug
from lora_tasks.steps.store import PipelineError, store_file, temp_path
from lora_tasks.steps.targets import inverse_transform, label_threshold


def submission_frame(test_pred: np.ndarray, prepared: Prepared, plan: Plan,
                     threshold: float | None = None) -> pd.DataFrame:
    """Test predictions (model scale) -> the submission table in the sample submission's format
    (:meth:`SubmissionFormat.render_predictions`): the inverse target transform, then labels
    (cut at ``threshold``, the tuned one from the combine step, else the configured one; spelled
    as train.csv spells them), probabilities under the sample's columns, or values; one column
    per label or target for several; the id column as test.csv writes it, in test.csv's order."""
    fmt = prepared.submission
    values = inverse_transform(np.asarray(test_pred, dtype=np.float64), plan.settings.target_transform)
    if fmt.rows_sum_to_one and values.ndim == 2:
        # a blend of softmax rows sums to 1 only up to float32 rounding; Kaggle and the validator want 1
        values = values / values.sum(axis=1, keepdims=True)
    try:
        return fmt.render_predictions(prepared.test_ids, values, prepared.classes, label_threshold(prepared, threshold))
    except SubmissionRenderError as exc:
        raise PipelineError(f"{prepared.slug}: {exc}") from None


def in_sample_order(frame: pd.DataFrame, prepared: Prepared) -> pd.DataFrame:
    """The rows in the sample submission's order, which the validator checks: test.csv may list
    the same ids in another one (the early checks made sure they are the same ids)."""
    id_column = prepared.submission.id_column
    sample_ids = read_csv(prepared.sample_submission, usecols=[id_column], as_text=True)[id_column].tolist()
    order = sample_order(sample_ids, frame[id_column].tolist())
    return frame if order is None else frame.iloc[order].reset_index(drop=True)


def write_submission(
    prepared_path: str | os.PathLike,
    plan_path: str | os.PathLike,
    test_pred_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    threshold: float | None = None,
) -> Path:
    """Write ``submission-*.csv`` from the ensemble's test predictions (see :func:`submission_frame`;
    ``threshold``: :attr:`CombineResult.threshold`), rows in the sample's order, named by its content's hash."""
    prepared = Prepared.load(prepared_path)
    frame = in_sample_order(submission_frame(np.load(test_pred_path), prepared, Plan.load(plan_path), threshold),
                            prepared)
    out = Path(out_dir)
    tmp = write_csv(frame, temp_path(out, ".csv"))
    return store_file(tmp, out, "submission", ".csv")


def validate(submission_path: str | os.PathLike, prepared_path: str | os.PathLike):
    """Check the file against the sample submission before anything is uploaded: header, ids,
    and every cell in the sample's format (labels spelled as train.csv spells them,
    probabilities in [0, 1] and summing to 1 per row where they are one per class)."""
    from lora_tasks.kaggle import (
        validate_submission,  # the kaggle client is slow to import
    )

    prepared = Prepared.load(prepared_path)
    fmt = prepared.submission
    return validate_submission(
        submission_path, prepared.sample_submission, id_column=prepared.id_column,
        dtypes={c: fmt.dtype for c in fmt.value_columns}, allowed_values=fmt.allowed_values(),
        probability_columns=fmt.probability_columns, rows_sum_to_one=fmt.rows_sum_to_one,
    )


def submission_run_id(run_key: str, submission_path: str | os.PathLike) -> str:
    """A run id that is the same on every retry of one flow run and differs between files:
    ``<run key>-<sha12 of the file>`` (kaggle.submit submits at most once per run id)."""
    key = "".join(ch for ch in str(run_key) if ch.isalnum() or ch in "-_.")[:40] or "local"
    return f"{key}-{sha256_file(submission_path)[:12]}"


def submit_file(competition: str | CompetitionSource, submission_path: str | os.PathLike, message: str, run_id: str,
                state_dir: str | os.PathLike, endpoint: str | None = None, *,
                resubmit: bool = False):
    """Submit once per ``run_id`` (see :func:`lora_tasks.kaggle.submit`); ``resubmit``: submit
    even if Kaggle already has this exact file (from an earlier run)."""
    from lora_tasks.kaggle import (  # the kaggle client is slow to import
        KaggleClient,
        submit,
    )

    slug = competition_slug(competition)
    return submit(slug, submission_path, message, run_id, state_dir, KaggleClient(endpoint), resubmit=resubmit)


def submit_run(competition: str | CompetitionSource, submission_path: str | os.PathLike, message: str, run_key: str,
               state_dir: str | os.PathLike, endpoint: str | None = None, *,
               resubmit: bool = False):
    """Submit under the run id :func:`submission_run_id` derives from ``run_key`` and the file:
    retries of one run reuse it (never a second submission), another file or run gets a new one."""
    run_id = submission_run_id(run_key, submission_path)
    return submit_file(competition, submission_path, message, run_id, state_dir, endpoint, resubmit=resubmit)


def read_score(competition: str | CompetitionSource, ref: int, endpoint: str | None = None, *, timeout_s: float = 900.0,
               poll_s: float = 10.0):
    """Wait (bounded) for Kaggle to score submission ``ref``; returns it with ``public_score``."""
    from lora_tasks.kaggle import (  # the kaggle client is slow to import
        KaggleClient,
        wait_for_score,
    )

    return wait_for_score(competition_slug(competition), ref, KaggleClient(endpoint), timeout_s=timeout_s, poll_s=poll_s)
