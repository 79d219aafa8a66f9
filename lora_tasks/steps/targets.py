"""Targets, folds and scores as every step sees them: one definition, so training, the
scikit-learn members, the blend and the submission agree row by row."""

from __future__ import annotations

import numpy as np

from lora_tasks.ensemble.thresholds import fixed_threshold, tunes_threshold
from lora_tasks.metrics import get_metric, to_labels
from lora_tasks.steps.plan import Plan
from lora_tasks.steps.prepare import Prepared
from lora_tasks.steps.store import PipelineError
from lora_tasks.task import Task


def transform_target(y: np.ndarray, transform: str) -> np.ndarray:
    if transform == "log1p":
        if np.nanmin(y) <= -1:
            raise PipelineError("target_transform log1p needs targets > -1; use target_transform = 'none'.")
        return np.log1p(y)
    return y


def inverse_transform(pred: np.ndarray, transform: str) -> np.ndarray:
    return np.expm1(pred) if transform == "log1p" else pred


#: Seed distance between the members' rounds: far from the seeds of the folds' own models.
ROUND_SEED_STEP = 1009


def fold_assignment(prepared: Prepared, plan: Plan, *, members: bool = False, round: int = 0) -> np.ndarray:
    """Fold index of every train row, identical in every step: stratified for single-target
    classification, plain K-fold for regression and several targets. ``members``: the split of
    the scikit-learn members and the blend (``Plan.members_n_folds``), which keeps the rules'
    folds when the budget gave the adapters fewer. ``round`` > 0: another split of the members'
    rows, for another round of them (the blend keeps round 0's)."""
    from lora_tasks.training.cv import (
        make_folds,  # lora_tasks.training.cv loads MLX: not needed to plan or submit
    )

    n_folds = plan.members_n_folds if members else plan.n_folds
    return make_folds(np.asarray(prepared.y), prepared.head_type, n_folds, plan.seed + ROUND_SEED_STEP * round)


def training_labels(prepared: Prepared, plan: Plan) -> np.ndarray:
    """The labels on the model's scale: class indices, 0/1 per label (multilabel, (n, k)), or
    (transformed) float targets ((n,) or (n, k))."""
    if prepared.task.is_regression:
        y = np.asarray(prepared.y, dtype=np.float32)
        return transform_target(y, plan.settings.target_transform).astype(np.float32)
    return np.asarray(prepared.y, dtype=np.int32)


def label_threshold(prepared: Prepared, threshold: float | None = None) -> float:
    """The cut of P(class 1) for labels: ``threshold`` when one was tuned, else the configured one."""
    return fixed_threshold(prepared.submission.threshold) if threshold is None else float(threshold)


def to_metric_scale(pred: np.ndarray, prepared: Prepared, plan: Plan, threshold: float | None = None) -> np.ndarray:
    """Model outputs -> what the competition metric wants (labels, probabilities or values)."""
    values = inverse_transform(pred, plan.settings.target_transform)
    needs = get_metric(prepared.metric).needs
    if prepared.task.is_regression or needs != "labels":
        return values
    return to_labels(values, label_threshold(prepared, threshold), multilabel=prepared.task is Task.MULTILABEL)


def score_predictions(pred: np.ndarray, prepared: Prepared, plan: Plan, threshold: float | None = None) -> float:
    """The competition metric of model-scale predictions against the prepared labels."""
    y = np.asarray(prepared.y)
    return float(get_metric(prepared.metric)(y, to_metric_scale(pred, prepared, plan, threshold)))


def tunes_label_cut(prepared: Prepared, plan: Plan) -> bool:
    """Whether combine fits the label cut on OOF rows (see :mod:`lora_tasks.ensemble.thresholds`)."""
    binary = prepared.task is Task.BINARY and plan.settings.target_transform == "none"
    return tunes_threshold(prepared.submission.threshold, prepared.metric, binary)


def blend_metric(prepared: Prepared, plan: Plan) -> str:
    """The metric blend weights are fit for, on the model scale: the competition metric, or
    under a target transform the training metric (RMSE of log1p values is RMSLE), else RMSE."""
    if plan.settings.target_transform == "none":
        return prepared.metric
    return plan.train_metric or "rmse"
