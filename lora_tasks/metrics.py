"""Every metric the project knows, in one table: name, direction, what predictions it wants.

Why one place: the competition config names a metric, the training loop scores out-of-fold
predictions with it, the ensemble maximises it and the README lists it. If each of those kept
its own idea of "is lower better" or "does it want probabilities", they would drift apart.

The numbers come from scikit-learn; this module only adds names, directions and the
probabilities-to-labels step (no MLX, no pandas needed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np
from sklearn import metrics as skm

Needs = Literal["labels", "probabilities", "values"]
TaskType = Literal["binary", "multiclass", "multilabel", "regression"]
TASK_TYPES: tuple[str, ...] = ("binary", "multiclass", "multilabel", "regression")


@dataclass(frozen=True)
class Metric:
    """A named score. ``needs`` says what ``y_pred`` must be: class labels, class
    probabilities (binary: P(class 1) as a 1-D array; multiclass: one column per class) or
    regression values."""

    name: str
    fn: Callable[[np.ndarray, np.ndarray], float] = field(repr=False)
    greater_is_better: bool
    needs: Needs
    tasks: tuple[str, ...]
    description: str = ""

    def __call__(self, y_true, y_pred, *, threshold: float = 0.5) -> float:
        return score(self, y_true, y_pred, threshold=threshold)

    def is_better(self, a: float, b: float) -> bool:
        """True when score ``a`` beats score ``b`` under this metric's direction."""
        return a > b if self.greater_is_better else a < b

    @property
    def worst(self) -> float:
        """A starting value every real score beats (for best-so-far tracking)."""
        return -np.inf if self.greater_is_better else np.inf


