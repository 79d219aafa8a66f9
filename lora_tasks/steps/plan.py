"""Step 3: profile + auto-configuration -> :class:`Plan` (the settings, and why each was chosen).

A QLoRA preset (chosen by the memory rule or asked for) trains over a 4-bit base; fewer than 2
folds becomes 2 (out-of-fold predictions need a held-out fold).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from lora_tasks.data.autoconfig import TrainSettings, apply_settings, auto_configure
from lora_tasks.data.competition import TRAINING_SETTINGS
from lora_tasks.data.profile import profile_competition
from lora_tasks.data.tokenizer import Tokenizer
from lora_tasks.factory import model_shape
from lora_tasks.steps.prepare import subset_rows
from lora_tasks.steps.spec import competition_spec
from lora_tasks.steps.store import (
    PIPELINE_VERSION,
    PipelineError,
    load_record,
    save_json,
)

#: What a run may set over the auto-configuration and the competition's ``[training]`` recipe.
OVERRIDABLE = (*TRAINING_SETTINGS, "target_transform")


@dataclass(frozen=True)
class Plan:
    """What will be trained and why: the settings, the profile it came from, the model.

    ``competition_markdown``: what was inferred about the competition and from where (id,
    targets, task, metric and its source, submission format, excluded columns).
    """

    slug: str
    settings: TrainSettings
    profile_markdown: str
    model: str  # model id/folder, or "tiny" for the tiny random model
    tiny: bool
    train_metric: str | None  # the metric on the training scale (None: the loss)
    seed: int = 0
    competition_markdown: str = ""

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write ``out_dir/plan-<sha16>.json`` (content-addressed)."""
        return save_json({"version": PIPELINE_VERSION, **asdict(self)}, out_dir, "plan")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        data = load_record(path, "plan")
        missing = sorted({f.name for f in fields(cls)} - set(data) - {"seed", "competition_markdown"})
        if missing:
            raise PipelineError(f"{path} is not a plan of this version (missing {missing}); plan again.")
        known = {f.name for f in fields(TrainSettings)}
        settings = TrainSettings(**{k: v for k, v in data["settings"].items() if k in known})
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data and f.name != "settings"},
                   settings=settings)

    @property
    def n_folds(self) -> int:
        return int(self.settings.n_folds)

    def trains_same_as(self, other: Plan) -> bool:
        """Whether both plans train the same adapters (their ``reasons`` may differ: an explicit
        preset equal to the chosen one is recorded as an override)."""
        def what(p: Plan) -> tuple:
            settings = {k: v for k, v in asdict(p.settings).items() if k != "reasons"}
            return p.slug, p.model, p.tiny, p.seed, settings

        return what(self) == what(other)

    def settings_markdown(self) -> str:
        return self.settings.to_markdown()


def train_metric_for(metric: str, transform: str) -> str | None:
    """The validation metric in the space the model predicts in. Under log1p, RMSE of log
    values *is* RMSLE; other metrics would be wrong on the transformed scale, so use the loss."""
    if transform == "none":
        return metric
    return "rmse" if metric in ("rmsle", "rmse") else None


def given_overrides(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """The settings a caller actually gave (None: not given; the competition's ``[training]``
    recipe and the auto-configuration decide)."""
    return {k: v for k, v in (overrides or {}).items() if v is not None}


def plan_training(
    competition: str,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    model: str | None = None,
    tiny: bool = False,
    overrides: Mapping[str, Any] | None = None,
    max_train_rows: int | None = None,
    seed: int = 0,
) -> Path:
    """Profile the training table with the model's tokenizer, choose settings by the rule table,
    apply ``overrides`` (each recorded in ``reasons``) and write ``plan-*.json``."""
    config = competition_spec(competition, data_dir)
    tokenizer = Tokenizer.from_pretrained(None if tiny else model)
    train = subset_rows(config.read_train(), max_train_rows, seed)
    profile = profile_competition(config, tokenizer=tokenizer, train=train)
    settings = auto_configure(profile, competition=config, **model_shape(model, tiny))
    unknown = sorted(set(overrides or {}) - set(OVERRIDABLE))
    if unknown:
        raise PipelineError(f"Cannot override {unknown}; overridable settings: {', '.join(OVERRIDABLE)}.")
    apply_settings(settings, overrides or {}, "override")
    if settings.n_folds < 2:
        settings.n_folds = settings.n_adapters = 2
        settings.reasons.append("min_two_folds: out-of-fold predictions need 2+ folds -> 2")
    plan = Plan(
        slug=config.slug,
        settings=settings,
        profile_markdown=profile.to_markdown(),
        model="tiny" if tiny else str(model or "minilm"),
        tiny=bool(tiny),
        train_metric=train_metric_for(config.metric, settings.target_transform),
        seed=int(seed),
        competition_markdown=config.describe(),
    )
    return plan.save(out_dir)
