"""Structured strings split into their parts: a code's letter prefix, the number inside a
string, and how many codes one cell lists.

Why: a tree cannot split on "C85" as a whole beyond its own value, yet deck C and the cabin's
number along the ship carry signal; "A/5 21171" holds a ticket series and a number; "10+ years"
and "60 months" hold numbers the members cannot read while they are strings. The patterns are
about the shape of the values, never a column's name.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from lora_tasks.features.records import FeatureKind, GeneratedFeature

#: A value is code-like when it has at most this many words (longer strings are text).
MAX_CODE_WORDS = 3
#: The number inside a string fires when at least this share of the values hold one.
MIN_NUMBER_SHARE = 0.5
#: A prefix fires when at least this share of values start with letters (a ticket series).
MIN_PREFIX_SHARE = 0.1
#: ... and it groups values: at most this share of the column's distinct values.
MAX_PREFIX_DISTINCT_SHARE = 0.5

_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_LEADING = re.compile(r"^[^\d]*")


def string_number(values: pd.Series) -> pd.Series:
    """The longest number inside each string (the last of equal length): "A/5 21171" -> 21171,
    "STON/O2. 3101282" -> 3101282, "$1,200.50" -> 1200.5, "C23 C25" -> 25; NaN without one."""
    def one(value: object) -> float:
        if not isinstance(value, str):
            return np.nan
        found = _NUMBER.findall(_THOUSANDS.sub("", value))
        if not found:
            return np.nan
        best = max(reversed(found), key=lambda n: len(n.split(".")[0]))
        return float(best)

    return values.map(one).astype(float)


def code_prefix(values: pd.Series) -> pd.Series:
    """The letters before a value's first digit, upper-cased, punctuation removed: "C85" -> "C",
    "A/5 21171" -> "A", "PC 17599" -> "PC"; missing when the value starts with a digit or holds none."""
    def one(value: object) -> object:
        if not isinstance(value, str) or not any(ch.isdigit() for ch in value):
            return np.nan
        letters = re.sub(r"[^0-9A-Za-z]", "", _LEADING.match(value).group(0)).upper()
        return letters or np.nan

    return values.map(one).astype(object)


def code_count(values: pd.Series) -> pd.Series:
    """How many whitespace-separated tokens holding a digit a value lists ("C23 C25 C27" -> 3)."""
    return values.map(lambda v: sum(any(ch.isdigit() for ch in tok) for tok in v.split()) if isinstance(v, str)
                      else np.nan).astype(float)


def _example(values: pd.Series, derived: pd.Series) -> str:
    ok = derived.notna()
    if not ok.any():
        return ""
    i = ok.idxmax()
    shown = derived[i]
    if isinstance(shown, (float, np.floating)):
        shown = int(shown) if float(shown).is_integer() else float(shown)
    return f" (e.g. {values[i]!r} -> {shown!r})"


def find_string_features(frame: pd.DataFrame, columns: list[str]) -> tuple[list[GeneratedFeature], list[str]]:
    """The code and number features of the string ``columns`` of ``frame`` (training rows), and
    the columns they decomposed."""
    found: list[GeneratedFeature] = []
    used: list[str] = []
    for col in columns:
        values = frame[col].dropna().astype(str)
        if values.empty:
            continue
        words = values.str.split().str.len()
        if words.mean() > MAX_CODE_WORDS:
            continue
        numbers = string_number(values)
        share = float(numbers.notna().mean())
        if share >= MIN_NUMBER_SHARE and numbers.nunique() > 1:
            found.append(GeneratedFeature(
                f"{col}_number", (col,), FeatureKind.STRING_NUMBER,
                f"{share:.0%} of its values hold a number{_example(values, numbers)}", "number"))
            used.append(col)
        prefixes = code_prefix(values)
        letters = float(prefixes.notna().mean())
        distinct = prefixes.nunique(dropna=False)
        if (share >= MIN_NUMBER_SHARE and letters >= MIN_PREFIX_SHARE and distinct >= 2
                and distinct <= MAX_PREFIX_DISTINCT_SHARE * values.nunique()):
            found.append(GeneratedFeature(
                f"{col}_prefix", (col,), FeatureKind.CODE_PREFIX,
                f"{letters:.0%} of its values start with letters before a number, {distinct} groups"
                f"{_example(values, prefixes)}", "prefix"))
            used.append(col)
        counts = code_count(values)
        several = float((counts > 1).mean())
        if share >= MIN_NUMBER_SHARE and several >= 0.01 and counts.nunique() > 1:
            found.append(GeneratedFeature(
                f"{col}_codes", (col,), FeatureKind.CODE_COUNT,
                f"{several:.0%} of its values list several codes{_example(values[counts > 1], counts[counts > 1])}",
                "codes"))
    return found, sorted(set(used), key=used.index)


def compute_string_feature(feature: GeneratedFeature, frame: pd.DataFrame) -> pd.Series:
    values = frame[feature.sources[0]]
    values = values.astype(object).where(values.notna(), None)
    if feature.part == "number":
        return string_number(values)
    if feature.part == "prefix":
        return code_prefix(values)
    if feature.part == "codes":
        return code_count(values)
    raise ValueError(f"unknown string feature part {feature.part!r} of {feature.name}")
