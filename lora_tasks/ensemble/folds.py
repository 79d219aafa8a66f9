"""The fold loop every ensemble member runs: one model per fold, fit on the other folds, predicting
its held-out rows (out-of-fold, OOF) and the test rows.

Why one loop for every member: the OOF predictions of all members (and the adapters') must come
from the same split and the same target scale, so the blend can compare them row by row. It is
also the one place where a fold's frames are built, so a per-fold feature transform
(:data:`FoldTransform`: encodings fit on the fold's training rows only, such as target encoding)
is applied once, to the train, validation and test frames together, before any member sees them.

Predictions follow the project's convention: binary P(class 1) 1-D, multiclass (n, k)
probabilities with columns in sorted-label order, regression 1-D values; multilabel (n, k)
probabilities of each label and multi-target regression (n, k) values, columns in the target's order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.multiclass import OneVsRestClassifier
from sklearn.multioutput import MultiOutputRegressor

from lora_tasks.metrics import get_metric
from lora_tasks.task import Task

log = logging.getLogger("lora_tasks.ensemble.members")


@dataclass
class MemberPredictions:
    """OOF and test predictions of one member, shaped like an adapter's CVResult."""

    name: str
    oof: np.ndarray
    test: np.ndarray | None
    fold_of_row: np.ndarray
    test_per_fold: list[np.ndarray] = field(default_factory=list)
    oof_score: float | None = None
    metric: str | None = None
    dropped_columns: list[str] = field(default_factory=list)
    #: per fold, the boosting rounds kept by early stopping (gradient-boosting members only)
    best_iterations: list[int] = field(default_factory=list)
    seconds: float = 0.0  # wall time of its folds: fits and predictions
    #: fits slopes that carry past the training range (linear, kernel): see lora_tasks.ensemble.support
    extrapolates: bool = False


@dataclass(frozen=True)
class FoldData:
    """One fold's rows as a member sees them: training rows with their targets, the held-out
    (validation) rows with theirs (for early stopping and the OOF predictions), and the test rows.
    Targets are on the scale the member fits (``log1p`` under ``log_target``)."""

    fold: int
    train: Any
    y_train: np.ndarray
    valid: Any
    y_valid: np.ndarray
    test: Any | None


#: A per-fold feature transform: gets a fold's frames, returns them with features added or
#: changed. It may look at ``y_train`` only (never ``y_valid``): whatever it learns from the
#: target must come from the fold's training rows, or the OOF scores leak.
FoldTransform = Callable[[FoldData], FoldData]


class Predictor(Protocol):
    """What a fitted member answers: values (regression) or class probabilities."""

    def predict(self, X: Any) -> np.ndarray: ...

    def predict_proba(self, X: Any) -> np.ndarray: ...


def normalize_task(task: str | Task) -> Task:
    """The :class:`Task` a name means: short names (``binary``) and head types
    (``binary_classification``) alike."""
    try:
        return Task.parse(task)
    except ValueError:
        raise ValueError(
            f"scikit-learn members support the tasks {', '.join(t.value for t in Task)} (or their head "
            f"types), got {task!r}."
        ) from None


def per_column(model: BaseEstimator, task: Task) -> BaseEstimator:
    """One model per target column for the multi-output tasks (most estimators here take one
    target): one-vs-rest for labels, which keeps each label's probability, and one regressor per
    target."""
    if task is Task.MULTILABEL:
        return OneVsRestClassifier(model)
    if task is Task.MULTITARGET_REGRESSION:
        return MultiOutputRegressor(model)
    return model



