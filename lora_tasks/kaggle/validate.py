"""Check a submission file against the sample submission before anything is uploaded.

Why this strict: Kaggle allows a few submissions a day and reports a wrong format only after
scoring (or scores it 0). A file can have the right header and ids and still be wrong in
spelling: ``0``/``1`` where the competition wants ``False``/``True``, ``1.0`` where it wants
the integer label ``1``, ids in another order. So both files are read as raw text
(``dtype=str``, no NA guessing) and every value is checked as written. All problems are
reported at once, each naming the column, an example row (id and value) and what was expected.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Mapping, Sequence

import numpy as np
import pandas as pd

from lora_tasks.data.csv_io import read_csv
from lora_tasks.hashing import sha256_file as file_sha256

from .errors import SubmissionValidationError

#: Kinds a value column can be asked to hold (``dtypes``); "bool" means the words True/False.
KINDS = ("int", "float", "str", "bool")
ROW_SUM_TOLERANCE = 1e-6
_MISSING_WORDS = {"", "nan", "na", "n/a", "null", "none", "<na>"}
_INTEGER = re.compile(r"[+-]?\d+")
_BOOL_SPELLINGS = ({"True", "False"}, {"true", "false"}, {"TRUE", "FALSE"})


@dataclass(frozen=True)
class SubmissionCheck:
    """What :func:`validate_submission` verified, for logs and artifacts."""

    path: Path
    rows: int
    columns: tuple[str, ...]
    sha256: str


def validate_submission(
    path: str | os.PathLike[str],
    sample_submission_path: str | os.PathLike[str],
    *,
    id_column: str | None = None,
    dtypes: Mapping[str, str] | None = None,
    allowed_values: Mapping[str, Collection[str]] | None = None,
    probability_columns: Sequence[str] = (),
    rows_sum_to_one: bool = False,
) -> SubmissionCheck:
    """Check ``path`` against ``sample_submission_path``; raise :class:`SubmissionValidationError`.

    Checks: the same columns in the same order; the same row count; the same ids, no
    duplicates, in the sample's (= test.csv's) order, compared as written (``0013_01`` stays
    text). Then per value column:

    * ``allowed_values[col]``: every value is one of these exact strings (labels as train.csv
      and the sample spell them: ``"True"`` is not ``"1"``, ``"3"`` is not ``"3.0"``);
    * ``probability_columns``: numeric, finite and within [0, 1]; with ``rows_sum_to_one``
      each row of them sums to 1 within 1e-6 (multiclass probabilities);
    * otherwise by kind, ``dtypes[col]`` (``int``, ``float``, ``str``, ``bool``) or inferred
      from the sample's spelling: ``int`` wants integers written without a fraction, ``float``
      any finite number, ``bool`` the sample's True/False words; ``str`` only non-empty.
      A sample written in True/False words is always checked as ``bool``.

    ``id_column`` defaults to the sample's first column.
    """
    path, sample_path = Path(path), Path(sample_submission_path)
    if not path.is_file():
        raise SubmissionValidationError(f"Submission file {path} does not exist.", [f"missing {path}"])
    sample = _read_text_csv(sample_path, "sample submission")
    frame = _read_text_csv(path, "submission")
    id_col = id_column or str(sample.columns[0])
    problems = _header_and_id_problems(frame, sample, id_col)
    row_names = _row_names(frame, id_col)
    allowed = {col: {str(v) for v in values} for col, values in (allowed_values or {}).items()}
    probabilities = list(probability_columns)
    for column in probabilities + list(allowed):
        if column not in sample.columns:
            problems.append(f"column {column!r} was named for checking but is not in the sample submission")
    wanted = dict(dtypes or {})
    unknown_kinds = sorted({k for k in wanted.values() if k not in KINDS})
    if unknown_kinds:
        raise ValueError(f"dtypes kinds {unknown_kinds} are not known; use one of {KINDS}")
    for column in [c for c in sample.columns if c != id_col and c in frame.columns]:
        values = frame[column]
        if column in allowed:
            problems.extend(_label_problems(column, values, allowed[column], row_names))
        elif column in probabilities:
            problems.extend(_number_problems(column, values, "float", row_names, unit_interval=True))
        else:
            inferred = _kind_of(sample[column])
            # The sample's True/False words are Kaggle's own answer; they outrank a caller's guess.
            kind = inferred if inferred == "bool" else wanted.get(column) or inferred
            if kind == "bool":
                problems.extend(_label_problems(column, values, _bool_words(sample[column]), row_names))
            elif kind == "str":
                problems.extend(_missing_problems(column, values, row_names, "a value"))
            else:
                problems.extend(_number_problems(column, values, kind, row_names))
    present = [c for c in probabilities if c in frame.columns]
    if rows_sum_to_one and present:
        problems.extend(_row_sum_problems(frame, present, row_names))
    if problems:
        raise SubmissionValidationError(
            f"Submission {path.name} does not match {sample_path.name}: " + "; ".join(problems)
            + ". Fix the file; nothing was uploaded.",
            problems,
        )
    return SubmissionCheck(path=path, rows=len(frame), columns=tuple(frame.columns), sha256=file_sha256(path))


def _read_text_csv(path: Path, what: str) -> pd.DataFrame:
    """Cells as written, read the way the data layer read the competition's files (latin-1 when
    not UTF-8, as older competitions ship them): ids the run took from test.csv must compare
    equal to the sample's."""
    try:
        return read_csv(path, as_text=True)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise SubmissionValidationError(f"The {what} {path} is not a readable CSV: {exc}", [str(exc)]) from exc


