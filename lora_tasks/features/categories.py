"""High-cardinality categoricals: frequency counts, and target encoding fit inside the folds.

Why: a tree splits an ordinal-coded category of hundreds of values poorly (the members cap it
at a few dozen codes), and a linear model gets one sparse column per value. How often a value
occurs (a ticket shared by a family of five) needs no target; the mean target per value does,
so it is fit on each fold's training rows only (:func:`fold_target_encoder`, a step of the
members' fold pipeline) and never computed here, where the target is not seen.
"""

from __future__ import annotations

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


def fold_target_encoder(columns: tuple[str, ...] | list[str], task: Task | str, seed: int = 0, *,
                        scale: bool = False) -> list[tuple]:
    """The ``ColumnTransformer`` entry that target-encodes ``columns`` inside a fold: fit with the
    fold's training rows (cross-fitted among them, so a training row's own target never encodes
    it) and applied to its held-out and test rows. Empty without columns or for multi-output
    targets (scikit-learn's encoder takes one target). ``scale``: standardize the encodings (for
    a penalized linear model, whose penalty assumes one scale)."""
    task = Task.parse(task)
    if not columns or task.multi_output:
        return []
    from sklearn.model_selection import KFold, StratifiedKFold
    from sklearn.preprocessing import TargetEncoder

    target_type = "continuous" if task.is_regression else task.sklearn_kind
    split = KFold if task.is_regression else StratifiedKFold
    encoder = TargetEncoder(target_type=target_type, cv=split(INNER_FOLDS, shuffle=True, random_state=seed))
    if scale:
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        encoder = make_pipeline(encoder, StandardScaler())
    return [("target_mean", encoder, list(columns))]
