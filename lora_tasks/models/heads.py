"""Pooling, task heads and their losses. Heads return logits; losses are computed on logits.

Head types:
- ``binary_classification``: one logit per row; sigmoid cross-entropy.
- ``multiclass_classification``: ``num_labels`` logits; softmax cross-entropy.
- ``multilabel_classification``: ``num_labels`` logits, one sigmoid per label; the binary
  cross-entropy of each label, averaged over labels and rows. Predictions: (n, k) probabilities.
- ``regression``: ``num_labels`` outputs (1, or k for multi-target regression); mean squared
  error over every output.

The head types are :attr:`lora_tasks.task.Task.head_type`; every spelling :meth:`Task.parse`
reads (``"binary"`` as well as ``"binary_classification"``) is accepted here too.
"""

from __future__ import annotations

from typing import Literal

import mlx.core as mx
import mlx.nn as nn

from lora_tasks.models import ops
from lora_tasks.task import HEAD_TYPES, Task

POOLINGS = ("cls", "mean", "pooler")
Pooling = Literal["cls", "mean", "pooler"]


def canonical_head_type(head_type: str | Task) -> str:
    """The head type a task name or head name means (``"binary"`` -> ``"binary_classification"``)."""
    if head_type in HEAD_TYPES:
        return str(head_type)
    try:
        return Task.parse(head_type).head_type
    except ValueError:
        raise ValueError(
            f"Unknown head_type {head_type!r}; use one of {', '.join(HEAD_TYPES)} (or a task: "
            f"{', '.join(t.value for t in Task)})."
        ) from None


def check_head_type(head_type: str | Task, num_labels: int) -> int:
    """Validate a head type and return the number of outputs its linear layer needs."""
    head_type = canonical_head_type(head_type)
    if head_type == "binary_classification":
        if num_labels not in (1, 2):
            raise ValueError(f"binary_classification has 1 output (num_labels=1 or 2), got num_labels={num_labels}.")
        return 1
    if num_labels < 1 or (head_type == "multiclass_classification" and num_labels < 2):
        raise ValueError(f"{head_type} needs num_labels >= {2 if 'multiclass' in head_type else 1}, got {num_labels}.")
    return num_labels


def mean_pool(hidden: mx.array, attention_mask: mx.array | None) -> mx.array:
    if attention_mask is None:
        return hidden.mean(axis=1)
    m = attention_mask.astype(hidden.dtype)[..., None]
    return (hidden * m).sum(axis=1) / mx.maximum(m.sum(axis=1), 1.0)


class ClassificationHead(nn.Module):
    """Dropout then a linear layer on the pooled sentence vector."""

    def __init__(self, hidden_size: int, num_outputs: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = ops.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_outputs)

    def __call__(self, pooled: mx.array) -> mx.array:
        return self.classifier(self.dropout(pooled))


def head_loss(
    head_type: str,
    logits: mx.array,
    labels: mx.array,
    class_weights: mx.array | None = None,
    reduction: Literal["mean", "none"] = "mean",
) -> mx.array:
    """The training loss of a head on logits. ``class_weights`` rebalances classes
    (binary: weights of class 0 and 1; multiclass: one per class)."""
    head_type = canonical_head_type(head_type)
    if head_type == "binary_classification":
        y = labels.astype(logits.dtype).reshape(logits.shape)
        loss = nn.losses.binary_cross_entropy(logits, y, with_logits=True, reduction="none")
        if class_weights is not None:
            loss = loss * (class_weights[1] * y + class_weights[0] * (1 - y))
    elif head_type == "multiclass_classification":
        idx = labels.astype(mx.int32).reshape(-1)
        loss = nn.losses.cross_entropy(logits, idx, reduction="none")
        if class_weights is not None:
            loss = loss * class_weights[idx]
    elif head_type == "multilabel_classification":
        y = labels.astype(logits.dtype).reshape(logits.shape)
        loss = nn.losses.binary_cross_entropy(logits, y, with_logits=True, reduction="none").mean(axis=-1)
    else:  # regression: every row has the same number of outputs, so the mean of row means is the MSE
        y = labels.astype(logits.dtype).reshape(logits.shape)
        loss = ((logits - y) ** 2).mean(axis=-1) if logits.ndim > 1 else (logits - y) ** 2
    return loss.mean() if reduction == "mean" else loss


def predictions(head_type: str, logits: mx.array) -> mx.array:
    """Logits -> what a submission wants: probabilities for classification, values for regression."""
    head_type = canonical_head_type(head_type)
    if head_type in ("binary_classification", "multilabel_classification"):
        return mx.sigmoid(logits)
    if head_type == "multiclass_classification":
        return mx.softmax(logits, axis=-1)
    return logits


class EncoderWithHead(nn.Module):
    """An encoder plus a task head: the plumbing BERT and ModernBERT share.

    Subclasses build their encoder, expose it as ``backbone``, and call :meth:`_init_head`;
    ``__call__`` returns logits: shape (batch,) for binary classification, else (batch, num_labels).
    """

    def _init_head(self, hidden_size: int, head_type: str, num_labels: int, pooling: str, dropout: float) -> None:
        head_type = canonical_head_type(head_type)
        self.head_type = head_type
        self.num_labels = num_labels
        self.pooling = pooling
        self.head = ClassificationHead(hidden_size, check_head_type(head_type, num_labels), dropout)

    @property
    def backbone(self) -> nn.Module:
        raise NotImplementedError

    @property
    def config(self):
        return self.backbone.config

    def pool(self, hidden: mx.array, attention_mask: mx.array | None) -> mx.array:
        return mean_pool(hidden, attention_mask) if self.pooling == "mean" else hidden[:, 0]

    def logits_from_hidden(self, hidden: mx.array, attention_mask: mx.array | None) -> mx.array:
        logits = self.head(self.pool(hidden, attention_mask))
        return logits.squeeze(-1) if self.head_type == "binary_classification" else logits

    def __call__(
        self,
        input_ids: mx.array,
        attention_mask: mx.array | None = None,
        token_type_ids: mx.array | None = None,
    ) -> mx.array:
        return self.logits_from_hidden(self.backbone(input_ids, attention_mask, token_type_ids), attention_mask)

    def loss(self, logits: mx.array, labels: mx.array, class_weights: mx.array | None = None) -> mx.array:
        return head_loss(self.head_type, logits, labels, class_weights)