def _header_and_id_problems(frame: pd.DataFrame, sample: pd.DataFrame, id_col: str) -> list[str]:
    problems: list[str] = []
    got, want = list(frame.columns), list(sample.columns)
    if got != want:
        missing = [c for c in want if c not in got]
        extra = [c for c in got if c not in want]
        detail = (f"; missing {missing}" if missing else "") + (f"; unexpected {extra}" if extra else "")
        problems.append(f"columns are {got} but sample_submission has {want} (same names, same order){detail}")
    if len(frame) != len(sample):
        problems.append(f"{len(frame)} rows but sample_submission has {len(sample)}")
    if id_col not in frame.columns or id_col not in sample.columns:
        return problems
    ids, expected = frame[id_col], sample[id_col]
    duplicated = ids[ids.duplicated()].unique().tolist()
    if duplicated:
        problems.append(f"duplicate {id_col} values, e.g. {duplicated[:5]}")
    unknown = sorted(set(ids) - set(expected))
    absent = sorted(set(expected) - set(ids))
    if unknown:
        problems.append(f"{len(unknown)} {id_col} values not in sample_submission, e.g. {unknown[:5]}")
    if absent:
        problems.append(f"{len(absent)} {id_col} values of sample_submission missing, e.g. {absent[:5]}")
    if not (duplicated or unknown or absent) and len(ids) == len(expected):
        differs = np.flatnonzero(ids.to_numpy() != expected.to_numpy())
        if differs.size:
            row = int(differs[0])
            problems.append(
                f"{id_col} values are in another order than sample_submission ({differs.size} rows "
                f"differ; first at row {row + 1}: got {ids.iloc[row]!r}, expected {expected.iloc[row]!r}); "
                "keep test.csv's order"
            )
    return problems


def _row_names(frame: pd.DataFrame, id_col: str) -> pd.Series:
    """How a row is named in messages: ``id=<value>`` when the id column exists, else its number."""
    if id_col in frame.columns:
        return f"{id_col}=" + frame[id_col]
    return pd.Series([f"row {i + 1}" for i in range(len(frame))], index=frame.index)


def _example(bad: pd.Series, values: pd.Series, row_names: pd.Series) -> str:
    first = bad[bad].index[0]
    return f"{_rows(int(bad.sum()))}, e.g. {row_names[first]}: {values[first]!r}"


