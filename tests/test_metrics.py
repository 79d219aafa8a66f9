"""Metrics by name: values against direct computations, directions, what each metric wants."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from _data_helpers import HOUSE, TITANIC, read_train
from sklearn import metrics as skm

from lora_tasks.metrics import (
    KAGGLE_METRICS,
    METRICS,
    UnknownKaggleMetricWarning,
    default_metric,
    get_metric,
    metric_from_kaggle,
    metrics_markdown,
    score,
    to_labels,
)
from lora_tasks.task import Task


@pytest.fixture(scope="module")
def titanic():
    df = read_train(TITANIC)
    y = df["Survived"].to_numpy()
    gender_model = (df["Sex"] == "female").astype(int).to_numpy()  # Kaggle's gender_submission rule
    return y, gender_model, df


def test_accuracy_of_gender_model_equals_share_of_matches(titanic):
    y, pred, _ = titanic
    assert score("accuracy", y, pred) == pytest.approx(float((y == pred).mean()))
    assert 0.5 < score("accuracy", y, pred) < 1.0


def test_f1_is_binary_f1_of_class_1(titanic):
    y, pred, _ = titanic
    tp = int(((y == 1) & (pred == 1)).sum())
    fp = int(((y == 0) & (pred == 1)).sum())
    fn = int(((y == 1) & (pred == 0)).sum())
    assert score("f1", y, pred) == pytest.approx(2 * tp / (2 * tp + fp + fn))


def test_label_metric_accepts_probabilities_and_cuts_at_threshold(titanic):
    y, _, df = titanic
    prob = np.clip(df["Fare"].to_numpy() / 100.0, 0, 1)  # a crude non-integer score
    assert score("accuracy", y, prob) == pytest.approx(float((y == (prob >= 0.5)).mean()))
    assert score("accuracy", y, prob, threshold=0.2) == pytest.approx(float((y == (prob >= 0.2)).mean()))


def test_roc_auc_and_log_loss_on_probabilities(titanic):
    y, _, df = titanic
    prob = np.clip(df["Fare"].to_numpy() / 100.0, 0.01, 0.99)
    assert score("roc_auc", y, prob) == pytest.approx(skm.roc_auc_score(y, prob))
    two_col = np.column_stack([1 - prob, prob])
    assert score("roc_auc", y, two_col) == pytest.approx(skm.roc_auc_score(y, prob))
    good = np.where(y == 1, 0.9, 0.1)
    uniform = np.full(len(y), 0.5)
    assert score("log_loss", y, good) < score("log_loss", y, uniform) == pytest.approx(math.log(2))


def test_multiclass_metrics_on_pclass(titanic):
    _, _, df = titanic
    y = df["Pclass"].to_numpy() - 1  # 3 classes: 0, 1, 2
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(len(y), 3)) + 2.0 * np.eye(3)[y]
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = prob.argmax(axis=1)
    assert score("accuracy", y, prob) == pytest.approx(float((labels == y).mean()))
    assert score("macro_f1", y, labels) == pytest.approx(skm.f1_score(y, labels, average="macro"))
    assert score("f1", y, labels) == pytest.approx(skm.f1_score(y, labels, average="macro"))
    assert score("roc_auc", y, prob) == pytest.approx(skm.roc_auc_score(y, prob, multi_class="ovr"))
    assert score("log_loss", y, prob) == pytest.approx(skm.log_loss(y, prob))


def test_multilabel_roc_auc_is_macro_over_columns(titanic):
    _, _, df = titanic
    y = np.column_stack([df["Survived"], (df["Sex"] == "female").astype(int)])
    prob = np.column_stack([df["Fare"].rank(pct=True), df["Age"].fillna(30).rank(pct=True)])
    expected = np.mean([skm.roc_auc_score(y[:, j], prob[:, j]) for j in range(2)])
    assert score("roc_auc", y, prob) == pytest.approx(expected)
    assert to_labels(prob).shape == y.shape  # independent sigmoids are thresholded, not argmaxed


def test_regression_metrics_on_house_prices():
    y = read_train(HOUSE)["SalePrice"].to_numpy(dtype=float)
    pred = np.full_like(y, np.median(y))
    assert score("rmse", y, pred) == pytest.approx(math.sqrt(np.mean((y - pred) ** 2)))
    assert score("mse", y, pred) == pytest.approx(score("rmse", y, pred) ** 2)
    assert score("mae", y, pred) == pytest.approx(np.mean(np.abs(y - pred)))
    assert score("rmsle", y, pred) == pytest.approx(math.sqrt(np.mean((np.log1p(y) - np.log1p(pred)) ** 2)))
    assert score("r2", y, np.full_like(y, y.mean())) == pytest.approx(0.0, abs=1e-12)
    # RMSLE clips negative predictions at 0 instead of failing
    assert np.isfinite(score("rmsle", y, pred - 2 * pred.max()))


def test_directions_and_prediction_kinds():
    higher = {n for n, m in METRICS.items() if m.greater_is_better}
    assert higher == {"accuracy", "f1", "macro_f1", "mean_f1", "mcc", "qwk", "roc_auc", "mean_columnwise_roc_auc", "r2"}
    assert get_metric("roc_auc").needs == "probabilities"
    assert get_metric("log_loss").needs == "probabilities"
    assert get_metric("accuracy").needs == "labels"
    assert get_metric("rmsle").needs == "values"
    acc, rmse = get_metric("accuracy"), get_metric("rmse")
    assert acc.is_better(0.8, 0.7) and not acc.is_better(0.7, 0.8)
    assert rmse.is_better(0.1, 0.2) and rmse.worst == math.inf and acc.worst == -math.inf


def test_aliases_and_unknown_names():
    assert get_metric("AUC").name == "roc_auc"
    assert get_metric("f1-macro").name == "macro_f1"
    assert get_metric("logloss").name == "log_loss"
    with pytest.raises(KeyError) as err:
        get_metric("balanced_accuracy")
    assert "balanced_accuracy" in str(err.value) and "rmsle" in str(err.value)


def test_default_metric_by_task():
    assert default_metric("binary", "labels") == "accuracy"
    assert default_metric("binary", "probabilities") == "roc_auc"
    assert default_metric("multiclass", "probabilities") == "log_loss"
    assert default_metric("multilabel", "probabilities") == "roc_auc"  # on (n, k): the mean of column AUCs
    assert default_metric("regression", "values") == "rmse"
    assert default_metric(Task.MULTITARGET_REGRESSION, "values") == "mcrmse"
    assert default_metric("binary_classification", "probabilities") == "roc_auc"
    with pytest.raises(ValueError, match="ranking"):
        default_metric("ranking")


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="3 true values but 2 predictions"):
        score("accuracy", [0, 1, 1], [0, 1])


def test_markdown_lists_every_metric():
    table = metrics_markdown()
    assert all(f"`{name}`" in table for name in METRICS)


# ---- the metrics Kaggle competitions name: against scikit-learn and numpy references ----------


@pytest.fixture(scope="module")
def ordinal():
    """Five ordered grades and a noisy guess of them (the shape QWK competitions have)."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 5, 400)
    pred = np.clip(y + rng.integers(-1, 2, 400) * (rng.random(400) < 0.4), 0, 4)
    return y, pred


