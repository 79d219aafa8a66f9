"""Every metric the project knows, in one table: name, direction, what predictions it wants.

Why one place: the competition config names a metric, the training loop scores out-of-fold
predictions with it, the ensemble maximises it and the README lists it. If each of those kept
its own idea of "is lower better" or "does it want probabilities", they would drift apart.

The numbers come from scikit-learn; this module only adds names, directions, the
probabilities-to-labels step and the mapping from Kaggle's ``evaluation_metric`` strings
(:func:`metric_from_kaggle`). No MLX, no pandas needed.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from sklearn import metrics as skm

from lora_tasks.task import Task

Needs = Literal["labels", "probabilities", "values"]
TaskType = Literal["binary", "multiclass", "multilabel", "regression", "multitarget_regression"]
#: The task names a competition config accepts (:class:`lora_tasks.task.Task`).
TASK_TYPES: tuple[str, ...] = tuple(t.value for t in Task)


@dataclass(frozen=True)
class Metric:
    """A named score. ``needs`` says what ``y_pred`` must be: class labels, class
    probabilities (binary: P(class 1) as a 1-D array; multiclass: one column per class;
    multilabel: one column per label) or regression values (multi-target: one column each).

    ``column_metric``: for 2-D targets, the 1-D metric whose mean over the columns equals this
    one, so a blend can fit each column on its own (see :mod:`lora_tasks.ensemble.blend`)."""

    name: str
    fn: Callable[[np.ndarray, np.ndarray], float] = field(repr=False)
    greater_is_better: bool
    needs: Needs
    tasks: tuple[Task, ...]
    description: str = ""
    column_metric: str | None = None

    def __call__(self, y_true, y_pred, *, threshold: float = 0.5) -> float:
        return score(self, y_true, y_pred, threshold=threshold)

    @property
    def direction(self) -> Literal["maximize", "minimize"]:
        return "maximize" if self.greater_is_better else "minimize"

    def is_better(self, a: float, b: float) -> bool:
        """True when score ``a`` beats score ``b`` under this metric's direction."""
        return a > b if self.greater_is_better else a < b

    @property
    def worst(self) -> float:
        """A starting value every real score beats (for best-so-far tracking)."""
        return -np.inf if self.greater_is_better else np.inf

    def supports(self, task: str | Task) -> bool:
        """Whether this metric can score ``task``'s predictions."""
        return Task.parse(task) in self.tasks


