"""Blending on synthetic OOF predictions where the right answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from lora_tasks.ensemble.blend import METHODS, blend, compare_methods
from lora_tasks.metrics import get_metric
from lora_tasks.training.cv import make_folds


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


@pytest.fixture(scope="module")
def binary():
    """A latent signal; members see it through independent noise of different sizes, plus pure noise."""
    rng = np.random.default_rng(0)
    n, n_test = 1200, 300
    z = rng.standard_normal(n + n_test)
    y_all = (z + 0.5 * rng.standard_normal(n + n_test) > 0).astype(int)

    def member(noise):
        return _sigmoid(2 * (z + noise * rng.standard_normal(n + n_test)))

    preds = {"good": member(0.6), "ok": member(1.0), "weak": member(1.6), "noise": rng.uniform(0.01, 0.99, n + n_test)}
    oof = {k: v[:n] for k, v in preds.items()}
    test = {k: v[n:] for k, v in preds.items()}
    return oof, test, y_all[:n], make_folds(y_all[:n], "binary_classification", 5, seed=0)


@pytest.fixture(scope="module")
def regression():
    rng = np.random.default_rng(1)
    n = 800
    signal = rng.standard_normal(n)
    y = 3 * signal + rng.standard_normal(n)
    oof = {
        "a": 3 * signal + 0.8 * rng.standard_normal(n),
        "b": 3 * signal + 0.8 * rng.standard_normal(n),
        "noise": rng.standard_normal(n) * 3,
    }
    return oof, y


def test_mean_is_plain_average(binary):
    oof, test, y, _ = binary
    res = blend("mean", oof, test, y, "log_loss")
    np.testing.assert_allclose(res.oof_pred, np.mean(list(oof.values()), axis=0))
    np.testing.assert_allclose(res.test_pred, np.mean(list(test.values()), axis=0))
    assert set(res.weights.values()) == {0.25}
    assert res.report.blend_score == pytest.approx(get_metric("log_loss")(y, res.oof_pred))


@pytest.mark.parametrize("metric", ["log_loss", "roc_auc", "accuracy"])
def test_weights_ignore_noise_and_beat_mean(binary, metric):
    oof, test, y, folds = binary
    m = get_metric(metric)
    res = blend("weights", oof, test, y, metric, folds)
    mean = blend("mean", oof, test, y, metric)
    if metric != "accuracy":  # a step metric can gain a few rows in-sample from noise; nested CV shows it
        assert res.weights["noise"] < 0.05
    assert sum(res.weights.values()) == pytest.approx(1.0)
    assert min(res.weights.values()) >= 0.0
    assert not m.is_better(mean.report.blend_score, res.report.blend_score)
    # the nested (fit out-of-fold) score exists and is not better than the in-sample one
    assert res.report.blend_cv_score is not None
    assert not m.is_better(res.report.blend_cv_score, res.report.blend_score + 1e-12 * (1 if m.greater_is_better else -1))


def test_weights_favor_the_better_member(binary):
    oof, test, y, _ = binary
    w = blend("weights", oof, test, y, "log_loss").weights
    assert w["good"] > w["ok"] > w["noise"]


def test_weights_regression_downweights_noise_and_splits_twins(regression):
    oof, y = regression
    res = blend("weights", oof, None, y, "rmse")
    assert res.test_pred is None
    assert res.weights["noise"] < 0.05
    assert res.weights["a"] == pytest.approx(res.weights["b"], abs=0.15)  # two equally good, independent members
    assert res.report.blend_score < min(res.report.member_scores["a"], res.report.member_scores["b"])


def test_weights_are_deterministic(binary):
    oof, test, y, _ = binary
    a = blend("weights", oof, test, y, "roc_auc", seed=3)
    b = blend("weights", oof, test, y, "roc_auc", seed=3)
    assert a.weights == b.weights


def test_caruana_picks_best_member_first(binary):
    oof, test, y, _ = binary
    res = blend("caruana", oof, test, y, "log_loss", caruana_iterations=1)
    assert res.weights == {"good": 1.0, "ok": 0.0, "weak": 0.0, "noise": 0.0}
    assert res.report.best_member == "good"


def test_caruana_weights_and_score(binary):
    oof, test, y, folds = binary
    m = get_metric("log_loss")
    res = blend("caruana", oof, test, y, m, folds, caruana_iterations=40)
    w = res.weights
    assert sum(w.values()) == pytest.approx(1.0)
    assert w["good"] == max(w.values())
    assert w["noise"] == 0.0
    # weights are pick counts over the best prefix of at most 40 picks
    assert any(all(abs(x * s - round(x * s)) < 1e-9 for x in w.values()) for s in range(1, 41))
    assert res.report.blend_score <= res.report.member_scores["good"]
    np.testing.assert_allclose(res.test_pred, sum(w[k] * test[k] for k in w))


def test_caruana_bagged_is_seeded_and_covers_members(binary):
    oof, test, y, _ = binary
    a = blend("caruana", oof, test, y, "log_loss", caruana_bags=6, seed=1)
    b = blend("caruana", oof, test, y, "log_loss", caruana_bags=6, seed=1)
    assert a.weights == b.weights
    assert sum(a.weights.values()) == pytest.approx(1.0)
    assert a.weights["noise"] < 0.1


def test_stacking_oof_is_held_out(binary):
    """The meta-model's OOF on fold k must equal a meta-model fit without fold k."""
    from sklearn.linear_model import LogisticRegression

    oof, test, y, folds = binary
    res = blend("stacking", oof, test, y, "log_loss", folds)
    x = np.column_stack([np.log(np.clip(p, 1e-7, 1 - 1e-7) / (1 - np.clip(p, 1e-7, 1 - 1e-7))) for p in oof.values()])
    inside = folds != 2
    expected = LogisticRegression(C=1.0, max_iter=1000).fit(x[inside], y[inside]).predict_proba(x[~inside])[:, 1]
    np.testing.assert_allclose(res.oof_pred[~inside], expected, rtol=1e-6)
    in_sample = LogisticRegression(C=1.0, max_iter=1000).fit(x, y).predict_proba(x)[:, 1]
    assert not np.allclose(res.oof_pred, in_sample)
    assert res.report.blend_cv_score == res.report.blend_score
    assert abs(res.weights["noise"]) < abs(res.weights["good"]) / 5
    assert res.test_pred.shape == (300,)
    assert res.report.blend_score < res.report.member_scores["good"]


