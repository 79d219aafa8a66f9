"""High-cardinality categoricals: frequency counts, and target encoding fit inside the folds.

Why: a tree splits an ordinal-coded category of hundreds of values poorly (the members cap it
at a few dozen codes), and a linear model gets one sparse column per value. How often a value
occurs (a ticket shared by a family of five) needs no target; the mean target per value does,
so it is fit on each fold's training rows only (:func:`target_encoding_transform`, a step of the
members' fold pipeline) and never computed here, where the target is not seen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from lora_tasks.features.records import FeatureKind, GeneratedFeature
from lora_tasks.task import Task

#: A categorical is high-cardinality with more distinct values than this.
HIGH_CARDINALITY = 15
#: Target encoding needs values that repeat: at least this share of rows share their value.
MIN_REPEATED_SHARE = 0.2
#: Folds of the cross-fitting inside a fold's training rows (scikit-learn's TargetEncoder).
INNER_FOLDS = 5


def frequency(values: pd.Series) -> pd.Series:
    """How many rows (of ``values``: train and test together) hold each row's value; missing
    values count as one group."""
    keys = values.astype(object).where(values.notna(), "\0missing")
    return keys.map(keys.value_counts()).astype(float)


def find_category_features(frame: pd.DataFrame, columns: list[str], task: Task | None
                           ) -> tuple[list[GeneratedFeature], list[str]]:
    """Frequency and target-encoding records of the high-cardinality string ``columns`` of
    ``frame`` (training rows, generated categoricals included), and notes on what was skipped."""
    found: list[GeneratedFeature] = []
    notes: list[str] = []
    for col in columns:
        values = frame[col]
        distinct = int(values.nunique())
        if distinct <= HIGH_CARDINALITY:
            continue
        counts = frequency(values)
        if counts.nunique() > 1:
            found.append(GeneratedFeature(
                f"{col}_frequency", (col,), FeatureKind.FREQUENCY,
                f"{distinct} distinct values (high cardinality): how many rows share each one", "frequency"))
        present = values.notna()
        repeated = float(counts[present].gt(1).mean()) if present.any() else 0.0
        if repeated < MIN_REPEATED_SHARE:
            continue
        if task is not None and task.multi_output:
            notes.append(f"no target encoding of `{col}`: the target has several columns ({task.value})")
            continue
        found.append(GeneratedFeature(
            f"{col}_target_mean", (col,), FeatureKind.TARGET_ENCODING,
            f"{distinct} distinct values, {repeated:.0%} of rows with a value share it: the mean target per value, "
            "fit inside each fold on its training rows only", "target_mean"))
    return found, notes


def target_encoding_transform(columns: tuple[str, ...] | list[str], task: Task | str,
                              seed: int = 0) -> Callable[[Any], Any] | None:
    """A per-fold transform of the members' fold loop
    (:data:`lora_tasks.ensemble.folds.FoldTransform`) that adds each column's target encoding as
    ``<column>_target_mean`` (one per class for a multiclass target): fit with the fold's
    training rows (cross-fitted among them, so a training row's own target never encodes it) and
    applied to its held-out and test rows. None without columns or for multi-output targets
    (scikit-learn's encoder takes one target)."""
    task = Task.parse(task)
    if not columns or task.multi_output:
        return None
    from sklearn.model_selection import KFold, StratifiedKFold
    from sklearn.preprocessing import TargetEncoder

    cols = list(columns)
    target_type = "continuous" if task.is_regression else task.sklearn_kind
    split = KFold if task.is_regression else StratifiedKFold

    def encoded(frame: pd.DataFrame, values: np.ndarray, names: list[str]) -> pd.DataFrame:
        return frame.assign(**{f"{n}_target_mean": values[:, i] for i, n in enumerate(names)})

    def transform(data: Any) -> Any:
        encoder = TargetEncoder(target_type=target_type, cv=split(INNER_FOLDS, shuffle=True, random_state=seed))
        train_values = encoder.fit_transform(data.train[cols].astype("object"), data.y_train)
        names = [str(n) for n in encoder.get_feature_names_out()]
        test = None if data.test is None else encoded(data.test, encoder.transform(data.test[cols].astype("object")), names)
        return replace(data, train=encoded(data.train, train_values, names),
                       valid=encoded(data.valid, encoder.transform(data.valid[cols].astype("object")), names), test=test)

    return transform

