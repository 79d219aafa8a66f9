"""QLoRA: a 4-bit (or 8-bit) frozen base with fp32 LoRA adapters (lora_tasks/lora/quantized.py)."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

import lora_tasks  # noqa: F401  (BLAS set-up before MLX)
from lora_tasks.lora import LoRAAdapter, LoRALinear
from lora_tasks.lora.quantized import (
    QLoRALinear,
    QuantizedBaseLinear,
    array_bytes,
    dequantized_weight,
    is_quantized,
    merge_quantized,
)
from lora_tasks.models import BertConfig
from lora_tasks.models.heads import head_loss
from lora_tasks.training.factory import create_bert_with_lora, create_qlora_model

CFG = BertConfig(vocab_size=512, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=256, max_position_embeddings=32)
IDS = mx.array(np.random.default_rng(0).integers(1, 512, size=(4, 12)))
MASK = mx.array(np.r_[np.ones((3, 12)), np.c_[np.ones((1, 7)), np.zeros((1, 5))]].astype(np.int32))


def _randomize_b(adapter: LoRAAdapter, scale: float = 0.5, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    for layer in adapter.layers.values():
        layer.lora_b = mx.array(rng.normal(0, scale, size=layer.lora_b.shape).astype(np.float32))


def _qmodel(preset: str = "qlora_memory", **kw):
    return create_qlora_model("bert_with_head", preset, config=CFG, pretrained=False, seed=0, **kw)


def test_dequantize_then_gemm_matches_quantized_matmul():
    mx.random.seed(0)
    lin = nn.Linear(256, 96)
    x = mx.random.normal((8, 10, 256))
    ref = nn.QuantizedLinear.from_linear(lin, group_size=64, bits=4)
    ours = QuantizedBaseLinear.from_linear(lin, group_size=64, bits=4)
    np.testing.assert_allclose(np.array(ours(x)), np.array(ref(x)), atol=2e-5, rtol=1e-5)
    # and a QLoRA layer at init (B = 0) computes the same as the quantized base
    layer = QLoRALinear.from_linear(lin, r=4, bits=4, group_size=64)
    assert is_quantized(layer.linear) and layer.in_features == 256 and layer.out_features == 96
    np.testing.assert_allclose(np.array(layer(x)), np.array(ref(x)), atol=2e-5, rtol=1e-5)
    # the 4-bit base is close to the fp32 weight (affine 4-bit, groups of 64)
    err = float(mx.abs(layer.base_weight() - lin.weight).max())
    assert 0 < err < 0.2 * float(mx.abs(lin.weight).max())


@pytest.mark.parametrize("preset", ["qlora_memory", "qlora_quality"])
def test_qlora_model_quantizes_the_base_and_trains_only_adapter_and_head(preset):
    model, adapter = _qmodel(preset)
    targets = {"qlora_memory": {"query", "value"}, "qlora_quality": {"query", "key", "value", "attention_output"}}
    assert adapter.config.quantize_bits == 4 and set(adapter.config.target_modules) == targets[preset]
    assert all(isinstance(layer, QLoRALinear) for layer in adapter.layers.values())
    linears = [p for p, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert linears == ["head.classifier"]  # every encoder linear is quantized; the head is fp32
    quantized = [p for p, m in model.named_modules() if isinstance(m, nn.QuantizedLinear)]
    assert len(quantized) == 6 * CFG.num_hidden_layers
    trainable = {k for k, _ in tree_flatten(model.trainable_parameters())}
    assert trainable == set(adapter.get_lora_state_dict())
    assert all(v.dtype == mx.float32 for _, v in tree_flatten(model.trainable_parameters()))

    labels = mx.array([0.0, 1.0, 1.0, 0.0])
    model.eval()  # deterministic (no dropout): the loss on these 4 rows must fall

    def loss_fn(m):
        return head_loss("binary_classification", m(IDS, MASK), labels)

    step = nn.value_and_grad(model, loss_fn)
    first, grads = step(model)
    assert {k for k, _ in tree_flatten(grads)} == trainable
    before = {k: np.array(v) for k, v in tree_flatten(model.parameters()) if k not in trainable}
    from mlx.optimizers import Adam

    opt = Adam(learning_rate=3e-3)
    start = float(loss_fn(model))
    for _ in range(20):
        _, grads = step(model)
        opt.update(model, grads)
        mx.eval(model.parameters())
    assert float(loss_fn(model)) < start - 0.05
    after = dict(tree_flatten(model.parameters()))
    assert all(np.array_equal(before[k], np.array(after[k])) for k in before)  # the 4-bit base never moved


def test_qlora_stays_close_to_the_fp32_model_and_uses_far_less_memory():
    fp_model, fp_adapter = create_bert_with_lora("binary_classification", "efficient", config=CFG,
                                                 pretrained=False, seed=0)
    q_model, _ = _qmodel("qlora_memory")
    fp_bytes, q_bytes = array_bytes(fp_model), array_bytes(q_model)
    # linears at 4 bits + fp16 scales/biases per 64: ~ 5/32 of fp32; embeddings stay fp32 here
    linear_fp = sum(int(m.weight.nbytes) for _, m in fp_model.named_modules() if isinstance(m, nn.Linear))
    assert fp_bytes - q_bytes > 0.75 * linear_fp
    qe_model, _ = _qmodel("qlora_memory", quantize_embeddings=True)
    assert isinstance(qe_model.bert.embeddings.word_embeddings, nn.QuantizedEmbedding)
    assert array_bytes(qe_model) < 0.3 * fp_bytes
    # same seed, same random base: outputs differ only by the quantization
    h_fp = fp_model.bert(IDS, MASK)
    for m in (q_model, qe_model):
        h_q = m.bert(IDS, MASK)
        cos = mx.sum(h_fp * h_q, -1) / (mx.linalg.norm(h_fp, axis=-1) * mx.linalg.norm(h_q, axis=-1))
        assert float(cos.min()) > 0.9


def test_merge_into_a_quantized_base_keeps_the_adapter():
    model, adapter = _qmodel("qlora_quality")
    _randomize_b(adapter)
    unmerged = np.array(model(IDS, MASK))
    # base alone (what a merge that drops the adapter would give)
    for layer in adapter.layers.values():
        layer.merged = True
    base_only = np.array(model(IDS, MASK))
    for layer in adapter.layers.values():
        layer.merged = False
    assert np.abs(base_only - unmerged).max() > 1e-2

    # fp option: exact
    report = merge_quantized(adapter, requantize=False)
    assert not report.requantized and adapter.merged
    assert all(isinstance(layer.linear, nn.Linear) for layer in adapter.layers.values())
    np.testing.assert_allclose(np.array(model(IDS, MASK)), unmerged, atol=1e-4)
    adapter.unmerge_adapters()
    assert all(is_quantized(layer.linear) for layer in adapter.layers.values())
    np.testing.assert_allclose(np.array(model(IDS, MASK)), unmerged, atol=1e-6)

    # re-quantized: the error is reported, small, and the adapter is still in the weights
    report = merge_quantized(adapter, requantize=True)
    assert report.requantized and set(report.errors) == set(adapter.layers)
    assert all(is_quantized(layer.linear) for layer in adapter.layers.values())
    assert 0 < report.max_rel_fro < 0.15 and report.max_abs > 0
    for path, layer in adapter.layers.items():
        assert layer.last_requantization_error == report.errors[path]
    requant = np.array(model(IDS, MASK))
    assert np.abs(requant - unmerged).max() < 0.5 * np.abs(base_only - unmerged).max()
    adapter.unmerge_adapters()
    np.testing.assert_allclose(np.array(model(IDS, MASK)), unmerged, atol=1e-6)

    # the plain LoRAAdapter.merge_adapters path keeps full precision (exact) too
    adapter.merge_adapters()
    np.testing.assert_allclose(np.array(model(IDS, MASK)), unmerged, atol=1e-4)
    fused = next(iter(adapter.layers.values())).fuse()
    assert isinstance(fused, nn.Linear)
    adapter.unmerge_adapters()


def test_eight_bits_is_closer_than_four():
    lin = nn.Linear(128, 64)
    errs = {}
    for bits in (4, 8):
        layer = QLoRALinear.from_linear(lin, r=2, bits=bits, group_size=64)
        assert layer.linear.bits == bits
        errs[bits] = float(mx.abs(dequantized_weight(layer.linear) - lin.weight).max())
    assert errs[8] < errs[4] / 8
    model, adapter = _qmodel("qlora_memory", bits=8)
    assert all(layer.linear.bits == 8 for layer in adapter.layers.values())


def test_saved_qlora_adapter_loads_onto_a_fresh_model(tmp_path):
    model, adapter = _qmodel("qlora_memory")
    _randomize_b(adapter)
    expected = np.array(model(IDS, MASK))
    path = adapter.save(tmp_path / "q")
    from lora_tasks.models.encoder import BertWithHead

    mx.random.seed(0)
    fresh = BertWithHead(CFG, "binary_classification", 1, "mean")
    fresh.eval()
    loaded = LoRAAdapter.from_file(fresh, path)  # the saved config asks for the 4-bit base
    assert loaded.config.quantize_bits == 4
    assert all(isinstance(layer, QLoRALinear) for layer in loaded.layers.values())
    np.testing.assert_allclose(np.array(fresh(IDS, MASK)), expected, atol=1e-5)


def test_errors_name_the_fix():
    with pytest.raises(NotImplementedError, match="DoRA"):
        _qmodel("qlora_memory", use_dora=True)
    with pytest.raises(ValueError, match="quantize_group_size"):
        _qmodel("qlora_memory", group_size=48)
    # a non-quantized layer inside a QLoRA config stays a plain LoRA layer (input not a multiple of 64)
    small = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, max_position_embeddings=16)
    _, adapter = create_qlora_model("bert_with_head", "qlora_memory", config=small, pretrained=False)
    assert all(type(layer) is LoRALinear for layer in adapter.layers.values())