def run_folds(
    fit: Callable[[FoldData], Predictor],
    X,
    y,
    folds: np.ndarray,
    task: Task,
    X_test,
    *,
    metric: str | None,
    log_target: bool,
    name: str,
    transform: FoldTransform | None = None,
) -> MemberPredictions:
    """Fit ``fit(fold_data)`` once per fold on the other folds; predict its held-out rows and the
    test rows. ``transform`` is applied to every fold's frames before ``fit`` sees them."""
    y = check_target(np.asarray(y), task)
    folds = np.asarray(folds)
    if len(folds) != len(X) or len(y) != len(X):
        raise ValueError(
            f"{len(X)} rows, {len(y)} targets and {len(folds)} fold indices; pass one of each per row "
            "(folds: CVResult.fold_of_row or lora_tasks.training.cv.make_folds)."
        )
    if log_target and not task.is_regression:
        raise ValueError("log_target only applies to regression; drop it for classification.")
    if log_target and np.any(y < 0):
        raise ValueError("log_target fits log1p(y), which needs y >= 0; drop log_target for this target.")
    classes = np.unique(y) if task in (Task.BINARY, Task.MULTICLASS) else None
    if task is Task.BINARY and len(classes) != 2:
        raise ValueError(f"task 'binary' needs exactly 2 classes in y, found {len(classes)}; use 'multiclass'.")
    fit_y = np.log1p(y.astype(float)) if log_target else y
    start = time.perf_counter()
    if task is Task.MULTICLASS:
        oof = np.zeros((len(y), len(classes)))
    else:  # 1-D for one target, one column per label / target otherwise
        oof = np.zeros(y.shape, dtype=float)
    per_fold, rounds = [], []
    take = (lambda a, idx: a.iloc[idx].reset_index(drop=True)) if hasattr(X, "iloc") else (lambda a, idx: a[idx])
    for k in np.unique(folds):
        train_idx, valid_idx = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        data = FoldData(int(k), take(X, train_idx), fit_y[train_idx], take(X, valid_idx), fit_y[valid_idx], X_test)
        if transform is not None:
            data = _checked_transform(transform, data)
        model = fit(data)
        oof[valid_idx] = predict(model, data.valid, task, classes, log_target)
        if data.test is not None:
            per_fold.append(predict(model, data.test, task, classes, log_target))
        if getattr(model, "best_iteration", None) is not None:
            rounds.append(int(model.best_iteration))
    seconds = time.perf_counter() - start
    # multiclass columns are the sorted labels: score against their indices (the metrics' convention)
    y_score = np.searchsorted(classes, y) if task is Task.MULTICLASS else y
    score = float(get_metric(metric)(y_score, oof)) if metric else None
    if score is not None:
        log.info("%s: OOF %s %.5f", name, metric, score)
    test = np.mean(per_fold, axis=0) if per_fold else None
    return MemberPredictions(name, oof, test, folds, per_fold, score, metric, best_iterations=rounds, seconds=seconds)


def _checked_transform(transform: FoldTransform, data: FoldData) -> FoldData:
    """The transformed fold, refused when it changed the rows or their targets."""
    out = transform(data)
    if not isinstance(out, FoldData):
        raise TypeError(f"a fold transform must return a FoldData, got {type(out).__name__}.")
    if len(out.train) != len(data.train) or len(out.valid) != len(data.valid) or (
            data.test is not None and (out.test is None or len(out.test) != len(data.test))):
        raise ValueError("a fold transform must keep every train, validation and test row (it adds or changes "
                         "features only); it changed the number of rows.")
    return replace(out, y_train=data.y_train, y_valid=data.y_valid)


def check_target(y: np.ndarray, task: Task) -> np.ndarray:
    """One column per label / target for the multi-output tasks, one value per row otherwise."""
    if task.multi_output:
        if y.ndim != 2 or y.shape[1] < 2:
            raise ValueError(
                f"task {task.value!r} needs a target of several columns, shape (rows, columns); got shape "
                f"{y.shape}. For one target column use {'binary' if task.is_classification else 'regression'}."
            )
        if task is Task.MULTILABEL:
            values = set(np.unique(y).tolist())
            if not values <= {0, 1}:
                raise ValueError(
                    f"multilabel targets are 0/1 (or True/False) per label column; found values "
                    f"{sorted(values, key=str)[:10]}. Use multiclass for one column of several classes."
                )
            return y.astype(np.int64)
        return y.astype(float)
    if y.ndim == 2 and y.shape[1] > 1:
        raise ValueError(
            f"task {task.value!r} takes one target column, got {y.shape[1]} columns; use "
            f"{'multilabel' if task.is_classification else 'multitarget_regression'} for several."
        )
    return y.reshape(len(y))


def predict(model: Predictor, X, task: Task, classes: np.ndarray | None, log_target: bool) -> np.ndarray:
    """``model``'s predictions in the project's convention (see the module docstring)."""
    if task.is_regression:
        pred = np.asarray(model.predict(X), dtype=float)
        return np.expm1(pred) if log_target else pred
    proba = np.asarray(model.predict_proba(X), dtype=float)
    if task is Task.MULTILABEL:  # one model per label: P(label) per column already
        return proba
    full = np.zeros((proba.shape[0], len(classes)))
    full[:, np.searchsorted(classes, model.classes_)] = proba  # a class absent from a fold keeps 0
    return full[:, 1] if task is Task.BINARY else full


def as_frame(X, what: str) -> pd.DataFrame:
    if not isinstance(X, pd.DataFrame):
        raise TypeError(f"{what} must be a pandas DataFrame of feature columns, got {type(X).__name__}.")
    return X.reset_index(drop=True)


__all__ = ["FoldData", "FoldTransform", "MemberPredictions", "Predictor", "check_target", "predict", "run_folds"]
