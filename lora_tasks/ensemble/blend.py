"""Blend the out-of-fold (OOF) and test predictions of several ensemble members.

Every method is fit on OOF predictions only (one prediction per train row, each from a model that
did not train on that row), so the weights it learns transfer to the test predictions. Methods:

- ``mean``: plain average. The baseline every other method must beat on OOF to be worth it.
- ``rank_mean``: average of each member's rank-transformed scores. Only for rank metrics (ROC AUC),
  where members on different scales (calibrated or not) should count equally.
- ``weights``: non-negative weights summing to 1 that optimize the competition metric on OOF
  (scipy: SLSQP on the simplex for smooth metrics, Nelder-Mead on a squared parametrization for
  step-like ones such as accuracy or AUC). Never worse on OOF than ``mean`` (it is a candidate).
- ``caruana``: greedy forward selection with replacement (Caruana et al. 2004, as in AutoGluon):
  repeatedly add the member that most improves the blend, keep the best prefix of the trajectory;
  optionally bagged over random member subsets.
- ``stacking``: a scikit-learn meta-model (LogisticRegression / Ridge) on the members' OOF
  predictions, itself cross-validated on the same folds so its reported OOF score is honest
  (:mod:`lora_tasks.ensemble.fitters`).
- ``auto``: ``caruana`` and ``stacking`` both, the one with the better nested score used (needs
  ``folds``; without them, ``caruana``). The report's ``method`` names the one chosen.

Weights fit on OOF and scored on the same OOF are optimistic; pass ``folds`` and the report also
carries ``blend_cv_score``: the blend fit on the other folds and scored on each held-out fold.

``tune_threshold=True`` (binary tasks, label metrics such as F1) also fits the cut of the blended
P(class 1) on the OOF rows (:mod:`lora_tasks.ensemble.thresholds`); the nested score then fits weights and
cut on the other folds.

Several targets (multilabel probabilities, multi-target values: ``y`` and every member (n, k)) are
blended column by column when the metric is a mean over columns (``Metric.column_metric``: mean
columnwise AUC and RMSE, log loss, MAE, ...): each column gets its own weights, fit with the
column's metric, because a member may be best at one label and weak at another, and the mean of
the columns' best scores is the best mean.

No MLX, no Prefect: inputs are NumPy arrays (binary: P(class 1) 1-D; multiclass: (n, k)
probabilities; multilabel: (n, k) probabilities; regression: 1-D values, or (n, k) for several
targets), so scikit-learn members and adapters blend alike. A member whose predictions hold NaN
or inf is refused by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from lora_tasks.ensemble.fitters import FITTERS, combine_members, ecdf, nested_score, stacking
from lora_tasks.ensemble.thresholds import best_threshold, nested_threshold_score
from lora_tasks.metrics import Metric, get_metric
from lora_tasks.task import Task

Method = Literal["auto", "mean", "rank_mean", "weights", "caruana", "stacking"]
METHODS: tuple[str, ...] = ("auto", "mean", "rank_mean", "weights", "caruana", "stacking")
#: What ``auto`` chooses between, by their nested scores (the first wins a tie: the simpler one).
AUTO_CANDIDATES: tuple[str, ...] = ("caruana", "stacking")
# Metrics that only look at the order of the scores: the only ones where rank averaging is sound.
RANK_METRICS = frozenset({"roc_auc", "mean_columnwise_roc_auc"})


@dataclass
class BlendReport:
    """Each member's OOF score, the blend's weights and OOF score, for logs and the README."""

    method: str
    metric: str
    greater_is_better: bool
    member_scores: dict[str, float]
    weights: dict[str, float]
    blend_score: float
    blend_cv_score: float | None = None  # fit on other folds, scored on the held-out fold
    notes: list[str] = field(default_factory=list)
    threshold: float | None = None  # the tuned cut of the blend's P(class 1), when tuned
    #: several targets blended column by column: each member's weight in each column
    column_weights: dict[str, list[float]] | None = None

    @property
    def best_member(self) -> str:
        pick = max if self.greater_is_better else min
        return pick(self.member_scores, key=self.member_scores.__getitem__)

    @property
    def gain_over_best_member(self) -> float:
        """Blend score minus the best member's score, signed so that positive means better."""
        diff = self.blend_score - self.member_scores[self.best_member]
        return diff if self.greater_is_better else -diff

    def to_markdown(self) -> str:
        better = "higher" if self.greater_is_better else "lower"
        lines = [
            f"**Blend `{self.method}`** on OOF `{self.metric}` ({better} is better)",
            "",
            "| member | OOF score | weight |",
            "|---|---|---|",
        ]
        for name, s in self.member_scores.items():
            mark = " (best)" if name == self.best_member else ""
            lines.append(f"| {name}{mark} | {s:.5f} | {self.weights.get(name, 0.0):.4f} |")
        cut = f" (cut at {self.threshold:.2f})" if self.threshold is not None else ""
        lines.append(f"| **blend**{cut} | **{self.blend_score:.5f}** | |")
        if self.column_weights is not None:
            lines += ["", "| member | weight per column |", "|---|---|"]
            lines += [f"| {n} | {', '.join(f'{x:.3f}' for x in ws)} |" for n, ws in self.column_weights.items()]
        if self.blend_cv_score is not None:
            lines.append(f"| blend, fit out-of-fold | {self.blend_cv_score:.5f} | |")
        lines += [f"\n_{n}_" for n in self.notes]
        return "\n".join(lines)


