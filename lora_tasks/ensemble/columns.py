"""Which feature columns a tabular member sees, and as what: categorical, numeric or dropped.

Why one rule for every member: the members must agree on what a category is (object, category and
bool columns) and on which text columns are identifiers rather than categories (more distinct
values than half the rows: names, ticket numbers), so their OOF predictions differ by model, not
by input. Applied per fold (on the fold's training rows), so features a fold transform adds are
sorted like the rest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.preprocessing import FunctionTransformer, OrdinalEncoder

from lora_tasks.ensemble.folds import as_frame

log = logging.getLogger("lora_tasks.ensemble.members")

ID_LIKE_SHARE = 0.5  # text columns with more distinct values than this share of rows carry no category


@dataclass(frozen=True)
class Columns:
    """A table's feature columns by kind; ``dropped``: identifier-like text columns."""

    categorical: tuple[str, ...]
    numeric: tuple[str, ...]
    dropped: tuple[str, ...]

    @property
    def used(self) -> list[str]:
        return [*self.categorical, *self.numeric]

    @classmethod
    def of(cls, X: pd.DataFrame) -> Columns:
        cat = [c for c in X.columns if not pd.api.types.is_numeric_dtype(X[c]) or pd.api.types.is_bool_dtype(X[c])]
        dropped = [c for c in cat if X[c].nunique(dropna=True) > ID_LIKE_SHARE * len(X)]
        cat = [c for c in cat if c not in dropped]
        num = [c for c in X.columns if c not in cat and c not in dropped]
        return cls(tuple(cat), tuple(num), tuple(dropped))


def table_columns(X: pd.DataFrame, name: str) -> Columns:
    """The columns of the whole table (for the member's record), logging the dropped ones."""
    cols = Columns.of(X)
    if cols.dropped:
        log.info("%s: dropping identifier-like columns %s", name, list(cols.dropped))
    return cols


def check_test_columns(X_test: pd.DataFrame | None, columns: list[str]) -> pd.DataFrame | None:
    if X_test is None:
        return None
    X_test = as_frame(X_test, "X_test")
    missing = [c for c in columns if c not in X_test.columns]
    if missing:
        raise ValueError(f"X_test lacks columns {missing} that X has; pass the same feature columns for both.")
    return X_test[columns]


def categoricals_as_objects(df: pd.DataFrame, cat_cols: list[str] | tuple[str, ...]) -> pd.DataFrame:
    """One dtype per categorical column: mixed str/NaN objects confuse the encoders' sort."""
    df = df.copy()
    for c in cat_cols:
        df[c] = df[c].astype("string").astype(object).where(df[c].notna(), np.nan)
    return df


def feature_frames(X: pd.DataFrame, X_test: pd.DataFrame | None,
                    name: str) -> tuple[pd.DataFrame, pd.DataFrame | None, list[str]]:
    """The train and test frames a tabular member's folds start from (every column of ``X``: a
    fold transform may read those the member drops), and the identifier-like columns dropped."""
    X = as_frame(X, "X")
    cols = table_columns(X, name)
    return X, check_test_columns(X_test, list(X.columns)), list(cols.dropped)


def column_selector(cols: Columns) -> FunctionTransformer:
    """The pipeline's first step: the member's columns, categoricals as one dtype."""
    return FunctionTransformer(lambda df: categoricals_as_objects(df[cols.used], cols.categorical))



def ordinal_encoding(cols: Columns, max_categories: int | None = None) -> ColumnTransformer:
    """The tree members' encoding: categoricals as ordinal codes (unseen and missing values as
    NaN, which the trees route natively; ``max_categories``: rarer ones share a code), numeric
    columns as they are, in that order (categoricals first)."""
    return ColumnTransformer([
        ("cat", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan, encoded_missing_value=np.nan,
                               max_categories=max_categories), list(cols.categorical)),
        ("num", "passthrough", list(cols.numeric)),
    ])


__all__ = ["ID_LIKE_SHARE", "Columns", "categoricals_as_objects", "check_test_columns", "column_selector", "feature_frames", "ordinal_encoding",
           "table_columns"]
