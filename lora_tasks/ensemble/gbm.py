"""LightGBM and CatBoost members: gradient boosting with native categoricals and early stopping.

Why both beside scikit-learn's HistGradientBoosting: on tables they are what wins (AutoGluon's
strongest tabular models), and they differ from each other where a blend profits: LightGBM grows
leaf-wise trees and splits categories by their gradient statistics; CatBoost grows symmetric
trees and encodes categories by ordered target statistics, which holds up on high-cardinality
columns where other encodings overfit.

Both run on the adapters' folds (:func:`lora_tasks.ensemble.folds.run_folds`) and stop early on
the fold's held-out rows: the number of trees is chosen per fold, not guessed. Categoricals stay
categories (LightGBM: the pandas ``category`` dtype with the fold's training categories; CatBoost:
``cat_features``), never ordinal codes. Multilabel and multi-target tables get one model per
column. ``class_weight="balanced"`` weights classes inversely to their frequency.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lora_tasks.ensemble.columns import Columns
from lora_tasks.ensemble.folds import FoldData, FoldTransform, MemberPredictions, as_frame, run_folds
from lora_tasks.task import Task

log = logging.getLogger("lora_tasks.ensemble.members")

#: Rows up to which a table is "small" / "medium"; beyond, "large". Why by size: on a few
#: thousand rows, slow learning with small leaves and row/column subsampling generalizes best and
#: costs seconds; on hundreds of thousands the same settings would take the whole run, so the
#: learning rate rises and fewer rounds are allowed.
SMALL_ROWS = 5_000
MEDIUM_ROWS = 50_000
#: CatBoost on a table wider than this looks at a random ``WIDE_COLUMNS // 2`` of the columns per
#: split (``rsm``). Why: each symmetric tree scores every border of every column, so on a table of
#: a few hundred numeric columns it costs minutes where LightGBM costs seconds; the random subspace
#: is CatBoost's own remedy, as column sampling is LightGBM's.
WIDE_COLUMNS = 100
MISSING = "__missing__"  # CatBoost's categorical columns take strings: missing is its own category


@dataclass(frozen=True)
class BoostingDefaults:
    """Learning rate, most rounds and early-stopping patience for a table's size."""

    learning_rate: float
    max_rounds: int
    patience: int
    num_leaves: int  # LightGBM
    min_child_samples: int  # LightGBM
    depth: int  # CatBoost
    catboost_learning_rate: float  # CatBoost: each of its symmetric trees costs more than a LightGBM tree


def boosting_defaults(rows: int) -> BoostingDefaults:
    """The defaults for a table of ``rows`` training rows (see :data:`SMALL_ROWS`)."""
    if rows <= SMALL_ROWS:
        return BoostingDefaults(0.03, 3000, 100, 16, 10, 6, 0.06)
    if rows <= MEDIUM_ROWS:
        return BoostingDefaults(0.05, 2000, 100, 31, 20, 6, 0.08)
    return BoostingDefaults(0.1, 1500, 50, 63, 40, 8, 0.15)


def lightgbm_member(
    X: pd.DataFrame,
    y,
    folds: np.ndarray,
    task: str | Task,
    X_test: pd.DataFrame | None = None,
    *,
    metric: str | None = None,
    log_target: bool = False,
    seed: int = 0,
    name: str = "lightgbm",
    n_threads: int = 1,
    class_weight: str | None = None,
    transform: FoldTransform | None = None,
    size_scale: float = 1.0,
    **params,
) -> MemberPredictions:
    """LightGBM on ``X``: object/category/bool columns as pandas categories (identifier-like ones
    dropped, as for every member), early stopping on each fold's held-out rows. ``params`` go to
    ``LGBMClassifier`` / ``LGBMRegressor`` over :func:`boosting_defaults`, chosen for ``size_scale``
    times the fold's rows (a timing sample fits with the whole table's settings)."""
    import lightgbm as lgb  # imported with its member: loading it costs a second

    def make(d: FoldData, task: Task, rows: int) -> Callable[[pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray], object]:
        p = boosting_defaults(rows)
        kw = dict(n_estimators=p.max_rounds, learning_rate=p.learning_rate, num_leaves=p.num_leaves,
                  min_child_samples=p.min_child_samples, subsample=0.8, subsample_freq=1, colsample_bytree=0.8,
                  reg_lambda=1.0, random_state=seed, n_jobs=n_threads, verbose=-1,
                  # LightGBM's default of 100 rows per category group rules out categorical splits on
                  # small tables, where a category seen 20 times is already evidence
                  min_data_per_group=p.min_child_samples) | params

        def fit(xt, yt, xv, yv):
            if task.is_regression:
                model = lgb.LGBMRegressor(**kw)
            else:
                model = lgb.LGBMClassifier(class_weight=class_weight, **kw)
            return model.fit(xt, yt, eval_set=[(xv, yv)],
                             callbacks=[lgb.early_stopping(p.patience, verbose=False), lgb.log_evaluation(0)])

        return fit

    return _boosted_member(X, y, folds, task, X_test, make, _as_categories, lambda m: m.best_iteration_,
                           metric=metric, log_target=log_target, name=name, transform=transform, size_scale=size_scale)