@dataclass
class BlendResult:
    """Blended test and OOF predictions, the member weights, and the report."""

    test_pred: np.ndarray | None
    oof_pred: np.ndarray
    weights: dict[str, float]
    report: BlendReport

    @property
    def threshold(self) -> float | None:
        """The tuned cut of ``oof_pred`` / ``test_pred`` for labels, or None (not tuned)."""
        return self.report.threshold


# ---- public API ----------------------------------------------------------------------------------


def blend(
    method: Method,
    oof: Mapping[str, np.ndarray],
    test: Mapping[str, np.ndarray] | None,
    y: np.ndarray,
    metric: str | Metric,
    folds: np.ndarray | None = None,
    *,
    seed: int = 0,
    caruana_iterations: int = 50,
    caruana_bags: int = 0,
    caruana_bag_fraction: float = 0.5,
    tune_threshold: bool = False,
) -> BlendResult:
    """Blend members ``oof[name]`` / ``test[name]`` by ``method``, fitting on the OOF rows and ``y``.

    ``folds`` (fold index per row, e.g. ``CVResult.fold_of_row``) makes stacking reuse the members'
    folds and adds an out-of-fold score of the whole blending procedure to the report.
    ``caruana_bags > 0`` runs Caruana selection on that many random member subsets (each holding
    ``caruana_bag_fraction`` of the members) and averages their weights. ``tune_threshold``: fit
    the cut of the blended P(class 1) for a binary label metric (see the module docstring).
    """
    if method not in METHODS:
        raise ValueError(f"Unknown blend method {method!r}; use one of {', '.join(METHODS)}.")
    if method == "auto" and not (np.ndim(y) == 2 and get_metric(metric).column_metric is not None):
        # several targets with a column metric go column by column below, each column choosing
        return _auto(oof, test, y, metric, folds, seed=seed, caruana_iterations=caruana_iterations,
                     caruana_bags=caruana_bags, caruana_bag_fraction=caruana_bag_fraction,
                     tune_threshold=tune_threshold)
    m = get_metric(metric)
    y = np.asarray(y)
    names, oof_arr, test_arr = _check_members(oof, test, y)
    if folds is not None:
        folds = np.asarray(folds)
        if folds.shape != (len(y),):
            raise ValueError(f"folds has shape {folds.shape}; pass one fold index per train row ({len(y)}).")
    if tune_threshold:
        _check_threshold_task(m, y, oof_arr[0])
    opts = {"seed": seed, "iterations": caruana_iterations, "bags": caruana_bags, "bag_fraction": caruana_bag_fraction}
    if y.ndim == 2 and m.column_metric is not None:
        return _blend_columns(method, names, oof_arr, test_arr, y, m, folds, opts)
    member_scores = {n: float(m(y, p)) for n, p in zip(names, oof_arr, strict=True)}
    notes: list[str] = []
    if tune_threshold:
        notes.append("Member scores cut P(class 1) at 0.5; the blend's cut is fit on the OOF rows.")

    if method == "stacking":
        task = _task(m, y, oof_arr[0])
        oof_pred, test_pred, weights, cv_folds = stacking(names, oof_arr, test_arr, y, task, folds, seed)
        cut = best_threshold(m, y, oof_pred) if tune_threshold else None
        blend_score = float(m(y, oof_pred, threshold=cut or 0.5))
        cv_score = nested_threshold_score(m, y, oof_pred, cv_folds) if tune_threshold else blend_score
        notes.append(
            f"Stacking OOF is honest: the meta-model was refit on {int(cv_folds.max()) + 1} folds "
            "and scored on rows it did not see; weights are its coefficients (not normalized)."
        )
        report = BlendReport(method, m.name, m.greater_is_better, member_scores, weights, blend_score,
                             cv_score, notes, cut)
        return BlendResult(test_pred, oof_pred, weights, report)

    fit = FITTERS[method]
    if method == "rank_mean":
        _check_rank_method(m, oof_arr[0])
        ref = oof_arr
        oof_arr = np.stack([ecdf(r, r) for r in ref])
        if test_arr is not None:
            test_arr = np.stack([ecdf(r, t) for r, t in zip(ref, test_arr, strict=True)])
        notes.append("rank_mean outputs rank scores in (0, 1) (test ranked against each member's OOF), not probabilities.")
    w = fit(oof_arr, y, m, **opts)
    oof_pred = combine_members(oof_arr, w)
    test_pred = combine_members(test_arr, w) if test_arr is not None else None
    cut = best_threshold(m, y, oof_pred) if tune_threshold else None
    blend_score = float(m(y, oof_pred, threshold=cut or 0.5))
    cv_score = None
    if folds is not None and method in ("weights", "caruana"):
        cv_score = nested_score(fit, oof_arr, y, m, folds, opts, tune_threshold)
    elif folds is not None and tune_threshold:  # fixed weights: only the cut is fit
        cv_score = nested_threshold_score(m, y, oof_pred, folds)
    weights = {n: float(x) for n, x in zip(names, w, strict=True)}
    report = BlendReport(method, m.name, m.greater_is_better, member_scores, weights, blend_score, cv_score, notes,
                         cut)
    return BlendResult(test_pred, oof_pred, weights, report)


