"""Stacking: a level-2 model fit on the members' out-of-fold predictions.

Why beside Caruana selection: a weighted mean can only interpolate between the members, while a
level-2 model can also correct their calibration (logits rescaled, an intercept) and use a
member's disagreement with the others. It overfits more easily, so its OOF predictions come from
a model refit without each fold (nested on the members' own folds), and :func:`lora_tasks.ensemble.blend`
with ``method="auto"`` uses it only where that nested score beats Caruana's.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import KFold, StratifiedKFold

from lora_tasks.task import Task

_EPS = 1e-7


def features(preds: np.ndarray, task: Task) -> np.ndarray:
    """(K, n, ...) member predictions -> (n, features): logits of probabilities for classifiers."""
    if task in (Task.BINARY, Task.MULTICLASS):
        p = np.clip(preds, _EPS, 1 - _EPS)
        x = np.log(p / (1 - p)) if task is Task.BINARY else np.log(p)
    else:
        x = preds
    n = preds.shape[1]
    return np.moveaxis(x, 0, 1).reshape(n, -1)


def stacking(
    names: list[str], oof: np.ndarray, test: np.ndarray | None, y: np.ndarray, task: Task,
    folds: np.ndarray | None, seed: int,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, float], np.ndarray]:
    if task.multi_output:  # only reached with a metric that is not a mean over the columns
        raise ValueError(
            "stacking fits several targets column by column, which needs a metric that is a mean over the "
            "columns (e.g. mean_columnwise_roc_auc, mcrmse); use method='weights' or 'caruana' for this one."
        )
    x = features(oof, task)
    if folds is None:
        splitter = (KFold(5, shuffle=True, random_state=seed) if task is Task.REGRESSION
                    else StratifiedKFold(5, shuffle=True, random_state=seed))
        folds = np.empty(len(y), dtype=np.int64)
        for k, (_, idx) in enumerate(splitter.split(x, y)):
            folds[idx] = k

    def model():
        return Ridge(alpha=1.0) if task is Task.REGRESSION else LogisticRegression(C=1.0, max_iter=1000)

    def out(est, feats):
        if task is Task.REGRESSION:
            return est.predict(feats)
        proba = est.predict_proba(feats)
        if task is Task.BINARY:
            return proba[:, 1]
        full = np.zeros((len(feats), oof.shape[2]))  # classes missing from a fold keep probability 0
        full[:, est.classes_.astype(int)] = proba
        return full

    oof_pred = np.zeros(oof.shape[1:])
    for k in np.unique(folds):
        inside = folds != k
        oof_pred[~inside] = out(model().fit(x[inside], y[inside]), x[~inside])
    final = model().fit(x, y)
    test_pred = out(final, features(test, task)) if test is not None else None
    coef = np.atleast_2d(final.coef_)
    per_member = np.abs(coef).reshape(coef.shape[0], len(names), -1).sum(axis=(0, 2))
    if task in (Task.BINARY, Task.REGRESSION):
        per_member = coef.reshape(len(names))  # one signed coefficient per member
    return oof_pred, test_pred, {n: float(c) for n, c in zip(names, per_member, strict=True)}, folds




__all__ = ["features", "stacking"]
