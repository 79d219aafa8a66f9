"""The decision threshold of binary label submissions, tuned on out-of-fold predictions.

Why: a competition scored on labels takes a cut of P(class 1). For accuracy, 0.5 is the best
cut of calibrated probabilities, so it stays. For F1 and the Matthews correlation it is not: the F1-optimal cut of calibrated
probabilities is half the F1 it reaches (Lipton et al. 2014, "Thresholding classifiers to
maximize F1"), well below 0.5 for a good model, so a fixed 0.5 leaves score on the table. MCC
also weighs the rarer class more than accuracy does, so its best cut moves the same way. The
cut is fit on OOF rows (each predicted by a model that did not train on it), like blend weights,
and it is judged the same way: :func:`nested_threshold_score` fits it on the other folds and
scores each held-out fold.

The score of a cut is a step function of the cut, and its argmax over a fine grid lands on
noise. The grid's scores are averaged over a small window first, so the choice is the middle of
a plateau rather than its luckiest edge.

Multilabel and multi-target predictions have no single cut: their mean columnwise metrics
(AUC, RMSE) need none, and :func:`tunes_threshold` says no for them.

No MLX, no Prefect: NumPy arrays in, a float out.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from lora_tasks.metrics import Metric, get_metric
from lora_tasks.task import Task

ThresholdSetting = float | Literal["auto"]
# Label metrics whose best cut of calibrated probabilities is not 0.5: "auto" tunes these.
TUNED_METRICS = frozenset({"f1", "mcc"})
GRID = np.round(np.arange(0.05, 0.951, 0.01), 2)
WINDOW = 5  # grid points averaged around each candidate (a 0.04 wide window)


def tunes_threshold(setting: ThresholdSetting, metric: str | Metric, binary: bool | str | Task) -> bool:
    """Whether the cut is fit on OOF rows: ``"auto"``, a binary task and a metric in
    :data:`TUNED_METRICS`. A number in the config is the user's cut and is kept as given.
    ``binary``: whether the task is binary, or the task itself (any :class:`Task` spelling)."""
    if not isinstance(binary, bool):
        binary = Task.parse(binary) is Task.BINARY
    return setting == "auto" and binary and get_metric(metric).name in TUNED_METRICS


def fixed_threshold(setting: ThresholdSetting) -> float:
    """The cut used when none is tuned: the configured number, or 0.5 for ``"auto"``."""
    return 0.5 if setting == "auto" else float(setting)


def best_threshold(metric: str | Metric, y: np.ndarray, prob: np.ndarray) -> float:
    """The cut of ``prob`` (P(class 1), 1-D) that maximizes ``metric`` on ``y``, smoothed over
    :data:`WINDOW` grid points; ties go to the cut nearest 0.5."""
    m = get_metric(metric)
    y, prob = np.asarray(y), np.asarray(prob, dtype=np.float64)
    if prob.ndim != 1:
        raise ValueError(
            f"best_threshold needs 1-D binary probabilities; got shape {prob.shape} (multiclass rows are "
            "argmaxed and multilabel columns have no single cut)."
        )
    _check_finite(prob)
    sign = 1.0 if m.greater_is_better else -1.0
    scores = np.array([sign * m(y, (prob >= t).astype(np.int64)) for t in GRID])
    smooth = np.convolve(np.pad(scores, WINDOW // 2, mode="edge"), np.ones(WINDOW) / WINDOW, mode="valid")
    best = np.flatnonzero(smooth >= smooth.max() - 1e-12)
    return float(GRID[best[np.argmin(np.abs(GRID[best] - 0.5))]])


def nested_threshold_score(metric: str | Metric, y: np.ndarray, prob: np.ndarray, folds: np.ndarray) -> float:
    """The honest score of tuning: each fold cut at the threshold fit on the other folds."""
    y, prob, folds = np.asarray(y), np.asarray(prob, dtype=np.float64), np.asarray(folds)
    _check_finite(prob)
    labels = np.zeros(len(y), dtype=np.int64)
    for k in np.unique(folds):
        held = folds == k
        labels[held] = prob[held] >= best_threshold(metric, y[~held], prob[~held])
    return float(get_metric(metric)(y, labels))


def _check_finite(prob: np.ndarray) -> None:
    bad = ~np.isfinite(prob)
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} of {len(prob)} probabilities are NaN or inf (first at row "
            f"{int(np.flatnonzero(bad)[0])}); a cut fit on them would be meaningless. Find the member that made them."
        )


def check_setting(value: object) -> ThresholdSetting:
    """A config's ``threshold``: ``"auto"`` or a number strictly between 0 and 1."""
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < float(value) < 1:
        raise ValueError(
            f"threshold = {value!r}: use \"auto\" (tuned on OOF rows for F1 and MCC) or a number in (0, 1)."
        )
    return float(value)


__all__ = ["GRID", "TUNED_METRICS", "best_threshold", "check_setting", "fixed_threshold", "nested_threshold_score",
           "tunes_threshold"]
