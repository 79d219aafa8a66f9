"""Columns the members are better without: constant, identifiers, copies, and columns replaced
by their parts, each dropped with its reason.

Why: as AutoGluon's DropUniqueFeatureGenerator and DropDuplicatesFeatureGenerator do, a column
with one value teaches nothing, a string that never repeats is an identifier (a tree memorises
it), a row counter orders rows by file position, and a copy doubles a column's weight in a
linear model.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lora_tasks.features.records import FeatureKind, GeneratedFeature

#: A string column is an identifier when more than this share of its values are distinct
#: (AutoGluon's max_unique_ratio).
MAX_UNIQUE_SHARE = 0.99


def _drop(col: str, reason: str) -> GeneratedFeature:
    return GeneratedFeature(col, (col,), FeatureKind.DROP, reason, "drop")


def is_string(values: pd.Series) -> bool:
    return not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)


def find_useless_columns(train: pd.DataFrame, test: pd.DataFrame | None, columns: list[str], *,
                         text_columns: list[str], replaced: dict[str, list[str]]) -> list[GeneratedFeature]:
    """Drop records of ``columns``: constant, identifier strings (not free text), row counters,
    copies of an earlier column, and columns ``replaced`` by generated parts (column -> their names)."""
    found: list[GeneratedFeature] = []
    kept: list[str] = []
    for col in columns:
        values = train[col]
        distinct = values.nunique(dropna=False)
        parts = replaced.get(col, [])
        if distinct <= 1:
            first = values.iloc[0] if len(values) else None
            first = first.item() if isinstance(first, np.generic) else first
            found.append(_drop(col, f"one value in every training row ({first!r})"))
        elif is_string(values) and col not in text_columns and distinct > MAX_UNIQUE_SHARE * len(values):
            kept_as = f"; kept as {', '.join(parts)}" if parts else ""
            found.append(_drop(col, f"{distinct} distinct values in {len(values)} rows: an identifier, nothing repeats{kept_as}"))
        elif parts and _all_dates(parts):
            found.append(_drop(col, f"a timestamp: replaced by its parts {', '.join(parts[:4])}, ..."))
        elif _row_counter(values):
            found.append(_drop(col, "counts rows in file order (each value the previous plus one): an index, not a feature"))
        else:
            twin = next((k for k in kept if _same(train, test, k, col)), None)
            if twin is not None:
                found.append(_drop(col, f"a copy of `{twin}` in every row"))
            else:
                kept.append(col)
    return found


def _all_dates(parts: list[str]) -> bool:
    return any(p.endswith("_time") for p in parts)


def _row_counter(values: pd.Series) -> bool:
    if not pd.api.types.is_integer_dtype(values) or len(values) < 3:
        return False
    steps = np.diff(values.to_numpy(dtype=np.int64))
    return bool(np.all(steps == 1))


def _same(train: pd.DataFrame, test: pd.DataFrame | None, a: str, b: str) -> bool:
    if not train[a].equals(train[b]) and not train[a].astype(str).equals(train[b].astype(str)):
        return False
    if test is None or a not in test.columns or b not in test.columns:
        return True
    return bool(test[a].astype(str).equals(test[b].astype(str)))
