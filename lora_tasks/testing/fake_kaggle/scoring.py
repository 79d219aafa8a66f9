"""How the fake Kaggle server scores a submission: aligned on the solution's ids, compared as
text where Kaggle compares labels, and scored by :mod:`lora_tasks.metrics` (never a copy of it).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from lora_tasks.metrics import Metric, get_metric

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


def _numbers(frame: pd.DataFrame) -> np.ndarray:
    """Raw text to floats; a non-number fails the scoring, as on Kaggle."""
    try:
        return frame.apply(lambda col: pd.to_numeric(col, errors="raise")).to_numpy(dtype=float)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"Submission values must be numbers: {exc}") from None


def _positive_label(labels: np.ndarray) -> str:
    for word in ("1", "True", "true", "TRUE", "yes", "Yes"):
        if word in set(labels):
            return word
    return max(set(labels))


#: Names the server accepts beyond :func:`lora_tasks.metrics.get_metric`'s (Kaggle's "Multiclass Loss").
ALIASES = {"multiclass_logloss": "log_loss"}


def metric_of(name: str) -> Metric:
    """The :mod:`lora_tasks.metrics` metric a server metric name means (an unknown name: ValueError)."""
    try:
        return get_metric(ALIASES.get(name, name))
    except (KeyError, ValueError):
        raise ValueError(f"unknown metric {name!r}; known: {sorted(KAGGLE_METRIC_NAMES)}") from None


def _labels(metric: Metric, truth: pd.DataFrame, pred: pd.DataFrame) -> float:
    """Label metrics on the text as written: ``1.0`` is not ``1``. Binary F1 scores the positive
    label (``1``, ``True``, ``yes``, else the largest); QWK needs integer ratings."""
    y_true, y_pred = truth.iloc[:, 0].to_numpy(), pred.iloc[:, 0].to_numpy()
    if metric.name == "qwk":
        ratings_true, ratings = _numbers(truth)[:, 0], _numbers(pred)[:, 0]
        if not np.array_equal(ratings, np.round(ratings)):
            raise ValueError("Quadratic weighted kappa needs integer ratings")
        return metric.fn(ratings_true.astype(int), ratings.astype(int))
    if metric.name == "f1" and len(set(y_true)) <= 2:
        positive = _positive_label(y_true)
        return metric.fn((y_true == positive).astype(int), (y_pred == positive).astype(int))
    return metric.fn(y_true, y_pred)


def _per_column(metric: Metric, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Kaggle's "mean columnwise" scores: each target column scored on its own, then averaged."""
    column = get_metric(metric.column_metric or metric.name)
    return float(np.mean([column.fn(y_true[:, j], y_pred[:, j]) for j in range(y_true.shape[1])]))


def _one_hot_loss(metric: Metric, truth: pd.DataFrame, pred: pd.DataFrame) -> float:
    """Kaggle's "Multiclass Loss" of one-hot solution columns: each submitted row clipped at
    1e-15 and rescaled to sum 1, then the log loss of the true class."""
    onehot, probs = _numbers(truth), np.clip(_numbers(pred), 1e-15, 1 - 1e-15)
    if not np.all(onehot.sum(axis=1) == 1):
        raise ValueError("Multiclass loss needs a one-hot solution: exactly one 1 per row")
    return metric.fn(np.argmax(onehot, axis=1), probs / probs.sum(axis=1, keepdims=True))


def _score(metric: Metric, truth: pd.DataFrame, pred: pd.DataFrame) -> float:
    if metric.needs == "labels":
        return _labels(metric, truth, pred)
    if truth.shape[1] > 1 and metric.name == "log_loss":
        return _one_hot_loss(metric, truth, pred)
    y_true, y_pred = _numbers(truth), _numbers(pred)
    return _per_column(metric, y_true, y_pred)


