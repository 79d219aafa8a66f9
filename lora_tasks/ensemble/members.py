"""scikit-learn ensemble members trained on the same folds as the adapters.

A strong cheap baseline is often the member that helps a blend most: gradient boosting and a
regularized linear model for tabular data (they err differently, and a blend of members that err
differently beats each of them), TF-IDF + a linear model for text. Each runs on the adapters'
folds (``CVResult.fold_of_row``), so its OOF predictions are comparable row by row and can enter
:func:`lora_tasks.ensemble.blend` next to the adapters'.

Predictions follow the project's convention: binary P(class 1) 1-D, multiclass (n, k)
probabilities with columns in sorted-label order, regression 1-D values; multilabel (n, k)
probabilities of each label (one-vs-rest: one binary model per label column) and multi-target
regression (n, k) values (one regressor per target column), columns in the target's order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

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
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import (
    LassoCV,
    LogisticRegression,
    LogisticRegressionCV,
    Ridge,
)
from sklearn.multiclass import OneVsRestClassifier
from sklearn.multioutput import MultiOutputRegressor
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    OneHotEncoder,
    OrdinalEncoder,
    StandardScaler,
)
from sklearn.svm import SVR
from threadpoolctl import threadpool_limits

from lora_tasks.features import FeatureFrames, fold_target_encoder
from lora_tasks.metrics import get_metric
from lora_tasks.task import Task

log = logging.getLogger("lora_tasks.ensemble.members")

MAX_CATEGORIES = 64  # rarer categories share one code: HGB caps categorical cardinality at max_bins
ID_LIKE_SHARE = 0.5  # text columns with more distinct values than this share of rows carry no category
MIN_CATEGORY_COUNT = 5  # one-hot: rarer categories share one "infrequent" column
MAX_KERNEL_ROWS = 20_000  # an RBF SVR costs O(n^2) memory and ~O(n^2..n^3) time: beyond this, skip it
SKEW_LIMIT = 0.75  # non-negative numeric columns skewed beyond this enter the linear model as log1p
#: HistGradientBoosting for regression tables: many small, slow, column-subsampled trees (the
#: settings of tuned gradient-boosting kernels), which beat scikit-learn's defaults on the
#: house-prices table. Classification keeps scikit-learn's defaults: there these settings lifted
#: the member alone but lowered the accuracy-scored blend with the adapters. Tables beyond 10,000 rows stop early on a held-out tenth
#: (scikit-learn's ``early_stopping="auto"``).
GBM_REGRESSION_PARAMS = dict(learning_rate=0.03, max_iter=1500, max_leaf_nodes=8, min_samples_leaf=10,
                             l2_regularization=1.0, max_features=0.15)
#: Regression models averaged per fold, each with its own seed (its own column subsamples):
#: bagging lowers the variance of subsampled trees.
GBM_BAG = 3


@dataclass
class MemberPredictions:
    """OOF and test predictions of one scikit-learn member, shaped like an adapter's CVResult."""

    name: str
    oof: np.ndarray
    test: np.ndarray | None
    fold_of_row: np.ndarray
    test_per_fold: list[np.ndarray] = field(default_factory=list)
    oof_score: float | None = None
    metric: str | None = None
    dropped_columns: list[str] = field(default_factory=list)


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