def test_qwk_matches_sklearn_and_a_confusion_matrix_reference(ordinal):
    y, pred = ordinal
    assert score("qwk", y, pred) == pytest.approx(skm.cohen_kappa_score(y, pred, weights="quadratic"))
    k = 5
    observed = np.zeros((k, k))
    np.add.at(observed, (y, pred), 1)
    expected = np.outer(np.bincount(y, minlength=k), np.bincount(pred, minlength=k)) / len(y)
    weights = (np.subtract.outer(np.arange(k), np.arange(k)) ** 2) / (k - 1) ** 2
    reference = 1 - (weights * observed).sum() / (weights * expected).sum()
    assert score("qwk", y, pred) == pytest.approx(reference)
    assert score("qwk", y, y) == pytest.approx(1.0)


def test_mcc_matches_sklearn_and_the_binary_formula(titanic):
    y, pred, _ = titanic
    tp = int(((y == 1) & (pred == 1)).sum())
    tn = int(((y == 0) & (pred == 0)).sum())
    fp = int(((y == 0) & (pred == 1)).sum())
    fn = int(((y == 1) & (pred == 0)).sum())
    formula = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert score("mcc", y, pred) == pytest.approx(formula)
    assert score("mcc", y, pred) == pytest.approx(skm.matthews_corrcoef(y, pred))
    assert get_metric("mcc").needs == "labels" and get_metric("mcc").direction == "maximize"


def test_mae_and_auc_of_binary_probabilities(titanic):
    y, _, df = titanic
    prob = np.clip(df["Fare"].to_numpy() / 100.0, 0.0, 1.0)
    assert score("mae", y.astype(float), prob) == pytest.approx(skm.mean_absolute_error(y, prob))
    assert score("mae", y.astype(float), prob) == pytest.approx(np.mean(np.abs(y - prob)))
    assert score("auc", y, prob) == pytest.approx(skm.roc_auc_score(y, prob))


def test_mean_columnwise_auc_is_the_mean_of_column_aucs():
    rng = np.random.default_rng(4)
    y = (rng.random((300, 4)) < [0.1, 0.3, 0.5, 0.05]).astype(int)
    prob = np.clip(0.6 * y + 0.5 * rng.random((300, 4)), 0, 1)
    expected = np.mean([skm.roc_auc_score(y[:, j], prob[:, j]) for j in range(4)])
    assert score("mean_columnwise_roc_auc", y, prob) == pytest.approx(expected)
    assert score("roc_auc", y, prob) == pytest.approx(expected)
    with pytest.raises(ValueError, match="several target columns"):
        score("mean_columnwise_roc_auc", y[:, 0], prob[:, 0])


