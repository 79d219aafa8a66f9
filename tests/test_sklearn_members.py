"""scikit-learn members on subsets of the real competition files (read in place, never copied)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lora_tasks.cv import make_folds
from lora_tasks.ensemble import blend
from lora_tasks.metrics import get_metric
from lora_tasks.sklearn_members import normalize_task, tabular_member, text_member

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def _read(competition: str, name: str, nrows: int | None = None) -> pd.DataFrame:
    path = DATASETS / competition / name
    if not path.is_file():
        pytest.fail(f"Real Kaggle file expected at {path} (../shared/datasets beside the checkout).")
    return pd.read_csv(path, nrows=nrows)


@pytest.fixture(scope="module")
def titanic():
    train = _read("titanic", "train.csv")
    test = _read("titanic", "test.csv")
    y = train["Survived"].to_numpy()
    X = train.drop(columns=["Survived", "PassengerId"])
    return X, y, test.drop(columns=["PassengerId"]), make_folds(y, "binary_classification", 5, seed=0)


def test_titanic_gbm_member(titanic):
    X, y, X_test, folds = titanic
    res = tabular_member(X, y, folds, "binary", X_test, metric="roc_auc", max_iter=60)
    assert res.oof.shape == (891,) and res.test.shape == (418,)
    assert np.all((res.oof >= 0) & (res.oof <= 1))
    assert res.oof_score > 0.82  # Sex/Pclass alone give ~0.8; boosting must do better
    assert set(res.dropped_columns) == {"Name", "Ticket"}  # identifiers, not categories
    np.testing.assert_array_equal(res.fold_of_row, folds)
    assert len(res.test_per_fold) == 5
    np.testing.assert_allclose(res.test, np.mean(res.test_per_fold, axis=0))


def test_oof_rows_come_from_models_that_did_not_see_them(titanic):
    """Change the labels of fold 0 only: fold 0's OOF must not move, the others' must."""
    X, y, _, folds = titanic
    base = tabular_member(X, y, folds, "binary", max_iter=30)
    y2 = y.copy()
    y2[folds == 0] = 1 - y2[folds == 0]
    flipped = tabular_member(X, y2, folds, "binary", max_iter=30)
    in0 = folds == 0
    # fold 0 is predicted by a model trained on folds 1-4, whose labels are unchanged
    np.testing.assert_allclose(flipped.oof[in0], base.oof[in0])
    assert not np.allclose(flipped.oof[~in0], base.oof[~in0])


def test_house_prices_regression_log_target():
    train = _read("house-prices-advanced-regression-techniques", "train.csv", nrows=600)
    y = train["SalePrice"].to_numpy(dtype=float)
    X = train.drop(columns=["SalePrice", "Id"])
    folds = make_folds(y, "regression", 4, seed=0)
    res = tabular_member(X, y, folds, "regression", X.iloc[:20], metric="rmsle", log_target=True, max_iter=80)
    assert res.oof.shape == (600,) and res.test.shape == (20,)
    assert res.oof.min() > 0  # expm1 of log predictions: prices, not logs
    assert res.oof_score < 0.2  # predicting the mean price scores ~0.4
    assert res.oof_score < get_metric("rmsle")(y, np.full_like(y, np.exp(np.log(y).mean()))) / 2


def test_tweets_text_member_and_blend():
    train = _read("nlp-getting-started", "train.csv").sample(2000, random_state=0)
    y = train["target"].to_numpy()
    folds = make_folds(y, "binary_classification", 4, seed=0)
    text = text_member(train["text"], y, folds, "binary_classification", train["text"].iloc[:10], metric="roc_auc")
    assert text.oof.shape == (2000,) and text.test.shape == (10,)
    assert text.oof_score > 0.78
    both = text_member(train[["keyword", "text"]], y, folds, "binary", metric="roc_auc", name="kw_text")
    assert both.oof_score > 0.75
    # the members blend like adapters: same rows, same folds
    res = blend("weights", {"text": text.oof, "kw_text": both.oof}, None, y, "roc_auc", folds)
    assert res.report.blend_score >= max(text.oof_score, both.oof_score) - 1e-12


def test_multiclass_columns_follow_sorted_labels(titanic):
    X, _, _, _ = titanic
    y = X["Pclass"].to_numpy()  # 1, 2, 3: predict the class from the rest
    Xf = X.drop(columns=["Pclass"])
    folds = make_folds(y, "multiclass_classification", 3, seed=0)
    res = tabular_member(Xf, y, folds, "multiclass", metric="log_loss", max_iter=40)
    assert res.oof.shape == (891, 3)
    np.testing.assert_allclose(res.oof.sum(axis=1), 1.0, atol=1e-9)
    assert np.mean(np.argmax(res.oof, axis=1) + 1 == y) > 0.8  # fare says a lot about the class


def test_errors_name_the_fix(titanic):
    X, y, _, folds = titanic
    with pytest.raises(ValueError, match="one of each per row"):
        tabular_member(X, y, folds[:-1], "binary")
    with pytest.raises(ValueError, match="got 'ranking'"):
        normalize_task("ranking")
    with pytest.raises(TypeError, match="pandas DataFrame"):
        tabular_member(X.to_numpy(), y, folds, "binary")
    with pytest.raises(ValueError, match="exactly 2 classes"):
        tabular_member(X, X["Pclass"].to_numpy(), folds, "binary")
