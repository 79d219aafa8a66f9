"""The label cut of binary F1 submissions, fit on out-of-fold rows (lora_tasks.ensemble.thresholds)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, matthews_corrcoef

from lora_tasks.ensemble.thresholds import (
    GRID,
    best_threshold,
    check_setting,
    fixed_threshold,
    nested_threshold_score,
    tunes_threshold,
)
from lora_tasks.task import Task


def calibrated(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from their own probabilities: P(y=1 | p) = p, about 30% positives."""
    rng = np.random.default_rng(seed)
    p = rng.beta(1.2, 2.8, size=n)
    return (rng.random(n) < p).astype(np.int64), p


def test_the_f1_cut_of_calibrated_probabilities_is_half_the_f1_it_reaches():
    """Lipton et al. 2014: for calibrated scores the F1-optimal cut is F1*/2, well below 0.5."""
    y, p = calibrated(40_000)
    cut = best_threshold("f1", y, p)
    reached = f1_score(y, p >= cut)
    assert cut < 0.45
    assert cut == pytest.approx(reached / 2, abs=0.03)
    assert reached > f1_score(y, p >= 0.5) + 0.02


def test_a_plateau_keeps_the_cut_nearest_one_half():
    y = np.array([0] * 50 + [1] * 50)
    p = np.where(y == 1, 0.9, 0.1)  # every cut in (0.1, 0.9] is perfect
    assert best_threshold("f1", y, p) == 0.5
    p = np.where(y == 1, 0.3, 0.05)  # perfect cuts only in (0.05, 0.3]
    cut = best_threshold("f1", y, p)
    assert 0.05 < cut <= 0.3 and f1_score(y, p >= cut) == 1.0


def test_the_nested_score_pays_for_fitting_the_cut_to_noise():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 600)
    p = rng.random(600)  # unrelated to y: any cut that looks better in-sample is luck
    folds = np.arange(600) % 5
    in_sample = f1_score(y, p >= best_threshold("f1", y, p))
    assert nested_threshold_score("f1", y, p, folds) < in_sample
    y, p = calibrated(5_000, seed=2)
    folds = np.arange(5_000) % 5
    assert nested_threshold_score("f1", y, p, folds) > f1_score(y, p >= 0.5) + 0.02  # real signal survives


def test_which_settings_tune():
    assert tunes_threshold("auto", "f1", binary=True)
    assert not tunes_threshold("auto", "accuracy", binary=True), "0.5 is already the accuracy-optimal cut"
    assert not tunes_threshold("auto", "f1", binary=False)
    assert not tunes_threshold(0.4, "f1", binary=True), "a configured number is kept"
    assert fixed_threshold("auto") == 0.5 and fixed_threshold(0.3) == 0.3


@pytest.mark.parametrize("bad", ["0.4", "tuned", 1.5, 0, True, None])
def test_bad_settings_name_the_fix(bad):
    with pytest.raises(ValueError, match=r'"auto".*number in \(0, 1\)'):
        check_setting(bad)
    assert check_setting("auto") == "auto" and check_setting(0.35) == 0.35


def test_best_threshold_wants_binary_probabilities():
    with pytest.raises(ValueError, match="1-D binary probabilities"):
        best_threshold("f1", np.array([0, 1]), np.array([[0.2, 0.8], [0.6, 0.4]]))
    assert GRID.min() > 0 and GRID.max() < 1


def test_the_mcc_cut_is_tuned_too_and_beats_one_half():
    y, p = calibrated(20_000, seed=3)
    cut = best_threshold("mcc", y, p)
    assert cut < 0.5
    assert matthews_corrcoef(y, p >= cut) > matthews_corrcoef(y, p >= 0.5) + 0.01
    assert tunes_threshold("auto", "mcc", binary=True)
    assert tunes_threshold("auto", "Matthews_corrcoef", "binary_classification")


def test_multi_output_tasks_take_no_cut():
    assert not tunes_threshold("auto", "f1", Task.MULTILABEL)
    assert not tunes_threshold("auto", "mcc", "multiclass")
    assert tunes_threshold("auto", "f1", Task.BINARY)
    with pytest.raises(ValueError, match="multilabel columns have no single cut"):
        best_threshold("f1", np.zeros((4, 3)), np.full((4, 3), 0.5))


def test_nan_probabilities_are_refused_with_the_row_count():
    y, p = calibrated(100)
    p[[3, 7]] = np.nan
    with pytest.raises(ValueError, match=r"2 of 100 probabilities are NaN or inf \(first at row 3\)"):
        best_threshold("f1", y, p)
    with pytest.raises(ValueError, match="2 of 100"):
        nested_threshold_score("f1", y, p, np.arange(100) % 5)
