"""Tabular rows as sentences: "Age is 22. Sex is male. Fare is 7.25."

Why text: the encoders were pre-trained on prose, so a row reads best to them as short
sentences with readable column names and plainly written numbers. The output must be
deterministic (it is hashed into token-cache keys), so formatting depends only on the value and
the options, never on locale or dict order.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Literal, Mapping, Sequence

import numpy as np
import pandas as pd

MissingPolicy = Literal["skip", "say"]
_TERMINAL = (".", "!", "?", "…")


@dataclass(frozen=True)
class SerializationOptions:
    """How a row becomes text; comes from the ``[serialization]`` table of a competition config.

    missing: ``"skip"`` leaves missing values out (default: shorter inputs, and absence is
        rarely informative to a text model); ``"say"`` writes "Cabin is missing."
    missing_text: the word used when ``missing = "say"``.
    float_digits: significant digits for non-integer numbers (integer parts are never cut).
    text_first: free-text columns open the row (the most informative part survives truncation).
    label_text: write free text as "Text: ..." instead of passing it through unlabeled.
    rename: column -> readable name, for names the automatic split gets wrong.
    omit_common: leave out a value that at least this share of the (training) rows hold in its
        column, as missing values are left out (0.8 on house-prices: "Street is Pave", true of
        99.6% of houses, tells nothing; leaving out 30 such columns cuts a row from ~474 to ~306
        tokens, so truncation keeps the columns that vary). ``None`` (default): say every value.
        Free-text columns are never omitted.
    clean_text: in free-text columns, unescape HTML entities (``&amp;`` -> ``&``) and cut each
        URL to its host (``http://t.co/lHYXEOHY6C`` -> ``t.co``): a shortened link's random path
        is a dozen word pieces of noise to the tokenizer, while "there is a link" is kept.
    """

    missing: MissingPolicy = "skip"
    missing_text: str = "missing"
    float_digits: int = 4
    text_first: bool = True
    label_text: bool = False
    rename: Mapping[str, str] = field(default_factory=dict)
    omit_common: float | None = None
    clean_text: bool = False

    def __post_init__(self) -> None:
        if self.missing not in ("skip", "say"):
            raise ValueError(f"serialization.missing is {self.missing!r}; use \"skip\" or \"say\".")
        if self.omit_common is not None and not 0.5 <= float(self.omit_common) <= 1.0:
            raise ValueError(f"serialization.omit_common is {self.omit_common}; use a share of rows in 0.5..1 "
                             "(e.g. 0.8), or leave it out to say every value.")
        if not 1 <= int(self.float_digits) <= 15:
            raise ValueError(f"serialization.float_digits is {self.float_digits}; use 1..15 (default 4).")
        object.__setattr__(self, "rename", dict(sorted(dict(self.rename).items())))

    def fingerprint(self) -> str:
        """Stable text of the options, for cache keys."""
        return json.dumps(asdict(self), sort_keys=True)


_SPLIT = re.compile(
    r"[_\s\-\.]+"  # explicit separators
    r"|(?<=[a-z])(?=[A-Z])"  # lotFrontage -> lot|Frontage
    r"|(?<=[A-Z])(?=[A-Z][a-z])"  # MSSubClass -> MS|SubClass
    r"|(?<=[0-9])(?=[A-Z][a-z])"  # 3SsnPorch -> 3|SsnPorch
    r"|(?<=[A-Za-z])(?=[0-9])"  # Exterior1st -> Exterior|1st
)


def readable_name(column: str) -> str:
    """``LotFrontage`` -> ``Lot frontage``; ``MSSubClass`` -> ``MS sub class``; ``mean_radius`` ->
    ``Mean radius``; ``Exterior1st`` -> ``Exterior 1st``. Acronyms (all capitals, 2+ letters) keep their case."""
    words = [w for w in _SPLIT.split(str(column).strip()) if w]
    if not words:
        return str(column)
    out = [w if (w.isupper() and sum(c.isalpha() for c in w) >= 2) else w.lower() for w in words]
    out[0] = out[0][:1].upper() + out[0][1:]
    return " ".join(out)


def is_missing(value: Any) -> bool:
    """None, NaN, NaT and pd.NA count as missing; empty or blank strings too."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if isinstance(value, np.floating) and np.isnan(value):
        return True
    if isinstance(value, str) and not value.strip():
        return True
    return False


def format_number(value: float, digits: int = 4) -> str:
    """Plain positional numbers: ``22.0`` -> ``22``, ``7.25`` -> ``7.25``, ``512.3292`` ->
    ``512.3``, ``0.000123456`` -> ``0.0001235``; integer parts are kept whole (``123456.7`` ->
    ``123457``). Scientific notation only outside 1e-6..1e15, where positional would mislead."""
    v = float(value)
    if math.isinf(v):
        return "infinity" if v > 0 else "minus infinity"
    if v == 0:
        return "0"
    if v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    if abs(v) >= 1e15 or abs(v) < 1e-6:
        return f"{v:.{digits}g}"
    if abs(v) >= 10 ** digits:
        return str(int(round(v)))
    return np.format_float_positional(v, precision=digits, unique=False, fractional=False, trim="-")


def format_value(value: Any, digits: int = 4) -> str:
    """A cell as words: numbers via :func:`format_number`, booleans as yes/no, text with its
    whitespace (including newlines inside tweets) collapsed to single spaces."""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return format_number(float(value), digits)
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return " ".join(str(value).split())


_URL = re.compile(r"\b(?:https?://(?:www\.)?|www\.)([^/\s]+)\S*", re.IGNORECASE)


def clean_text(text: str) -> str:
    """HTML entities unescaped, URLs cut to their host (see ``SerializationOptions.clean_text``)."""
    return _URL.sub(lambda m: m.group(1).lower(), html.unescape(text))


def _plain(value: Any) -> Any:
    """numpy scalars as Python ones, so values compare equal whatever dtype a table read them as."""
    return value.item() if isinstance(value, np.generic) else value


def _sentence(text: str) -> str:
    return text if text.endswith(_TERMINAL) else text + "."


@dataclass(frozen=True)
class RowTemplate:
    """Which columns are said, in which order, and how: built once per table, applied per row."""

    columns: tuple[str, ...]
    text_columns: tuple[str, ...]
    options: SerializationOptions = SerializationOptions()
    #: column -> the value left out (``options.omit_common``), learned from the frame the template is built on
    common_values: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def for_frame(
        cls,
        frame: pd.DataFrame,
        *,
        text_columns: Sequence[str] = (),
        exclude: Iterable[str] = (),
        options: SerializationOptions | None = None,
    ) -> "RowTemplate":
        """All columns of ``frame`` except ``exclude`` (id, targets, dropped), free text first."""
        options = options or SerializationOptions()
        excluded = set(exclude)
        cols = [str(c) for c in frame.columns if c not in excluded]
        unknown = [c for c in text_columns if c not in frame.columns]
        if unknown:
            raise KeyError(
                f"Text column(s) {unknown} are not in the table (columns: {list(frame.columns)}); "
                "fix `text_columns` in the competition config."
            )
        texts = tuple(c for c in text_columns if c in cols)
        others = [c for c in cols if c not in texts]
        ordered = (*texts, *others) if options.text_first else tuple(cols)
        common = {}
        if options.omit_common is not None and len(frame):
            for c in others:
                shares = frame[c].value_counts(normalize=False, dropna=True) / len(frame)
                if len(shares) and shares.iloc[0] >= options.omit_common:
                    common[c] = _plain(shares.index[0])
        return cls(columns=tuple(ordered), text_columns=texts, options=options, common_values=common)

    def fingerprint(self) -> str:
        """Identifies the template for token-cache keys: same fingerprint, same text per row."""
        fields = {"columns": self.columns, "text": self.text_columns, "options": self.options.fingerprint(), "v": 1}
        if self.common_values:
            fields["common"] = {c: format_value(v) for c, v in sorted(self.common_values.items())}
        payload = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def name_of(self, column: str) -> str:
        return self.options.rename.get(column) or readable_name(column)

    def render(self, row: Mapping[str, Any]) -> str:
        """One row as sentences."""
        opts = self.options
        parts: list[str] = []
        common = self.common_values
        for col in self.columns:
            value = row[col]
            if col in common and not is_missing(value) and _plain(value) == common[col]:
                continue
            if is_missing(value):
                if opts.missing == "say":
                    parts.append(f"{self.name_of(col)} is {opts.missing_text}.")
                continue
            text = format_value(value, opts.float_digits)
            if col in self.text_columns:
                if opts.clean_text:
                    text = " ".join(clean_text(text).split())
                parts.append(_sentence(f"{self.name_of(col)}: {text}" if opts.label_text else text))
            else:
                parts.append(_sentence(f"{self.name_of(col)} is {text}"))
        return " ".join(parts)

    def render_frame(self, frame: pd.DataFrame) -> list[str]:
        """Every row of ``frame``, in order. Missing template columns are an error (a test file
        without a train column would silently change the text the model sees)."""
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            raise KeyError(
                f"Columns {missing} are in the template but not in this table; train and test "
                "must share feature columns. Build the template with the competition's "
                "`excluded_columns` (CompetitionConfig.row_template does: train-only columns are "
                "excluded), or list the column under `drop_columns`."
            )
        records = frame[list(self.columns)].astype(object).to_dict(orient="records")
        return [self.render(r) for r in records]


def rows_to_text(
    frame: pd.DataFrame,
    *,
    text_columns: Sequence[str] = (),
    exclude: Iterable[str] = (),
    options: SerializationOptions | None = None,
) -> list[str]:
    """Serialize every row of ``frame`` (a one-call convenience over :class:`RowTemplate`)."""
    template = RowTemplate.for_frame(frame, text_columns=text_columns, exclude=exclude, options=options)
    return template.render_frame(frame)