#: What Kaggle's competition listing calls each metric (its ``evaluation_metric`` text).
KAGGLE_METRIC_NAMES: dict[str, str] = {
    "accuracy": "Categorization Accuracy",
    "f1": "F1 Score",
    "mcc": "Matthews Correlation Coefficient",
    "qwk": "Quadratic Weighted Kappa",
    "rmse": "Root Mean Squared Error",
    "mcrmse": "Mean Columnwise Root Mean Squared Error",
    "mean_columnwise_rmse": "Mean Columnwise Root Mean Squared Error",
    "rmsle": "Root Mean Squared Logarithmic Error",
    "mae": "Mean Absolute Error",
    "auc": "Area Under Receiver Operating Characteristic Curve",
    "roc_auc": "Area Under Receiver Operating Characteristic Curve",
    "logloss": "Log Loss",
    "log_loss": "Log Loss",
    "multiclass_logloss": "Multiclass Loss",
    "mean_columnwise_auc": "Mean Columnwise Area Under Receiver Operating Characteristic Curve",
    "mean_columnwise_roc_auc": "Mean Columnwise Area Under Receiver Operating Characteristic Curve",
}


def score_submission(submission: pd.DataFrame, solution: pd.DataFrame, metric: str) -> float:
    """Score a submission the way Kaggle does: align on the id column, apply the metric.

    Why a public function: tests compute the expected score independently from the same
    frames, and the error texts here are what a scored-with-ERROR submission reports.
    The id column is the solution's first column; every other column (except Kaggle's
    ``Usage``) is a target the submission must have, in the same order. Values are compared
    as text, so ``1`` and ``1.0`` or ``True`` and ``1`` are different labels.
    """
    spec = metric_of(metric)
    solution = solution.drop(columns=[c for c in solution.columns if c == "Usage"])
    id_col, targets = solution.columns[0], list(solution.columns[1:])
    if list(submission.columns) != list(solution.columns):
        raise ValueError(
            f"Submission columns {list(submission.columns)} do not match the expected "
            f"{list(solution.columns)}"
        )
    if len(submission) != len(solution):
        raise ValueError(f"Submission has {len(submission)} rows, expected {len(solution)}")
    sub = submission.astype(str).set_index(id_col)
    sol = solution.astype(str).set_index(id_col)
    if sub.index.has_duplicates or set(sub.index) != set(sol.index):
        raise ValueError(f"Submission {id_col} values do not match the expected ids")
    pred = sub.loc[sol.index, targets]
    empty = pred.apply(lambda col: col.str.strip().str.lower().isin({"", "nan"})).to_numpy()
    if empty.any():
        raise ValueError(f"Submission has empty values in column {targets[int(np.argmax(empty.any(axis=0)))]}")
    return _score(spec, sol[targets], pred)


def derive_solutions(datasets_dir: str | os.PathLike[str], dest: str | os.PathLike[str]) -> dict[str, Path]:
    """Write deterministic stand-in solutions for the three shared competitions.

    Why: Kaggle's real test labels are not public, but the fake server needs *some* solution
    to score against, and tests only need the score to be right for the solution given. These
    are simple rules of the test features (so a baseline scores neither 0 nor 1):
    titanic: survived = female and not third class; house prices: 50 000 + 100 x living area;
    disaster tweets: 1 when the text mentions fire, flood, storm, crash or killed.
    Returns ``{slug: path}`` for :class:`FakeKaggleServer`'s ``solutions``.
    """
    src, out = Path(datasets_dir), Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    test = pd.read_csv(src / "titanic" / "test.csv")
    survived = ((test["Sex"] == "female") & (test["Pclass"] != 3)).astype("int64")
    paths["titanic"] = out / "titanic.csv"
    pd.DataFrame({"PassengerId": test["PassengerId"], "Survived": survived}).to_csv(paths["titanic"], index=False)

    slug = "house-prices-advanced-regression-techniques"
    test = pd.read_csv(src / slug / "test.csv")
    price = 50_000.0 + 100.0 * test["GrLivArea"].fillna(test["GrLivArea"].median())
    paths[slug] = out / f"{slug}.csv"
    pd.DataFrame({"Id": test["Id"], "SalePrice": price}).to_csv(paths[slug], index=False)

    slug = "nlp-getting-started"
    test = pd.read_csv(src / slug / "test.csv")
    words = r"\b(?:fire|flood|storm|crash|killed)"
    target = test["text"].str.contains(words, case=False, regex=True).astype("int64")
    paths[slug] = out / f"{slug}.csv"
    pd.DataFrame({"id": test["id"], "target": target}).to_csv(paths[slug], index=False)
    return paths



def listing_name(name: str) -> str:
    """What Kaggle's competition listing calls the server metric ``name``."""
    return KAGGLE_METRIC_NAMES.get(name) or KAGGLE_METRIC_NAMES.get(metric_of(name).name, metric_of(name).name)
