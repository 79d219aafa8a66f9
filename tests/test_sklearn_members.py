"""scikit-learn members on subsets of the real competition files (read in place, never copied)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from lora_tasks.ensemble.blend import blend
from lora_tasks.ensemble.members import (
    kernel_member,
    linear_member,
    normalize_task,
    table_members,
    tabular_member,
    text_member,
)
from lora_tasks.metrics import get_metric
from lora_tasks.training.cv import make_folds

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


def test_regression_bags_gradient_boosting_over_seeds():
    """The regression member averages ``bag`` column-subsampled models of successive seeds."""
    train = _read("house-prices-advanced-regression-techniques", "train.csv", nrows=300)
    y = np.log1p(train["SalePrice"].to_numpy(dtype=float))
    X = train.drop(columns=["SalePrice", "Id"])
    folds = make_folds(y, "regression", 3, seed=0)
    singles = [tabular_member(X, y, folds, "regression", seed=s, bag=1, max_iter=60) for s in (4, 5)]
    assert not np.allclose(singles[0].oof, singles[1].oof)  # the seeds subsample different columns
    bagged = tabular_member(X, y, folds, "regression", seed=4, bag=2, max_iter=60)
    np.testing.assert_allclose(bagged.oof, (singles[0].oof + singles[1].oof) / 2, rtol=1e-10)
    with pytest.raises(ValueError, match="pass 1 or more"):
        tabular_member(X, y, folds, "regression", bag=0)


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

@pytest.fixture(scope="module")
def house():
    train = _read("house-prices-advanced-regression-techniques", "train.csv")
    y = train["SalePrice"].to_numpy(dtype=float)
    return train, y, make_folds(np.log1p(y), "regression", 5, seed=0)


@pytest.fixture(scope="module")
def house_members(house):
    """The members the flow trains for house-prices (fit once: bagged boosting takes ~45 s)."""
    train, y, folds = house
    members = table_members(train, y, folds, "regression", train.iloc[:20], exclude=("Id", "SalePrice"),
                            metric="rmsle", log_target=True, only=("hist_gbm", "linear", "svr"))
    return {m.name: m for m in members}  # LightGBM and CatBoost: tests/test_gbm_members.py


def test_house_prices_linear_member_blends_with_boosting(house, house_members):
    """The linear member: prices from one-hot categoricals and log1p of skewed areas. Alone it is
    nearly as good as boosting; because the two err differently, their blend beats both (the
    reason the flow blends both)."""
    train, y, folds = house
    lin, gbm = house_members["linear"], house_members["hist_gbm"]
    assert lin.oof.shape == (1460,) and lin.test.shape == (20,) and lin.oof.min() > 0
    assert lin.oof_score < 0.14 and gbm.oof_score < 0.13  # the mean price scores ~0.40
    blended = blend("caruana", {"linear": np.log1p(lin.oof), "hist_gbm": np.log1p(gbm.oof)}, None,
                    np.log1p(y), "rmse", folds)
    assert min(blended.weights.values()) > 0.2, blended.weights
    assert blended.report.blend_cv_score < min(lin.oof_score, gbm.oof_score) - 0.0005  # nested: honest


def test_house_prices_regression_tables_get_a_kernel_member_that_the_blend_uses(house, house_members):
    """Regression tables get a third member, an RBF SVR on the linear member's encoding: its
    errors differ from both, so the three-member blend beats the two-member one (nested CV)."""
    train, y, folds = house
    assert list(house_members) == ["hist_gbm", "linear", "svr"]
    svr = house_members["svr"]
    assert svr.test.shape == (20,) and svr.oof.min() > 0 and svr.oof_score < 0.135
    oof = {name: np.log1p(m.oof) for name, m in house_members.items()}
    three = blend("caruana", oof, None, np.log1p(y), "rmse", folds)
    two = blend("caruana", {k: oof[k] for k in ("hist_gbm", "linear")}, None, np.log1p(y), "rmse", folds)
    assert three.weights["svr"] > 0.2, three.weights
    assert three.report.blend_cv_score < two.report.blend_cv_score - 1e-4  # 0.1197 vs 0.1200
    with pytest.raises(ValueError, match="for regression tables"):
        kernel_member(train.drop(columns=["SalePrice"]), y > 2e5, folds, "binary")


def test_large_regression_tables_skip_the_kernel_member(monkeypatch):
    from lora_tasks.ensemble import members as sklearn_members

    train = _read("house-prices-advanced-regression-techniques", "train.csv", nrows=200)
    y = train["SalePrice"].to_numpy(dtype=float)
    folds = make_folds(np.log1p(y), "regression", 3, seed=0)
    monkeypatch.setattr(sklearn_members, "MAX_KERNEL_ROWS", len(train) - 1)
    members = table_members(train, y, folds, "regression", exclude=("Id", "SalePrice"), metric="rmsle", log_target=True,
                            only=("hist_gbm", "linear", "svr"))
    assert [m.name for m in members] == ["hist_gbm", "linear"]


def test_linear_member_classifies_with_probabilities(titanic):
    X, y, X_test, folds = titanic
    res = linear_member(X, y, folds, "binary", X_test, metric="accuracy")
    assert res.oof.shape == (891,) and res.test.shape == (418,)
    assert np.all((res.oof > 0) & (res.oof < 1))  # logistic probabilities, never hard labels
    assert res.oof_score > 0.77  # gender alone gives 0.787 in-sample; this is out-of-fold
    assert set(res.dropped_columns) == {"Name", "Ticket"}
    with pytest.raises(ValueError, match="X_test lacks columns"):
        linear_member(X, y, folds, "binary", X_test.drop(columns=["Fare"]))


def test_table_members_pick_by_the_table(titanic):
    """Text with few context columns -> TF-IDF only; a classification table -> the boosters and linear."""
    X, y, X_test, folds = titanic
    tabular = table_members(X, y, folds, "binary_classification", X_test, metric="accuracy")
    assert [m.name for m in tabular] == ["lightgbm", "catboost", "hist_gbm", "extra_trees", "linear"]
    tweets = _read("nlp-getting-started", "train.csv", nrows=400)
    ty = tweets["target"].to_numpy()
    text = table_members(tweets, ty, make_folds(ty, "binary_classification", 3, seed=0), "binary",
                         text_columns=("text",), exclude=("id", "target"), metric="f1")
    assert [m.name for m in text] == ["tfidf_linear"]
    with pytest.raises(ValueError, match="drop_columns"):
        table_members(X, y, folds, "binary", X_test.drop(columns=["Age"]))


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


# ---- several targets: multilabel and multi-target regression, on synthetic tables ------------------


@pytest.fixture(scope="module")
def several_targets():
    """A table whose three 0/1 labels and two float targets each depend on different columns."""
    rng = np.random.default_rng(7)
    n = 600
    X = pd.DataFrame({
        "a": rng.normal(size=n),
        "b": rng.normal(size=n),
        "c": rng.normal(size=n),
        "colour": rng.choice(["red", "green", "blue"], n),
    })
    red = (X["colour"] == "red").to_numpy()
    labels = np.column_stack([
        X["a"] + 0.3 * rng.normal(size=n) > 0,
        X["b"] - X["c"] + 0.3 * rng.normal(size=n) > 0.5,
        red ^ (rng.random(n) < 0.1),
    ]).astype(int)
    values = np.column_stack([2 * X["a"] + X["b"], 3 * red - X["c"]]) + 0.2 * rng.normal(size=(n, 2))
    folds = make_folds(labels[:, 0], "regression", 4, seed=0)
    return X, labels, values, folds


def test_extra_trees_member_grades_its_probabilities_and_reads_missing_values(titanic):
    from lora_tasks.ensemble.forests import extra_trees_member

    X, y, X_test, folds = titanic
    unseen = X_test.copy()
    unseen.loc[0, "Embarked"] = "never-seen"  # a category no fold trained on
    res = extra_trees_member(X, y, folds, "binary", unseen, metric="roc_auc")
    assert res.oof.shape == (891,) and res.test.shape == (418,) and np.isfinite(res.test).all()
    assert X["Age"].isna().any() and np.isfinite(res.oof).all()  # NaN ages are routed, not dropped
    assert res.oof_score > 0.82
    assert len(np.unique(np.round(res.oof, 3))) > 50  # leaves of several rows: graded, not 0/1
    assert set(res.dropped_columns) == {"Name", "Ticket"}
    balanced = extra_trees_member(X, y, folds, "binary", None, class_weight="balanced")
    assert balanced.oof.mean() > res.oof.mean()  # the minority class (survived) weighs more


@pytest.mark.parametrize("member", [tabular_member, linear_member])
def test_multilabel_members_give_one_probability_per_label(several_targets, member):
    X, labels, _, folds = several_targets
    res = member(X, labels, folds, "multilabel_classification", X.iloc[:15], metric="mean_columnwise_roc_auc",
                 **({"max_iter": 60} if member is tabular_member else {}))
    assert res.oof.shape == (600, 3) and res.test.shape == (15, 3)
    assert np.all((res.oof >= 0) & (res.oof <= 1))
    assert not np.allclose(res.oof.sum(axis=1), 1.0)  # independent labels, not a softmax
    aucs = [roc_auc_score(labels[:, j], res.oof[:, j]) for j in range(3)]
    assert min(aucs) > 0.85, aucs  # every column learned its own signal
    assert res.oof_score == pytest.approx(np.mean(aucs))
    np.testing.assert_array_equal(res.fold_of_row, folds)


def test_multitarget_members_give_one_value_per_target(several_targets, monkeypatch):
    from lora_tasks.ensemble import members as sklearn_members

    X, _, values, folds = several_targets
    # fewer, single boosting models: the tuned settings are for real tables and cost minutes here
    monkeypatch.setattr(sklearn_members, "GBM_BAG", 1)
    monkeypatch.setattr(sklearn_members, "GBM_REGRESSION_PARAMS", {"max_iter": 80})
    members = table_members(X, values, folds, "multitarget_regression", X.iloc[:10], metric="mcrmse")
    assert [m.name for m in members] == ["lightgbm", "catboost", "hist_gbm", "extra_trees", "linear", "svr"]
    for m in members:
        assert m.oof.shape == (600, 2) and m.test.shape == (10, 2), m.name
        rmses = np.sqrt(np.mean((m.oof - values) ** 2, axis=0))
        assert m.oof_score == pytest.approx(rmses.mean())
        assert np.all(rmses < 0.5 * values.std(axis=0)), (m.name, rmses)  # predicting the mean scores the std
    # the members blend column by column like adapters
    res = blend("weights", {m.name: m.oof for m in members}, None, values, "mcrmse", folds)
    assert res.report.blend_score <= min(m.oof_score for m in members) + 1e-12


def test_multilabel_text_member():
    rng = np.random.default_rng(8)
    words = np.array(["storm", "flood", "fire", "calm", "sunny", "quiet", "road", "crash"])
    texts = [" ".join(rng.choice(words, 6)) for _ in range(400)]
    labels = np.array([[("storm" in t or "flood" in t), ("fire" in t), ("crash" in t)] for t in texts], dtype=int)
    folds = make_folds(labels[:, 0], "regression", 4, seed=0)
    res = text_member(pd.Series(texts), labels, folds, "multilabel", metric="mean_columnwise_roc_auc")
    assert res.oof.shape == (400, 3) and res.oof_score > 0.95


def test_several_target_shapes_are_checked(several_targets):
    X, labels, values, folds = several_targets
    with pytest.raises(ValueError, match=r"several columns.*got shape \(600,\).*use binary"):
        tabular_member(X, labels[:, 0], folds, "multilabel")
    with pytest.raises(ValueError, match="0/1.*found values"):
        tabular_member(X, labels * 2 + 1, folds, "multilabel")
    with pytest.raises(ValueError, match="takes one target column, got 2 columns; use multitarget_regression"):
        tabular_member(X, values, folds, "regression")
    assert normalize_task("multilabel_classification") == "multilabel"


def test_a_column_empty_in_a_folds_rows_is_kept_without_a_warning():
    """A column with no value in some fold's training rows (house prices' PoolQC) is kept as a
    constant in that fold: the imputers neither drop it nor print a warning per fold and member."""
    import warnings

    rng = np.random.default_rng(0)
    n = 200
    frame = pd.DataFrame({"a": rng.normal(size=n), "cat": rng.choice(["x", "y"], n),
                          "rare_cat": [None] * n, "empty_num": [np.nan] * n})
    frame.loc[:5, "rare_cat"] = "z"  # only in the first fold's rows
    y = (frame["a"] > 0).astype(int).to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (member,) = table_members(frame, y, np.arange(n) % 5, "binary", only=["linear"])
    assert member.name == "linear" and np.isfinite(member.oof).all() and member.oof.shape == (n,)
