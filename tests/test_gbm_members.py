"""LightGBM and CatBoost members on small synthetic frames: native categoricals, early stopping on
each fold's held-out rows, every task shape, class weights, and the per-fold transform hook."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lora_tasks.ensemble.columns import Columns
from lora_tasks.ensemble.folds import FoldData, run_folds
from lora_tasks.ensemble.gbm import (
    _as_categories,
    _as_strings,
    boosting_defaults,
    catboost_member,
    lightgbm_member,
)
from lora_tasks.ensemble.members import table_members
from lora_tasks.task import Task
from lora_tasks.training.cv import make_folds

BOOSTERS = [lightgbm_member, catboost_member]
FAST = {"lightgbm_member": dict(n_estimators=300), "catboost_member": dict(iterations=200)}


def _frame(n: int = 400, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """A categorical column whose levels carry the signal in no order (``city``: each level's
    label share is random), a numeric column, a column with missing values and an identifier."""
    rng = np.random.default_rng(seed)
    levels = [f"c{i:02d}" for i in range(12)]
    positive = set(rng.choice(levels, size=6, replace=False))
    city = rng.choice(levels, size=n)
    x = rng.normal(size=n)
    y = ((np.isin(city, list(positive)).astype(float) + 0.3 * x + 0.3 * rng.normal(size=n)) > 0.5).astype(int)
    frame = pd.DataFrame({"city": city, "x": x, "gap": np.where(rng.random(n) < 0.2, np.nan, rng.normal(size=n)),
                          "name": [f"person {i}" for i in range(n)]})
    return frame, y


def _fit(member, *args, **kw):
    return member(*args, **kw, **FAST[member.__name__])


@pytest.mark.parametrize("member", BOOSTERS)
def test_binary_member_learns_an_unordered_categorical_and_stops_early(member):
    X, y = _frame()
    folds = make_folds(y, "binary_classification", 4, seed=0)
    res = _fit(member, X, y, folds, "binary", X.iloc[:30], metric="roc_auc")
    assert res.oof.shape == (400,) and res.test.shape == (30,)
    assert np.all((res.oof >= 0) & (res.oof <= 1))
    assert res.oof_score > 0.85, res.oof_score  # the city levels carry the label: native splits find them
    assert res.dropped_columns == ["name"]  # an identifier, not a category
    assert len(res.best_iterations) == 4 and min(res.best_iterations) < 300, "early stopping in the folds"
    assert res.seconds > 0


def test_categoricals_are_categories_not_codes():
    X, _ = _frame(50)
    cols = Columns.of(X)
    lgb_frame = _as_categories(cols, X.iloc[:40])(X)
    assert isinstance(lgb_frame["city"].dtype, pd.CategoricalDtype) and lgb_frame["x"].dtype == float
    # a level the training rows never saw is missing, not a new code
    unseen = X.iloc[40:].assign(city="never-seen")
    assert _as_categories(cols, X.iloc[:40])(unseen)["city"].isna().all()
    cb_frame = _as_strings(cols, X)(X.assign(city=X["city"].where(X.index > 0)))
    assert cb_frame["city"].iloc[0] == "__missing__" and "name" not in cb_frame


@pytest.mark.parametrize("member", BOOSTERS)
def test_multiclass_probabilities_follow_sorted_labels(member):
    X, _ = _frame(300)
    y3 = X["city"].str[1:].astype(int).to_numpy() % 3  # each city level belongs to one of 3 classes
    folds = make_folds(y3, "multiclass_classification", 3, seed=0)
    res = _fit(member, X, y3, folds, "multiclass", metric="log_loss")
    assert res.oof.shape == (300, 3)
    np.testing.assert_allclose(res.oof.sum(axis=1), 1.0, atol=1e-6)
    assert np.mean(res.oof.argmax(axis=1) == y3) > 0.9


@pytest.mark.parametrize("member", BOOSTERS)
def test_multilabel_and_multitarget_fit_one_model_per_column(member):
    X, y = _frame(300)
    labels = np.column_stack([y, (X["x"].to_numpy() > 0).astype(int)])
    folds = make_folds(labels[:, 0], "binary_classification", 3, seed=0)
    res = _fit(member, X, labels, folds, "multilabel", X.iloc[:5], metric="mean_columnwise_roc_auc")
    assert res.oof.shape == (300, 2) and res.test.shape == (5, 2)
    assert res.oof_score > 0.8
    targets = np.column_stack([X["x"].to_numpy() * 2, y + 0.1 * X["x"].to_numpy()])
    reg = _fit(member, X, targets, folds, "multitarget_regression", metric="mcrmse")
    assert reg.oof.shape == (300, 2)
    assert np.corrcoef(reg.oof[:, 0], targets[:, 0])[0, 1] > 0.9


@pytest.mark.parametrize("member", BOOSTERS)
def test_balanced_class_weights_raise_the_rare_class(member):
    X, y = _frame(400, seed=1)
    rare = (y == 1) & (np.random.default_rng(0).random(len(y)) < 0.8)
    y = np.where(rare, 0, y)  # about 1 in 10 positive
    folds = make_folds(y, "binary_classification", 3, seed=0)
    plain = _fit(member, X, y, folds, "binary")
    weighted = _fit(member, X, y, folds, "binary", class_weight="balanced")
    assert weighted.oof.mean() > plain.oof.mean() + 0.05


@pytest.mark.parametrize("member", BOOSTERS)
def test_log_target_regression(member):
    X, _ = _frame(300)
    y = np.exp(2 + X["x"].to_numpy()) * 100
    folds = make_folds(np.log1p(y), "regression", 3, seed=0)
    res = _fit(member, X, y, folds, "regression", metric="rmsle", log_target=True)
    assert res.oof.min() > 0 and res.oof_score < 0.3


def test_fold_transform_sees_each_fold_once_and_its_feature_is_used():
    """The hook: one call per fold with the fold's own training rows; a feature it adds reaches
    the model (here the only signal)."""
    X, y = _frame(300)
    signal = pd.Series(y, name="signal")
    X = X.drop(columns=["city", "x"]).assign(row=np.arange(300))
    folds = make_folds(y, "binary_classification", 3, seed=0)
    seen = []

    def add_signal(d: FoldData) -> FoldData:
        seen.append((d.fold, len(d.train), len(d.valid)))
        assert set(d.train["row"]).isdisjoint(d.valid["row"])
        def add(f):
            return None if f is None else f.assign(leak_free=signal.iloc[f["row"]].to_numpy() + 0.0)

        return FoldData(d.fold, add(d.train), d.y_train, add(d.valid), d.y_valid, add(d.test))

    res = lightgbm_member(X, y, folds, "binary", X.iloc[:10], metric="roc_auc", transform=add_signal,
                          n_estimators=100)
    assert [s[0] for s in seen] == [0, 1, 2] and sum(s[2] for s in seen) == 300
    seen.clear()
    assert res.oof_score > 0.99
    members = table_members(X.assign(target=y), y, folds, "binary", exclude=("target",), metric="roc_auc",
                            only=("linear",), transform=add_signal)
    assert [m.name for m in members] == ["linear"] and members[0].oof_score > 0.99


def test_fold_transform_must_keep_the_rows():
    X, y = _frame(60)
    folds = make_folds(y, "binary_classification", 2, seed=0)

    def drop_rows(d: FoldData) -> FoldData:
        return FoldData(d.fold, d.train.iloc[:5], d.y_train, d.valid, d.y_valid, d.test)

    with pytest.raises(ValueError, match="keep every train"):
        run_folds(lambda d: None, X, y, folds, Task.BINARY, None, metric=None, log_target=False, name="x",
                  transform=drop_rows)


def test_defaults_follow_table_size():
    small, medium, large = boosting_defaults(1_000), boosting_defaults(20_000), boosting_defaults(500_000)
    assert small.learning_rate < medium.learning_rate < large.learning_rate
    assert small.max_rounds >= medium.max_rounds >= large.max_rounds


def test_table_members_include_both_boosters_and_only_filters():
    X, y = _frame(200)
    folds = make_folds(y, "binary_classification", 3, seed=0)
    members = table_members(X.assign(target=y), y, folds, "binary", exclude=("target",),
                            only=("lightgbm", "catboost"))
    assert [m.name for m in members] == ["lightgbm", "catboost"]


@pytest.mark.parametrize("member", BOOSTERS)
def test_early_stopping_never_watches_the_held_out_rows(member):
    """On a coin-flip target the boosters' OOF AUC stays at chance: rounds chosen on the held-out
    rows themselves would make their own predictions look better than they are."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(11)
    X = pd.DataFrame({"a": rng.normal(size=600), "b": rng.normal(size=600), "c": rng.normal(size=600)})
    y = rng.integers(0, 2, 600)
    folds = make_folds(y, "binary_classification", 5, seed=0)
    res = _fit(member, X, y, folds, "binary")
    assert abs(roc_auc_score(y, res.oof) - 0.5) < 0.07


def test_the_early_stopping_rows_are_a_stratified_slice_of_the_training_rows():
    from lora_tasks.ensemble.gbm import EARLY_STOPPING_SHARE, early_stopping_split
    from lora_tasks.task import Task

    y = np.array([0] * 80 + [1] * 20)
    fit_rows, stop_rows = early_stopping_split(y, Task.BINARY, seed=0)
    assert not set(fit_rows) & set(stop_rows) and len(fit_rows) + len(stop_rows) == 100
    assert len(stop_rows) == round(EARLY_STOPPING_SHARE * 100) and y[stop_rows].mean() == pytest.approx(0.2, abs=0.05)


def test_a_small_fold_of_many_classes_splits_without_strata():
    """9 classes in 40 training rows: a 15% slice (6 rows) cannot hold one row of each class."""
    from lora_tasks.ensemble.gbm import early_stopping_split
    from lora_tasks.task import Task

    y = np.repeat(np.arange(9), 5)[:40]
    fit_rows, stop_rows = early_stopping_split(y, Task.MULTICLASS, seed=0)
    assert len(fit_rows) + len(stop_rows) == 40 and len(stop_rows) >= 1