def test_stacking_multiclass_and_regression(regression):
    rng = np.random.default_rng(5)
    n, k = 600, 3
    y = rng.integers(0, k, n)
    logits = rng.standard_normal((n, k)) + 2.0 * np.eye(k)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    flat = np.full((n, k), 1.0 / k)
    res = blend("stacking", {"m": probs, "flat": flat}, {"m": probs[:50], "flat": flat[:50]}, y, "log_loss")
    assert res.oof_pred.shape == (n, k)
    np.testing.assert_allclose(res.oof_pred.sum(1), 1.0, atol=1e-9)
    assert res.report.blend_score < get_metric("log_loss")(y, flat)
    oof, yr = regression
    r = blend("stacking", oof, None, yr, "rmse")
    assert r.report.blend_score < min(r.report.member_scores.values())


def test_rank_mean_for_auc_only(binary):
    oof, test, y, _ = binary
    res = blend("rank_mean", oof, test, y, "roc_auc")
    assert 0 < res.oof_pred.min() and res.oof_pred.max() < 1
    assert res.test_pred.shape == (300,)
    # a monotone distortion of one member does not change the rank blend
    distorted = dict(oof, good=oof["good"] ** 5)
    dt = dict(test, good=test["good"] ** 5)
    np.testing.assert_allclose(blend("rank_mean", distorted, dt, y, "roc_auc").oof_pred, res.oof_pred)
    with pytest.raises(ValueError, match="rank metrics"):
        blend("rank_mean", oof, test, y, "log_loss")


def test_report_markdown(binary):
    oof, test, y, folds = binary
    rep = blend("caruana", oof, test, y, "roc_auc", folds, caruana_iterations=10).report
    md = rep.to_markdown()
    assert "| good (best) |" in md and "**blend**" in md and "fit out-of-fold" in md
    assert rep.gain_over_best_member >= 0


