"""The typed records of the features step: what fired, on which columns, and why.

Why records and not just columns: a user who sees an odd score must be able to read what the
members trained on (``kaggle-lora plan`` lists every record with its reason) and switch one off
in the competition config (``[features] disable``) without touching code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Iterable, Mapping

#: The most n-gram count columns one text column gives (the commonest n-grams of its train rows).
MAX_NGRAMS = 64


class FeatureKind(StrEnum):
    """The general pattern a feature comes from (a config may disable a whole kind)."""

    CODE_PREFIX = "code_prefix"  # the letters before a code's number (cabin "C85" -> "C")
    STRING_NUMBER = "string_number"  # the number inside a string ("A/5 21171" -> 21171, "10+ years" -> 10)
    CODE_COUNT = "code_count"  # how many codes one cell lists ("C23 C25 C27" -> 3)
    DATETIME_PART = "datetime_part"  # year, month, day, weekday, hour ... of a timestamp
    DATETIME_CYCLIC = "datetime_cyclic"  # sin/cos of a periodic part (hour 23 is next to hour 0)
    FREQUENCY = "frequency"  # how often a category occurs (train and test rows, no target)
    TARGET_ENCODING = "target_encoding"  # the mean target per category, fit inside each fold only
    NAME_TITLE = "name_title"  # the title of a person's name ("Braund, Mr. Owen" -> "Mr")
    NAME_FAMILY = "name_family"  # the family name and the size of its group
    TEXT_STATS = "text_stats"  # characters, words, capital/digit/symbol shares of free text
    TEXT_NGRAMS = "text_ngrams"  # counts of the commonest word n-grams of free text
    DROP = "drop"  # a column the members do not see (constant, identifier, duplicate, replaced)


#: Every kind a config may name in ``[features] disable``, plus ``"all"``.
KIND_NAMES: tuple[str, ...] = tuple(k.value for k in FeatureKind)
ALL = "all"


@dataclass(frozen=True)
class GeneratedFeature:
    """One feature the step adds (or, with kind ``drop``, one column it removes).

    ``name``: the column the members see (a dropped column's own name: disabling it keeps the
    column). ``sources``: the input column(s) it is computed from. ``part``: what of the source
    it takes (``"hour"``, ``"hour_sin"``, ``"prefix"``, ...), which the build step computes.
    ``reason``: why it fired, in words, with an example from the data.
    """

    name: str
    sources: tuple[str, ...]
    kind: FeatureKind
    reason: str
    part: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GeneratedFeature:
        return cls(name=str(data["name"]), sources=tuple(data["sources"]), kind=FeatureKind(data["kind"]),
                   reason=str(data["reason"]), part=str(data.get("part", "")))

    def matches(self, entry: str) -> bool:
        """Whether a ``[features] disable`` entry names this feature (its name, its kind, or all)."""
        return entry in (self.name, self.kind.value, ALL)


@dataclass(frozen=True)
class FeaturePlan:
    """What the features step does to a competition's table, decided without the target.

    ``inputs``: the table's own feature columns (before drops). ``features``: the records that
    fired and are on; ``disabled``: those that fired but the config switched off. ``notes``:
    why a pattern did not apply as a whole (a text-led table, a multi-output target).
    """

    inputs: tuple[str, ...] = ()
    features: tuple[GeneratedFeature, ...] = ()
    disabled: tuple[GeneratedFeature, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> FeaturePlan | None:
        if data is None:
            return None
        return cls(inputs=tuple(data.get("inputs", ())),
                   features=tuple(GeneratedFeature.from_dict(f) for f in data.get("features", ())),
                   disabled=tuple(GeneratedFeature.from_dict(f) for f in data.get("disabled", ())),
                   notes=tuple(data.get("notes", ())))

    def of_kind(self, *kinds: FeatureKind) -> list[GeneratedFeature]:
        return [f for f in self.features if f.kind in kinds]

    @property
    def dropped(self) -> tuple[str, ...]:
        """Input columns the members do not see."""
        return tuple(f.name for f in self.of_kind(FeatureKind.DROP))

    @property
    def target_encoded(self) -> tuple[str, ...]:
        """Columns whose target encoding the members fit inside each fold."""
        return tuple(f.sources[0] for f in self.of_kind(FeatureKind.TARGET_ENCODING))

    @property
    def built(self) -> list[GeneratedFeature]:
        """The records the build step computes before the folds (not drops, not target encodings)."""
        return [f for f in self.features if f.kind not in (FeatureKind.DROP, FeatureKind.TARGET_ENCODING)]

    def member_columns(self, n_inputs: int) -> int:
        """About how many columns the members read: ``n_inputs`` plus the built features (an
        n-gram record counts as its most columns) and the encodings, less the drops. Their time
        grows with it (the budget planner prices it)."""
        built = sum(MAX_NGRAMS if f.kind is FeatureKind.TEXT_NGRAMS else 1 for f in self.built)
        return max(1, n_inputs + built + len(self.target_encoded) - len(self.dropped))

    def to_markdown(self) -> str:
        """The table ``kaggle-lora plan`` shows: every feature with its kind, sources and reason."""
        lines = ["### Features for the table members", ""]
        if not self.features and not self.disabled:
            lines.append("No feature fired.")
        else:
            lines += ["| feature | kind | from | why |", "|---|---|---|---|"]
            for f in self.features:
                lines.append(f"| `{f.name}` | {f.kind.value} | {', '.join(f.sources)} | {_cell(f.reason)} |")
            for f in self.disabled:
                lines.append(f"| ~~`{f.name}`~~ | {f.kind.value} | {', '.join(f.sources)} | off: [features] disable |")
        lines += ["", *(f"- {n}" for n in self.notes)] if self.notes else []
        lines += ["", "Switch one off in the competition config: `[features] disable = [\"<feature or kind>\"]`."]
        return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def split_disabled(found: Iterable[GeneratedFeature], disable: Iterable[str]) -> tuple[list[GeneratedFeature], list[GeneratedFeature]]:
    """(kept, disabled) records. An entry that names no record, no kind and not ``all`` is an
    error: a misspelt name must not leave a feature on unnoticed."""
    found, entries = list(found), list(disable)
    unknown = [e for e in entries if e not in KIND_NAMES and e != ALL and not any(f.name == e for f in found)]
    if unknown:
        names = ", ".join(sorted(f.name for f in found)) or "none"
        raise ValueError(
            f"[features] disable names {unknown}, which is no feature found in this data and no kind. "
            f"Features found: {names}. Kinds: {', '.join(KIND_NAMES)}, or \"all\". Fix the names in the competition config."
        )
    off = [f for f in found if any(f.matches(e) for e in entries)]
    return [f for f in found if f not in off], off
