"""Training settings a user may set over the auto-configuration, and their rules, written once.

Why one place: the competition file's ``[training]`` table (:mod:`lora_tasks.data.config_file`)
and a run's options (:class:`lora_tasks.options.RunOptions`, the CLI's flags and the UI's form)
set the same settings; they used to check them in two styles, and ``top_layers``' "a positive
number or all" three times. Both now use the annotated types below (each rule's message names the
value and the fix), and :class:`TrainingOverrides` validates a whole set of them.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError

AUTO = "(or leave it out: the auto-configuration decides)"


def _check_preset(value: str) -> str:
    from lora_tasks.lora.config import PRESETS  # the preset table (no MLX)

    if value not in PRESETS:
        raise ValueError(f"{value!r} is not a preset; use one of {', '.join(PRESETS)} {AUTO}")
    return value


def _check_n_folds(value: int) -> int:
    if value < 2:
        raise ValueError(f"{value} fold(s): out-of-fold predictions need a held-out fold, so give 2 or more {AUTO}")
    return value


def _check_learning_rate(value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{value!r} is not a positive finite number; give e.g. 1e-4 or 3e-4 {AUTO}")
    return value


def _check_top_layers(value: Any) -> Any:
    """Before the type: the same message for ``0``, ``-1`` and ``"some"``."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if value != "all" and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise ValueError(f"{value!r}: give a positive number of layers, or 'all' (every layer) {AUTO}")
    return value


def _at_least(low: int, what: str) -> AfterValidator:
    def check(value: int) -> int:
        if value < low:
            raise ValueError(f"{value} {what}: give {low} or more {AUTO}")
        return value

    return AfterValidator(check)


Preset = Annotated[str, AfterValidator(_check_preset)]
NFolds = Annotated[int, AfterValidator(_check_n_folds)]
Epochs = Annotated[int, _at_least(1, "epochs")]
MaxSeqLen = Annotated[int, _at_least(8, "tokens per row")]
BatchSize = Annotated[int, _at_least(1, "rows per batch")]
LearningRate = Annotated[float, AfterValidator(_check_learning_rate)]
TopLayers = Annotated[int | Literal["all"], BeforeValidator(_check_top_layers)]
ComputeDtype = Literal["auto", "float32", "bfloat16"]


class TrainingOverrides(BaseModel):
    """The settings of a ``[training]`` table or a run's options (only the given ones are set)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: Preset | None = None
    max_seq_len: MaxSeqLen | None = None
    batch_size: BatchSize | None = None
    epochs: Epochs | None = None
    learning_rate: LearningRate | None = None
    n_folds: NFolds | None = None
    class_weight: str | None = None
    top_layers: TopLayers | None = None
    compute_dtype: ComputeDtype | None = None

    def given(self) -> dict[str, Any]:
        """The settings that were set, by name."""
        return self.model_dump(exclude_none=True)


def overrides_problem(error: ValidationError, prefix: str = "") -> str:
    """A validation error as ``<prefix><field>: <what is wrong and the fix>`` lines joined by ``; ``."""
    parts = []
    for e in error.errors():
        field = ".".join(str(p) for p in e["loc"])
        message = str(e["msg"]).removeprefix("Value error, ")
        parts.append(f"`{prefix}{field}`: {message}")
    return "; ".join(parts)
