"""Date and time columns become their parts and cyclic encodings.

Why: a timestamp read as a string is unique per row (an identifier to the members), yet its
hour, weekday and month drive demand, traffic and sales. Parts that vary get a column each
(as AutoGluon's DatetimeFeatureGenerator: year, month, day, weekday, plus the hour and minute
when times vary); periodic parts also get sine and cosine, so 23:00 sits next to 00:00 for a
linear model; the time itself becomes a number, for trends. A column is recognised by its
values parsing as dates, never by its name, and an id column of timestamps counts too.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd

from lora_tasks.features.records import FeatureKind, GeneratedFeature

#: A column is a date when at least this share of its values parse as one.
MIN_DATE_SHARE = 0.9
_DATE_SHAPE = re.compile(r"\d{1,4}[-/.]\d{1,2}(?:[-/.]\d{1,4})?|\d{1,2}:\d{2}|\d{4}\d{2}\d{2}T")

#: part -> (how to read it off a datetime Series, its period for a cyclic encoding or None)
PARTS: dict[str, tuple[str, int | None]] = {
    "year": ("year", None),
    "month": ("month", 12),
    "day": ("day", None),
    "weekday": ("day_of_week", 7),
    "dayofyear": ("day_of_year", None),
    "hour": ("hour", 24),
    "minute": ("minute", None),
}


def parse_dates(values: pd.Series) -> pd.Series:
    """Values as datetimes (NaT where a value does not parse): the format inferred from the first
    value, else day-first, else each value's own."""
    texts = values.astype(object).where(values.notna(), None)
    need = MIN_DATE_SHARE * texts.notna().sum()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "could not infer format": the later passes handle it
        # the format of the first value; day-first when month-first fails (31/01/2014); value by value
        for kw in ({}, {"dayfirst": True}, {"format": "mixed"}):
            parsed = pd.to_datetime(texts, errors="coerce", **kw)
            if parsed.notna().sum() >= need:
                break
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    return parsed


def date_share(values: pd.Series) -> float:
    """The share of non-missing values that look like and parse as dates."""
    texts = values.dropna().astype(str)
    if texts.empty or texts.str.contains(_DATE_SHAPE).mean() < MIN_DATE_SHARE:
        return 0.0
    return float(parse_dates(texts).notna().mean())


def find_date_features(frame: pd.DataFrame, columns: list[str], id_column: str | None = None
                       ) -> tuple[list[GeneratedFeature], list[str]]:
    """Part, cyclic and number features of the date ``columns`` (training rows; ``id_column``:
    the id, which counts when it holds timestamps), and the columns recognised as dates."""
    found: list[GeneratedFeature] = []
    used: list[str] = []
    for col in columns:
        share = date_share(frame[col])
        if share < MIN_DATE_SHARE:
            continue
        used.append(col)
        stamps = parse_dates(frame[col]).dropna()
        first = frame[col].dropna().iloc[0]
        what = f"{'the id column holds' if col == id_column else 'its values are'} timestamps ({share:.0%} parse, e.g. {first!r})"
        found.append(GeneratedFeature(f"{col}_time", (col,), FeatureKind.DATETIME_PART,
                                      f"{what}: the time as a number (days since 1970), for trends", "time"))
        for part, (attr, period) in PARTS.items():
            values = getattr(stamps.dt, attr)
            if values.nunique() < 2:
                continue
            found.append(GeneratedFeature(f"{col}_{part}", (col,), FeatureKind.DATETIME_PART,
                                          f"{what}: the {part} varies ({values.nunique()} values)", part))
            if period is not None:
                for fn in ("sin", "cos"):
                    found.append(GeneratedFeature(
                        f"{col}_{part}_{fn}", (col,), FeatureKind.DATETIME_CYCLIC,
                        f"the {part} is periodic ({period}): its {fn} keeps the last next to the first",
                        f"{part}_{fn}"))
    return found, used


def compute_date_feature(feature: GeneratedFeature, frame: pd.DataFrame) -> pd.Series:
    stamps = parse_dates(frame[feature.sources[0]])
    if feature.part == "time":
        seconds = (stamps - pd.Timestamp("1970-01-01")).dt.total_seconds()
        return seconds / 86400.0
    part, _, fn = feature.part.partition("_")
    if part not in PARTS:
        raise ValueError(f"unknown date feature part {feature.part!r} of {feature.name}")
    attr, period = PARTS[part]
    values = getattr(stamps.dt, attr).astype(float)
    if not fn:
        return values
    angle = 2 * np.pi * values / float(period)
    return np.sin(angle) if fn == "sin" else np.cos(angle)
