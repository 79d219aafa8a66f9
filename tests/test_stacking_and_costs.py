"""Stacking beside Caruana selection (``auto`` picks by the nested score), and the members' cost
measured on samples for the budget planner."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lora_tasks.ensemble.blend import blend
from lora_tasks.steps.member_costs import MEMBER_SHARE, WHOLE_TABLE_ROWS, extrapolate, measure_members
from lora_tasks.steps.spec import competition_spec


def _members(n: int = 600, seed: int = 0):
    """Two members on one binary target; ``squashed`` is informative but badly calibrated (its
    probabilities pressed towards 0.5), which a level-2 model on logits can undo and a weighted
    mean cannot."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=n)
    y = (signal + 0.5 * rng.normal(size=n) > 0).astype(int)
    good = 1 / (1 + np.exp(-(signal + 0.8 * rng.normal(size=n))))
    squashed = 1 / (1 + np.exp(-0.15 * (signal + 0.8 * rng.normal(size=n))))
    folds = np.arange(n) % 5
    return {"good": good, "squashed": squashed}, y, folds


@pytest.mark.parametrize("metric", ["log_loss", "accuracy"])
def test_auto_uses_the_method_with_the_better_nested_score(metric):
    oof, y, folds = _members()
    test = {k: v[:20] for k, v in oof.items()}
    caruana = blend("caruana", oof, test, y, metric, folds)
    stacking = blend("stacking", oof, test, y, metric, folds)
    auto = blend("auto", oof, test, y, metric, folds)
    scores = {"caruana": caruana.report.blend_cv_score, "stacking": stacking.report.blend_cv_score}
    better = (max if caruana.report.greater_is_better else min)(scores, key=scores.__getitem__)
    assert auto.report.method == better
    np.testing.assert_allclose(auto.test_pred, (caruana if better == "caruana" else stacking).test_pred)
    assert any(n.startswith("auto: nested") and f"{better} used" in n for n in auto.report.notes)


def test_stacking_wins_on_log_loss_where_calibration_is_off():
    oof, y, folds = _members()
    auto = blend("auto", oof, None, y, "log_loss", folds)
    assert auto.report.method == "stacking"
    caruana = blend("caruana", oof, None, y, "log_loss", folds)
    assert auto.report.blend_cv_score < caruana.report.blend_cv_score


def test_auto_without_folds_is_caruana_and_several_targets_choose_per_column():
    oof, y, folds = _members()
    assert blend("auto", oof, None, y, "log_loss").report.method == "caruana"
    y2 = np.column_stack([y, 1 - y])
    oof2 = {k: np.column_stack([v, 1 - v]) for k, v in oof.items()}
    res = blend("auto", oof2, None, y2, "mean_columnwise_roc_auc", folds)
    assert res.oof_pred.shape == (600, 2) and res.report.blend_cv_score is not None


def test_extrapolate_fits_a_fixed_part_and_a_part_per_row():
    # 2 s fixed + 0.01 s per row, timed at 100 and 200 rows
    assert extrapolate("lightgbm", 100, 3.0, 200, 4.0, 1000) == pytest.approx(12.0)
    assert extrapolate("lightgbm", 100, 3.0, 200, 4.0, 150) == 4.0  # no smaller than its sample
    assert extrapolate("lightgbm", 100, 5.0, 200, 4.0, 1000) == pytest.approx(20.0)  # noisy pair: per row
    # an RBF SVR grows with rows squared
    assert extrapolate("svr", 100, 1.0, 200, 4.0, 400) > extrapolate("linear", 100, 1.0, 200, 4.0, 400)


def test_measure_members_times_each_member_and_leaves_out_the_costly(shared_datasets):
    config = competition_spec("titanic", shared_datasets / "titanic")
    train = config.read_train().iloc[:400]
    roomy = measure_members(config, train, 3, limit_s=3600, whole_rows=200)
    names = [c.name for c in roomy.costs]
    assert {"lightgbm", "catboost", "hist_gbm", "linear"} <= set(names)
    assert roomy.kept == names and roomy.sample_rows == (100, 200) and roomy.rows == 400
    assert all(c.estimate_s >= c.sample_s[1] > 0 for c in roomy.costs)
    assert roomy.seconds == pytest.approx(sum(c.estimate_s for c in roomy.costs))
    assert all("estimated" in r and "kept" in r for r in roomy.reasons)
    costs = sorted(c.estimate_s for c in roomy.costs)
    # a limit whose quarter holds only the cheapest members leaves the others out, with the reason
    limit = (costs[0] + costs[-1]) / 2 / MEMBER_SHARE
    tight = measure_members(config, train, 3, limit_s=limit, whole_rows=200)
    assert tight.kept and len(tight.kept) < len(names)
    assert all(c.estimate_s <= MEMBER_SHARE * limit for c in tight.costs if c.kept) or len(tight.kept) == 1
    assert any("left out: over 25%" in r for r in tight.reasons)


