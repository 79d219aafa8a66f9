"""The one target-derived feature, the target encoding, is computed inside the members' folds
only. On a pure-noise target nothing can be learned: a target encoding fit on all rows (outside
the folds) scores far above chance out of fold, and these tests fail if the members' encoding
ever does."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from lora_tasks.ensemble.members import linear_member, table_members, tabular_member
from lora_tasks.features import build_features, find_features
from lora_tasks.features.categories import target_encoding_transform
from lora_tasks.training.cv import make_folds

#: Out-of-fold AUC on a noise target: chance is 0.5, and 600 rows put 3 standard errors near 0.57.
CHANCE_AUC = 0.58


@pytest.fixture(scope="module")
def noise():
    """600 rows of a 150-value category (4 rows each) and a coin-flip target independent of it."""
    rng = np.random.default_rng(7)
    n = 600
    frame = pd.DataFrame({"group": [f"g{i}" for i in rng.permutation(np.repeat(np.arange(150), 4))],
                          "x": rng.normal(size=n)})
    y = rng.integers(0, 2, n)
    folds = make_folds(y, "binary_classification", 5, seed=0)
    return frame, y, folds


def _auc(result, y) -> float:
    return float(roc_auc_score(y, result.oof))


def test_a_target_encoding_fit_outside_the_folds_scores_the_impossible(noise):
    """What the test guards against: the mean target per group over all rows, one column more,
    predicts held-out coin flips (each row's own flip is a quarter of its group's mean)."""
    frame, y, folds = noise
    leaky = frame.assign(group_mean=pd.Series(y).groupby(frame["group"]).transform("mean"))
    result = tabular_member(leaky[["group_mean", "x"]], y, folds, "binary", max_iter=50)
    assert _auc(result, y) > 0.65  # far outside chance (CHANCE_AUC)


@pytest.mark.parametrize("member", [tabular_member, linear_member])
def test_the_members_target_encoding_learns_nothing_from_noise(noise, member):
    frame, y, folds = noise
    kw = {"max_iter": 50} if member is tabular_member else {}
    result = member(frame, y, folds, "binary", transform=target_encoding_transform(("group",), "binary"), **kw)
    assert abs(_auc(result, y) - 0.5) < CHANCE_AUC - 0.5


def test_the_features_step_end_to_end_learns_nothing_from_noise(noise):
    """find_features names the encoding, build_features leaves it out, table_members fits it in
    each fold: out-of-fold the noise stays noise."""
    frame, y, folds = noise
    train = frame.assign(target=y)
    plan = find_features(train, columns=["group", "x"], task="binary")
    assert plan.target_encoded == ("group",)
    built = build_features(plan, train)
    assert all(c in ("group", "x", "group_number") for c in built.train.columns), built.train.columns
    for result in table_members(train, y, folds, "binary", exclude=("target",), generated=built):
        assert abs(_auc(result, y) - 0.5) < CHANCE_AUC - 0.5, result.name


def test_the_encoding_carries_signal_when_there_is_some(noise):
    """The same encoding is no dummy: a target that follows the groups is learned from it."""
    frame, _, folds = noise
    rng = np.random.default_rng(3)
    rate = dict(zip([f"g{i}" for i in range(150)], rng.uniform(0, 1, 150), strict=True))
    y = (rng.uniform(size=len(frame)) < frame["group"].map(rate)).astype(int).to_numpy()
    plain = tabular_member(frame[["x"]], y, folds, "binary", max_iter=50)
    encoded = tabular_member(frame, y, folds, "binary", transform=target_encoding_transform(("group",), "binary"), max_iter=50)
    assert _auc(encoded, y) > _auc(plain, y) + 0.1


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_the_encoding_fits_other_targets(noise, task):
    frame, _, folds = noise
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, len(frame)) if task == "multiclass" else rng.normal(size=len(frame))
    result = tabular_member(frame, y, folds, task, frame, transform=target_encoding_transform(("group",), task), max_iter=20, bag=1)
    assert result.oof.shape == ((len(frame), 3) if task == "multiclass" else (len(frame),))
    assert np.isfinite(result.oof).all() and np.isfinite(result.test).all()