def _roc_auc(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    if y_prob.ndim == 2 and y_true.ndim == 1:
        if y_prob.shape[1] == 2:  # binary given as two columns
            return float(skm.roc_auc_score(y_true, y_prob[:, 1]))
        return float(skm.roc_auc_score(y_true, y_prob, multi_class="ovr", average="macro"))
    return float(skm.roc_auc_score(y_true, y_prob, average="macro"))


def _log_loss(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    if y_prob.ndim == 2 and y_true.ndim == 2:  # multilabel: mean of per-column binary log loss
        return float(np.mean([skm.log_loss(y_true[:, j], y_prob[:, j], labels=[0, 1]) for j in range(y_true.shape[1])]))
    # class indices 0..k-1 name the columns; other label types must match sklearn's sorted order
    labels = np.arange(y_prob.shape[1]) if y_prob.ndim == 2 and y_true.dtype.kind in "iu" else None
    return float(skm.log_loss(y_true, y_prob, labels=labels))


def _rmsle(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    # Kaggle's RMSLE is undefined below -1; a regressor may dip under 0, so clip there rather
    # than crash a validation step (the target itself must be >= 0, checked by sklearn).
    return float(skm.root_mean_squared_log_error(y_true, np.clip(y_pred, 0, None)))


def _f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    average = "binary" if y_true.ndim == 1 and np.unique(y_true).size <= 2 else "macro"
    return float(skm.f1_score(y_true, y_pred, average=average, zero_division=0))


_ALL = ("binary", "multiclass", "multilabel")
METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("accuracy", lambda t, p: float(skm.accuracy_score(t, p)), True, "labels", _ALL, "share of exact labels"),
        Metric("f1", _f1, True, "labels", _ALL, "F1 of class 1 (binary); macro-F1 otherwise"),
        Metric(
            "macro_f1",
            lambda t, p: float(skm.f1_score(t, p, average="macro", zero_division=0)),
            True,
            "labels",
            _ALL,
            "unweighted mean of per-class F1",
        ),
        Metric("roc_auc", _roc_auc, True, "probabilities", _ALL, "area under the ROC curve (one-vs-rest, macro)"),
        Metric("log_loss", _log_loss, False, "probabilities", _ALL, "cross-entropy of the predicted probabilities"),
        Metric(
            "rmse", lambda t, p: float(skm.root_mean_squared_error(t, p)), False, "values", ("regression",), "root mean squared error"
        ),
        Metric("rmsle", _rmsle, False, "values", ("regression",), "RMSE of log1p values (Kaggle house prices)"),
        Metric("mae", lambda t, p: float(skm.mean_absolute_error(t, p)), False, "values", ("regression",), "mean absolute error"),
        Metric("mse", lambda t, p: float(skm.mean_squared_error(t, p)), False, "values", ("regression",), "mean squared error"),
        Metric("r2", lambda t, p: float(skm.r2_score(t, p)), True, "values", ("regression",), "coefficient of determination"),
    )
}

ALIASES: dict[str, str] = {
    "acc": "accuracy",
    "auc": "roc_auc",
    "rocauc": "roc_auc",
    "logloss": "log_loss",
    "f1_macro": "macro_f1",
    "mean_absolute_error": "mae",
    "mean_squared_error": "mse",
    "root_mean_squared_error": "rmse",
    "root_mean_squared_log_error": "rmsle",
}


def get_metric(name: str | Metric) -> Metric:
    """The metric called ``name`` (case and dashes ignored; a few common aliases accepted)."""
    if isinstance(name, Metric):
        return name
    key = str(name).strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in METRICS:
        raise KeyError(
            f"Unknown metric {name!r}. Known metrics: {', '.join(METRICS)} "
            f"(aliases: {', '.join(sorted(ALIASES))}). Fix the `metric` key of the competition config."
        )
    return METRICS[key]


def default_metric(task_type: str, prediction: str = "labels") -> str:
    """The metric used when a competition config names none.

    Classification with label submissions is scored by accuracy, with probability submissions
    by ROC AUC (binary, multilabel) or log loss (multiclass); regression by RMSE.
    """
    if task_type not in TASK_TYPES:
        raise ValueError(f"Unknown task type {task_type!r}; expected one of {', '.join(TASK_TYPES)}.")
    if task_type == "regression":
        return "rmse"
    if prediction == "probabilities":
        return "log_loss" if task_type == "multiclass" else "roc_auc"
    return "accuracy"


def to_labels(y_prob, threshold: float = 0.5) -> np.ndarray:
    """Probabilities to labels: argmax over columns (multiclass), threshold otherwise."""
    y_prob = np.asarray(y_prob, dtype=float)
    if y_prob.ndim == 2 and y_prob.shape[1] > 1 and not _looks_multilabel(y_prob):
        return np.argmax(y_prob, axis=1)
    return (y_prob >= threshold).astype(np.int64)


def _looks_multilabel(y_prob: np.ndarray) -> bool:
    # rows of a softmax sum to 1; independent sigmoids generally do not
    return not np.allclose(y_prob.sum(axis=1), 1.0, atol=1e-3)


def _is_probability_like(y_pred: np.ndarray) -> bool:
    if y_pred.dtype.kind not in "fc":
        return False
    finite = y_pred[np.isfinite(y_pred)]
    return finite.size > 0 and not np.all(finite == np.round(finite))


def score(metric: str | Metric, y_true, y_pred, *, threshold: float = 0.5) -> float:
    """Score predictions with ``metric``.

    Label metrics also accept probabilities (so a training loop can keep one prediction array):
    2-D softmax outputs are argmaxed, other non-integer values are cut at ``threshold``.
    Probability metrics given a 2-column binary array use column 1.
    """
    m = get_metric(metric)
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true values but {len(y_pred)} predictions; pass one prediction per row.")
    if m.needs == "labels" and (_is_probability_like(y_pred) or (y_pred.ndim == 2 and y_true.ndim == 1)):
        y_pred = to_labels(y_pred, threshold)
    if m.needs == "probabilities" and y_pred.ndim == 2 and y_pred.shape[1] == 2 and y_true.ndim == 1:
        y_pred = y_pred[:, 1]
    if m.needs == "values" and y_pred.ndim == 2 and y_pred.shape[1] == 1 and y_true.ndim == 1:
        y_pred = y_pred[:, 0]
    return m.fn(y_true, y_pred)


def metrics_markdown() -> str:
    """The metric table for the README."""
    lines = ["| metric | better | wants | tasks | what |", "|---|---|---|---|---|"]
    for m in METRICS.values():
        better = "higher" if m.greater_is_better else "lower"
        lines.append(f"| `{m.name}` | {better} | {m.needs} | {', '.join(m.tasks)} | {m.description} |")
    return "\n".join(lines)