def _roc_auc(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    if y_prob.ndim == 2 and y_true.ndim == 1:
        if y_prob.shape[1] == 2:  # binary given as two columns
            return float(skm.roc_auc_score(y_true, y_prob[:, 1]))
        return float(skm.roc_auc_score(y_true, y_prob, multi_class="ovr", average="macro"))
    return float(skm.roc_auc_score(y_true, y_prob, average="macro"))


def _columns(y_true: np.ndarray, y_pred: np.ndarray, metric: str) -> None:
    if y_true.ndim != 2 or y_pred.shape != y_true.shape:
        raise ValueError(
            f"{metric} scores several target columns: y_true and y_pred must both be (rows, columns); got "
            f"{y_true.shape} and {y_pred.shape}. For a single target use "
            f"{'roc_auc' if 'auc' in metric else 'rmse'}."
        )


def _mean_columnwise_auc(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    _columns(y_true, y_prob, "mean_columnwise_roc_auc")
    return float(np.mean([skm.roc_auc_score(y_true[:, j], y_prob[:, j]) for j in range(y_true.shape[1])]))


def _mcrmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    _columns(y_true, y_pred, "mcrmse")
    return float(np.mean(skm.root_mean_squared_error(y_true, y_pred, multioutput="raw_values")))


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


def _mean_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    if y_true.ndim == 1:  # one label per row: the F1 of class 1 (binary) or macro-F1
        return _f1(y_true, y_pred)
    return float(skm.f1_score(y_true, y_pred, average="samples", zero_division=0))


def _qwk(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(skm.cohen_kappa_score(y_true, y_pred, weights="quadratic"))


_B, _MC, _ML, _R, _MR = (Task.BINARY, Task.MULTICLASS, Task.MULTILABEL, Task.REGRESSION,
                         Task.MULTITARGET_REGRESSION)
_CLASSES = (_B, _MC, _ML)
_VALUES = (_R, _MR)
METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("accuracy", lambda t, p: float(skm.accuracy_score(t, p)), True, "labels", _CLASSES,
               "share of exact labels (multilabel: of rows with every label right)"),
        Metric("f1", _f1, True, "labels", _CLASSES, "F1 of class 1 (binary); macro-F1 otherwise", "f1"),
        Metric(
            "macro_f1",
            lambda t, p: float(skm.f1_score(t, p, average="macro", zero_division=0)),
            True,
            "labels",
            _CLASSES,
            "unweighted mean of per-class F1",
        ),
        Metric("mean_f1", _mean_f1, True, "labels", _CLASSES,
               "F1 of each row's label set, averaged over rows (multilabel); F1 otherwise"),
        Metric("mcc", lambda t, p: float(skm.matthews_corrcoef(t, p)), True, "labels", (_B, _MC),
               "Matthews correlation coefficient"),
        Metric("qwk", _qwk, True, "labels", (_B, _MC), "quadratic weighted Cohen's kappa of ordered labels"),
        Metric("roc_auc", _roc_auc, True, "probabilities", _CLASSES,
               "area under the ROC curve (one-vs-rest, macro)", "roc_auc"),
        Metric("mean_columnwise_roc_auc", _mean_columnwise_auc, True, "probabilities", (_ML,),
               "ROC AUC of each label column, averaged (Kaggle's mean columnwise AUC)", "roc_auc"),
        Metric("log_loss", _log_loss, False, "probabilities", _CLASSES,
               "cross-entropy of the predicted probabilities", "log_loss"),
        Metric("rmse", lambda t, p: float(skm.root_mean_squared_error(t, p)), False, "values", _VALUES,
               "root mean squared error (several targets: mean of the columns' RMSE)", "rmse"),
        Metric("mcrmse", _mcrmse, False, "values", (_MR,),
               "RMSE of each target column, averaged (Kaggle's mean columnwise RMSE)", "rmse"),
        Metric("rmsle", _rmsle, False, "values", _VALUES, "RMSE of log1p values (Kaggle house prices)", "rmsle"),
        Metric("mae", lambda t, p: float(skm.mean_absolute_error(t, p)), False, "values", _VALUES,
               "mean absolute error", "mae"),
        Metric("mse", lambda t, p: float(skm.mean_squared_error(t, p)), False, "values", _VALUES,
               "mean squared error", "mse"),
        Metric("r2", lambda t, p: float(skm.r2_score(t, p)), True, "values", _VALUES,
               "coefficient of determination", "r2"),
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
    "matthews_corrcoef": "mcc",
    "quadratic_weighted_kappa": "qwk",
    "mean_columnwise_auc": "mean_columnwise_roc_auc",
    "mean_columnwise_rmse": "mcrmse",
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


def default_metric(task_type: str | Task, prediction: str = "labels") -> str:
    """The metric used when a competition config (and Kaggle's metadata) names none.

    Classification with label submissions is scored by accuracy, with probability submissions
    by ROC AUC (binary; multilabel: the mean of the label columns' AUC, which is what
    ``mean_columnwise_roc_auc`` computes too) or log loss (multiclass); regression by RMSE,
    several regression targets by mean columnwise RMSE.
    """
    try:
        task = Task.parse(task_type)
    except ValueError:
        raise ValueError(f"Unknown task type {task_type!r}; expected one of {', '.join(TASK_TYPES)}.") from None
    if task is Task.REGRESSION:
        return "rmse"
    if task is Task.MULTITARGET_REGRESSION:
        return "mcrmse"
    if prediction == "probabilities":
        return "log_loss" if task is Task.MULTICLASS else "roc_auc"
    return "accuracy"


# ---- Kaggle's names --------------------------------------------------------------------------------

#: Kaggle's ``evaluation_metric`` strings (as the competition listing of the official client
#: shows them), normalized by :func:`_kaggle_key`, to our metric names.
KAGGLE_METRICS: dict[str, str] = {
    "categorizationaccuracy": "accuracy",
    "classificationaccuracy": "accuracy",
    "accuracy": "accuracy",
    "accuracyscore": "accuracy",
    "rootmeansquarederror": "rmse",
    "meansquarederror": "mse",
    "meanabsoluteerror": "mae",
    "rootmeansquaredlogarithmicerror": "rmsle",
    "rootmeansquaredlogerror": "rmsle",
    "multiclassloss": "log_loss",
    "multiclasslogloss": "log_loss",
    "logloss": "log_loss",
    "logarithmicloss": "log_loss",
    "binarycrossentropy": "log_loss",
    "areaunderreceiveroperatingcharacteristiccurve": "roc_auc",
    "areaundertheroccurve": "roc_auc",
    "rocauc": "roc_auc",
    "auc": "roc_auc",
    "f1score": "f1",
    "fscore": "f1",
    "f1": "f1",
    "meanfscore": "mean_f1",
    "meanf1score": "mean_f1",
    "macrof1score": "macro_f1",
    "macrof1": "macro_f1",
    "quadraticweightedkappa": "qwk",
    "matthewscorrelationcoefficient": "mcc",
    "meancolumnwiseareaunderreceiveroperatingcharacteristiccurve": "mean_columnwise_roc_auc",
    "meancolumnwiseauc": "mean_columnwise_roc_auc",
    "meancolumnwiserocauc": "mean_columnwise_roc_auc",
    "meancolumnwiserootmeansquarederror": "mcrmse",
    "mcrmse": "mcrmse",
    "r2score": "r2",
    "coefficientofdetermination": "r2",
}
_WARNED_KAGGLE: set[str] = set()


class UnknownKaggleMetricWarning(UserWarning):
    """Kaggle names a metric this project cannot compute; the run falls back to inference."""


def _kaggle_key(name: str) -> str:
    # Kaggle spells the same metric "Mean Columnwise AUC", "Mean Column-wise AUC", "MeanColumnwiseAuc"
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def metric_from_kaggle(name: str | None) -> str | None:
    """Our metric for Kaggle's ``evaluation_metric`` string, or None when we have no match.

    Case, spaces, hyphens and underscores are ignored. An unknown name (not an empty one) gives
    one :class:`UnknownKaggleMetricWarning` per distinct string and the caller falls back to
    :func:`default_metric`: a run should still go, but the user should know why its CV score may
    not be the leaderboard's.
    """
    if name is None or not str(name).strip():
        return None
    key = _kaggle_key(name)
    ours = KAGGLE_METRICS.get(key)
    if ours is None:  # our own names and aliases ("rmse", "roc-auc") are understood too
        try:
            ours = get_metric(str(name).replace(" ", "_")).name
        except KeyError:
            ours = None
    if ours is None and key not in _WARNED_KAGGLE:
        _WARNED_KAGGLE.add(key)
        warnings.warn(
            f"Kaggle's evaluation metric {name!r} is not one this project computes "
            f"({', '.join(METRICS)}); the metric is inferred from the task instead. "
            "Set `metric` in the competition config to choose one.",
            UnknownKaggleMetricWarning,
            stacklevel=2,
        )
    return ours


# ---- predictions -----------------------------------------------------------------------------------


def _check_finite(y_pred: np.ndarray, what: str) -> None:
    """NaN would become class 0 or a silent score; name how many rows carry it instead."""
    if y_pred.dtype.kind in "fc" and not np.all(np.isfinite(y_pred)):
        bad = ~np.isfinite(y_pred.reshape(len(y_pred), -1)).all(axis=1)
        raise ValueError(
            f"{what}: {int(bad.sum())} of {len(y_pred)} rows with NaN or inf (first at row "
            f"{int(np.flatnonzero(bad)[0])}); the model that made them diverged or was given bad input."
        )


def to_labels(y_prob, threshold: float = 0.5, *, multilabel: bool | None = None) -> np.ndarray:
    """Probabilities to labels: argmax over columns (multiclass), threshold otherwise.

    ``multilabel``: whether 2-D columns are independent labels (cut each at ``threshold``) or
    classes of one label (argmax); None guesses from whether the rows sum to 1."""
    y_prob = np.asarray(y_prob, dtype=float)
    _check_finite(y_prob, "Probabilities to cut into labels")
    if multilabel is None:
        multilabel = y_prob.ndim == 2 and _looks_multilabel(y_prob)
    if y_prob.ndim == 2 and y_prob.shape[1] > 1 and not multilabel:
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
    2-D softmax outputs are argmaxed, other non-integer values (and every column of a 2-D
    multilabel target) are cut at ``threshold``. Probability metrics given a 2-column binary
    array use column 1. Predictions holding NaN or inf are refused.
    """
    m = get_metric(metric)
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true values but {len(y_pred)} predictions; pass one prediction per row.")
    _check_finite(y_pred, f"Predictions scored by {m.name}")
    if y_true.ndim == 2 and y_pred.shape != y_true.shape:
        raise ValueError(
            f"{y_true.shape[1]} target columns but predictions of shape {y_pred.shape}; "
            f"pass one column per target, shape {y_true.shape}."
        )
    if m.needs == "labels" and (_is_probability_like(y_pred) or (y_pred.ndim == 2 and y_true.ndim == 1)):
        y_pred = to_labels(y_pred, threshold, multilabel=y_true.ndim == 2)
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