def _per_column(model: BaseEstimator, task: Task) -> BaseEstimator:
    """One model per target column for the multi-output tasks (most estimators here take one
    target): one-vs-rest for labels, which keeps each label's probability, and one regressor per
    target."""
    if task is Task.MULTILABEL:
        return OneVsRestClassifier(model)
    if task is Task.MULTITARGET_REGRESSION:
        return MultiOutputRegressor(model)
    return model


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
    bag: int | None = None,
    target_encoded: tuple[str, ...] = (),
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
    a fit of a second take minutes. ``target_encoded``: columns whose mean target per value is
    fit inside each fold (:func:`lora_tasks.features.fold_target_encoder`).
    """
    task = normalize_task(task)
    bag = (GBM_BAG if task.is_regression else 1) if bag is None else bag
    if bag < 1:
        raise ValueError(f"bag is the number of gradient-boosting models averaged per fold; pass 1 or more, not {bag}.")
    X = _frame(X, "X")
    cat_cols, num_cols, dropped = _split_columns(X, name)
    encoded = [c for c in target_encoded if c in X.columns]
    X_test = _check_test_columns(X_test, [*cat_cols, *num_cols, *encoded])

    def make() -> BaseEstimator:
        encode = ColumnTransformer(
            [
                ("cat", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan,
                                       encoded_missing_value=np.nan, max_categories=MAX_CATEGORIES), cat_cols),
                ("num", "passthrough", num_cols),
                *fold_target_encoder(encoded, task, seed),  # fit on the fold's training rows only
            ]
        )
        tuned = GBM_REGRESSION_PARAMS if task.is_regression else {}
        # the categorical columns come first out of the encoder
        kw = tuned | dict(categorical_features=list(range(len(cat_cols))) if cat_cols else None) | params
        gbm = HistGradientBoostingRegressor if task.is_regression else HistGradientBoostingClassifier
        models = [(f"seed{seed + i}", gbm(random_state=seed + i, **kw)) for i in range(bag)]
        if bag == 1:
            est = models[0][1]
        else:
            est = VotingRegressor(models) if task.is_regression else VotingClassifier(models, voting="soft")
        return Pipeline([("encode", encode), ("model", _per_column(est, task))])

    def prepare(df: pd.DataFrame) -> pd.DataFrame:
        used = list(dict.fromkeys([*cat_cols, *num_cols, *encoded]))
        return _categoricals_as_objects(df[used], list(dict.fromkeys([*cat_cols, *encoded])))

    with threadpool_limits(limits=n_threads, user_api="openmp"):
        result = _run_folds(make, prepare(X), y, folds, task, prepare(X_test) if X_test is not None else None,
                            metric=metric, log_target=log_target, name=name)
    result.dropped_columns = dropped
    return result


def _split_columns(X: pd.DataFrame, name: str) -> tuple[list[str], list[str], list[str]]:
    """(categorical, numeric, dropped identifier-like) columns of a feature table."""
    cat_cols = [c for c in X.columns if not pd.api.types.is_numeric_dtype(X[c]) or pd.api.types.is_bool_dtype(X[c])]
    dropped = [c for c in cat_cols if X[c].nunique(dropna=True) > ID_LIKE_SHARE * len(X)]
    cat_cols = [c for c in cat_cols if c not in dropped]
    num_cols = [c for c in X.columns if c not in cat_cols and c not in dropped]
    if dropped:
        log.info("%s: dropping identifier-like columns %s", name, dropped)
    return cat_cols, num_cols, dropped


def _check_test_columns(X_test: pd.DataFrame | None, columns: list[str]) -> pd.DataFrame | None:
    if X_test is None:
        return None
    X_test = _frame(X_test, "X_test")
    missing = [c for c in columns if c not in X_test.columns]
    if missing:
        raise ValueError(f"X_test lacks columns {missing} that X has; pass the same feature columns for both.")
    return X_test


def _categoricals_as_objects(df: pd.DataFrame, cat_cols: list[str]) -> pd.DataFrame:
    """One dtype per categorical column: mixed str/NaN objects confuse the encoders' sort."""
    df = df.copy()
    for c in cat_cols:
        df[c] = df[c].astype("string").astype(object).where(df[c].notna(), np.nan)
    return df


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
    target_encoded: tuple[str, ...] = (),
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
                           n_threads=n_threads, target_encoded=target_encoded, seed=seed)


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
    target_encoded: tuple[str, ...] = (),
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
                           n_threads=n_threads, target_encoded=target_encoded, seed=seed)


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
    target_encoded: tuple[str, ...] = (),
    seed: int = 0,
) -> MemberPredictions:
    """Fit ``model`` fold by fold on one-hot categoricals and standardized (log1p where skewed)
    numerics, plus the standardized in-fold target encoding of ``target_encoded``."""
    X = _frame(X, "X")
    cat_cols, num_cols, dropped = _split_columns(X, name)
    encoded = [c for c in target_encoded if c in X.columns]
    X_test = _check_test_columns(X_test, [*cat_cols, *num_cols, *encoded])
    skewed = [c for c in num_cols if X[c].min() >= 0 and abs(float(X[c].skew())) > SKEW_LIMIT]
    plain = [c for c in num_cols if c not in skewed]

    def make() -> BaseEstimator:
        def numeric(log: bool) -> Pipeline:
            steps = [SimpleImputer(strategy="median", add_indicator=True)]
            if log:
                steps.append(FunctionTransformer(np.log1p, feature_names_out="one-to-one"))
            return make_pipeline(*steps, StandardScaler())

        encode = ColumnTransformer(
            [
                ("cat", make_pipeline(SimpleImputer(strategy="constant", fill_value="missing"),
                                      OneHotEncoder(handle_unknown="infrequent_if_exist",
                                                    min_frequency=MIN_CATEGORY_COUNT)), cat_cols),
                ("skewed", numeric(log=True), skewed),
                ("num", numeric(log=False), plain),
                *fold_target_encoder(encoded, task, seed, scale=True),  # fit on the fold's training rows only
            ]
        )
        return Pipeline([("encode", encode), ("model", _per_column(clone(model), task))])

    def prepare(df: pd.DataFrame) -> pd.DataFrame:
        used = list(dict.fromkeys([*cat_cols, *num_cols, *encoded]))
        return _categoricals_as_objects(df[used], list(dict.fromkeys([*cat_cols, *encoded])))

    with threadpool_limits(limits=n_threads):
        result = _run_folds(make, prepare(X), y, folds, task, prepare(X_test) if X_test is not None else None,
                            metric=metric, log_target=log_target, name=name)
    result.dropped_columns = dropped
    return result


