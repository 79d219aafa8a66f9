"""Rows far outside the training range: the linear and kernel members step aside for the trees."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lora_tasks.ensemble.folds import MemberPredictions
from lora_tasks.ensemble.members import table_members
from lora_tasks.ensemble.support import OUT_OF_RANGE_SHARE, beyond_range, guard_extrapolation, out_of_range


def test_a_row_counts_as_outside_only_far_past_the_edge():
    train = pd.DataFrame({"area": [100.0, 150.0, 200.0], "same": [1, 1, 1], "flag": [True, False, True]})
    rows = pd.DataFrame({
        "area": [210.0, 100.0 + 100 * (1 + OUT_OF_RANGE_SHARE) + 1, np.nan, 100 - 100 * OUT_OF_RANGE_SHARE - 1],
        "same": [50, 1, 1, 1],  # a constant training column has no range to leave
        "flag": [False, True, True, False],
    })
    outside, columns = beyond_range(train, rows)
    assert outside.tolist() == [False, True, False, True]  # 5% past the edge is usual spread; NaN is imputed
    assert columns == {"area"}
    text = pd.DataFrame({"area": ["unknown", "900"], "same": [1, 1], "flag": [True, True]}, dtype=object)
    assert beyond_range(train, text)[0].tolist() == [False, True]  # a test column read as text still counts


def test_held_out_fold_rows_are_judged_against_their_fold_only():
    X = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 40.0, 9.0]})
    found = out_of_range(X, np.arange(10) % 2, pd.DataFrame({"x": [3.0, 100.0]}))
    assert found.oof_rows.tolist() == [False] * 8 + [True, False]  # 40 against 2..9; 2..9 against 1..40
    assert found.test_rows.tolist() == [False, True]
    assert "1 test row(s) and 1 held-out fold row(s)" in found.describe() and "(in x)" in found.describe()


def _member(name: str, value: float, extrapolates: bool) -> MemberPredictions:
    return MemberPredictions(name, np.full(4, value), np.full(3, value), np.zeros(4, int), extrapolates=extrapolates)


def test_extrapolating_members_take_the_mean_of_the_others_on_those_rows_only():
    linear, trees = _member("linear", 9.0, True), [_member("lightgbm", 1.0, False), _member("catboost", 2.0, False)]
    found = out_of_range(pd.DataFrame({"x": [1.0, 2.0, 3.0, 99.0]}), np.array([0, 1, 0, 1]),
                         pd.DataFrame({"x": [1.5, 500.0, 2.0]}))
    notes = guard_extrapolation([linear, *trees], found)
    assert linear.test.tolist() == [9.0, 1.5, 9.0] and linear.oof.tolist() == [9.0, 9.0, 9.0, 1.5]
    assert [t.test.tolist() for t in trees] == [[1.0] * 3, [2.0] * 3]  # the trees keep their own
    assert len(notes) == 1 and "linear take the mean of lightgbm, catboost" in notes[0]
    alone = _member("linear", 9.0, True)
    assert guard_extrapolation([alone], found) == [] and alone.test.tolist() == [9.0] * 3  # nobody to step in


def test_the_linear_member_does_not_carry_a_slope_far_past_the_training_range():
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"size": rng.uniform(50, 250, 300), "rooms": rng.integers(1, 6, 300).astype(float)})
    y = 3.0 * X["size"].to_numpy() + rng.normal(0, 5, 300)
    X_test = pd.DataFrame({"size": [100.0, 2000.0], "rooms": [3.0, 3.0]})
    folds = np.arange(300) % 3
    members = {m.name: m for m in table_members(X, y, folds, "regression", X_test, seed=0,
                                                only=("hist_gbm", "linear", "svr"))}
    assert members["linear"].extrapolates and not members["hist_gbm"].extrapolates
    # inside the range the linear member keeps its own slope; far outside it gives the tree's value,
    # near the largest target seen, not 3 x 2000
    assert abs(members["linear"].test[0] - 300.0) < 15
    assert members["linear"].test[1] == members["svr"].test[1] == members["hist_gbm"].test[1]
    assert members["linear"].test[1] < 1.1 * y.max()