def catboost_member(
    X: pd.DataFrame,
    y,
    folds: np.ndarray,
    task: str | Task,
    X_test: pd.DataFrame | None = None,
    *,
    metric: str | None = None,
    log_target: bool = False,
    seed: int = 0,
    name: str = "catboost",
    n_threads: int = 1,
    class_weight: str | None = None,
    transform: FoldTransform | None = None,
    size_scale: float = 1.0,
    **params,
) -> MemberPredictions:
    """CatBoost on ``X``: categorical columns as ``cat_features`` (strings, missing as its own
    category), early stopping on each fold's held-out rows, the best iteration kept. ``params`` go
    to ``CatBoostClassifier`` / ``CatBoostRegressor`` over :func:`boosting_defaults`, chosen for
    ``size_scale`` times the fold's rows (as LightGBM's)."""
    from catboost import CatBoostClassifier, CatBoostRegressor  # imported with its member (seconds)

    def make(d: FoldData, task: Task, rows: int):
        p = boosting_defaults(rows)
        cat = [c for c in d.train.columns if isinstance(d.train[c].dtype, pd.CategoricalDtype)]
        # max_ctr_complexity=1: no combinations of categorical columns. They multiply CatBoost's
        # time on tables with dozens of categoricals, and it scored alike without them.
        kw = dict(iterations=p.max_rounds // 2, learning_rate=p.catboost_learning_rate, depth=p.depth,
                  max_ctr_complexity=1, random_seed=seed, thread_count=n_threads, verbose=False,
                  allow_writing_files=False, cat_features=cat)
        if d.train.shape[1] > WIDE_COLUMNS:
            kw["rsm"] = (WIDE_COLUMNS // 2) / d.train.shape[1]
        kw |= params
        if task is Task.MULTICLASS:
            kw.setdefault("loss_function", "MultiClass")

        def fit(xt, yt, xv, yv):
            if task.is_regression:
                model = CatBoostRegressor(**kw)
            else:
                model = CatBoostClassifier(auto_class_weights="Balanced" if class_weight == "balanced" else None, **kw)
            return model.fit(xt, yt, eval_set=(xv, yv), early_stopping_rounds=p.patience, use_best_model=True)

        return fit

    return _boosted_member(X, y, folds, task, X_test, make, _as_strings, lambda m: m.get_best_iteration(),
                           metric=metric, log_target=log_target, name=name, transform=transform, size_scale=size_scale)


# ---- shared: encoding, one model per output column ------------------------------------------------


Encoder = Callable[[Columns, pd.DataFrame], Callable[[pd.DataFrame], pd.DataFrame]]


def _as_categories(cols: Columns, train: pd.DataFrame) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """Categorical columns as pandas categories of the training rows' values (unseen: missing)."""
    cats = {c: pd.Index(sorted(train[c].dropna().astype(str).unique())) for c in cols.categorical}

    def encode(df: pd.DataFrame) -> pd.DataFrame:
        out = df[cols.used].copy()
        for c, levels in cats.items():
            values = df[c].astype("string").astype(object)
            out[c] = pd.Categorical(values.where(df[c].notna() & values.isin(levels), None), categories=levels)
        for c in cols.numeric:
            out[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
        return out

    return encode


def _as_strings(cols: Columns, train: pd.DataFrame) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """Categorical columns as strings, missing as :data:`MISSING`, dtype ``category`` (which marks
    them as CatBoost's ``cat_features``)."""

    def encode(df: pd.DataFrame) -> pd.DataFrame:
        out = df[cols.used].copy()
        for c in cols.categorical:
            out[c] = df[c].astype("string").fillna(MISSING).astype(str).astype("category")
        for c in cols.numeric:
            out[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
        return out

    return encode


@dataclass
class _Boosted:
    """A fold's fitted model(s) behind the predictor interface :func:`run_folds` uses: one
    model, or one per label / target column."""

    encode: Callable[[pd.DataFrame], pd.DataFrame]
    models: list
    task: Task
    best_iteration: int | None = None

    @property
    def classes_(self) -> np.ndarray:
        return np.asarray(self.models[0].classes_)

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        x = self.encode(X)
        preds = [np.asarray(m.predict(x), dtype=float).reshape(len(x)) for m in self.models]
        return preds[0] if len(preds) == 1 else np.column_stack(preds)

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        x = self.encode(X)
        if self.task is not Task.MULTILABEL:
            return np.asarray(self.models[0].predict_proba(x), dtype=float)
        return np.column_stack([_positive_proba(m, x) for m in self.models])


@dataclass
class _Constant:
    """A label column with one value in a fold's training rows: that value's probability (a
    booster cannot be fit on one class)."""

    value: int

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        return np.column_stack([np.full(len(x), 1.0 - self.value), np.full(len(x), float(self.value))])


def _positive_proba(model, x: pd.DataFrame) -> np.ndarray:
    proba = np.asarray(model.predict_proba(x), dtype=float)
    if isinstance(model, _Constant):
        return proba[:, 1]
    classes = list(np.asarray(model.classes_))
    return proba[:, classes.index(1)] if 1 in classes else np.zeros(len(x))


#: The share of a fold's training rows that early stopping watches (the boosters fit on the rest).
EARLY_STOPPING_SHARE = 0.15


def early_stopping_split(y: np.ndarray, task: Task, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row indices to fit on and to watch for early stopping, within a fold's training rows
    (stratified on a class target where every class has two rows or more)."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(y))
    strata = None
    if task in (Task.BINARY, Task.MULTICLASS):
        _, counts = np.unique(y, return_counts=True)
        # stratifying needs two rows of every class, and a slice with room for one of each
        room = int(np.ceil(EARLY_STOPPING_SHARE * len(y))) >= len(counts)
        strata = y if counts.min() >= 2 and room else None
    fit_rows, stop_rows = train_test_split(rows, test_size=EARLY_STOPPING_SHARE, random_state=seed, stratify=strata)
    return np.sort(fit_rows), np.sort(stop_rows)


def _boosted_member(X, y, folds, task, X_test, make, encoder: Encoder, rounds: Callable[[object], int], *,
                    metric: str | None, log_target: bool, name: str,
                    transform: FoldTransform | None, size_scale: float = 1.0) -> MemberPredictions:
    """The fold loop for a booster: encode each fold's frames with the training rows' columns and
    categories, fit one model per output column with early stopping on a slice of its training rows.
    ``make`` gets the rows its defaults are for: the fit rows times ``size_scale``."""
    task = Task.parse(task) if not isinstance(task, Task) else task
    X = as_frame(X, "X")
    dropped = list(Columns.of(X).dropped)
    if dropped:
        log.info("%s: dropping identifier-like columns %s", name, dropped)
    if X_test is not None:
        X_test = as_frame(X_test, "X_test")
        missing = [c for c in X.columns if c not in X_test.columns]
        if missing:
            raise ValueError(f"X_test lacks columns {missing} that X has; pass the same feature columns for both.")
        X_test = X_test[list(X.columns)]

    def fit(d: FoldData) -> _Boosted:
        cols = Columns.of(d.train)
        encode = encoder(cols, d.train)
        # early stopping watches a slice of the fold's training rows, never its held-out rows: the
        # rounds chosen on those rows would make their out-of-fold predictions look better than they are
        fit_rows, stop_rows = early_stopping_split(d.y_train, task, seed=d.fold)
        encoded = encode(d.train)
        xt, xv = encoded.iloc[fit_rows].reset_index(drop=True), encoded.iloc[stop_rows].reset_index(drop=True)
        y_fit, y_stop = d.y_train[fit_rows], d.y_train[stop_rows]
        fit_one = make(FoldData(d.fold, xt, y_fit, xv, y_stop, None), task, round(len(xt) * size_scale))
        if not task.multi_output:
            model = fit_one(xt, y_fit, xv, y_stop)
            return _Boosted(encode, [model], task, int(rounds(model)))
        models, kept = [], []
        for j in range(d.y_train.shape[1]):
            yt, yv = y_fit[:, j], y_stop[:, j]
            if task is Task.MULTILABEL and len(np.unique(yt)) < 2:
                models.append(_Constant(int(yt[0])))
                continue
            models.append(fit_one(xt, yt, xv, yv))
            kept.append(int(rounds(models[-1])))
        return _Boosted(encode, models, task, int(np.mean(kept)) if kept else None)

    result = run_folds(fit, X, y, folds, task, X_test, metric=metric, log_target=log_target, name=name,
                       transform=transform)
    result.dropped_columns = dropped
    if result.best_iterations:
        log.info("%s: early stopping kept %s rounds per fold", name, result.best_iterations)
    return result


__all__ = ["BoostingDefaults", "boosting_defaults", "catboost_member", "lightgbm_member"]
