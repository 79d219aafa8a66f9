"""scikit-learn ensemble members trained on the same folds as the adapters.

A strong cheap baseline is often the member that helps a blend most: gradient boosting (LightGBM
and CatBoost in :mod:`lora_tasks.ensemble.gbm`, scikit-learn's HistGradientBoosting here) and a
regularized linear model for tabular data (they err differently, and a blend of members that err
differently beats each of them), TF-IDF + a linear model for text. Each runs on the adapters'
folds (``CVResult.fold_of_row``) through one fold loop (:func:`lora_tasks.ensemble.folds.run_folds`,
where a per-fold feature transform applies), so its OOF predictions are comparable row by row and
can enter :func:`lora_tasks.ensemble.blend` next to the adapters'.

Predictions follow the project's convention: binary P(class 1) 1-D, multiclass (n, k)
probabilities with columns in sorted-label order, regression 1-D values; multilabel (n, k)
probabilities of each label (one-vs-rest: one binary model per label column) and multi-target
regression (n, k) values (one regressor per target column), columns in the target's order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, clone
from sklearn.compose import ColumnTransformer, TransformedTargetRegressor
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    VotingClassifier,
    VotingRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import (
    LassoCV,
    LogisticRegressionCV,
)
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    OneHotEncoder,
    StandardScaler,
)
from sklearn.svm import SVR
from threadpoolctl import threadpool_limits

from lora_tasks.ensemble.columns import Columns, column_selector, feature_frames, ordinal_encoding
from lora_tasks.ensemble.folds import (
    FoldData,
    FoldTransform,
    MemberPredictions,
    normalize_task,
    per_column,
    run_folds,
)
from lora_tasks.ensemble.forests import extra_trees_member
from lora_tasks.ensemble.gbm import catboost_member, lightgbm_member
from lora_tasks.ensemble.support import guard_extrapolation, out_of_range
from lora_tasks.ensemble.text import text_member
from lora_tasks.features import FeatureFrames
from lora_tasks.features.categories import target_encoding_transform

log = logging.getLogger("lora_tasks.ensemble.members")

MAX_CATEGORIES = 64  # rarer categories share one code: HGB caps categorical cardinality at max_bins
MIN_CATEGORY_COUNT = 5  # one-hot: rarer categories share one "infrequent" column
MAX_KERNEL_ROWS = 20_000  # an RBF SVR costs O(n^2) memory and ~O(n^2..n^3) time: beyond this, skip it
SKEW_LIMIT = 0.75  # non-negative numeric columns skewed beyond this enter the linear model as log1p
#: HistGradientBoosting for regression tables: many small, slow, column-subsampled trees (the
#: settings of tuned gradient-boosting kernels), which beat scikit-learn's defaults on the
#: house-prices table. Classification keeps scikit-learn's defaults: there these settings lifted
#: the member alone but lowered the accuracy-scored blend with the adapters.
GBM_REGRESSION_PARAMS = dict(learning_rate=0.03, max_iter=1500, max_leaf_nodes=8, min_samples_leaf=10,
                             l2_regularization=1.0, max_features=0.15)
#: HistGradientBoosting stops early on a held-out tenth beyond this many training rows
#: (scikit-learn's ``early_stopping="auto"``, stated so that a timing sample can follow the table).
EARLY_STOPPING_ROWS = 10_000
#: Regression models averaged per fold, each with its own seed (its own column subsamples):
#: bagging lowers the variance of subsampled trees.
GBM_BAG = 3


# ---- tabular: HistGradientBoosting ---------------------------------------------------------------


def tabular_member(
    X: pd.DataFrame,
    y,
    folds: np.ndarray,
    task: str,
    X_test: pd.DataFrame | None = None,
    *,
    metric: str | None = None,
    log_target: bool = False,
    seed: int = 0,
    name: str = "hist_gbm",
    n_threads: int | None = 1,
    transform: FoldTransform | None = None,
    bag: int | None = None,
    size_scale: float = 1.0,
    **params,
) -> MemberPredictions:
    """HistGradientBoosting on ``X`` with ordinal-encoded categoricals (native categorical splits).

    Object/category/bool columns are categorical; those with more distinct values than half the
    rows (names, ticket numbers: identifiers, not categories) are dropped and listed in
    ``dropped_columns``. ``log_target`` fits regression on ``log1p(y)`` (for RMSLE-scored prices).
    ``params`` go to the HistGradientBoosting estimator (for regression over
    :data:`GBM_REGRESSION_PARAMS`); ``bag`` models seeded ``seed``, ``seed + 1``, ... are averaged
    (probabilities for classes; default :data:`GBM_BAG` for regression, 1 otherwise).
    ``n_threads`` caps its OpenMP threads (None: all cores): on Kaggle-sized tables threads gain
    little, and when the cores are busy (adapters training beside it) OpenMP's spin-waiting makes
    a fit of a second take minutes. Early stopping follows scikit-learn's own rule (beyond
    :data:`EARLY_STOPPING_ROWS` rows) applied to ``size_scale`` times the fold's rows, so a timing
    sample stops as the whole table will.
    """
    task = normalize_task(task)
    bag = (GBM_BAG if task.is_regression else 1) if bag is None else bag
    if bag < 1:
        raise ValueError(f"bag is the number of gradient-boosting models averaged per fold; pass 1 or more, not {bag}.")
    X, X_test, dropped = feature_frames(X, X_test, name)

    def fit(d: FoldData) -> Pipeline:
        cols = Columns.of(d.train)
        cat_cols, num_cols = list(cols.categorical), list(cols.numeric)
        encode = ordinal_encoding(cols, MAX_CATEGORIES)
        mask = [True] * len(cat_cols) + [False] * len(num_cols)
        tuned = GBM_REGRESSION_PARAMS if task.is_regression else {}
        stops = len(d.train) * size_scale > EARLY_STOPPING_ROWS
        kw = tuned | dict(categorical_features=mask if cat_cols else None, early_stopping=stops) | params
        gbm = HistGradientBoostingRegressor if task.is_regression else HistGradientBoostingClassifier
        models = [(f"seed{seed + i}", gbm(random_state=seed + i, **kw)) for i in range(bag)]
        if bag == 1:
            est = models[0][1]
        else:
            est = VotingRegressor(models) if task.is_regression else VotingClassifier(models, voting="soft")
        pipe = Pipeline([("select", column_selector(cols)), ("encode", encode), ("model", per_column(est, task))])
        return pipe.fit(d.train, d.y_train)

    with threadpool_limits(limits=n_threads, user_api="openmp"):
        result = run_folds(fit, X, y, folds, task, X_test, metric=metric, log_target=log_target, name=name,
                           transform=transform)
    result.dropped_columns = dropped
    return result


# ---- tabular: regularized linear model -----------------------------------------------------------


def linear_member(
    X: pd.DataFrame,
    y,
    folds: np.ndarray,
    task: str,
    X_test: pd.DataFrame | None = None,
    *,
    metric: str | None = None,
    log_target: bool = False,
    seed: int = 0,
    name: str = "linear",
    n_threads: int | None = 1,
    transform: FoldTransform | None = None,
) -> MemberPredictions:
    """A regularized linear model on one-hot categoricals and standardized numerics: LassoCV
    for regression, LogisticRegressionCV otherwise (the penalty chosen by an inner CV on each
    fold's training rows, so nothing is tuned on the held-out fold).

    Why a linear member beside gradient boosting: trees fit steps, a linear model fits slopes
    (price per square foot), and their errors are weakly correlated, which is what a blend
    needs. Missing numerics are imputed with the median plus a missing-indicator column;
    non-negative numerics skewed beyond :data:`SKEW_LIMIT` enter as ``log1p`` (a linear model
    is dominated by their long tail otherwise); categories seen fewer than
    :data:`MIN_CATEGORY_COUNT` times share one column. Identifier-like text columns are dropped
    as in :func:`tabular_member`.
    """
    task = normalize_task(task)
    model = (LassoCV(alphas=30, cv=3, max_iter=5000, random_state=seed) if task.is_regression
             else LogisticRegressionCV(Cs=10, cv=3, max_iter=3000, random_state=seed, scoring="neg_log_loss",
                                       l1_ratios=(0.0,), use_legacy_attributes=False))
    return _encoded_member(X, y, folds, task, X_test, model, metric=metric, log_target=log_target, name=name,
                           n_threads=n_threads, transform=transform)


def kernel_member(
    X: pd.DataFrame,
    y,
    folds: np.ndarray,
    task: str,
    X_test: pd.DataFrame | None = None,
    *,
    metric: str | None = None,
    log_target: bool = False,
    seed: int = 0,
    name: str = "svr",
    n_threads: int | None = 1,
    transform: FoldTransform | None = None,
) -> MemberPredictions:
    """An RBF support-vector regressor on the linear member's encoding (regression only).

    Why a third table member: it bends where the linear model cannot and is smooth where the
    trees step, so the blend gives it weight next to gradient boosting and the linear member.
    The target is standardized first, so ``C``, ``epsilon`` and ``gamma`` (chosen on the
    house-prices table, where a wide range of them scored alike) carry over to targets of other
    scales.
    """
    task = normalize_task(task)
    if not task.is_regression:
        raise ValueError(f"kernel_member is for regression tables, not {task!r}; use linear_member or tabular_member.")
    model = TransformedTargetRegressor(SVR(C=7.5, epsilon=0.025, gamma=0.001), transformer=StandardScaler())
    return _encoded_member(X, y, folds, task, X_test, model, metric=metric, log_target=log_target, name=name,
                           n_threads=n_threads, transform=transform)


def _encoded_member(
    X: pd.DataFrame,
    y,
    folds: np.ndarray,
    task: str,
    X_test: pd.DataFrame | None,
    model: BaseEstimator,
    *,
    metric: str | None,
    log_target: bool,
    name: str,
    n_threads: int | None,
    transform: FoldTransform | None,
) -> MemberPredictions:
    """Fit ``model`` fold by fold on one-hot categoricals and standardized (log1p where skewed) numerics."""
    X, X_test, dropped = feature_frames(X, X_test, name)

    def numeric(log: bool) -> Pipeline:
        # a column empty in a fold's rows is kept (as zeros), not dropped with a warning per fold
        steps = [SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True)]
        if log:
            steps.append(FunctionTransformer(np.log1p, feature_names_out="one-to-one"))
        return make_pipeline(*steps, StandardScaler())

    # which columns are skewed is read from the whole table's features (no target): one choice for
    # every fold; columns a fold transform adds are judged on the fold's training rows
    whole = [c for c in X.columns if pd.api.types.is_numeric_dtype(X[c]) and not pd.api.types.is_bool_dtype(X[c])]
    skewed_whole = {c for c in whole if X[c].min() >= 0 and abs(float(X[c].skew())) > SKEW_LIMIT}

    def is_skewed(train: pd.DataFrame, c: str) -> bool:
        if c in whole:
            return c in skewed_whole
        return bool(train[c].min() >= 0 and abs(float(train[c].skew())) > SKEW_LIMIT)

    def fit(d: FoldData) -> Pipeline:
        cols = Columns.of(d.train)
        skewed = [c for c in cols.numeric if is_skewed(d.train, c)]
        plain = [c for c in cols.numeric if c not in skewed]
        encode = ColumnTransformer(
            [
                ("cat", make_pipeline(SimpleImputer(strategy="constant", fill_value="missing", keep_empty_features=True),
                                      OneHotEncoder(handle_unknown="infrequent_if_exist",
                                                    min_frequency=MIN_CATEGORY_COUNT)), list(cols.categorical)),
                ("skewed", numeric(log=True), skewed),
                ("num", numeric(log=False), plain),
            ]
        )
        pipe = Pipeline([("select", column_selector(cols)), ("encode", encode), ("model", per_column(clone(model), task))])
        return pipe.fit(d.train, d.y_train)

    with threadpool_limits(limits=n_threads):
        result = run_folds(fit, X, y, folds, task, X_test, metric=metric, log_target=log_target, name=name,
                           transform=transform)
    result.dropped_columns = dropped
    result.extrapolates = True
    return result


# ---- which member for a table ---------------------------------------------------------------------

#: A table is "text" when its free-text columns come with at most this many other feature columns
#: (tweets: text + keyword + location); otherwise gradient boosting sees every column.
MAX_CONTEXT_COLUMNS_FOR_TEXT = 2


def reads_text(features: list[str], text_columns: list[str]) -> bool:
    """Whether a table's members read its free text alone (TF-IDF): text columns with at most
    :data:`MAX_CONTEXT_COLUMNS_FOR_TEXT` other feature columns."""
    text = [c for c in text_columns if c in features]
    return bool(text) and len(features) - len(text) <= MAX_CONTEXT_COLUMNS_FOR_TEXT


def _then(first: FoldTransform | None, second: FoldTransform | None) -> FoldTransform | None:
    """Two fold transforms, one after the other (either may be None)."""
    if first is None or second is None:
        return first or second
    return lambda data: second(first(data))


def table_members(
    train: pd.DataFrame,
    y,
    folds: np.ndarray,
    task: str,
    test: pd.DataFrame | None = None,
    *,
    text_columns: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    metric: str | None = None,
    log_target: bool = False,
    seed: int = 0,
    class_weight: str | None = None,
    only: Collection[str] | None = None,
    transform: FoldTransform | None = None,
    generated: FeatureFrames | None = None,
    size_scale: float = 1.0,
) -> list[MemberPredictions]:
    """The members that fit a competition table, each on ``folds``.

    Free text as the main input (``text_columns`` with at most
    :data:`MAX_CONTEXT_COLUMNS_FOR_TEXT` other features): TF-IDF + a linear model on the text
    columns alone (TF-IDF gains nothing from a few context columns). Otherwise members on every
    feature column whose errors differ: LightGBM and CatBoost (:mod:`lora_tasks.ensemble.gbm`),
    HistGradientBoosting, extra trees (:mod:`lora_tasks.ensemble.forests`), a regularized linear
    model, and for regression tables of at most
    :data:`MAX_KERNEL_ROWS` rows an RBF support-vector regressor. ``exclude``: the id, target and
    dropped columns. ``y`` is on the scale the caller blends on (e.g. log1p prices), or raw with
    ``log_target``. ``class_weight="balanced"`` goes to the boosters (the plan's class weights).
    ``only``: the names of the members to fit (None: all; the budget may leave some out).
    ``transform``: a per-fold feature transform applied to every tabular member's fold frames;
    ``generated``: the features step's frames (:func:`lora_tasks.features.build_features`), used
    instead of ``train``/``test``, with its target encodings fit inside each fold. On rows far
    outside the training range the linear and kernel members take the trees' mean
    (:mod:`lora_tasks.ensemble.support`). ``size_scale``: the table the boosters' size-dependent
    settings are for, as a multiple of ``train``'s rows (a timing sample of a larger table).
    """
    if generated is not None:  # the features step's tables, and its encodings fit in each fold
        train, test = generated.train, generated.test
        transform = _then(transform, target_encoding_transform(generated.target_encoded, task, seed))
    features = [c for c in train.columns if c not in set(exclude)]
    text = [c for c in text_columns if c in features]

    def wanted(name: str) -> bool:
        return only is None or name in only

    if reads_text(features, list(text_columns)):
        if not wanted("tfidf_linear"):
            return []
        return [text_member(train[text], y, folds, task, None if test is None else test[text], metric=metric,
                            log_target=log_target, seed=seed)]
    missing = [c for c in features if test is not None and c not in test.columns]
    if missing:
        raise ValueError(f"The test table lacks feature columns {missing}; list them in drop_columns of the competition config.")
    X, X_test = train[features], None if test is None else test[features]
    kw = dict(metric=metric, log_target=log_target, seed=seed, transform=transform)
    boost = dict(kw, class_weight=class_weight)
    runs: dict[str, Callable[[], MemberPredictions]] = {
        "lightgbm": lambda: lightgbm_member(X, y, folds, task, X_test, size_scale=size_scale, **boost),
        "catboost": lambda: catboost_member(X, y, folds, task, X_test, size_scale=size_scale, **boost),
        "hist_gbm": lambda: tabular_member(X, y, folds, task, X_test, size_scale=size_scale, **kw),
        "extra_trees": lambda: extra_trees_member(X, y, folds, task, X_test, **boost),
        "linear": lambda: linear_member(X, y, folds, task, X_test, **kw),
    }
    if normalize_task(task).is_regression:
        if len(X) <= MAX_KERNEL_ROWS:
            runs["svr"] = lambda: kernel_member(X, y, folds, task, X_test, **kw)
        else:
            log.info("no SVR member: %d rows > MAX_KERNEL_ROWS=%d (its cost grows with rows squared)", len(X), MAX_KERNEL_ROWS)
    members = [run() for name, run in runs.items() if wanted(name)]
    guard_extrapolation(members, out_of_range(X, folds, X_test))
    return members


__all__ = ["MemberPredictions", "catboost_member", "extra_trees_member", "kernel_member", "lightgbm_member", "linear_member", "normalize_task", "table_members", "tabular_member", "text_member"]
