"""Free-text columns of a mixed table as numbers: length and character shares, and counts of
the commonest word n-grams.

Why: in a table the members drop a free-text column (every value is unique), though its
length, its shouting capitals and its commonest phrases carry signal. These are the features
of AutoGluon's TextSpecialFeatureGenerator and TextNgramFeatureGenerator, kept small ("lite"):
the n-grams are chosen by how many training rows hold them, never by the target. A table led
by its text gets the TF-IDF member instead, and none of these.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from lora_tasks.features.records import MAX_NGRAMS, FeatureKind, GeneratedFeature

#: n-grams kept per text column (the commonest), and the fewest rows one must occur in.
MIN_NGRAM_ROWS = 10
NGRAM_RANGE = (1, 2)

#: part -> what it measures (each a number per row)
STATS = {
    "chars": "characters",
    "words": "words",
    "capital_share": "share of letters in capitals",
    "digit_share": "share of characters that are digits",
    "symbol_share": "share of characters that are neither letters, digits nor spaces",
}


def text_stat(values: pd.Series, part: str) -> pd.Series:
    texts = values.astype(object).where(values.notna(), "").astype(str)
    if part == "chars":
        return texts.str.len().astype(float)
    if part == "words":
        return texts.str.split().str.len().astype(float)
    compact = texts.str.replace(r"\s", "", regex=True)
    size = compact.str.len().replace(0, np.nan)
    if part == "capital_share":
        letters = compact.str.count(r"[A-Za-z]").replace(0, np.nan)
        return (compact.str.count(r"[A-Z]") / letters).fillna(0.0)
    if part == "digit_share":
        return (compact.str.count(r"\d") / size).fillna(0.0)
    if part == "symbol_share":
        return (compact.str.count(r"[^\w]") / size).fillna(0.0)
    raise ValueError(f"unknown text statistic {part!r}")


def find_text_features(frame: pd.DataFrame, columns: list[str]) -> list[GeneratedFeature]:
    """Statistics and n-gram counts of the free-text ``columns`` (training rows)."""
    found: list[GeneratedFeature] = []
    for col in columns:
        values = frame[col]
        for part, what in STATS.items():
            stat = text_stat(values, part)
            if stat.nunique() > 1:
                found.append(GeneratedFeature(f"{col}_{part}", (col,), FeatureKind.TEXT_STATS,
                                              f"free text: its {what} (mean {stat.mean():.3g})", part))
        vocabulary = ngram_vocabulary(values)
        if vocabulary:
            found.append(GeneratedFeature(
                f"{col}_ngrams", (col,), FeatureKind.TEXT_NGRAMS,
                f"free text: counts of its {len(vocabulary)} commonest word n-grams (in {MIN_NGRAM_ROWS}+ training "
                f"rows, e.g. {', '.join(repr(v) for v in vocabulary[:3])}), one column each", "ngrams"))
    return found


def ngram_vocabulary(values: pd.Series) -> list[str]:
    """The commonest word 1-2-grams of the training rows' text (by rows holding them)."""
    from sklearn.feature_extraction.text import CountVectorizer

    texts = values.astype(object).where(values.notna(), "").astype(str)
    if texts.str.strip().eq("").all():
        return []
    vectorizer = CountVectorizer(ngram_range=NGRAM_RANGE, min_df=min(MIN_NGRAM_ROWS, max(2, len(texts) // 2)),
                                 max_features=MAX_NGRAMS, binary=True)
    try:
        vectorizer.fit(texts)
    except ValueError:  # no n-gram in enough rows
        return []
    return [str(v) for v in vectorizer.get_feature_names_out()]


def ngram_counts(feature: GeneratedFeature, frame: pd.DataFrame, n_train: int) -> pd.DataFrame:
    """One count column per n-gram, the vocabulary chosen on the first ``n_train`` rows."""
    from sklearn.feature_extraction.text import CountVectorizer

    col = feature.sources[0]
    vocabulary = ngram_vocabulary(frame[col].iloc[:n_train])
    texts = frame[col].astype(object).where(frame[col].notna(), "").astype(str)
    if not vocabulary:
        return pd.DataFrame(index=frame.index)
    counts = CountVectorizer(ngram_range=NGRAM_RANGE, vocabulary=vocabulary).transform(texts)
    names = [f"{col}__{re.sub(r'[^0-9A-Za-z]+', '_', v)}" for v in vocabulary]
    return pd.DataFrame(counts.toarray().astype(np.float32), columns=names, index=frame.index)
