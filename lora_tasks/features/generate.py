"""The features step: find what fires on a table (:func:`find_features`, at plan time) and build
the members' frames from it (:func:`build_features`, before the members' folds).

Why two halves: ``kaggle-lora plan`` must list every feature with its reason before anything
trains, and the members must get exactly what was listed. Neither half ever receives the
target: the target encoding is only named here and fit inside each fold by the members
(:func:`lora_tasks.features.categories.target_encoding_transform`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import pandas as pd

from lora_tasks.features.categories import find_category_features, frequency
from lora_tasks.features.dates import compute_date_feature, find_date_features
from lora_tasks.features.names import compute_name_feature, find_name_features
from lora_tasks.features.records import FeatureKind, FeaturePlan, GeneratedFeature, split_disabled
from lora_tasks.features.strings import compute_string_feature, find_string_features
from lora_tasks.features.text import find_text_features, ngram_counts, text_stat
from lora_tasks.features.useless import find_useless_columns, is_string
from lora_tasks.task import Task

log = logging.getLogger("lora_tasks.features")

#: The pattern detectors read a seeded sample of this many training rows (they test values one by
#: one); the drops and the build read every row.
DETECT_ROWS = 20_000

_DATES = (FeatureKind.DATETIME_PART, FeatureKind.DATETIME_CYCLIC)
_NAMES = (FeatureKind.NAME_TITLE, FeatureKind.NAME_FAMILY)
_STRINGS = (FeatureKind.CODE_PREFIX, FeatureKind.STRING_NUMBER, FeatureKind.CODE_COUNT)


@dataclass(frozen=True)
class FeatureFrames:
    """The members' tables: the kept input columns plus the generated ones, train and test
    alike; ``target_encoded``: the columns the members target-encode inside each fold."""

    train: pd.DataFrame
    test: pd.DataFrame | None
    target_encoded: tuple[str, ...]
    plan: FeaturePlan


def find_features(
    train: pd.DataFrame,
    test: pd.DataFrame | None = None,
    *,
    columns: Sequence[str],
    id_column: str | None = None,
    text_columns: Sequence[str] = (),
    task: Task | str | None = None,
    disable: Sequence[str] = (),
) -> FeaturePlan:
    """Which features fire on the feature ``columns`` of ``train`` (and the ``id_column`` when it
    holds timestamps), each with its reason; ``disable`` (``[features] disable``: names, kinds or
    ``"all"``) switches records off. Only ``columns`` and ``id_column`` are read: pass a frame
    with the target if you like, it is never looked at."""
    task = Task.parse(task) if task is not None else None
    columns = [c for c in columns if c in train.columns]
    full, train = train, (train.sample(DETECT_ROWS, random_state=0) if len(train) > DETECT_ROWS else train)
    text = [c for c in text_columns if c in columns]
    strings = [c for c in columns if is_string(train[c]) and c not in text]
    date_candidates = strings + ([id_column] if id_column and id_column in train.columns
                                 and is_string(train[id_column]) else [])
    found, dates = find_date_features(train, date_candidates, id_column)
    rest = [c for c in strings if c not in dates]
    names, name_cols = find_name_features(train, rest)
    codes, _ = find_string_features(train, [c for c in rest if c not in name_cols])
    found += names + codes + find_text_features(train, text)
    # categoricals: the table's own strings and the generated ones (a family name)
    generated = _compute(names, train, len(train))
    categorical = [c for c in rest if c not in name_cols] + [c for c in generated.columns if is_string(generated[c])]
    counted, notes = find_category_features(pd.concat([train[rest], generated], axis=1), categorical, task)
    # a generated categorical gets its target encoding only: its group size is a feature of its own
    found += [f for f in counted if f.kind is not FeatureKind.FREQUENCY or f.sources[0] in rest]
    replaced: dict[str, list[str]] = {}
    for f in found:
        replaced.setdefault(f.sources[0], []).append(f.name)
    found += find_useless_columns(full, test, columns, text_columns=text, replaced=replaced)
    kept, off = split_disabled(found, disable)
    # an encoding of a generated column goes off with that column
    available = set(columns) - {f.name for f in kept if f.kind is FeatureKind.DROP} | {f.name for f in kept}
    orphans = [f for f in kept if f.kind is FeatureKind.TARGET_ENCODING and f.sources[0] not in available]
    kept, off = [f for f in kept if f not in orphans], off + orphans
    return FeaturePlan(inputs=tuple(columns), features=tuple(kept), disabled=tuple(off), notes=tuple(notes))


def build_features(plan: FeaturePlan, train: pd.DataFrame, test: pd.DataFrame | None = None) -> FeatureFrames:
    """The members' frames of ``plan``: its kept inputs plus every built feature, computed on the
    train and test rows together (frequencies count both; n-gram vocabularies and the rest read
    the training rows' values only where they choose something)."""
    missing = [c for c in _sources(plan) if c not in train.columns or (test is not None and c not in test.columns)]
    if missing:
        raise ValueError(f"The features plan reads columns {missing} that the train or test table lacks; plan again "
                         "on this data (kaggle-lora plan), or disable those features in [features] disable.")
    both = pd.concat([train, test], ignore_index=True) if test is not None else train.reset_index(drop=True)
    kept = [c for c in plan.inputs if c not in set(plan.dropped)]
    out = pd.concat([both[kept].reset_index(drop=True), _compute(plan.built, both, len(train))], axis=1)
    out = out.loc[:, ~out.columns.duplicated()]
    n = len(train)
    encoded = tuple(c for c in plan.target_encoded if c in out.columns)
    if len(encoded) < len(plan.target_encoded):
        absent = sorted(set(plan.target_encoded) - set(encoded))
        raise ValueError(f"Target encoding of {absent} needs those columns among the members' columns; "
                         "they were dropped or disabled. Disable their target_mean features too.")
    log.info("features: %d generated, %d dropped, %d target-encoded in folds", len(plan.built), len(plan.dropped),
             len(encoded))
    return FeatureFrames(out.iloc[:n].reset_index(drop=True),
                         out.iloc[n:].reset_index(drop=True) if test is not None else None, encoded, plan)


def _sources(plan: FeaturePlan) -> list[str]:
    """The table columns the plan reads (a target encoding may read a generated column)."""
    return sorted({s for f in plan.built for s in f.sources} | set(plan.inputs))


def _compute(features: Sequence[GeneratedFeature], frame: pd.DataFrame, n_train: int) -> pd.DataFrame:
    """The columns of ``features`` on ``frame`` (its first ``n_train`` rows: training)."""
    columns: dict[str, pd.Series] = {}
    blocks: list[pd.DataFrame] = []
    for f in features:
        if f.kind in _DATES:
            columns[f.name] = compute_date_feature(f, frame)
        elif f.kind in _NAMES:
            columns[f.name] = compute_name_feature(f, frame)
        elif f.kind in _STRINGS:
            columns[f.name] = compute_string_feature(f, frame)
        elif f.kind is FeatureKind.TEXT_STATS:
            columns[f.name] = text_stat(frame[f.sources[0]], f.part)
        elif f.kind is FeatureKind.TEXT_NGRAMS:
            blocks.append(ngram_counts(f, frame, n_train))
        elif f.kind is FeatureKind.FREQUENCY:
            columns[f.name] = frequency(frame[f.sources[0]])
        else:
            raise ValueError(f"{f.name}: kind {f.kind} is not built before the folds")
    return pd.concat([pd.DataFrame(columns, index=frame.index), *blocks], axis=1)
