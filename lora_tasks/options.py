"""``RunOptions``: a run's options, written once.

The same validated object is the Prefect flow's one parameter (the UI renders it as a form,
deployments store it), is filled by ``kaggle-lora run`` / ``flows/submit.py`` from options
generated from its fields, and is what :func:`lora_tasks.steps.run.run_pipeline` takes. Every
rule that needs no data is checked here, once, with a message that names the fix; the rules that
need the data (a copy of the main adapter set) are checked when the plans exist.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: Where a run keeps its data, artifacts, token cache and task results unless told otherwise.
DEFAULT_WORK_DIR = os.environ.get("KAGGLE_LORA_HOME", ".kaggle-lora")

#: The blend methods of :data:`lora_tasks.ensemble.METHODS` (a test keeps the two equal; the
#: Literal gives the UI form a drop-down).
BlendMethod = Literal["auto", "mean", "rank_mean", "weights", "caruana", "stacking"]


class RunOptions(BaseModel):
    """Everything a ``kaggle-lora`` run can be told: what to train, how to combine, where to work."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    competition: str = Field("demo", description="Kaggle slug, config name or alias (e.g. demo, titanic, "
                             "house-prices); demo runs offline against an in-process fake Kaggle server")
    model: str | None = Field(None, description="encoder id or folder (default: the offline all-MiniLM-L6-v2)")
    preset: str | None = Field(None, description="LoRA preset instead of the auto-configured one (efficient, "
                               "balanced, expressive, qlora_*)")
    folds: int | None = Field(None, ge=1, description="number of CV folds, one adapter each (default: the "
                              "competition config's [training], else auto)")
    epochs: int | None = Field(None, ge=1, description="training epochs per adapter (default: the config's "
                               "[training], else auto)")
    max_seq_len: int | None = Field(None, ge=8, description="token limit per row (default: the config's "
                                    "[training], else auto from token lengths)")
    top_layers: int | Literal["all"] | None = Field(
        None, description="adapters on the top N encoder layers only: the frozen layers below run once per "
        "dataset (cached on disk) instead of once per fold, epoch and batch; all: every layer (default: the "
        "config's [training], else every layer)")
    compute_dtype: Literal["auto", "float32", "bfloat16"] | None = Field(
        None, description="dtype of the frozen base's weights and matmuls: float32; bfloat16 (adapters, head, "
        "norms and loss stay fp32); auto: bf16 where the CPU has avx512_bf16, and on Metal (default: the config's "
        "[training], else float32)")
    combine: Literal["blend", "merge"] = Field(
        "blend", description="blend: the fold adapters' mean blended with scikit-learn baselines, weights fit on "
        "out-of-fold rows; merge: one model from the averaged adapters (no baselines, no adapter sets)")
    baseline: bool | None = Field(None, description="blend scikit-learn members (HistGradientBoosting / linear / "
                                  "TF-IDF) trained on the same folds (default: yes with blend; merge has none)")
    blend_method: BlendMethod = Field("auto", description="how blend weighs the members (auto: caruana or "
                                      "stacking, whichever scores better fit without each fold; caruana: greedy "
                                      "selection as in AutoGluon; stacking: a level-2 linear model; weights, mean, "
                                      "rank_mean)")
    adapter_sets: list[str] | None = Field(
        None, description="more adapter sets on the same folds, each blended as its own member: "
        "PRESET[@MODEL][:KEY=VALUE,...], e.g. expressive or balanced@all-mpnet-base-v2:epochs=2 (default: the "
        "competition config's [training] adapter_sets; an empty list: none)")
    time_limit: str | None = Field(
        None, description="the whole run's time budget (download, training, members, blend, submission): "
        "a number of seconds (600), or hours/minutes/seconds such as 20m, 1h, 90s, 1h30m; the plan picks settings "
        "that fit and training cuts epochs when behind (default: the competition config's [training] time_limit, "
        "else 20m)")
    no_adapters: bool = Field(False, description="no LoRA adapters: blend the scikit-learn members alone (seconds "
                              "instead of minutes; the way out when no adapter plan fits --time-limit)")
    submit: bool = Field(True, description="submit the checked file and read its score (false: stop after the file)")
    resubmit: bool = Field(False, description="submit even if Kaggle already has this exact file")
    message: str = Field("kaggle-lora", description="submission message")
    data_dir: str | None = Field(None, description="where competition data is downloaded (default: WORK_DIR/data)")
    work_dir: str = Field(default_factory=lambda: DEFAULT_WORK_DIR, description="artifacts, token cache and task "
                          "results (default: $KAGGLE_LORA_HOME or .kaggle-lora)")
    kaggle_endpoint: str | None = Field(None, description="a Kaggle-compatible API server (the fake one)")
    tiny: bool = Field(False, description="tiny random model (smoke tests: fast; its adapters score near chance)")
    max_train_rows: int | None = Field(None, ge=2, description="train on a seeded sample of this many rows")
    refresh: bool = Field(False, description="ignore cached task results for this run (every step runs again)")
    retry_delay_s: float = Field(10.0, ge=0, description="first retry delay of Kaggle calls in seconds (doubles "
                                 "each retry)")
    score_timeout_s: float = Field(900.0, gt=0, description="how long to wait for Kaggle's score, in seconds")
    score_poll_s: float = Field(10.0, gt=0, description="seconds between score polls")

    @model_validator(mode="before")
    @classmethod
    def _deprecated_adapters(cls, data: Any) -> Any:
        """``adapters`` was the old name of ``folds`` (it always meant the number of folds)."""
        if isinstance(data, dict) and "adapters" in data:
            data = dict(data)
            value = data.pop("adapters")
            if data.get("folds") is not None and value is not None and data["folds"] != value:
                raise ValueError(f"adapters={value} and folds={data['folds']}: adapters is the old name of folds; "
                                 "give folds only.")
            warnings.warn("RunOptions(adapters=N) is deprecated; use folds=N (--folds N): it is the number of CV "
                          "folds, one adapter each.", DeprecationWarning, stacklevel=2)
            data.setdefault("folds", value)
        return data

    @field_validator("top_layers")
    @classmethod
    def _positive_layers(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"top_layers={value}: give a positive number of layers or 'all'.")
        return value

    @field_validator("time_limit", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        """A number (a flow parameter, a TOML value) is seconds; text must parse (``20m``, ``1h30m``)."""
        from lora_tasks.budget.duration import (
            parse_duration,  # lora_tasks.budget imports the data layer: only when a limit is given
        )

        if value is None:
            return None
        parse_duration(value)  # raises with the accepted forms
        return str(value)

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str | None) -> str | None:
        from lora_tasks.lora.config import (
            PRESETS,  # loads the LoRA package: only when a preset is given
        )

        if value is not None and value not in PRESETS:
            raise ValueError(f"preset={value!r} is not a preset; use one of {', '.join(PRESETS)}.")
        return value

    @field_validator("adapter_sets")
    @classmethod
    def _parse_sets(cls, value: list[str] | None) -> list[str] | None:
        from lora_tasks.steps.adapter_sets import (
            parse_adapter_sets,  # loads the steps: only when sets are given
        )

        if value:
            try:
                parse_adapter_sets(value)
            except RuntimeError as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _combine_rules(self) -> RunOptions:
        problems = []
        if self.combine == "merge" and self.adapter_sets:
            problems.append("adapter sets blend as members of their own; they need combine='blend' (--combine blend), "
                            "or drop them (--no-adapter-sets)")
        if self.combine == "merge" and self.baseline:
            problems.append("combine='merge' builds one model from the adapters and has no baselines; drop "
                            "baseline=True (--baseline) or use combine='blend'")
        if self.no_adapters and not self.uses_baseline:
            problems.append("no_adapters=True blends the scikit-learn members alone; it needs combine='blend' with "
                            "baselines (drop --no-baseline / --combine merge, or drop --no-adapters)")
        if problems:
            raise ValueError("; ".join(problems) + ".")
        return self

    # ---- what the steps read ------------------------------------------------------------------

    @property
    def uses_baseline(self) -> bool:
        """Whether scikit-learn members are trained and blended (blend's default)."""
        return self.combine == "blend" and self.baseline is not False

    @property
    def time_limit_s(self) -> float | None:
        """``time_limit`` in seconds (None: not given; the config's or the default budget applies)."""
        from lora_tasks.budget.duration import parse_duration  # see _duration

        return None if self.time_limit is None else parse_duration(self.time_limit)

    def training_overrides(self, overridable: tuple[str, ...] | None = None) -> dict[str, Any]:
        """The training settings this run sets over the recipe and the auto-configuration (only the
        given ones). ``compute_dtype`` joins them when the settings know it (``overridable``)."""
        out = {"preset": self.preset, "n_folds": self.folds, "epochs": self.epochs,
               "max_seq_len": self.max_seq_len, "top_layers": self.top_layers}
        if overridable is not None and "compute_dtype" in overridable and self.compute_dtype is not None:
            out["compute_dtype"] = self.compute_dtype
        return {k: v for k, v in out.items() if v is not None}
