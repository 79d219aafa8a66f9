"""Adapter set specs as a user writes them (``PRESET[@MODEL][:KEY=VALUE,...]``): parsed and checked.

Why in the data layer: a run's options (:class:`lora_tasks.options.RunOptions`) check the specs
when they are given, before any data is read, and the options sit below the steps. The steps
(:mod:`lora_tasks.steps.adapter_sets`) plan and check the sets against the main plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pydantic import ValidationError

from lora_tasks.data.overrides import TrainingOverrides
from lora_tasks.lora.config import PRESETS


class AdapterSetError(ValueError):
    """An adapter set spec that cannot be read; the message shows the accepted form."""


#: The blend member of the main adapter set (the mean of its folds on test rows).
ADAPTERS_MEMBER = "lora"

#: What an adapter set may set for itself (``PRESET@MODEL:epochs=2,lr=1e-3``) -> the short name
#: its member name carries (``lora_balanced_all-mpnet-base-v2_e2``). The folds are the main set's.
SET_SETTINGS: dict[str, str] = {"epochs": "e", "learning_rate": "lr", "max_seq_len": "t", "batch_size": "b",
                                "top_layers": "top"}
_SET_ALIASES = {"lr": "learning_rate", "seq_len": "max_seq_len"}
SET_SPEC = "PRESET[@MODEL][:KEY=VALUE,...]"


@dataclass(frozen=True)
class AdapterSet:
    """Another set of fold adapters on the same folds, blended as a member of its own: a second
    preset and/or encoder beside the main one (diverse members blend better than one). Written
    ``PRESET``, ``PRESET@MODEL`` (a model id or folder), each optionally followed by
    ``:KEY=VALUE,...`` with keys from :data:`SET_SETTINGS` (a base-size encoder often wants fewer
    epochs than MiniLM: ``balanced@all-mpnet-base-v2:epochs=2``; ``top_layers=all`` adapts every
    layer). Unset keys follow the main set."""

    preset: str
    model: str | None = None
    settings: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def parse(cls, spec: str | AdapterSet) -> AdapterSet:
        if isinstance(spec, AdapterSet):
            return spec
        text = str(spec).strip()
        head, colon, tail = text.rpartition(":")
        if not colon or "=" not in tail:  # no settings (a folder may itself hold a colon)
            head, tail = text, ""
        preset, at, model = head.partition("@")
        preset, model = preset.strip(), model.strip()
        if preset not in PRESETS or (at and not model):
            raise AdapterSetError(f"Adapter set {spec!r}: write {SET_SPEC}, with PRESET one of "
                                f"{', '.join(PRESETS)} (e.g. 'expressive' or 'balanced@all-mpnet-base-v2:epochs=2').")
        return cls(preset, model or None, _parse_set_settings(spec, tail))

    @property
    def member(self) -> str:
        """Its name in the blend: ``lora_<preset>[_<model name>][_<setting><value>...]``."""
        name = f"{ADAPTERS_MEMBER}_{self.preset}" + (f"_{Path(self.model).name}" if self.model else "")
        return name + "".join(f"_{SET_SETTINGS[k]}{'all' if v is None else v}" for k, v in self.settings)


def _parse_set_settings(spec: object, text: str) -> tuple[tuple[str, Any], ...]:
    """``epochs=2,lr=1e-3`` -> ``(("epochs", 2), ("learning_rate", 0.001))`` in :data:`SET_SETTINGS` order."""
    out: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, eq, value = (x.strip() for x in item.partition("="))
        key = _SET_ALIASES.get(key, key)
        if not eq or key not in SET_SETTINGS or key in out:
            why = "is given twice" if key in out else "is not KEY=VALUE with KEY one of " + ", ".join(SET_SETTINGS)
            raise AdapterSetError(f"Adapter set {spec!r}: {item!r} {why} (lr and seq_len also work; the folds are "
                                f"always the main set's).")
        try:
            if key == "top_layers" and value.lower() == "all":
                out[key] = None
            else:
                out[key] = float(value) if key == "learning_rate" else int(value)
                TrainingOverrides(**{key: out[key]})  # the rules of the [training] table and the options
        except (ValueError, ValidationError):
            kind = "a positive number" if key == "learning_rate" else "a positive integer" + (
                " or 'all'" if key == "top_layers" else "")
            raise AdapterSetError(f"Adapter set {spec!r}: {key} = {value!r} must be {kind}.") from None
    return tuple((k, out[k]) for k in SET_SETTINGS if k in out)


def parse_adapter_sets(specs: Sequence[str | AdapterSet] | None) -> list[AdapterSet]:
    """``PRESET[@MODEL][:KEY=VALUE,...]`` strings -> :class:`AdapterSet`; two sets may not share a member name."""
    sets = [AdapterSet.parse(s) for s in specs or ()]
    names = [s.member for s in sets]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise AdapterSetError(f"Adapter sets {dupes} are given twice; each set needs its own preset, model or settings.")
    return sets