# ---- text: TF-IDF + linear model -----------------------------------------------------------------


def text_member(
    texts,
    y,
    folds: np.ndarray,
    task: str,
    texts_test=None,
    *,
    metric: str | None = None,
    C: float = 4.0,
    ridge_alpha: float = 1.0,
    max_features: int = 50_000,
    log_target: bool = False,
    seed: int = 0,
    name: str = "tfidf_linear",
) -> MemberPredictions:
    """TF-IDF word 1-2-grams + LogisticRegression (classification) or Ridge (regression).

    ``texts`` is a Series of strings or a DataFrame whose columns are joined as ``"col: value"``
    (so a keyword column stays distinguishable from the body text).
    """
    task = normalize_task(task)
    x = _as_text(texts)
    x_test = _as_text(texts_test) if texts_test is not None else None

    def make() -> BaseEstimator:
        vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=max_features)
        model = (Ridge(alpha=ridge_alpha) if task.is_regression
                 else LogisticRegression(C=C, max_iter=2000, random_state=seed))
        return make_pipeline(vec, _per_column(model, task))

    return _run_folds(make, x, y, folds, task, x_test, metric=metric, log_target=log_target, name=name)


# ---- which member for a table ---------------------------------------------------------------------

#: A table is "text" when its free-text columns come with at most this many other feature columns
#: (tweets: text + keyword + location); otherwise gradient boosting sees every column.
MAX_CONTEXT_COLUMNS_FOR_TEXT = 2


def reads_text(features: list[str], text_columns: list[str]) -> bool:
    """Whether a table's members read its free text alone (TF-IDF): text columns with at most
    :data:`MAX_CONTEXT_COLUMNS_FOR_TEXT` other feature columns."""
    text = [c for c in text_columns if c in features]
    return bool(text) and len(features) - len(text) <= MAX_CONTEXT_COLUMNS_FOR_TEXT


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
    generated: FeatureFrames | None = None,
) -> list[MemberPredictions]:
    """The scikit-learn members that fit a competition table.

    Free text as the main input (``text_columns`` with at most
    :data:`MAX_CONTEXT_COLUMNS_FOR_TEXT` other features): TF-IDF + a linear model on the text
    columns alone (TF-IDF gains nothing from a few context columns). Otherwise members on every
    feature column whose errors differ: HistGradientBoosting, a regularized linear model, and for
    regression tables of at most :data:`MAX_KERNEL_ROWS` rows an RBF support-vector regressor. ``exclude``: the id, target and dropped columns. ``y`` is on the scale the caller
    blends on (e.g. log1p prices), or raw with ``log_target``. ``generated``: the frames of the
    features step (:func:`lora_tasks.features.build_features` on ``train`` and ``test``), which
    the table members read instead of ``train``'s columns, target-encoding its columns in the folds.
    """
    features = [c for c in train.columns if c not in set(exclude)]
    text = [c for c in text_columns if c in features]
    if reads_text(features, text):
        return [text_member(train[text], y, folds, task, None if test is None else test[text], metric=metric,
                            log_target=log_target, seed=seed)]
    missing = [c for c in features if test is not None and c not in test.columns]
    if missing:
        raise ValueError(f"The test table lacks feature columns {missing}; list them in drop_columns of the competition config.")
    X, X_test = train[features], None if test is None else test[features]
    kw = dict(metric=metric, log_target=log_target, seed=seed)
    if generated is not None:  # the features step's columns: the one hook of lora_tasks.features
        X, X_test = generated.train, generated.test
        kw["target_encoded"] = generated.target_encoded
    members = [tabular_member(X, y, folds, task, X_test, **kw), linear_member(X, y, folds, task, X_test, **kw)]
    if normalize_task(task).is_regression:
        if len(X) <= MAX_KERNEL_ROWS:
            members.append(kernel_member(X, y, folds, task, X_test, **kw))
        else:
            log.info("no SVR member: %d rows > MAX_KERNEL_ROWS=%d (its cost grows with rows squared)", len(X), MAX_KERNEL_ROWS)
    return members


