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
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lora_tasks.data.adapter_sets import AdapterSetError, parse_adapter_sets
from lora_tasks.data.duration import parse_duration
from lora_tasks.data.overrides import ComputeDtype, Epochs, MaxSeqLen, NFolds, Preset, TopLayers, TrainingOverrides

if TYPE_CHECKING:
    from lora_tasks.data.source import CompetitionSource

#: Where a run keeps its data, artifacts, token cache and task results unless told otherwise.
DEFAULT_WORK_DIR = os.environ.get("KAGGLE_LORA_HOME", ".kaggle-lora")

#: Old option names -> (their name now, why), accepted with a DeprecationWarning.
DEPRECATED_NAMES = (("adapters", "folds", "it is the number of CV folds, one adapter each"),
                    ("baseline", "members", "the scikit-learn models are the blend's members"))

#: The blend methods of :data:`lora_tasks.ensemble.METHODS` (a test keeps the two equal; the
#: Literal gives the UI form a drop-down).
BlendMethod = Literal["auto", "mean", "rank_mean", "weights", "caruana", "stacking"]


class RunOptions(BaseModel):
    """Everything a ``kaggle-lora`` run can be told: what to train, how to combine, where to work."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    competition: str = Field("demo", description="Kaggle slug, config name or alias (e.g. demo, titanic, "
                             "house-prices); demo runs offline against an in-process fake Kaggle server")
    config: str | None = Field(None, description="the competition's config file (TOML) to use instead of the one "
                               "found by name: ./competitions/<slug>.toml where you run, $KAGGLE_LORA_COMPETITIONS_DIR, "
                               "then the shipped recipes")
    target: str | None = Field(None, description="the target column(s) of train.csv (comma-separated for several), "
                               "over the config's target_columns and the inferred one")
    id_column: str | None = Field(None, description="the id column (shared by test.csv and the sample submission), "
                                  "over the config's id_column and the inferred one")
    model: str | None = Field(None, description="encoder id or folder (default: the offline all-MiniLM-L6-v2)")
    # the training settings' rules are lora_tasks.data.overrides' (shared with the [training] table)
    preset: Preset | None = Field(None, description="LoRA preset instead of the auto-configured one (efficient, "
                                  "balanced, expressive, qlora_*)")
    folds: NFolds | None = Field(None, description="number of CV folds, one adapter each, 2 or more (default: the "
                                 "competition config's [training], else auto)")
    epochs: Epochs | None = Field(None, description="training epochs per adapter (default: the config's "
                                  "[training], else auto)")
    max_seq_len: MaxSeqLen | None = Field(None, description="token limit per row (default: the config's "
                                          "[training], else auto from token lengths)")
    top_layers: TopLayers | None = Field(
        None, description="adapters on the top N encoder layers only: the frozen layers below run once per "
        "dataset (cached on disk) instead of once per fold, epoch and batch; all: every layer (default: the "
        "config's [training], else every layer)")
    compute_dtype: ComputeDtype | None = Field(
        None, description="dtype of the frozen base's weights and matmuls: float32; bfloat16 (adapters, head, "
        "norms and loss stay fp32); auto: bf16 where the CPU has avx512_bf16, and on Metal (default: the config's "
        "[training], else auto)")
    combine: Literal["blend", "merge"] = Field(
        "blend", description="blend: the fold adapters' mean blended with scikit-learn members, weights fit on "
        "out-of-fold rows; merge: one model from the averaged adapters (no members, no adapter sets)")
    members: bool | None = Field(None, description="blend the scikit-learn and gradient-boosting members "
                                 "(LightGBM / CatBoost / HistGradientBoosting / linear / TF-IDF) trained on the same "
                                 "folds (default: yes with blend; merge has none)")
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
    offline: bool = Field(False, description="never call Kaggle: use the data already downloaded (in DATA_DIR/<slug> "
                          "or DATA_DIR itself, which may be read-only) and do not submit (implies --no-submit)")
    tiny: bool = Field(False, description="tiny random model (smoke tests: fast; its adapters score near chance)")
    max_train_rows: int | None = Field(None, ge=2, description="train on a seeded sample of this many rows")
    refresh: bool = Field(False, description="ignore cached task results for this run (every step runs again)")
    retry_delay_s: float = Field(10.0, ge=0, description="first retry delay of Kaggle calls in seconds (doubles "
                                 "each retry)")
    score_timeout_s: float = Field(900.0, gt=0, description="how long to wait for Kaggle's score, in seconds")
    score_poll_s: float = Field(10.0, gt=0, description="seconds between score polls")

    @model_validator(mode="before")
    @classmethod
    def _deprecated_names(cls, data: Any) -> Any:
        """Old names: ``adapters`` of ``folds`` (it always meant the number of folds), ``baseline``
        of ``members`` (the scikit-learn models are the blend's members)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for old, new, why in DEPRECATED_NAMES:
            if old not in data:
                continue
            value = data.pop(old)
            if data.get(new) is not None and value is not None and data[new] != value:
                raise ValueError(f"{old}={value} and {new}={data[new]}: {old} is the old name of {new}; give {new} only.")
            warnings.warn(f"RunOptions({old}=...) is deprecated; use {new}=... (--{new}): {why}.", DeprecationWarning,
                          stacklevel=2)
            data.setdefault(new, value)
        return data

    @model_validator(mode="before")
    @classmethod
    def _offline_submits_nothing(cls, data: Any) -> Any:
        """``offline`` never calls Kaggle, so it does not submit: ``submit`` defaults to False
        with it, and an explicit ``submit=True`` is refused with the fix."""
        if isinstance(data, dict) and data.get("offline"):
            if data.get("submit") is True:
                raise ValueError("offline=True (--offline) never calls Kaggle, so it cannot submit; drop submit=True, "
                                 "or drop --offline to submit.")
            data = {**data, "submit": False}
        return data

    @field_validator("target", "id_column", "config")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("give a column name or path, not an empty text (or leave the option out).")
        return value

    @field_validator("time_limit", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        """A number (a flow parameter, a TOML value) is seconds; text must parse (``20m``, ``1h30m``)."""
        if value is None:
            return None
        parse_duration(value)  # raises with the accepted forms
        return str(value)

    @field_validator("adapter_sets")
    @classmethod
    def _parse_sets(cls, value: list[str] | None) -> list[str] | None:
        if value:
            try:
                parse_adapter_sets(value)
            except AdapterSetError as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _combine_rules(self) -> RunOptions:
        problems = []
        if self.combine == "merge" and self.adapter_sets:
            problems.append("adapter sets blend as members of their own; they need combine='blend' (--combine blend), "
                            "or drop them (--no-adapter-sets)")
        if self.combine == "merge" and self.members:
            problems.append("combine='merge' builds one model from the adapters and has no members; drop "
                            "members=True (--members) or use combine='blend'")
        if self.no_adapters and not self.uses_members:
            problems.append("no_adapters=True blends the scikit-learn members alone; it needs combine='blend' with "
                            "members (drop --no-members / --combine merge, or drop --no-adapters)")
        if problems:
            raise ValueError("; ".join(problems) + ".")
        return self

    # ---- what the steps read ------------------------------------------------------------------

    def competition_source(self) -> CompetitionSource:
        """The competition as the steps take it: a :class:`~lora_tasks.data.source.CompetitionSource`
        holding the config file this run uses (``config``, else the one found by name from the
        working directory) and its ``target`` / ``id_column``. Resolved once at the start of a run,
        so every step, in any process, reads the same file."""
        from lora_tasks.data.source import CompetitionSource  # the data layer loads pandas

        return CompetitionSource.resolve(self.competition, config=self.config, target=self.target,
                                         id_column=self.id_column)

    @property
    def uses_members(self) -> bool:
        """Whether scikit-learn members are trained and blended (blend's default)."""
        return self.combine == "blend" and self.members is not False

    @property
    def time_limit_s(self) -> float | None:
        """``time_limit`` in seconds (None: not given; the config's or the default budget applies)."""
        return None if self.time_limit is None else parse_duration(self.time_limit)

    def training_overrides(self, overridable: tuple[str, ...] | None = None) -> dict[str, Any]:
        """The training settings this run sets over the recipe and the auto-configuration (only the
        given ones). ``compute_dtype`` joins them when the settings know it (``overridable``)."""
        given = TrainingOverrides(preset=self.preset, n_folds=self.folds, epochs=self.epochs,
                                  max_seq_len=self.max_seq_len, top_layers=self.top_layers,
                                  compute_dtype=self.compute_dtype).given()
        if overridable is None or "compute_dtype" not in overridable:
            given.pop("compute_dtype", None)
        return given