def _auto(oof: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray] | None, y: np.ndarray,
          metric: str | Metric, folds: np.ndarray | None, **kwargs) -> BlendResult:
    """Every method of :data:`AUTO_CANDIDATES` that applies, the one with the best nested score
    (each fit without a fold and scored on it: the honest comparison) returned."""
    m = get_metric(metric)
    y = np.asarray(y)
    if folds is None:
        return blend("caruana", oof, test, y, m, None, **kwargs)
    tried: dict[str, BlendResult] = {}
    skipped = []
    for name in AUTO_CANDIDATES:
        try:
            tried[name] = blend(name, oof, test, y, m, folds, **kwargs)  # type: ignore[arg-type]  # from METHODS
        except ValueError as err:  # a method that does not apply to this task
            if not tried:
                raise
            skipped.append(f"{name} does not apply ({err})")
    scores = {n: r.report.blend_cv_score for n, r in tried.items()}
    usable = {n: s for n, s in scores.items() if s is not None and np.isfinite(s)}
    pick = max if m.greater_is_better else min
    chosen = pick(usable, key=usable.__getitem__) if usable else AUTO_CANDIDATES[0]
    result = tried[chosen]
    nested = ", ".join(f"{n} {s:.5f}" for n, s in usable.items())
    result.report.notes.append(f"auto: nested {m.name} {nested}: {chosen} used" +
                               (f"; {'; '.join(skipped)}" if skipped else ""))
    return result


def _blend_columns(
    method: str, names: list[str], oof: np.ndarray, test: np.ndarray | None, y: np.ndarray, m: Metric,
    folds: np.ndarray | None, opts: dict,
) -> BlendResult:
    """Blend each target column on its own with the column metric, then score the whole."""
    col_metric = get_metric(m.column_metric)
    kw = {"seed": opts["seed"], "caruana_iterations": opts["iterations"], "caruana_bags": opts["bags"],
          "caruana_bag_fraction": opts["bag_fraction"]}
    columns = []
    for j in range(y.shape[1]):
        col_test = None if test is None else {n: test[i][:, j] for i, n in enumerate(names)}
        try:
            columns.append(blend(method, {n: oof[i][:, j] for i, n in enumerate(names)}, col_test, y[:, j],
                                 col_metric, folds, **kw))
        except ValueError as err:
            raise ValueError(f"Blending target column {j} with {col_metric.name}: {err}") from err
    oof_pred = np.stack([c.oof_pred for c in columns], axis=1)
    test_pred = None if test is None else np.stack([c.test_pred for c in columns], axis=1)
    column_weights = {n: [c.weights[n] for c in columns] for n in names}
    weights = {n: float(np.mean(ws)) for n, ws in column_weights.items()}
    cv_scores = [c.report.blend_cv_score for c in columns]
    cv_score = float(np.mean(cv_scores)) if all(x is not None for x in cv_scores) else None
    member_scores = {n: float(m(y, p)) for n, p in zip(names, oof, strict=True)}
    notes = [f"{y.shape[1]} target columns blended one by one with {col_metric.name}; a member's weight above is "
             "its mean over the columns."]
    notes += list(dict.fromkeys(note for c in columns for note in c.report.notes))
    report = BlendReport(method, m.name, m.greater_is_better, member_scores, weights, float(m(y, oof_pred)),
                         cv_score, notes, None, column_weights)
    return BlendResult(test_pred, oof_pred, weights, report)