def test_misaligned_members_are_named():
    y = np.zeros(10)
    with pytest.raises(ValueError, match=r"oof\['b'\] has 9 rows"):
        blend("mean", {"a": np.zeros(10), "b": np.zeros(9)}, None, y, "rmse")
    with pytest.raises(ValueError, match="test members"):
        blend("mean", {"a": np.zeros(10)}, {"x": np.zeros(3)}, y, "rmse")
    with pytest.raises(ValueError, match="Unknown blend method"):
        blend("median", {"a": np.zeros(10)}, None, y, "rmse")


def test_compare_methods_runs_all_applicable(binary):
    oof, test, y, folds = binary
    out = compare_methods(oof, test, y, "roc_auc", caruana_iterations=10)
    assert set(out) == set(METHODS) - {"auto"}  # auto is a choice between two of them, not a method to compare
    assert set(compare_methods(oof, None, y, "log_loss", methods=None)) == set(METHODS) - {"rank_mean", "auto"}


@pytest.mark.parametrize("method", ["caruana", "weights", "mean", "stacking"])
def test_tune_threshold_fits_the_label_cut_of_the_blend(binary, method):
    from lora_tasks.ensemble.thresholds import nested_threshold_score

    oof, test, y, folds = binary
    f1 = get_metric("f1")
    plain = blend(method, oof, test, y, "f1", folds)
    tuned = blend(method, oof, test, y, "f1", folds, tune_threshold=True)
    assert plain.threshold is None and 0.05 <= tuned.threshold <= 0.95
    np.testing.assert_allclose(tuned.oof_pred, plain.oof_pred)  # the cut changes labels, not the blend
    np.testing.assert_allclose(tuned.test_pred, plain.test_pred)
    assert tuned.report.blend_score == pytest.approx(f1(y, tuned.oof_pred, threshold=tuned.threshold))
    assert tuned.report.blend_cv_score is not None and tuned.report.blend_cv_score <= 1.0
    if method == "mean":  # fixed weights: the nested score fits only the cut
        assert tuned.report.blend_cv_score == pytest.approx(nested_threshold_score("f1", y, tuned.oof_pred, folds))
    assert f"cut at {tuned.threshold:.2f}" in tuned.report.to_markdown()


def test_tune_threshold_needs_a_binary_label_metric(binary, regression):
    oof, test, y, folds = binary
    with pytest.raises(ValueError, match="tune_threshold.*'log_loss'"):
        blend("caruana", oof, test, y, "log_loss", folds, tune_threshold=True)
    r_oof, r_y = regression
    with pytest.raises(ValueError, match="tune_threshold.*regression"):
        blend("weights", r_oof, None, r_y, "rmse", tune_threshold=True)


# ---- several targets: column by column ------------------------------------------------------------


@pytest.fixture(scope="module")
def multilabel():
    """Three labels; member "a" sees labels 0 and 2, member "b" sees labels 1 and 2, "noise" none."""
    rng = np.random.default_rng(5)
    n, n_test = 400, 50
    z = rng.standard_normal((n + n_test, 3))
    y_all = (z + 0.7 * rng.standard_normal((n + n_test, 3)) > 0.3).astype(int)
    noise = rng.uniform(0.01, 0.99, (n + n_test, 3))
    a = np.where([True, False, True], _sigmoid(2 * (z + 0.5 * rng.standard_normal(z.shape))), noise)
    b = np.where([False, True, True], _sigmoid(2 * (z + 0.5 * rng.standard_normal(z.shape))), noise[:, ::-1])
    preds = {"a": a, "b": b, "noise": rng.uniform(0.01, 0.99, (n + n_test, 3))}
    folds = make_folds(y_all[:n, 0], "regression", 4, seed=0)
    return {k: v[:n] for k, v in preds.items()}, {k: v[n:] for k, v in preds.items()}, y_all[:n], folds


