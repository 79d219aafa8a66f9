"""Multi-label and multi-target heads: losses against numpy references, gradients reach the head."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from lora_tasks.models.heads import (
    HEAD_TYPES,
    ClassificationHead,
    canonical_head_type,
    check_head_type,
    head_loss,
    predictions,
)
from lora_tasks.task import Task

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(0, 2, (6, 4)).astype(np.float32)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def test_multilabel_loss_is_the_mean_binary_cross_entropy_of_every_label():
    y = (RNG.random((6, 4)) < 0.4).astype(np.float32)
    p = _sigmoid(LOGITS.astype(np.float64))
    reference = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    loss = head_loss("multilabel_classification", mx.array(LOGITS), mx.array(y)).item()
    assert loss == pytest.approx(reference, rel=1e-5)
    per_row = np.array(head_loss("multilabel", mx.array(LOGITS), mx.array(y), reduction="none"))
    np.testing.assert_allclose(per_row, -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p), axis=1), rtol=1e-5)
    np.testing.assert_allclose(np.array(predictions("multilabel_classification", mx.array(LOGITS))), p, rtol=1e-5)


def test_multitarget_regression_loss_is_the_mse_over_every_output():
    y = RNG.normal(0, 1, (6, 4)).astype(np.float32)
    reference = np.mean((LOGITS - y) ** 2)
    loss = head_loss(Task.MULTITARGET_REGRESSION, mx.array(LOGITS), mx.array(y)).item()
    assert loss == pytest.approx(reference, rel=1e-5)
    np.testing.assert_array_equal(np.array(predictions("regression", mx.array(LOGITS))), LOGITS)
    assert check_head_type(Task.MULTITARGET_REGRESSION, 4) == 4


@pytest.mark.parametrize("task", [Task.MULTILABEL, Task.MULTITARGET_REGRESSION])
def test_gradients_reach_every_head_weight(task):
    mx.random.seed(0)
    head = ClassificationHead(8, check_head_type(task, 3), dropout=0.0)
    pooled = mx.array(RNG.normal(0, 1, (5, 8)).astype(np.float32))
    y = mx.array((RNG.random((5, 3)) < 0.5).astype(np.float32))

    def loss_fn(model: nn.Module) -> mx.array:
        return head_loss(task.head_type, model(pooled), y)

    loss, grads = nn.value_and_grad(head, loss_fn)(head)
    weight, bias = np.array(grads["classifier"]["weight"]), np.array(grads["classifier"]["bias"])
    assert np.isfinite(loss.item()) and weight.shape == (3, 8)
    assert np.all(np.isfinite(weight)) and np.all(np.abs(weight).sum(axis=1) > 0)  # every label's row learns
    assert np.all(np.abs(bias) > 0)


def test_task_names_and_head_names_are_both_accepted():
    assert canonical_head_type("binary") == "binary_classification"
    assert canonical_head_type(Task.MULTILABEL) == "multilabel_classification"
    assert set(HEAD_TYPES) == {t.head_type for t in Task}
    with pytest.raises(ValueError, match="Unknown head_type 'ranking'.*binary_classification"):
        check_head_type("ranking", 1)