def test_a_table_no_larger_than_whole_rows_is_timed_once_whole(shared_datasets):
    """At most ``whole_rows`` rows (:data:`WHOLE_TABLE_ROWS` by default): the members are fit on the
    whole table once (no sample fit beside it) and that fit's seconds are the estimate."""
    config = competition_spec("titanic", shared_datasets / "titanic")
    full = config.read_train()
    assert WHOLE_TABLE_ROWS >= len(full)  # titanic itself is timed whole
    train = full.iloc[:300]
    small = measure_members(config, train, 3, limit_s=3600)
    assert small.sample_rows == (300, 300) and small.rows == 300
    assert small.how == "timed on all 300 rows"
    assert all(c.sample_s[0] == c.sample_s[1] == c.estimate_s > 0 for c in small.costs)
    assert all("on all 300 rows" in r and " and " not in r.split("(")[1] for r in small.reasons)


def test_a_sample_fits_the_boosters_with_the_whole_table_s_settings(shared_datasets):
    """A timing sample of a larger table learns at the larger table's rate: ``size_scale`` picks the
    boosters' size-dependent settings (:func:`boosting_defaults`) for the table the sample stands for,
    so early stopping keeps about as many rounds as it will on the table."""
    from lora_tasks.ensemble.gbm import SMALL_ROWS, boosting_defaults, catboost_member, lightgbm_member
    from lora_tasks.training.cv import make_folds

    assert boosting_defaults(SMALL_ROWS).learning_rate < boosting_defaults(SMALL_ROWS + 1).learning_rate
    frame = competition_spec("titanic", shared_datasets / "titanic").read_train()
    X, y = frame[["Pclass", "Age", "Fare", "SibSp", "Parch", "Sex"]], frame["Survived"].to_numpy()
    folds = make_folds(y, "classification", 3, 0)
    for member in (lightgbm_member, catboost_member):
        alone = member(X, y, folds, "binary")
        # the settings of a table 20x larger: a faster learning rate, so early stopping keeps fewer rounds
        scaled = member(X, y, folds, "binary", size_scale=20.0)
        assert sum(scaled.best_iterations) < sum(alone.best_iterations), (member, scaled.best_iterations,
                                                                           alone.best_iterations)


def test_members_are_timed_with_the_features_step_columns(shared_datasets, tmp_path, monkeypatch):
    """The members' cost includes the generated features (and their in-fold target encodings):
    the plan's features are built on each timing sample, and timings measured without them are
    not reused for a plan with them."""
    from lora_tasks.steps.plan import member_features

    monkeypatch.setenv("KAGGLE_LORA_MEMBER_COSTS", str(tmp_path / "member-costs"))
    config = competition_spec("titanic", shared_datasets / "titanic")
    train = config.read_train().iloc[:400]
    features = member_features(config, train)
    assert features.features  # titanic's Name, Ticket and Cabin fire
    plain = measure_members(config, train, 3, limit_s=3600)
    built = measure_members(config, train, 3, limit_s=3600, features=features)
    assert [c.name for c in built.costs] == [c.name for c in plain.costs]
    assert all(c.estimate_s > 0 for c in built.costs)
    assert len(list((tmp_path / "member-costs").glob("*.json"))) == 2


def test_a_run_s_seconds_on_the_whole_table_price_the_next_plan(shared_datasets, tmp_path, monkeypatch):
    """Boosting with early stopping does not scale like the samples' line: the next plan of a table
    takes what the last run measured on the whole table, and says so; a broken number in the cache
    is not used."""
    from lora_tasks.steps.member_timings import cache_dir, remember_round

    monkeypatch.setenv("KAGGLE_LORA_MEMBER_COSTS", str(tmp_path / "member-costs"))
    config = competition_spec("titanic", shared_datasets / "titanic")
    train = config.read_train().iloc[:400]
    first = measure_members(config, train, 3, limit_s=3600, whole_rows=200)
    assert not any(c.whole_table for c in first.costs) and first.how.startswith("timed on")
    measured = {c.name: round(c.estimate_s * 0.5 + 0.01, 3) for c in first.costs}
    assert remember_round(first.timing_key, measured)
    second = measure_members(config, train, 3, limit_s=3600, whole_rows=200)
    assert {c.name: c.estimate_s for c in second.costs} == measured
    assert all(c.whole_table for c in second.costs) and second.how == "measured on all 400 rows by an earlier run"
    assert all("what an earlier run of this table measured" in r for r in second.reasons)
    assert [c.sample_s for c in second.costs] == [c.sample_s for c in first.costs]
    # a number that is not finite makes the file unreadable: the next plan times the samples again
    path = cache_dir() / f"{first.timing_key}.json"
    path.write_text(path.read_text().replace(str(next(iter(measured.values()))), "NaN", 1))
    third = measure_members(config, train, 3, limit_s=3600, whole_rows=200)
    assert not any(c.whole_table for c in third.costs)
    assert all(c.estimate_s > 0 for c in third.costs)


def test_sample_labels_drop_rows_without_a_target(shared_datasets):
    from lora_tasks.steps.member_costs import sample_labels

    config = competition_spec("titanic", shared_datasets / "titanic")
    train = config.read_train().iloc[:50].copy()
    train.loc[3, "Survived"] = np.nan
    frame, y = sample_labels(train, config)
    assert len(frame) == len(y) == 49 and set(np.unique(y)) <= {0, 1}
    assert isinstance(frame, pd.DataFrame)
