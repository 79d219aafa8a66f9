"""What the training engine (:mod:`lora_tasks.training.train`) takes and gives: its settings,
the tokenized rows, the result, and the error a diverged run raises.

Why apart: the CV driver, the prefix cache, the budget's probe and the steps hand these records
around without the training loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from lora_tasks.data.tokenizer import Encoded

CLASSIFICATION = ("binary_classification", "multiclass_classification", "multilabel_classification")


class NonFiniteError(FloatingPointError):
    """A loss or predictions that are NaN or infinite; the message says where and the likely cause.

    Raised where the numbers appear, so a broken fold stops there instead of showing up later as
    missing or nonsensical predictions."""


@dataclass
class TrainConfig:
    """How one adapter is trained. Defaults suit a small LoRA on a MiniLM-sized encoder."""

    epochs: int = 3
    batch_size: int = 16
    learning_rate: float = 5e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    schedule: str = "linear"  # "linear" | "cosine" | "constant" (after warmup)
    grad_clip: float | None = 1.0
    grad_accum: int = 1
    class_weights: str | None = None  # None | "balanced"
    early_stopping_patience: int | None = 2  # epochs without improvement; None: never stop early
    metric: str | None = None  # validation metric name (lora_tasks.metrics); None: the loss
    seed: int = 0
    compile: bool = True
    pad_to_multiple: int = 16  # bounds the number of distinct shapes the compiled step sees
    eval_batch_size: int = 64

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("epochs, batch_size and grad_accum must be >= 1.")
        if self.schedule not in ("linear", "cosine", "constant"):
            raise ValueError(f"schedule={self.schedule!r}; use 'linear', 'cosine' or 'constant'.")
        if self.class_weights not in (None, "balanced"):
            raise ValueError(f"class_weights={self.class_weights!r}; use None or 'balanced'.")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio={self.warmup_ratio} must be in [0, 1).")


@dataclass
class Dataset:
    """Tokenized rows (padded to the longest row) with their labels (None for test rows)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    labels: np.ndarray | None = None

    @classmethod
    def from_encoded(cls, enc: Encoded, labels: Sequence | np.ndarray | None = None) -> "Dataset":
        y = None if labels is None else np.asarray(labels)
        if y is not None and len(y) != len(enc):
            raise ValueError(f"{len(enc)} tokenized rows but {len(y)} labels.")
        return cls(enc.input_ids, enc.attention_mask, enc.token_type_ids, y)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def lengths(self) -> np.ndarray:
        return self.attention_mask.sum(axis=1)

    def subset(self, idx: np.ndarray) -> "Dataset":
        return Dataset(
            self.input_ids[idx],
            self.attention_mask[idx],
            self.token_type_ids[idx],
            None if self.labels is None else self.labels[idx],
        )


@dataclass
class TrainResult:
    """What a training run produced."""

    history: list[dict] = field(default_factory=list)  # one row per epoch
    best_epoch: int = 0
    best_score: float | None = None
    metric: str = "loss"
    resumed_from_epoch: int = 0
    stopped_early: bool = False
    stopped_for_time: bool = False  # ``should_stop`` cut the epochs (the time budget)
    seconds: float = 0.0
    samples_per_s: float = 0.0
