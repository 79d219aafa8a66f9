"""The LoRA branch as one native op (CPU): the same values and gradients as MLX's separate passes."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from lora_tasks.lora.layers import LoRALinear
from lora_tasks.native import kernels
from lora_tasks.native.lora_branch import FUSED_ENV, fused_lora_add

needs_native = pytest.mark.skipif(kernels() is None, reason="native kernels unavailable (no g++ or not a CPU)")


def _layer(n_in: int, n_out: int, r: int, seed: int = 0) -> LoRALinear:
    mx.random.seed(seed)
    layer = LoRALinear.from_base(nn.Linear(n_in, n_out), r=r, alpha=2.0 * r)
    layer.lora_b = mx.random.normal(layer.lora_b.shape) * 0.1  # a trained adapter, not a zero one
    return layer


def _value_and_grads(layer: LoRALinear, x: mx.array, cot: mx.array):
    def f(x, a, b):
        layer.lora_a, layer.lora_b = a, b
        return (layer(x) * cot).sum()

    a0, b0 = layer.lora_a, layer.lora_b
    val, grads = mx.value_and_grad(f, argnums=(0, 1, 2))(x, a0, b0)
    layer.lora_a, layer.lora_b = a0, b0
    return np.array(val), [np.array(g) for g in grads], np.array(layer(x))


@needs_native
@pytest.mark.parametrize(("shape", "n_in", "n_out", "r"), [
    ((4, 12), 32, 48, 8),       # a batch of rows
    ((3, 5), 37, 19, 3),        # sizes off every vector width: the tails
    ((16, 128), 384, 384, 8),   # MiniLM's projection: enough work for the threads
])
def test_fused_branch_matches_the_separate_passes(monkeypatch, shape, n_in, n_out, r):
    monkeypatch.setenv(FUSED_ENV, "1")
    assert fused_lora_add() is not None
    layer = _layer(n_in, n_out, r)
    x = mx.random.normal((*shape, n_in))
    cot = mx.random.normal((*shape, n_out))
    val, grads, out = _value_and_grads(layer, x, cot)
    monkeypatch.setenv(FUSED_ENV, "0")
    assert fused_lora_add() is None
    ref_val, ref_grads, ref_out = _value_and_grads(layer, x, cot)
    np.testing.assert_allclose(out, ref_out, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(val, ref_val, rtol=1e-4)
    for name, g, ref in zip(("x", "lora_a", "lora_b"), grads, ref_grads, strict=True):
        # sums over every row in another order: compare at the gradient's own scale
        np.testing.assert_allclose(g, ref, rtol=1e-3, atol=1e-5 * float(np.abs(ref).max()), err_msg=name)


@needs_native
def test_a_compiled_model_step_has_the_same_loss_and_gradients_fused_or_not(monkeypatch):
    from lora_tasks.models import BertConfig
    from lora_tasks.training.factory import create_bert_with_lora
    from tests._tiny import TINY

    def run():
        model, adapter = create_bert_with_lora(config=BertConfig(**TINY), pretrained=False, seed=0, dropout=0.0)
        state = {k: v + 0.05 for k, v in adapter.get_lora_state_dict().items()}
        adapter.load_lora_state_dict(state)
        rng = np.random.default_rng(0)
        ids = mx.array(rng.integers(5, 50, (4, 12)).astype(np.int32))
        mask = mx.array((np.arange(12)[None] < np.array([[12], [7], [3], [10]])).astype(np.int32))
        y = mx.array([0, 1, 1, 0])
        model.train()
        loss_and_grad = nn.value_and_grad(model, lambda: model.loss(model(ids, mask), y))
        loss, grads = mx.compile(loss_and_grad, inputs=[model.state])()
        return float(loss), {k: np.array(v) for k, v in tree_flatten(grads)}

    monkeypatch.setenv(FUSED_ENV, "1")
    loss, grads = run()
    monkeypatch.setenv(FUSED_ENV, "0")
    ref_loss, ref_grads = run()
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert grads.keys() == ref_grads.keys() and any("lora_a" in k for k in grads)
    for k in grads:
        np.testing.assert_allclose(grads[k], ref_grads[k], rtol=1e-3, atol=1e-5, err_msg=k)


def test_the_fused_branch_is_off_unless_asked_for(monkeypatch):
    monkeypatch.delenv(FUSED_ENV, raising=False)
    assert fused_lora_add() is None, "MLX's passes are the default until the kernel beats them"
