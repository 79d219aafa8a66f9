"""bf16 compute for the frozen base: the native bf16 GEMM (portable kernel, run-time dispatch) against
fp32 GEMM on bf16-rounded inputs, and a bf16 model against its fp32 twin (loss, gradients, merging,
saving, loading, PEFT export, QLoRA)."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from lora_tasks import native
from lora_tasks.lora import LoRAAdapter
from lora_tasks.models import BertConfig, ops
from lora_tasks.training.factory import create_bert_with_lora, create_qlora_model
from lora_tasks.training.precision import (
    Bf16Embedding,
    Bf16Linear,
    Bf16QuantizedBaseLinear,
    cast_frozen_base,
    compute_dtype_choice,
    resolve_compute_dtype,
)
from tests._tiny import TINY

K = native.kernels()
needs_native = pytest.mark.skipif(K is None, reason=f"native kernels unavailable: {native.native_info().reason}")


def _bf16_rounded(a: np.ndarray) -> np.ndarray:
    return np.array(mx.array(a).astype(mx.bfloat16).astype(mx.float32)).astype(np.float64)


def _assert_within_fp32_accumulation(got: np.ndarray, a: np.ndarray, b: np.ndarray, bias: np.ndarray | None = None):
    """|got - a @ b| <= K * eps32 * (|a| @ |b| + |bias|): the error bound of an fp32 sum of K products."""
    ref = a @ b + (0.0 if bias is None else bias)
    bound = (np.abs(a) @ np.abs(b) + (0.0 if bias is None else np.abs(bias))) * a.shape[-1] * 2.0**-23 + 1e-30
    excess = np.abs(got - ref) - bound
    assert excess.max() <= 0, f"max error {np.abs(got - ref).max():.3g} exceeds the fp32 accumulation bound"


def _assert_within_bf16_rounding(got: np.ndarray, a: np.ndarray, b: np.ndarray):
    """|got - a @ b| <= 2^-7 (|a| @ |b|): operands and result each rounded to bf16 at most once (2^-9 each)."""
    excess = np.abs(got - a @ b) - 2.0**-7 * (np.abs(a) @ np.abs(b))
    assert excess.max() <= 0, f"error exceeds bf16 rounding by {excess.max():.3g}"


def _cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    pytest.skip("/proc/cpuinfo has no flags line")


# ---------------------------------------------------------------------------------------------- kernel


@needs_native
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (17, 33, 65), (5, 2, 3), (130, 384, 1536), (64, 1000, 7)])
def test_portable_kernel_equals_fp32_gemm_on_bf16_rounded_inputs(m, k, n):
    rng = np.random.default_rng(m * 1000 + n)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    wb = mx.array(w).astype(mx.bfloat16)
    # forward: x @ w.T + bias
    y = K.bf16_matmul(mx.array(x), wb, mx.array(bias), True, "portable")
    assert y.dtype == mx.float32 and y.shape == (m, n)
    _assert_within_fp32_accumulation(np.array(y), _bf16_rounded(x), _bf16_rounded(w).T, bias)
    # input gradient: g @ w
    g = rng.standard_normal((m, n)).astype(np.float32)
    dx = K.bf16_matmul(mx.array(g), wb, None, False, "portable")
    assert dx.shape == (m, k)
    _assert_within_fp32_accumulation(np.array(dx), _bf16_rounded(g), _bf16_rounded(w))


def _kernels() -> list:
    """Both micro-kernels where this CPU runs both; the AVX512-BF16 one is a skip elsewhere."""
    has_avx512 = K is not None and K.bf16_kernel() == "avx512bf16"
    return ["portable", pytest.param("avx512bf16", marks=pytest.mark.skipif(not has_avx512, reason="no AVX512-BF16"))]


@needs_native
@pytest.mark.parametrize("kernel", _kernels())
# edges of the blocking: rows and columns past the last full tile, odd K, K as one block at either of the A panel's
# row strides (33, 777: bf16_gemm.h's k_block), several k blocks, too few rows to split M across threads (N is split),
# B too large for one pass over the rows of A, and N narrower than one tile; and the cache blocking at 611x2561x530:
# rows in blocks that the threads take in shrinking chunks, M a multiple of neither the row block nor the
# micro-panel; K over several k blocks with an odd remainder, so later blocks add to the tiles the first one wrote
# and the bias comes once; B's panels in several groups, the last one narrow (and the input gradient, reading W as
# K x N: 530 as one block, many panels of 2561)
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (17, 33, 65), (29, 777, 100), (41, 4097, 1100), (300, 64, 7),
                                   (611, 2561, 530)])
def test_each_kernel_equals_fp32_gemm_at_the_edges_of_its_blocking(kernel, m, k, n):
    rng = np.random.default_rng(m * 7 + k)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    wb = mx.array(w).astype(mx.bfloat16)
    y = K.bf16_matmul(mx.array(x), wb, mx.array(bias), True, kernel)
    _assert_within_fp32_accumulation(np.array(y), _bf16_rounded(x), _bf16_rounded(w).T, bias)
    g = rng.standard_normal((m, n)).astype(np.float32)
    dx = K.bf16_matmul(mx.array(g), wb, None, False, kernel)
    _assert_within_fp32_accumulation(np.array(dx), _bf16_rounded(g), _bf16_rounded(w))


@needs_native
@pytest.mark.parametrize("kernel", _kernels())
def test_packed_weight_cache_serves_each_weight_its_own_packing_and_forgets_dropped_ones(kernel):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((37, 70)).astype(np.float32)
    g = rng.standard_normal((37, 45)).astype(np.float32)
    K.bf16_packed_weights(True)
    for _ in range(3):  # each new weight has the old one's shape, and MLX likely reuses the freed buffer's address
        w = rng.standard_normal((45, 70)).astype(np.float32)
        wb = mx.array(w).astype(mx.bfloat16)
        for _repeat in range(2):  # the second call is served from the cache
            y = np.array(K.bf16_matmul(mx.array(x), wb, None, True, kernel))
            _assert_within_fp32_accumulation(y, _bf16_rounded(x), _bf16_rounded(w).T)
            dx = np.array(K.bf16_matmul(mx.array(g), wb, None, False, kernel))
            _assert_within_fp32_accumulation(dx, _bf16_rounded(g), _bf16_rounded(w))
        assert K.bf16_packed_weights() == 2, "one packing per layout of the live weight, none of the dropped ones"
    del wb
    assert K.bf16_packed_weights() == 0


@needs_native
def test_kernel_takes_batched_strided_inputs_and_the_auto_choice():
    x = mx.random.normal((3, 40, 24), key=mx.random.key(1))
    w = mx.random.normal((24, 50), key=mx.random.key(2))  # w.T is (50, 24): a strided view
    y = K.bf16_matmul(x.transpose(1, 0, 2), w.T, None, True, "auto")
    assert y.shape == (40, 3, 50)
    ref = _bf16_rounded(np.array(x.transpose(1, 0, 2))) @ _bf16_rounded(np.array(w))
    _assert_within_fp32_accumulation(np.array(y), _bf16_rounded(np.array(x.transpose(1, 0, 2))),
                                     _bf16_rounded(np.array(w)))
    assert np.isfinite(ref).all()


@needs_native
def test_kernel_rejects_mismatched_shapes_with_the_sizes():
    with pytest.raises(ValueError, match=r"last axis \(5\).*second axis \(4\)"):
        K.bf16_matmul(mx.zeros((2, 5)), mx.zeros((3, 4)), None, True, "portable")
    with pytest.raises(ValueError, match="bias must have shape"):
        K.bf16_matmul(mx.zeros((2, 4)), mx.zeros((3, 4)), mx.zeros((4,)), True, "portable")
    with pytest.raises(ValueError, match="'auto', 'portable' or 'avx512bf16'"):
        K.bf16_matmul(mx.zeros((2, 4)), mx.zeros((3, 4)), None, True, "amx")


@needs_native
def test_cpuid_reader_agrees_with_proc_cpuinfo_and_never_picks_avx512_without_the_flags():
    flags = _cpu_flags()
    feats = K.cpu_features()
    for ours, linux in (("avx2", "avx2"), ("fma", "fma"), ("avx512f", "avx512f"), ("avx512_bf16", "avx512_bf16")):
        assert feats[ours] == (linux in flags), f"cpuid says {ours}={feats[ours]}, /proc/cpuinfo disagrees"
    if "avx512_bf16" in flags and "avx512f" in flags and feats["os_zmm"]:
        assert K.bf16_kernel() == "avx512bf16"
    else:
        assert K.bf16_kernel() == "portable"
        with pytest.raises(ValueError, match="lacks AVX512F/AVX512_BF16"):
            K.bf16_matmul(mx.zeros((2, 4)), mx.zeros((3, 4)), None, True, "avx512bf16")


# ---------------------------------------------------------------------------------------------- op + vjp


@needs_native
@pytest.mark.parametrize("mode", ["native", "upcast"])
def test_bf16_linear_value_and_gradients(monkeypatch, mode):
    monkeypatch.setenv(ops.BF16_GEMM_ENV, mode)
    assert ops.bf16_gemm_mode() == mode
    x = mx.random.normal((2, 9, 33), key=mx.random.key(3))
    w = mx.random.normal((65, 33), key=mx.random.key(4)).astype(mx.bfloat16)
    b = mx.random.normal((65,), key=mx.random.key(5))
    g = mx.random.normal((2, 9, 65), key=mx.random.key(6))
    y, (dx, dw, db) = mx.vjp(lambda x_, w_, b_: ops.bf16_linear(x_, w_, b_), [x, w, b], [g])
    y = y[0]
    assert y.dtype == mx.float32 and dx.dtype == mx.float32 and dw.dtype == mx.bfloat16
    xf, wf, gf = (np.array(a.astype(mx.float32), np.float64) for a in (x, w, g))
    _assert_within_bf16_rounding(np.array(y) - np.array(b), xf, wf.T)
    _assert_within_bf16_rounding(np.array(dx), gf, wf)
    gf, xf = gf.reshape(-1, 65), xf.reshape(-1, 33)
    _assert_within_bf16_rounding(np.array(dw.astype(mx.float32)), gf.T, xf)
    np.testing.assert_allclose(np.array(db), gf.sum(0), rtol=1e-4, atol=1e-4)


def test_unknown_gemm_mode_names_the_choices(monkeypatch):
    monkeypatch.setenv(ops.BF16_GEMM_ENV, "fast")
    with pytest.raises(ValueError, match="auto, native, upcast"):
        ops.bf16_gemm_mode()


# ---------------------------------------------------------------------------------------------- dtype choice


def test_compute_dtype_names_resolve_and_auto_follows_cpuid():
    assert resolve_compute_dtype("float32") == mx.float32
    assert resolve_compute_dtype("bfloat16") == mx.bfloat16
    with pytest.raises(ValueError, match="auto, float32, bfloat16"):
        resolve_compute_dtype("fp16")
    choice = compute_dtype_choice("auto")
    expect_bf16 = K is not None and K.bf16_kernel() == "avx512bf16"
    assert (choice.dtype == mx.bfloat16) == expect_bf16
    assert choice.summary().startswith("Compute dtype: auto -> ")
    assert ("avx512_bf16" in choice.reason) == (K is not None), "auto says why: what cpuid reported"


def test_resolving_auto_says_which_dtype_and_why_in_the_log(caplog):
    import logging

    from lora_tasks.training import precision

    precision._LOGGED.clear()
    with caplog.at_level(logging.INFO, logger="lora_tasks"):
        dtype = resolve_compute_dtype("auto")
        resolve_compute_dtype("auto")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Compute dtype: auto -> ")]
    assert len(lines) == 1, "said once per process, not per model"
    assert ("bfloat16" if dtype == mx.bfloat16 else "float32") in lines[0]


# ---------------------------------------------------------------------------------------------- models


def _pair(monkeypatch, mode: str, **kwargs):
    """An fp32 model and its bf16 twin with the same base and the same (non-zero) adapter."""
    monkeypatch.setenv(ops.BF16_GEMM_ENV, mode)
    cfg = BertConfig(**TINY)
    f32, a32 = create_bert_with_lora(config=cfg, pretrained=False, seed=0, dropout=0.0, **kwargs)
    b16, a16 = create_bert_with_lora(config=cfg, pretrained=False, seed=0, dropout=0.0, compute_dtype="bfloat16",
                                     **kwargs)
    state = {k: v + 0.05 * mx.random.normal(v.shape, key=mx.random.key(i))
             for i, (k, v) in enumerate(sorted(a32.get_lora_state_dict().items()))}
    a32.load_lora_state_dict(state)
    a16.load_lora_state_dict(state)
    return f32, a32, b16, a16


def _batch():
    rng = np.random.default_rng(0)
    ids = mx.array(rng.integers(5, 50, (4, 12)).astype(np.int32))
    mask = mx.array((np.arange(12)[None] < np.array([[12], [7], [3], [10]])).astype(np.int32))
    return ids, mask, mx.array([0, 1, 1, 0])


def _loss_and_grads(model: nn.Module):
    ids, mask, y = _batch()
    fn = nn.value_and_grad(model, lambda m: m.loss(m(ids, mask), y))
    loss, grads = fn(model)
    return float(loss), dict(tree_flatten(grads))


@needs_native
@pytest.mark.parametrize("mode", ["native", "upcast"])
def test_bf16_model_loss_and_gradients_match_fp32(monkeypatch, mode):
    f32, _, b16, _ = _pair(monkeypatch, mode)
    # the frozen base is bf16, everything trained (and the norms) fp32
    params = dict(tree_flatten(b16.parameters()))
    trainable = dict(tree_flatten(b16.trainable_parameters()))
    assert isinstance(b16.bert.encoder.layer[0].attention.self.query.linear, Bf16Linear)
    assert isinstance(b16.bert.embeddings.word_embeddings, Bf16Embedding)
    assert trainable and all(v.dtype == mx.float32 for v in trainable.values())
    assert all(v.dtype == mx.float32 for k, v in params.items() if "LayerNorm" in k or "layer_norm" in k)
    bf16_keys = {k for k, v in params.items() if v.dtype == mx.bfloat16}
    assert bf16_keys and all(k.endswith(".weight") and k not in trainable for k in bf16_keys)
    loss32, g32 = _loss_and_grads(f32)
    loss16, g16 = _loss_and_grads(b16)
    assert set(g16) == set(g32)
    assert abs(loss16 - loss32) <= 2e-2 * abs(loss32)
    for k, g in g32.items():
        assert g16[k].dtype == mx.float32
        diff = np.linalg.norm(np.array(g16[k]) - np.array(g)) / (np.linalg.norm(np.array(g)) + 1e-12)
        assert diff < 5e-2, f"{k}: relative gradient error {diff:.3g}"


@needs_native
def test_bf16_merge_unmerge_save_load_and_peft_export(monkeypatch, tmp_path):
    _, _, b16, a16 = _pair(monkeypatch, "native")
    ids, mask, _ = _batch()
    before = np.array(b16(ids, mask))
    layer = b16.bert.encoder.layer[0].attention.self.query
    base = layer.linear.weight
    a16.merge_adapters()
    assert layer.linear.weight.dtype == mx.bfloat16
    np.testing.assert_allclose(np.array(b16(ids, mask)), before, rtol=3e-2, atol=3e-2)
    a16.unmerge_adapters()
    assert mx.array_equal(layer.linear.weight, base)
    np.testing.assert_array_equal(np.array(b16(ids, mask)), before)
    # save -> load into a fresh bf16 model with another adapter init: same outputs, adapters fp32
    path = a16.save(tmp_path / "adapter.safetensors")
    cfg = BertConfig(**TINY)
    fresh, fa = create_bert_with_lora(config=cfg, pretrained=False, seed=0, adapter_seed=7, dropout=0.0,
                                      compute_dtype="bfloat16")
    fa.load(path)
    assert all(v.dtype == mx.float32 for v in fa.get_lora_state_dict().values())
    np.testing.assert_array_equal(np.array(fresh(ids, mask)), before)
    out = a16.export_peft(tmp_path / "peft")
    assert (Path(out) / "adapter_config.json").exists()
    assert any(Path(out).glob("adapter_model.*"))


@needs_native
def test_qlora_dequantizes_to_bf16_and_matches_fp32_dequantization(monkeypatch):
    monkeypatch.setenv(ops.BF16_GEMM_ENV, "native")
    cfg = BertConfig(**TINY)
    q32, _ = create_qlora_model(config=cfg, pretrained=False, seed=0, group_size=32)
    q16, _ = create_qlora_model(config=cfg, pretrained=False, seed=0, group_size=32, compute_dtype="bfloat16")
    quantized = [m for _, m in q16.named_modules() if isinstance(m, Bf16QuantizedBaseLinear)]
    assert quantized, "the 4-bit base linears should dequantize to bf16"
    ids, mask, _ = _batch()
    np.testing.assert_allclose(np.array(q16(ids, mask)), np.array(q32(ids, mask)), rtol=3e-2, atol=3e-2)


def test_cast_frozen_base_skips_trained_weights_and_float32_is_a_no_op():
    cfg = BertConfig(**TINY)
    net, adapter = create_bert_with_lora(config=cfg, pretrained=False, seed=0, freeze_bert=False)
    assert cast_frozen_base(net, mx.float32) == []
    assert cast_frozen_base(net, mx.bfloat16) == []  # nothing frozen: the whole model trains in fp32
    assert all(v.dtype == mx.float32 for _, v in tree_flatten(net.parameters()))
    with pytest.raises(ValueError, match="float32 and mx.bfloat16"):
        cast_frozen_base(net, mx.float16)
    assert isinstance(adapter, LoRAAdapter)


@needs_native
def test_compiled_bf16_step_matches_eager(monkeypatch):
    _, _, b16, _ = _pair(monkeypatch, "native")
    ids, mask, y = _batch()
    fn = nn.value_and_grad(b16, lambda m, i, k, t: m.loss(m(i, k), t))
    eager_loss, eager_grads = fn(b16, ids, mask, y)
    compiled = mx.compile(lambda i, k, t: fn(b16, i, k, t), inputs=[b16.state])
    loss, grads = compiled(ids, mask, y)
    assert abs(float(loss) - float(eager_loss)) <= 1e-5 * abs(float(eager_loss))
    for (k, g), (_, e) in zip(tree_flatten(grads), tree_flatten(eager_grads), strict=True):
        np.testing.assert_allclose(np.array(g), np.array(e), rtol=1e-4, atol=1e-6, err_msg=k)


def test_the_run_builds_its_models_in_the_planned_compute_dtype():
    """compute_dtype travels from the options and [training] to the models the steps build."""
    from lora_tasks.data.config_file import CompetitionConfigError, validate_config_dict
    from lora_tasks.options import RunOptions
    from lora_tasks.training.factory import build_model

    assert RunOptions(competition="demo", compute_dtype="bfloat16").training_overrides(
        ("compute_dtype",)) == {"compute_dtype": "bfloat16"}
    assert "compute_dtype" not in RunOptions(competition="demo").training_overrides(("compute_dtype",))
    with pytest.raises(CompetitionConfigError, match="compute_dtype"):
        validate_config_dict({"training": {"compute_dtype": "fp16"}}, "x.toml")
    net, _ = build_model("binary_classification", "efficient", 1, tiny=True, compute_dtype="bfloat16")
    dtypes = {k: v.dtype for k, v in tree_flatten(net.parameters())}
    assert dtypes["bert.encoder.layer.0.attention.self.query.linear.weight"] == mx.bfloat16
    assert all(v == mx.float32 for k, v in dtypes.items() if "lora_" in k or k.startswith("head"))
