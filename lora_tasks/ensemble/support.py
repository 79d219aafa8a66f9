"""Rows that lie far outside what the training rows spanned, where members that extrapolate step aside.

Why: a linear model (a slope per column) and a kernel model fitted on the training rows carry their
fit beyond the training range without limit. One test row far outside it (a house twice the size of
any sold, a garage built in 2207) then gets a prediction no training row supports, and a single such
row can decide a held-out score. Trees predict inside the range of the targets they saw. So on such
rows, the extrapolating members' predictions are replaced by the mean of the members that do not
extrapolate, before the blend: the blend's weights then apply unchanged, and those rows are in effect
predicted by the trees. The same rule runs on each fold's held-out rows (against that fold's training
rows), so the out-of-fold predictions the blend weighs are made the way the test predictions are.

A row is "outside" when one of its numeric columns lies beyond the training minimum or maximum by
more than :data:`OUT_OF_RANGE_SHARE` of that column's range: far enough that the usual spread of a
test set (a few percent past the edge) never fires it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lora_tasks.ensemble.folds import MemberPredictions

log = logging.getLogger("lora_tasks.ensemble.members")

#: How far past the training range, as a share of that range, a numeric value must lie to count.
OUT_OF_RANGE_SHARE = 0.5


@dataclass(frozen=True)
class OutOfRange:
    """Which rows lie outside the training range, and through which columns."""

    oof_rows: np.ndarray  # bool per train row: outside the range of its fold's training rows
    test_rows: np.ndarray | None  # bool per test row: outside the range of every train row
    columns: tuple[str, ...]

    @property
    def any(self) -> bool:
        return bool(self.oof_rows.any() or (self.test_rows is not None and self.test_rows.any()))

    def describe(self) -> str:
        test = 0 if self.test_rows is None else int(self.test_rows.sum())
        return (f"{test} test row(s) and {int(self.oof_rows.sum())} held-out fold row(s) lie beyond the training "
                f"range by more than {OUT_OF_RANGE_SHARE:.0%} of it (in {', '.join(self.columns)})")


def _numeric(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns
            if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])]


def beyond_range(reference: pd.DataFrame, rows: pd.DataFrame,
                 share: float = OUT_OF_RANGE_SHARE) -> tuple[np.ndarray, set[str]]:
    """(bool per row of ``rows``: outside ``reference``'s range, the columns that put rows outside).

    Missing values count as inside (the members impute them); constant columns are skipped."""
    columns = [c for c in _numeric(reference) if c in rows.columns]
    if not columns or len(reference) == 0:
        return np.zeros(len(rows), dtype=bool), set()
    ref = reference[columns].astype(float)
    low, high = ref.min(), ref.max()
    span = (high - low).replace(0.0, np.nan)
    values = rows[columns].apply(pd.to_numeric, errors="coerce").astype(float)  # text in a test column: inside
    excess = np.fmax((values - high) / span, (low - values) / span).fillna(0.0) > share
    return excess.any(axis=1).to_numpy(), {str(c) for c in excess.columns[excess.any(axis=0)]}


def out_of_range(X: pd.DataFrame, folds: np.ndarray, X_test: pd.DataFrame | None,
                 share: float = OUT_OF_RANGE_SHARE) -> OutOfRange:
    """Each held-out fold row against its fold's training rows, each test row against all train rows."""
    folds = np.asarray(folds)
    oof = np.zeros(len(X), dtype=bool)
    columns: set[str] = set()
    for fold in np.unique(folds[folds >= 0]):
        held = folds == fold
        rows, cols = beyond_range(X[~held], X[held], share)
        oof[held] = rows
        columns |= cols
    test = None
    if X_test is not None:
        test, cols = beyond_range(X, X_test, share)
        columns |= cols
    return OutOfRange(oof, test, tuple(sorted(columns)))


def guard_extrapolation(members: Sequence[MemberPredictions], found: OutOfRange) -> list[str]:
    """Replace the extrapolating members' predictions on ``found``'s rows by the mean of the other
    members' (in place); returns what was done, for the log and the plan, or nothing when no row is
    outside, no member extrapolates, or none is left to step in."""
    moving = [m for m in members if m.extrapolates]
    steady = [m for m in members if not m.extrapolates]
    if not found.any or not moving or not steady:
        return []
    oof_mean = np.mean([np.asarray(m.oof, dtype=float) for m in steady], axis=0)
    test_mean = None
    if found.test_rows is not None and all(m.test is not None for m in steady):
        test_mean = np.mean([np.asarray(m.test, dtype=float) for m in steady], axis=0)
    for m in moving:
        m.oof = np.asarray(m.oof, dtype=float).copy()
        m.oof[found.oof_rows] = oof_mean[found.oof_rows]
        if test_mean is not None and m.test is not None:
            m.test = np.asarray(m.test, dtype=float).copy()
            m.test[found.test_rows] = test_mean[found.test_rows]
    note = (f"{found.describe()}: there {', '.join(m.name for m in moving)} take the mean of "
            f"{', '.join(m.name for m in steady)}, which do not extrapolate")
    log.info("members: %s", note)
    return [note]


__all__ = ["OUT_OF_RANGE_SHARE", "OutOfRange", "beyond_range", "guard_extrapolation", "out_of_range"]
