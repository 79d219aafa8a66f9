"""What submission.csv must look like, read off the sample submission and train.csv.

Why typed and exact: Kaggle compares the submitted text. A label written ``1`` where train.csv
says ``True``, ``1.0`` where it says ``1``, or an id ``13`` where test.csv says ``0013`` scores
zero or is rejected, and a day's few submissions are gone. So the format keeps the spelling of
every class exactly as the competition's own files write it (read with
:func:`lora_tasks.data.csv_io.read_csv` ``as_text=True``), the id column as text in test.csv's
order, and the value columns in the sample's order; :meth:`SubmissionFormat.render` writes
predictions in that form and :meth:`SubmissionFormat.allowed_values` tells the validator what a
label cell may hold.
"""

from __future__ import annotations

import math
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

import numpy as np
import pandas as pd

from lora_tasks.metrics import to_labels

Prediction = Literal["labels", "probabilities", "values"]
PREDICTIONS: tuple[str, ...] = ("labels", "probabilities", "values")
#: ``bool``: labels written True/False; ``int``: whole numbers without ``.0``; ``str``: as written.
DTYPES: tuple[str, ...] = ("int", "float", "str", "bool")
#: Enough digits that a probability or value survives the round trip through text.
FLOAT_FORMAT = "%.10g"


def label_key(value: Any) -> str:
    """A spelling-free key for a label, so a class read by pandas (``True``, ``1``, ``1.0``)
    finds the spelling the file used (``True``, ``1``): booleans as true/false, whole numbers
    without a decimal part, other numbers by ``repr``, text stripped."""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return str(int(number)) if number.is_integer() else repr(number)
    text = str(value).strip()
    if text.lower() in ("true", "false"):
        return text.lower()
    try:
        number = float(text)
    except ValueError:
        return text
    if not math.isfinite(number):
        return text
    return str(int(number)) if number.is_integer() else repr(number)


def _looks_int(text: str) -> bool:
    return text.strip().lstrip("+-").isdigit()


def class_spellings(classes: Sequence[Any], raw_values: Iterable[str], sample_values: Iterable[str] = ()) -> tuple[str, ...]:
    """The spelling of each class of ``classes`` (in that order) as train.csv writes it.

    ``raw_values`` are the target's cells as text. A class written ``1.0`` in train.csv (a float
    column, e.g. because of missing values) is written ``1`` when the sample submission writes
    whole numbers. A class with no raw spelling (cannot happen for classes read from the same
    file) falls back to its key.
    """
    by_key: dict[str, str] = {}
    for raw in raw_values:
        if raw.strip():
            by_key.setdefault(label_key(raw), raw.strip())
    sample = [v for v in sample_values if v.strip()]
    ints_in_sample = bool(sample) and all(_looks_int(v) for v in sample)
    out = []
    for cls in classes:
        key = label_key(cls)
        spelling = by_key.get(key, key)
        if ints_in_sample and _looks_int(key) and not _looks_int(spelling):
            spelling = key
        out.append(spelling)
    return tuple(out)


def dtype_of_spellings(spellings: Sequence[str]) -> str:
    """``bool`` for True/False labels, ``int`` for whole numbers, else ``str``."""
    keys = {label_key(s) for s in spellings}
    if keys and keys <= {"true", "false"} and not all(_looks_int(s) for s in spellings):
        return "bool"
    if spellings and all(_looks_int(s) for s in spellings):
        return "int"
    return "str"


class SubmissionRenderError(ValueError):
    """Predictions that cannot be written in the competition's format; the message says why."""