def test_multilabel_blend_fits_each_label_column_on_its_own(multilabel):
    oof, test, y, folds = multilabel
    res = blend("weights", oof, test, y, "mean_columnwise_roc_auc")
    cw = res.report.column_weights
    assert cw["a"][0] > 0.9 and cw["b"][1] > 0.9  # each label goes to the member that sees it
    assert cw["a"][2] > 0.2 and cw["b"][2] > 0.2  # both see label 2: it blends them
    assert max(cw["noise"]) < 0.1
    assert res.oof_pred.shape == y.shape and res.test_pred.shape == (50, 3)
    column_aucs = [roc_auc_score(y[:, j], res.oof_pred[:, j]) for j in range(3)]
    assert res.report.blend_score == pytest.approx(np.mean(column_aucs))
    assert res.report.blend_score > max(res.report.member_scores.values()) + 0.05
    assert res.weights["a"] == pytest.approx(np.mean(cw["a"]))
    assert "weight per column" in res.report.to_markdown()
    # a metric that is not a mean over the columns (subset accuracy) keeps one weight per member
    assert blend("mean", oof, test, y, "accuracy").report.column_weights is None


@pytest.mark.parametrize("method", ["mean", "rank_mean", "caruana", "stacking"])
def test_every_method_blends_label_columns(multilabel, method):
    oof, test, y, folds = multilabel
    res = blend(method, oof, test, y, "mean_columnwise_roc_auc", folds, caruana_iterations=8)
    assert res.oof_pred.shape == y.shape and res.test_pred.shape == (50, 3)
    assert np.all(np.isfinite(res.test_pred))
    if method == "mean":
        np.testing.assert_allclose(res.oof_pred, np.mean(list(oof.values()), axis=0))
    else:
        assert res.report.blend_score > max(res.report.member_scores.values())


def test_multitarget_values_blend_by_column_rmse():
    rng = np.random.default_rng(6)
    n = 300
    y = rng.normal(0, 1, (n, 2))
    oof = {
        "good_at_0": np.column_stack([y[:, 0] + 0.2 * rng.normal(size=n), y[:, 1] + 1.0 * rng.normal(size=n)]),
        "good_at_1": np.column_stack([y[:, 0] + 1.0 * rng.normal(size=n), y[:, 1] + 0.2 * rng.normal(size=n)]),
    }
    folds = np.arange(n) % 3
    res = blend("weights", oof, None, y, "mcrmse", folds)
    cw = res.report.column_weights
    assert cw["good_at_0"][0] > 0.8 and cw["good_at_1"][1] > 0.8
    expected = np.mean(np.sqrt(np.mean((res.oof_pred - y) ** 2, axis=0)))
    assert res.report.blend_score == pytest.approx(expected)
    assert res.report.blend_score < min(res.report.member_scores.values()) - 0.1
    assert res.test_pred is None
    # the nested score (weights fit without each fold) is the mean of the columns' nested scores
    columns = [blend("weights", {k: v[:, j] for k, v in oof.items()}, None, y[:, j], "rmse", folds) for j in range(2)]
    assert res.report.blend_cv_score == pytest.approx(np.mean([c.report.blend_cv_score for c in columns]))
    assert res.report.blend_cv_score < min(res.report.member_scores.values()) - 0.1


def test_nan_in_a_member_is_refused_naming_the_member_and_rows(multilabel):
    oof, test, y, _ = multilabel
    bad_test = dict(test, b=test["b"].copy())
    bad_test["b"][[4, 9, 9], [0, 1, 2]] = [np.nan, np.inf, np.nan]
    with pytest.raises(ValueError, match=r"test\['b'\] has 2 of 50 rows with NaN or inf \(first at row 4\)"):
        blend("mean", oof, bad_test, y, "mean_columnwise_roc_auc")
    bad_oof = dict(oof, a=oof["a"].copy())
    bad_oof["a"][7, 1] = np.nan
    with pytest.raises(ValueError, match=r"oof\['a'\] has 1 of 400 rows with NaN"):
        blend("weights", bad_oof, test, y, "mean_columnwise_roc_auc")
    with pytest.raises(ValueError, match="y has 2 target columns"):
        blend("mean", oof, None, y[:, :2], "mean_columnwise_roc_auc")