def test_mcrmse_is_the_mean_of_column_rmses():
    rng = np.random.default_rng(5)
    y = rng.normal(3.0, 0.7, (250, 6))
    pred = y + rng.normal(0, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], (250, 6))
    expected = np.mean(np.sqrt(np.mean((y - pred) ** 2, axis=0)))
    assert score("mcrmse", y, pred) == pytest.approx(expected)
    assert score("rmse", y, pred) == pytest.approx(expected)  # scikit-learn averages the columns' RMSE too
    assert get_metric("mcrmse").direction == "minimize" and get_metric("mcrmse").needs == "values"
    with pytest.raises(ValueError, match=r"shape \(250, 6\)"):
        score("mcrmse", y, pred[:, :5])


def test_multilabel_label_metrics_cut_every_column():
    y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    # every row sums to 1, as softmax rows do: the 2-D target, not the row sums, says "cut each column"
    prob = np.array([[0.5, 0.1, 0.4], [0.3, 0.45, 0.25], [0.45, 0.5, 0.05], [0.2, 0.3, 0.5]])
    labels = (prob >= 0.4).astype(int)
    np.testing.assert_array_equal(labels, y)
    assert score("mean_f1", y, prob, threshold=0.4) == 1.0
    assert score("mean_f1", y, prob, threshold=0.4) == pytest.approx(skm.f1_score(y, labels, average="samples"))
    assert score("f1", y, prob, threshold=0.4) == pytest.approx(skm.f1_score(y, labels, average="macro"))


def test_nan_predictions_are_refused_with_the_row_count():
    y = np.array([0, 1, 1, 0])
    with pytest.raises(ValueError, match="2 of 4 rows with NaN or inf"):
        score("roc_auc", y, np.array([0.1, np.nan, 0.8, np.inf]))
    with pytest.raises(ValueError, match="1 of 2 rows"):
        to_labels(np.array([[0.2, 0.8], [np.nan, 0.5]]))


def test_every_metric_knows_its_tasks_and_direction():
    for m in METRICS.values():
        assert m.tasks and all(isinstance(t, Task) for t in m.tasks)
        assert m.needs in ("labels", "probabilities", "values")
        assert m.direction == ("maximize" if m.greater_is_better else "minimize")
        kinds = {t.predicts for t in m.tasks}
        assert kinds == ({"values"} if m.needs == "values" else {"probabilities"}), m.name
    assert get_metric("mcrmse").supports("multitarget_regression") and not get_metric("mcrmse").supports("regression")


KAGGLE_NAMES = {
    "Categorization Accuracy": "accuracy",
    "Root Mean Squared Error": "rmse",
    "Multiclass Loss": "log_loss",
    "Log Loss": "log_loss",
    "Area Under Receiver Operating Characteristic Curve": "roc_auc",
    "F1 Score": "f1",
    "Mean F-Score": "mean_f1",
    "Mean Absolute Error": "mae",
    "Root Mean Squared Logarithmic Error": "rmsle",
    "Quadratic Weighted Kappa": "qwk",
    "Mean Columnwise Area Under Receiver Operating Characteristic Curve": "mean_columnwise_roc_auc",
    "Matthews Correlation Coefficient": "mcc",
    "Mean Columnwise Root Mean Squared Error": "mcrmse",
}


@pytest.mark.parametrize(("kaggle", "ours"), KAGGLE_NAMES.items())
def test_kaggle_metric_names_map_to_ours(kaggle, ours):
    assert metric_from_kaggle(kaggle) == ours
    assert metric_from_kaggle(kaggle.upper().replace(" ", "-")) == ours
    assert metric_from_kaggle(f"  {kaggle.lower()}  ") == ours
    assert ours in METRICS


def test_kaggle_spelling_variants_and_our_own_names():
    assert metric_from_kaggle("Mean Column-wise Area Under Receiver Operating Characteristic Curve") == (
        "mean_columnwise_roc_auc")
    assert metric_from_kaggle("MulticlassLoss") == "log_loss"
    assert metric_from_kaggle("rmse") == "rmse" and metric_from_kaggle("roc-auc") == "roc_auc"
    assert metric_from_kaggle("") is None and metric_from_kaggle(None) is None
    assert set(KAGGLE_METRICS.values()) <= set(METRICS)


def test_an_unknown_kaggle_metric_warns_once_naming_the_string():
    name = "Weighted Mean Average Precision At 7 (test-only spelling)"
    with pytest.warns(UnknownKaggleMetricWarning, match=r"Weighted Mean Average Precision At 7"):
        assert metric_from_kaggle(name) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise here
        assert metric_from_kaggle(name) is None
        assert metric_from_kaggle(name.upper()) is None  # the same string, spelled louder
    with pytest.warns(UnknownKaggleMetricWarning, match="Another Unknown Score"):
        metric_from_kaggle("Another Unknown Score")