@dataclass(frozen=True)
class SubmissionFormat:
    """What submission.csv must hold.

    columns: every column of the sample submission, in its order (id included).
    id_column: the id column (its values are test.csv's, as text, in test.csv's order).
    prediction: ``labels`` (class values), ``probabilities`` (P(class) per row; one column per
        class when the value columns are the classes, one per label for multi-label) or
        ``values`` (regression).
    dtype: how a value cell is written: ``bool``/``int``/``str`` labels, ``float`` otherwise.
    classes: for labels (and per-class probability columns) the spelling of every class as
        train.csv writes it, in the order of the competition's sorted ``classes``.
    threshold: probability cut for binary labels: a number, or ``"auto"`` (the default): fit on
        out-of-fold rows for F1, 0.5 for other label metrics (:mod:`lora_tasks.ensemble.thresholds`).
    target_transform: ``log1p`` trains on log1p(target) and writes expm1(prediction) (RMSLE).
    """

    columns: tuple[str, ...] = ()
    dtype: str = "int"
    prediction: str = "labels"
    threshold: float | str = "auto"
    target_transform: str = "none"
    id_column: str = ""
    classes: tuple[str, ...] = ()

    @property
    def value_columns(self) -> tuple[str, ...]:
        """The sample's columns other than the id, in the sample's order."""
        return tuple(c for c in self.columns if c != self.id_column)

    @property
    def probability_columns(self) -> tuple[str, ...]:
        """Columns that must hold probabilities in [0, 1] (empty unless ``prediction`` says so)."""
        return self.value_columns if self.prediction == "probabilities" else ()

    @property
    def rows_sum_to_one(self) -> bool:
        """Per-class probability columns (softmax): each row sums to 1. Multi-label columns do not."""
        cols = self.probability_columns
        return len(cols) > 1 and set(cols) <= set(self.classes)

    def allowed_values(self) -> dict[str, set[str]]:
        """Label column -> the exact strings a cell may hold (empty for probabilities and values)."""
        if self.prediction != "labels" or not self.classes:
            return {}
        return {c: set(self.classes) for c in self.value_columns}

    def spell(self, value: Any) -> str:
        """A class value (as pandas read it, or a spelling) written the way train.csv writes it.
        With no spellings known (a format built by hand), booleans are True/False and numbers
        are written without a needless ``.0``."""
        if not self.classes:
            return str(bool(value)) if isinstance(value, (bool, np.bool_)) else label_key(value)
        key = label_key(value)
        for spelling in self.classes:
            if label_key(spelling) == key:
                return spelling
        raise SubmissionRenderError(
            f"Label {value!r} is not one of the competition's classes {list(self.classes)}; the "
            "predictions and the competition's classes disagree (re-run prepare)."
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SubmissionFormat:
        """Back from ``dataclasses.asdict`` after a JSON round trip (lists become tuples again)."""
        known = {f: data[f] for f in cls.__dataclass_fields__ if f in data}
        for key in ("columns", "classes"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)

    # ------------------------------------------------------------------------------ writing

    def render_predictions(
        self, ids: Sequence[Any], predictions: np.ndarray, classes: Sequence[Any] | None, threshold: float = 0.5
    ) -> pd.DataFrame:
        """:meth:`render` from what a model or blend outputs (on the original scale, after any
        inverse target transform): for labels, probabilities are cut at ``threshold`` (binary,
        multi-label) or argmaxed (multiclass) first; probabilities and values go as they are."""
        predictions = np.asarray(predictions, dtype=np.float64)
        if self.prediction != "labels":
            return self.render(ids, predictions, classes)
        _check_finite(predictions.ravel(), ", ".join(self.value_columns))
        return self.render(ids, to_labels(predictions, threshold), classes)

    def render(self, ids: Sequence[Any], values: np.ndarray, classes: Sequence[Any] | None = None) -> pd.DataFrame:
        """The submission table: ``ids`` as text, then the value columns in the sample's order.

        ``values``: for ``labels``, indices into ``classes`` (n,) — or (n, k) for k label
        columns — or, with ``classes=None``, the class values themselves; for
        ``probabilities``, (n,) for one column or (n, k), column j being ``classes[j]`` when
        the value columns are the classes (placed under their own names, in the sample's
        order) and the j-th value column otherwise; for ``values``, (n,) or (n, k) in the
        value columns' order. NaN or inf is an error that names the column.
        """
        values = np.asarray(values)
        ids = ["" if v is None else str(v) for v in ids]
        if values.shape[0] != len(ids):
            raise SubmissionRenderError(f"{len(ids)} ids but {values.shape[0]} rows of predictions; they must match.")
        matrix = values.reshape(len(ids), -1)
        cols = self.value_columns
        frame = pd.DataFrame({self.id_column: pd.Series(ids, dtype=object)})
        if self.prediction == "labels":
            if matrix.shape[1] != len(cols):
                raise SubmissionRenderError(f"{matrix.shape[1]} label column(s) of predictions but the sample has {list(cols)}.")
            for j, col in enumerate(cols):
                frame[col] = self._spell_column(matrix[:, j], classes, col)
        else:
            if matrix.shape[1] == 2 and len(cols) == 1 and self.prediction == "probabilities":
                matrix = matrix[:, 1:]  # binary given as P(class 0), P(class 1): the column is P(class 1)
            order = self._column_order(matrix.shape[1], classes)
            for col, j in zip(cols, order, strict=True):
                column = matrix[:, j].astype(np.float64)
                _check_finite(column, col)
                if self.prediction == "values" and self.dtype == "int":
                    frame[col] = [str(int(v)) for v in np.round(column)]
                else:
                    frame[col] = column
        return frame[list(self.columns)] if self.id_column in self.columns else frame

    def _spell_column(self, column: np.ndarray, classes: Sequence[Any] | None, name: str) -> list[str]:
        if classes is None:
            return [self.spell(v) for v in column]
        if column.dtype.kind == "f":
            _check_finite(column, name)
        index = column.astype(np.int64)
        bad = (index < 0) | (index >= len(classes))
        if bad.any():
            raise SubmissionRenderError(
                f"Column {name}: {int(bad.sum())} label index(es) outside 0..{len(classes) - 1} "
                f"(e.g. {int(index[bad][0])}); predictions and classes {list(classes)} disagree."
            )
        spelled = [self.spell(c) for c in classes]
        return [spelled[i] for i in index]

    def _column_order(self, width: int, classes: Sequence[Any] | None) -> list[int]:
        cols = self.value_columns
        if width != len(cols):
            raise SubmissionRenderError(
                f"{width} prediction column(s) but the sample's value columns are {list(cols)}; they must match."
            )
        if classes is not None and len(classes) == width and self.classes and set(cols) <= set(self.classes):
            spelled = [self.spell(c) for c in classes]
            return [spelled.index(c) for c in cols]
        return list(range(width))

    # ------------------------------------------------------------------------------ reports

    def describe(self) -> str:
        """One line per column, for ``--plan`` and the profile."""
        lines = [f"- `{self.id_column}`: test.csv's ids, as written, in test.csv's order"]
        if self.prediction == "labels":
            spelled = ", ".join(self.classes) if self.classes else "as predicted"
            lines += [f"- `{c}`: label ({self.dtype}), one of {spelled}" for c in self.value_columns]
        elif self.prediction == "probabilities":
            lines += [f"- `{c}`: probability in [0, 1]" for c in self.value_columns]
            if self.rows_sum_to_one:
                lines.append("- each row's probabilities sum to 1")
        else:
            lines += [f"- `{c}`: value ({self.dtype})" for c in self.value_columns]
        if self.target_transform != "none":
            lines.append(f"- trained on {self.target_transform}(target), written back on the original scale")
        return "\n".join(lines)


def _check_finite(column: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(column)
    if bad.any():
        raise SubmissionRenderError(
            f"Column {name}: {int(bad.sum())} of {len(column)} predictions are NaN or infinite "
            f"(first at row {int(np.argmax(bad))}); the model or blend diverged, nothing was written."
        )


def write_csv(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write a rendered submission: no index, ``\\n`` line ends, floats with 10 significant
    digits; to a unique temp name, then renamed (a crash leaves no half file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        frame.to_csv(tmp, index=False, lineterminator="\n", float_format=FLOAT_FORMAT)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def infer_submission_format(
    sample: pd.DataFrame,
    *,
    id_column: str,
    prediction: str,
    classes: Sequence[Any] | None,
    raw_targets: pd.DataFrame | None,
    given: Mapping[str, Any] | None = None,
) -> SubmissionFormat:
    """The format from the sample submission (read ``as_text``) and the target cells of
    train.csv (read ``as_text``); ``given`` (the config's ``[submission]``) wins field by field."""
    given = dict(given or {})
    columns = tuple(given.get("columns") or sample.columns)
    value_cols = [c for c in columns if c != id_column]
    spellings: tuple[str, ...] = ()
    if raw_targets is not None and classes is not None:
        raw = [v for c in raw_targets.columns for v in raw_targets[c].tolist()]
        sample_raw = [v for c in value_cols if c in sample.columns for v in sample[c].tolist()]
        spellings = class_spellings(classes, raw, sample_raw if prediction == "labels" else ())
    if prediction == "labels":
        dtype = dtype_of_spellings(spellings) if spellings else "int"
    else:
        dtype = "float"
    return SubmissionFormat(
        columns=columns,
        dtype=given.get("dtype", dtype),
        prediction=given.get("prediction", prediction),
        threshold=given.get("threshold", "auto"),
        target_transform=given.get("target_transform", "none"),
        id_column=id_column,
        classes=spellings,
    )
