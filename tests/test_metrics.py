"""Metrics by name: values against direct computations, directions, what each metric wants."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from lora_tasks.metrics import METRICS, default_metric, get_metric, metrics_markdown, score, to_labels

from _data_helpers import HOUSE, TITANIC, read_train


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
    assert higher == {"accuracy", "f1", "macro_f1", "roc_auc", "r2"}
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
    assert default_metric("multilabel", "probabilities") == "roc_auc"
    assert default_metric("regression", "values") == "rmse"
    with pytest.raises(ValueError, match="ranking"):
        default_metric("ranking")


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="3 true values but 2 predictions"):
        score("accuracy", [0, 1, 1], [0, 1])


def test_markdown_lists_every_metric():
    table = metrics_markdown()
    assert all(f"`{name}`" in table for name in METRICS)
