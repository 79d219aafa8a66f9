"""Name-like columns give a person's title and family.

Why: a full name is unique per row (an identifier the members drop), yet its title ("Mr",
"Master", "Dr") says sex, age group and rank, and a shared family name says who travelled,
lived or applied together. The column is recognised by its values (capitalised words without
digits, often with a title), never by its name.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from lora_tasks.features.records import FeatureKind, GeneratedFeature

#: Honorifics in the languages Kaggle tables are mostly in; a capitalised word ending in a period
#: ("Jonkheer.") counts too.
TITLES = frozenset("""mr mrs ms miss mister master madam madame mme mlle dr prof rev sir lady lord dame don dona
capt col major gen lt sgt countess count baron baroness herr frau fraulein senor senora senorita sr sra srta
monsieur mademoiselle jonkheer""".split())
#: A column is name-like when at least this share of its values look like names ...
MIN_NAME_SHARE = 0.8
#: ... and titles fire when at least this share of them hold one.
MIN_TITLE_SHARE = 0.3
#: Names are mostly distinct: at least this share of the values are unique.
MIN_DISTINCT_SHARE = 0.5

_DOTTED = re.compile(r"(?:^|[\s,(])([A-Z][a-z]{1,9})\.(?=\s|$)")
_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*\.?")
_NAME_VALUE = re.compile(r"^[A-Za-z][A-Za-z .,'()\"\-]*$")


def name_title(values: pd.Series) -> pd.Series:
    """The title of each name: the first honorific word or capitalised word ending in a period
    ("Braund, Mr. Owen Harris" -> "Mr"); missing without one."""
    def one(value: object) -> object:
        if not isinstance(value, str):
            return np.nan
        for word in re.findall(r"[A-Za-z]+\.?", value):
            bare = word.rstrip(".")
            if bare.lower() in TITLES:
                return bare.capitalize()
        dotted = _DOTTED.search(value)
        return dotted.group(1) if dotted else np.nan

    return values.map(one).astype(object)


def family_name(values: pd.Series) -> pd.Series:
    """The family name: the part before a comma ("Braund, Mr. Owen") when the column writes names
    that way, else the last word ("Owen Braund")."""
    texts = values.astype(object).where(values.notna(), None)
    with_comma = float(texts.map(lambda v: isinstance(v, str) and "," in v).mean())

    def one(value: object) -> object:
        if not isinstance(value, str) or not value.strip():
            return np.nan
        if with_comma >= 0.5 and "," in value:
            return value.split(",")[0].strip().lower()
        words = [w for w in re.findall(r"[A-Za-z][A-Za-z'\-]*", value) if w.lower() not in TITLES]
        return words[-1].lower() if words else np.nan

    return texts.map(one).astype(object)


def looks_like_names(values: pd.Series) -> float:
    """The share of values shaped like a person's name: 2-8 words, letters and punctuation only,
    each word capitalised or a title."""
    def one(value: str) -> bool:
        if not _NAME_VALUE.match(value):
            return False
        words = _WORD.findall(value)
        return 2 <= len(words) <= 8 and sum(w[0].isupper() for w in words) >= 0.6 * len(words)

    return float(values.map(one).mean()) if len(values) else 0.0


def find_name_features(frame: pd.DataFrame, columns: list[str]) -> tuple[list[GeneratedFeature], list[str]]:
    """Title and family features of the name-like ``columns`` (training rows), and those columns."""
    found: list[GeneratedFeature] = []
    used: list[str] = []
    for col in columns:
        values = frame[col].dropna().astype(str)
        if values.empty or values.nunique() < MIN_DISTINCT_SHARE * len(values):
            continue
        share = looks_like_names(values)
        if share < MIN_NAME_SHARE:
            continue
        used.append(col)
        titles = name_title(values)
        with_title = float(titles.notna().mean())
        if with_title >= MIN_TITLE_SHARE and titles.nunique() > 1:
            common = ", ".join(titles.value_counts().index[:4])
            found.append(GeneratedFeature(
                f"{col}_title", (col,), FeatureKind.NAME_TITLE,
                f"name-like ({share:.0%} of values); {with_title:.0%} hold a title ({common}, ...)", "title"))
        families = family_name(values)
        repeated = float(families.map(families.value_counts()).gt(1).mean())
        if repeated > 0:
            example = families.value_counts().index[0]
            found.append(GeneratedFeature(
                f"{col}_family", (col,), FeatureKind.NAME_FAMILY,
                f"name-like ({share:.0%} of values); the family name, shared by {repeated:.0%} of rows "
                f"(e.g. {example!r})", "family"))
            found.append(GeneratedFeature(
                f"{col}_family_size", (col,), FeatureKind.NAME_FAMILY,
                "how many rows (train and test) share the family name", "family_size"))
    return found, used


def compute_name_feature(feature: GeneratedFeature, frame: pd.DataFrame) -> pd.Series:
    values = frame[feature.sources[0]]
    if feature.part == "title":
        return name_title(values.astype(object).where(values.notna(), None))
    families = family_name(values)
    if feature.part == "family":
        return families
    if feature.part == "family_size":
        return families.map(families.value_counts()).astype(float)
    raise ValueError(f"unknown name feature part {feature.part!r} of {feature.name}")
