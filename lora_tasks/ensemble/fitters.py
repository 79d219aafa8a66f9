"""How :func:`lora_tasks.ensemble.blend.blend` weighs its members: the weight fitters (mean,
SciPy-optimized weights, Caruana's greedy selection), their nested out-of-fold score, and stacking.

Why apart from :mod:`.blend`: the fitters are the numerical work; ``blend`` checks the members,
picks a method and handles columns and the label cut around them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import optimize
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import KFold, StratifiedKFold

from lora_tasks.ensemble.thresholds import best_threshold
from lora_tasks.metrics import Metric
from lora_tasks.task import Task

# Metrics whose value moves smoothly with the weights (gradient-based optimization works).
SMOOTH_METRICS = frozenset({"log_loss", "rmse", "mse", "rmsle", "r2", "mae", "mcrmse"})
_EPS = 1e-7


# ---- combining -----------------------------------------------------------------------------------


def combine_members(preds: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted sum over members (axis 0); ``w`` sums to 1 for every method but stacking."""
    return np.tensordot(w, preds, axes=(0, 0))


def ecdf(reference: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Mid-rank of ``x`` among ``reference`` in (0, 1): OOF and test land on one scale."""
    ref = np.sort(reference)
    lo = np.searchsorted(ref, x, side="left")
    hi = np.searchsorted(ref, x, side="right")
    return (lo + hi) / (2.0 * len(ref))


def _loss(m: Metric, y: np.ndarray) -> Callable[[np.ndarray], float]:
    sign = -1.0 if m.greater_is_better else 1.0
    return lambda pred: sign * float(m(y, pred))


# ---- fitters: (oof (K, n, ...), y, metric) -> weights (K,) ----------------------------------------


def _fit_mean(oof: np.ndarray, y: np.ndarray, m: Metric, **_) -> np.ndarray:
    return np.full(len(oof), 1.0 / len(oof))


def _fit_weights(oof: np.ndarray, y: np.ndarray, m: Metric, seed: int = 0, **_) -> np.ndarray:
    """Best of: the mean, the single best member, and SLSQP on the simplex (smooth metrics) or
    Nelder-Mead on ``w = x**2 / sum(x**2)`` from two seeded starts (step-like metrics, whose
    gradients are zero almost everywhere; squares reach exact zeros). Keeping the mean as a
    candidate guarantees the result is never worse than it on OOF."""
    k = len(oof)
    loss = _loss(m, y)
    f = lambda w: loss(combine_members(oof, w))  # noqa: E731 - the objective, beside the optimizer that reads it
    candidates = [np.full(k, 1.0 / k)]
    singles = [f(np.eye(k)[i]) for i in range(k)]
    candidates.append(np.eye(k)[int(np.argmin(singles))])
    if k == 1:
        return candidates[0]
    if m.name in SMOOTH_METRICS:
        res = optimize.minimize(
            f, candidates[0], method="SLSQP", bounds=[(0.0, 1.0)] * k,
            constraints=[{"type": "eq", "fun": lambda w: np.sum(w) - 1.0}], options={"maxiter": 200, "ftol": 1e-10},
        )
        candidates.append(_project(res.x))
    else:  # flat almost everywhere: gradients are zero, so search without them
        rng = np.random.default_rng(seed)
        to_w = lambda x: _project(x * x)  # noqa: E731 - one-line map, read with the objective above
        for start in (np.ones(k), 1.0 + 0.3 * rng.standard_normal(k)):
            res = optimize.minimize(lambda x: f(to_w(x)), start, method="Nelder-Mead",
                                    options={"maxiter": 100 * k, "xatol": 1e-2, "fatol": 1e-9})
            candidates.append(to_w(res.x))
    scores = [f(w) for w in candidates]
    return candidates[int(np.argmin(scores))]  # first minimum: ties keep the simpler candidate


def _project(w: np.ndarray) -> np.ndarray:
    w = np.clip(np.nan_to_num(np.asarray(w, dtype=float)), 0.0, None)
    w[w < 1e-6] = 0.0
    total = w.sum()
    return w / total if total > 0 else np.full(len(w), 1.0 / len(w))


def _fit_caruana(
    oof: np.ndarray, y: np.ndarray, m: Metric, seed: int = 0, iterations: int = 50, bags: int = 0,
    bag_fraction: float = 0.5, **_,
) -> np.ndarray:
    k = len(oof)
    rng = np.random.default_rng(seed)
    if bags <= 0:
        return _caruana_counts(oof, np.arange(k), y, m, iterations, rng)
    size = max(1, int(math.ceil(bag_fraction * k)))
    w = np.zeros(k)
    for _ in range(bags):
        members = np.sort(rng.choice(k, size=size, replace=False))
        w += _caruana_counts(oof, members, y, m, iterations, rng)
    return w / bags


def _caruana_counts(
    oof: np.ndarray, members: np.ndarray, y: np.ndarray, m: Metric, iterations: int, rng: np.random.Generator
) -> np.ndarray:
    """Greedy selection with replacement; weights are pick counts of the best trajectory prefix."""
    loss = _loss(m, y)
    total = np.zeros_like(oof[0])
    picks: list[int] = []
    trajectory: list[float] = []
    for s in range(iterations):
        losses = np.array([loss((total + oof[j]) / (s + 1)) for j in members])
        best = np.flatnonzero(losses == losses.min())
        j = int(members[best[0] if len(best) == 1 else rng.choice(best)])
        picks.append(j)
        total = total + oof[j]
        trajectory.append(float(losses.min()))
    stop = int(np.argmin(trajectory)) + 1  # as AutoGluon: keep the best prefix
    counts = np.bincount(picks[:stop], minlength=len(oof)).astype(float)
    return counts / counts.sum()


FITTERS: dict[str, Callable[..., np.ndarray]] = {
    "mean": _fit_mean,
    "rank_mean": _fit_mean,
    "weights": _fit_weights,
    "caruana": _fit_caruana,
}


def nested_score(fit: Callable[..., np.ndarray], oof: np.ndarray, y: np.ndarray, m: Metric,
                  folds: np.ndarray, opts: dict, tune_threshold: bool = False) -> float:
    """Score of the blending procedure itself: weights (and the cut) fit without fold k, applied
    to fold k."""
    pred = np.zeros_like(oof[0])
    cuts = np.full(len(y), 0.5)
    for k in np.unique(folds):
        inside = folds != k
        w = fit(oof[:, inside], y[inside], m, **opts)
        pred[~inside] = combine_members(oof[:, ~inside], w)
        if tune_threshold:
            cuts[~inside] = best_threshold(m, y[inside], combine_members(oof[:, inside], w))
    return float(m(y, (pred >= cuts).astype(np.int64) if tune_threshold else pred))


# ---- stacking ------------------------------------------------------------------------------------


def _features(preds: np.ndarray, task: Task) -> np.ndarray:
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
    x = _features(oof, task)
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
    test_pred = out(final, _features(test, task)) if test is not None else None
    coef = np.atleast_2d(final.coef_)
    per_member = np.abs(coef).reshape(coef.shape[0], len(names), -1).sum(axis=(0, 2))
    if task in (Task.BINARY, Task.REGRESSION):
        per_member = coef.reshape(len(names))  # one signed coefficient per member
    return oof_pred, test_pred, {n: float(c) for n, c in zip(names, per_member, strict=True)}, folds
