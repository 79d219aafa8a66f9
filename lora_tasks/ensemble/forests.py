"""Extremely randomized trees as a table member.

Why a forest beside the boosters: a blend gains most from members that err differently, and a
bag of deep trees with random cut points errs differently from boosted shallow trees fit to
each other's residuals (AutoGluon's tabular portfolio holds random and extra-trees forests for
this reason, and on small tables they often carry weight in its ensemble). Extra trees rather
than a random forest: cheaper (no search for the best cut) and the more different of the two.

Categoricals are ordinal-coded (a forest of deep trees isolates any code it needs), missing
values stay NaN (scikit-learn's trees route them natively), identifier-like text columns are
dropped as for the other members (:class:`lora_tasks.ensemble.columns.Columns`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.ensemble import ExtraTreesClassifier, ExtraTreesRegressor
from sklearn.pipeline import Pipeline

from lora_tasks.ensemble.columns import Columns, column_selector, feature_frames, ordinal_encoding
from lora_tasks.ensemble.folds import FoldData, FoldTransform, MemberPredictions, normalize_task, per_column, run_folds

#: Trees per forest: past a few hundred, more trees change the averaged predictions by little.
N_TREES = 200
#: Rows per leaf at least: fully grown trees give 0/1 probabilities, which log-loss and AUC
#: blends cannot use; a few rows per leaf keeps them graded at little cost to accuracy.
MIN_LEAF = 2


def extra_trees_member(
    X: pd.DataFrame,
    y,
    folds: np.ndarray,
    task: str,
    X_test: pd.DataFrame | None = None,
    *,
    metric: str | None = None,
    log_target: bool = False,
    seed: int = 0,
    class_weight: str | None = None,
    transform: FoldTransform | None = None,
    n_jobs: int | None = -1,
    name: str = "extra_trees",
) -> MemberPredictions:
    """Extra trees (:data:`N_TREES` of them, leaves of :data:`MIN_LEAF` rows or more) on ``X``
    per fold; ``class_weight="balanced"`` weighs classes by their inverse frequency; ``n_jobs``:
    threads (-1: every core; the trees are independent, so they split across cores well)."""
    task = normalize_task(task)
    X, X_test, dropped = feature_frames(X, X_test, name)

    def fit(d: FoldData) -> Pipeline:
        cols = Columns.of(d.train)
        encode = ordinal_encoding(cols)
        kw = dict(n_estimators=N_TREES, min_samples_leaf=MIN_LEAF, random_state=seed, n_jobs=n_jobs)
        if task.is_regression:
            est = ExtraTreesRegressor(max_features=1.0, **kw)
        else:
            est = ExtraTreesClassifier(max_features="sqrt", class_weight=class_weight, **kw)
        pipe = Pipeline([("select", column_selector(cols)), ("encode", encode), ("model", per_column(est, task))])
        return pipe.fit(d.train, d.y_train)

    result = run_folds(fit, X, y, folds, task, X_test, metric=metric, log_target=log_target, name=name,
                       transform=transform)
    result.dropped_columns = dropped
    return result


__all__ = ["MIN_LEAF", "N_TREES", "extra_trees_member"]