def _rows(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"


def _is_missing(values: pd.Series) -> pd.Series:
    return values.str.strip().str.lower().isin(_MISSING_WORDS)


def _missing_problems(column: str, values: pd.Series, row_names: pd.Series, expected: str) -> list[str]:
    missing = _is_missing(values)
    if not missing.any():
        return []
    return [f"column {column!r} has empty/NaN values: {_example(missing, values, row_names)}; expected {expected}"]


def _label_problems(column: str, values: pd.Series, allowed: set[str], row_names: pd.Series) -> list[str]:
    shown = sorted(allowed)[:10]
    problems = _missing_problems(column, values, row_names, f"one of {shown}")
    outside = ~values.isin(allowed) & ~_is_missing(values)
    if outside.any():
        problems.append(
            f"column {column!r} has values that are not allowed labels: {_example(outside, values, row_names)}; "
            f"expected exactly one of {shown} (spelled as in train.csv and the sample submission)"
        )
    return problems


def _number_problems(
    column: str, values: pd.Series, kind: str, row_names: pd.Series, *, unit_interval: bool = False
) -> list[str]:
    what = "probabilities in [0, 1]" if unit_interval else ("integers" if kind == "int" else "numbers")
    problems = _missing_problems(column, values, row_names, what)
    present = ~_is_missing(values)
    numbers = pd.to_numeric(values.where(present), errors="coerce")
    text = present & numbers.isna()
    if text.any():
        problems.append(
            f"column {column!r} must be numeric ({kind}) but has non-numbers: "
            f"{_example(text, values, row_names)}; expected {what}"
        )
    infinite = present & np.isinf(numbers)
    if infinite.any():
        problems.append(f"column {column!r} has infinite values: {_example(infinite, values, row_names)}; expected {what}")
    finite = present & numbers.notna() & ~infinite
    if kind == "int":
        fractional = finite & ~values.str.strip().str.fullmatch(_INTEGER.pattern)
        if fractional.any():
            problems.append(
                f"column {column!r} must hold integers like the sample (e.g. class labels written "
                f"as 1, not 1.0): {_example(fractional, values, row_names)}"
            )
    if unit_interval:
        outside = finite & ((numbers < 0) | (numbers > 1))
        if outside.any():
            problems.append(
                f"column {column!r} has probabilities outside [0, 1]: {_example(outside, values, row_names)}"
            )
    return problems


def _row_sum_problems(frame: pd.DataFrame, columns: list[str], row_names: pd.Series) -> list[str]:
    numbers = frame[columns].apply(pd.to_numeric, errors="coerce")
    complete = numbers.notna().all(axis=1) & np.isfinite(numbers).all(axis=1)
    sums = numbers.sum(axis=1)
    off = complete & ((sums - 1.0).abs() > ROW_SUM_TOLERANCE)
    if not off.any():
        return []
    first = off[off].index[0]
    return [
        f"rows of the probability columns {columns} must sum to 1 within {ROW_SUM_TOLERANCE:g}: "
        f"{_rows(int(off.sum()))} do not, e.g. {row_names[first]}: sum {sums[first]:.10g}"
    ]


def _kind_of(sample_values: pd.Series) -> str:
    """The kind the sample's own spelling shows: bool words, integers, numbers, or text."""
    present = sample_values[~_is_missing(sample_values)].str.strip()
    if present.empty:
        return "str"
    if any(set(present.unique()) <= words for words in _BOOL_SPELLINGS):
        return "bool"
    if present.str.fullmatch(_INTEGER.pattern).all():
        return "int"
    if pd.to_numeric(present, errors="coerce").notna().all():
        return "float"
    return "str"


def _bool_words(sample_values: pd.Series) -> set[str]:
    """The True/False pair in the sample's own case (a sample may hold only one of them)."""
    present = set(sample_values.str.strip().unique())
    for words in _BOOL_SPELLINGS:
        if present & words:
            return set(words)
    return {"True", "False"}