# ---- shared fold loop ----------------------------------------------------------------------------


def _run_folds(
    make: Callable[[], BaseEstimator],
    X,
    y,
    folds: np.ndarray,
    task: Task,
    X_test,
    *,
    metric: str | None,
    log_target: bool,
    name: str,
) -> MemberPredictions:
    """Fit one model per fold on the other folds; predict its held-out rows and the test rows."""
    y = _check_target(np.asarray(y), task)
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
    if task is Task.MULTICLASS:
        oof = np.zeros((len(y), len(classes)))
    else:  # 1-D for one target, one column per label / target otherwise
        oof = np.zeros(y.shape, dtype=float)
    per_fold = []
    take = (lambda a, idx: a.iloc[idx]) if hasattr(X, "iloc") else (lambda a, idx: a[idx])
    for k in np.unique(folds):
        train_idx, valid_idx = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        model = make().fit(take(X, train_idx), fit_y[train_idx])
        oof[valid_idx] = _predict(model, take(X, valid_idx), task, classes, log_target)
        if X_test is not None:
            per_fold.append(_predict(model, X_test, task, classes, log_target))
    # multiclass columns are the sorted labels: score against their indices (the metrics' convention)
    y_score = np.searchsorted(classes, y) if task is Task.MULTICLASS else y
    score = float(get_metric(metric)(y_score, oof)) if metric else None
    if score is not None:
        log.info("%s: OOF %s %.5f", name, metric, score)
    test = np.mean(per_fold, axis=0) if per_fold else None
    return MemberPredictions(name, oof, test, folds, per_fold, score, metric)


def _check_target(y: np.ndarray, task: Task) -> np.ndarray:
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


def _predict(model: BaseEstimator, X, task: Task, classes: np.ndarray | None, log_target: bool) -> np.ndarray:
    if task.is_regression:
        pred = model.predict(X)
        return np.expm1(pred) if log_target else pred
    proba = model.predict_proba(X)
    if task is Task.MULTILABEL:  # one-vs-rest: P(label) per column already
        return proba
    full = np.zeros((proba.shape[0], len(classes)))
    full[:, np.searchsorted(classes, model.classes_)] = proba  # a class absent from a fold keeps 0
    return full[:, 1] if task is Task.BINARY else full


def _frame(X, what: str) -> pd.DataFrame:
    if not isinstance(X, pd.DataFrame):
        raise TypeError(f"{what} must be a pandas DataFrame of feature columns, got {type(X).__name__}.")
    return X.reset_index(drop=True)


def _as_text(texts) -> np.ndarray:
    if isinstance(texts, pd.DataFrame):
        parts = [texts[c].fillna("").astype(str).radd(f"{c}: ") for c in texts.columns]
        joined = parts[0]
        for p in parts[1:]:
            joined = joined + " | " + p
        return joined.to_numpy()
    if isinstance(texts, pd.Series):
        return texts.fillna("").astype(str).to_numpy()
    return np.asarray([("" if t is None else str(t)) for t in texts], dtype=object)


__all__ = ["MemberPredictions", "linear_member", "normalize_task", "table_members", "tabular_member", "text_member"]
