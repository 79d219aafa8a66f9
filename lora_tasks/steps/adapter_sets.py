"""Adapter sets: more fold adapters on the same folds (another preset, encoder or settings),
each blended as a member of its own beside the main set ``lora``. Their specs are read by
:mod:`lora_tasks.data.adapter_sets`; here they meet the competition's recipe and the main plan."""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from lora_tasks.data.adapter_sets import ADAPTERS_MEMBER, SET_SETTINGS, SET_SPEC, AdapterSet, AdapterSetError
from lora_tasks.data.adapter_sets import parse_adapter_sets as parse_specs
from lora_tasks.data.competition import load_competition
from lora_tasks.data.source import CompetitionSource, as_source
from lora_tasks.steps.plan import Plan
from lora_tasks.steps.store import PipelineError

__all__ = ["ADAPTERS_MEMBER", "SET_SETTINGS", "SET_SPEC", "AdapterSet", "adapter_set_overrides", "check_adapter_set",
           "parse_adapter_sets", "recipe_adapter_sets"]


def parse_adapter_sets(specs: Sequence[str | AdapterSet] | None) -> list[AdapterSet]:
    """``PRESET[@MODEL][:KEY=VALUE,...]`` strings -> :class:`AdapterSet` (a bad spec: a
    :class:`PipelineError` that shows the accepted form)."""
    try:
        return parse_specs(specs)
    except AdapterSetError as exc:
        raise PipelineError(str(exc)) from None


def recipe_adapter_sets(competition: str | CompetitionSource, data_dir: str | os.PathLike | None) -> list[AdapterSet]:
    """The adapter sets of the competition's ``[training]`` recipe (none without one); a bad spec
    names the config file. ``competition``: a name or the run's :class:`CompetitionSource`."""
    source = as_source(competition)
    config = load_competition(source.name, data_dir=data_dir, source=source)
    try:
        return parse_adapter_sets(config.training.get("adapter_sets", ()))
    except PipelineError as exc:
        raise PipelineError(f"{config.config_path}: [training] adapter_sets: {exc}") from None


def adapter_set_overrides(overrides: Mapping[str, Any], adapter_set: AdapterSet, n_folds: int) -> dict[str, Any]:
    """The main plan's overrides with the set's preset and settings, on the main plan's folds (the
    blend fits its weights on out-of-fold rows, so every member must hold out the same rows).
    ``top_layers=all`` drops the main set's top_layers (no override: LoRA on every layer)."""
    out = {**overrides, "preset": adapter_set.preset, "n_folds": n_folds, **dict(adapter_set.settings)}
    return {k: v for k, v in out.items() if v is not None}


def check_adapter_set(main_plan: str | os.PathLike, set_plan: str | os.PathLike, adapter_set: AdapterSet) -> None:
    """Refuse a set that would train exactly what the main set trains (same model, settings and
    seed): a copy of the main member adds nothing to the blend but its training time."""
    a, b = Plan.load(main_plan), Plan.load(set_plan)
    if a.trains_same_as(b):
        raise PipelineError(
            f"Adapter set {adapter_set.member!r} trains exactly what the main set trains ({b.model}, preset "
            f"{b.settings.preset!r}, {b.settings.epochs} epochs, lr {b.settings.learning_rate}); give it "
            f"another preset, model or settings (e.g. {adapter_set.preset}@MODEL or :epochs=N), or drop it.")