def compare_methods(
    oof: Mapping[str, np.ndarray],
    test: Mapping[str, np.ndarray] | None,
    y: np.ndarray,
    metric: str | Metric,
    folds: np.ndarray | None = None,
    methods: tuple[str, ...] | None = None,
    **kwargs,
) -> dict[str, BlendResult]:
    """Run several blend methods (default: all that apply to the metric) and return them by name."""
    m = get_metric(metric)
    if methods is None:
        methods = tuple(x for x in METHODS if x != "auto" and (x != "rank_mean" or m.name in RANK_METRICS))
    return {name: blend(name, oof, test, y, m, folds, **kwargs) for name in methods}  # type: ignore[arg-type]  # names from METHODS


# ---- validation ----------------------------------------------------------------------------------


def _check_members(
    oof: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray] | None, y: np.ndarray
) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    if not oof:
        raise ValueError("blend needs at least one member; pass oof={'name': predictions, ...}.")
    names = list(oof)
    problems = []
    arrays = {n: np.asarray(oof[n], dtype=np.float64) for n in names}
    shape = arrays[names[0]].shape
    for n, a in arrays.items():
        if a.shape[0] != len(y):
            problems.append(f"  oof[{n!r}] has {a.shape[0]} rows, y has {len(y)}")
        if a.shape != shape:
            problems.append(f"  oof[{n!r}] has shape {a.shape}, oof[{names[0]!r}] has {shape}")
        problems += _non_finite(f"oof[{n!r}]", a)
    if y.ndim == 2 and shape[1:] != y.shape[1:]:
        problems.append(f"  y has {y.shape[1]} target columns but the members predict shape {shape}; "
                        "pass one column per target")
    test_arr = None
    if test:
        if set(test) != set(names):
            problems.append(f"  test members {sorted(test)} differ from oof members {sorted(names)}")
        else:
            t = {n: np.asarray(test[n], dtype=np.float64) for n in names}
            tshape = t[names[0]].shape
            for n, a in t.items():
                if a.shape != tshape or a.shape[1:] != shape[1:]:
                    problems.append(f"  test[{n!r}] has shape {a.shape}; expected (n_test,) + {shape[1:]} for every member")
                problems += _non_finite(f"test[{n!r}]", a)
            if not problems:
                test_arr = np.stack([t[n] for n in names])
    if problems:
        raise ValueError(
            "Blend members do not line up (each member needs one finite OOF prediction per train row and "
            "test predictions of the same kind):\n" + "\n".join(problems)
        )
    return names, np.stack([arrays[n] for n in names]), test_arr


def _non_finite(what: str, a: np.ndarray) -> list[str]:
    """A member's rows with NaN or inf, counted (a diverged model or a bad row shows up here)."""
    if a.size == 0 or np.all(np.isfinite(a)):
        return []
    bad = ~np.isfinite(a.reshape(len(a), -1)).all(axis=1)
    return [f"  {what} has {int(bad.sum())} of {len(a)} rows with NaN or inf (first at row "
            f"{int(np.flatnonzero(bad)[0])}); retrain or drop that member"]


def _task(m: Metric, y: np.ndarray, pred: np.ndarray) -> Task:
    if m.needs == "values":
        return Task.MULTITARGET_REGRESSION if y.ndim == 2 else Task.REGRESSION
    if y.ndim == 2:
        return Task.MULTILABEL
    return Task.MULTICLASS if pred.ndim == 2 else Task.BINARY


def _check_rank_method(m: Metric, pred: np.ndarray) -> None:
    if m.name not in RANK_METRICS:
        raise ValueError(
            f"rank_mean outputs rank scores, which only suit rank metrics ({', '.join(sorted(RANK_METRICS))}); "
            f"the metric here is {m.name!r}. Use method='mean' or 'weights' instead."
        )
    if pred.ndim != 1:
        raise ValueError("rank_mean needs 1-D scores (binary P(class 1), or one label column at a time); for "
                         "multiclass use 'mean' or 'weights'.")


def _check_threshold_task(m: Metric, y: np.ndarray, pred: np.ndarray) -> None:
    if m.needs != "labels" or _task(m, y, pred) is not Task.BINARY:
        raise ValueError(
            f"tune_threshold fits the cut of a binary P(class 1) for a label metric; here the metric is {m.name!r} "
            f"({m.needs}) and the task {_task(m, y, pred)}. Drop tune_threshold."
        )


__all__ = ["METHODS", "BlendReport", "BlendResult", "blend", "compare_methods"]
