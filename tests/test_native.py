"""The native CPU kernels (GELU, softmax, LayerNorm, dropout, attention): same math as MLX's ops forward and backward, a real dropout, and a clear
fallback when they cannot be built."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from lora_tasks import native
from lora_tasks.models import ops
from lora_tasks.native import builder as build

K = native.kernels()
pytestmark = pytest.mark.skipif(K is None, reason=f"native kernels unavailable: {native.native_info().reason}")
ROOT = Path(__file__).resolve().parents[1]


def _normal(shape, seed, scale=1.0):
    return mx.random.normal(shape, key=mx.random.key(seed)) * scale


def test_info_names_the_library_and_threads():
    info = native.native_info()
    assert info.loaded and Path(info.path).exists()
    assert info.threads >= 1 and info.threading in ("openmp", "std::thread")
    assert "native" in info.summary()
    assert info.bf16_kernel in ("avx512bf16", "portable") and f"bf16 GEMM {info.bf16_kernel}" in info.summary()


@pytest.mark.parametrize("shape", [(7,), (64, 1536), (3, 50_000)])  # one thread, and split over threads
def test_gelu_forward_and_backward_match_mlx_erf(shape):
    x, g = _normal(shape, 0, 3.0), _normal(shape, 1)
    np.testing.assert_allclose(np.array(ops.gelu(x)), np.array(ops.gelu_exact(x)), atol=2e-6)
    _, (vjp,) = mx.vjp(ops.gelu_exact, [x], [g])
    _, (ours,) = mx.vjp(ops.gelu, [x], [g])
    np.testing.assert_allclose(np.array(ours), np.array(vjp), rtol=1e-4, atol=2e-5)


def test_gelu_takes_strided_and_bfloat16_inputs_inside_compile():
    x = _normal((256, 300), 2, 2.0)
    f = mx.compile(lambda t: ops.gelu(t.T * 2.0) + 1.0)  # a transposed view into the kernel
    np.testing.assert_allclose(np.array(f(x)), np.array(ops.gelu_exact(x.T * 2.0) + 1.0), atol=5e-6)
    xb = x.astype(mx.bfloat16)
    yb = ops.gelu(xb)
    assert yb.dtype == mx.bfloat16
    np.testing.assert_allclose(np.array(yb.astype(mx.float32)), np.array(ops.gelu_exact(xb).astype(mx.float32)), atol=3e-2)


def test_softmax_forward_and_backward_match_mlx_with_a_padding_mask():
    s = _normal((4, 12, 64, 64), 3, 4.0)
    s = s + mx.where(mx.arange(64) < 50, 0.0, mx.finfo(mx.float32).min)
    y = ops.softmax(s)
    np.testing.assert_allclose(np.array(y), np.array(ops.softmax_stock(s)), atol=1e-5)
    assert np.array(y)[..., 50:].max() < 1e-30  # padding gets no weight
    w = _normal(s.shape, 4)
    g_ours = mx.grad(lambda t: (ops.softmax(t) * w).sum())(s)
    g_ref = mx.grad(lambda t: (ops.softmax_stock(t) * w).sum())(s)
    np.testing.assert_allclose(np.array(g_ours), np.array(g_ref), atol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_forward_and_all_gradients_match_mlx(bias):
    x, g = _normal((8, 40, 384), 8, 2.0) + 1.0, _normal((8, 40, 384), 9)
    ref, ours = nn.LayerNorm(384, eps=1e-12, bias=bias), ops.LayerNorm(384, eps=1e-12, bias=bias)
    ref.weight = ours.weight = _normal((384,), 10)
    if bias:
        ref.bias = ours.bias = _normal((384,), 11)
    np.testing.assert_allclose(np.array(ours(x)), np.array(ref(x)), atol=1e-5)

    def grads(m):
        return nn.value_and_grad(m, lambda mm, t: (mm(t) * g).sum())(m, x)[1], mx.grad(lambda t: (m(t) * g).sum())(x)

    (p_ref, dx_ref), (p_ours, dx_ours) = grads(ref), grads(ours)
    np.testing.assert_allclose(np.array(dx_ours), np.array(dx_ref), rtol=1e-4, atol=1e-4)
    for name in p_ref:  # a trained LayerNorm gets its weight and bias gradients too
        np.testing.assert_allclose(np.array(p_ours[name]), np.array(p_ref[name]), rtol=1e-4, atol=1e-3)


def test_dropout_keeps_the_right_share_and_scales_to_the_same_mean():
    d = ops.Dropout(0.1)
    d.train()
    x = mx.ones((2048, 1536))
    y = np.array(d(x))
    kept = y != 0
    assert abs(kept.mean() - 0.9) < 0.002
    np.testing.assert_allclose(y[kept], 1 / 0.9, rtol=1e-6)
    assert abs(y.astype(np.float64).mean() - 1.0) < 0.003
    # rows and columns get independent masks: no stripes
    assert np.abs(kept.mean(axis=0) - 0.9).max() < 0.05 and np.abs(kept.mean(axis=1) - 0.9).max() < 0.05
    y2 = np.array(d(x))
    assert 0.80 < ((y2 != 0) == kept).mean() < 0.84  # a fresh mask per call: agreement 0.9^2 + 0.1^2


def test_dropout_backward_uses_the_forward_mask():
    d = ops.Dropout(0.3)
    d.train()
    x = _normal((512, 384), 5) + 3.0  # no zeros in x
    w = _normal(x.shape, 6)
    mx.random.seed(11)
    y = d(x)
    mx.random.seed(11)
    grad = mx.grad(lambda t: (d(t) * w).sum())(x)
    expected = np.where(np.array(y) != 0, np.array(w) / 0.7, 0.0)
    np.testing.assert_allclose(np.array(grad), expected, rtol=1e-5, atol=1e-6)


def test_dropout_is_reproducible_from_mlx_seed_and_off_in_eval_mode():
    d = ops.Dropout(0.5)
    d.train()
    x = mx.ones((300, 300))
    mx.random.seed(3)
    a = np.array(d(x))
    mx.random.seed(3)
    b = np.array(d(x))
    np.testing.assert_array_equal(a, b)
    d.eval()
    np.testing.assert_array_equal(np.array(d(x)), np.array(x))
    assert isinstance(d, nn.Dropout)  # model.train()/eval() and isinstance checks still reach it


def _split_heads_attention(q, k, v, mask, heads, scale, drop=None):
    """Attention through MLX ops on split heads: the reference for the fused kernel."""
    b, s, hd = q.shape
    t = lambda x: x.reshape(b, s, heads, hd // heads).transpose(0, 2, 1, 3)  # noqa: E731 - short test closures
    probs = mx.softmax((t(q) * scale) @ t(k).swapaxes(-1, -2) + mask, axis=-1, precise=True)
    if drop is not None:
        probs = probs * drop
    return (probs @ t(v)).transpose(0, 2, 1, 3).reshape(b, s, hd)


# MiniLM's shape, an odd one (seq and head size not multiples of the 6x16 register block), and seq 1
@pytest.mark.parametrize("b, s, heads, d", [(4, 64, 12, 32), (3, 37, 4, 20), (2, 1, 2, 64)])
def test_attention_forward_and_backward_match_split_heads(b, s, heads, d):
    q, k, v, g = (_normal((b, s, heads * d), i) for i in range(4))
    lengths = mx.array([s, max(1, s - 9), max(1, s // 2), 1][:b])
    mask = mx.where(mx.arange(s)[None] < lengths[:, None], 0.0, mx.finfo(mx.float32).min)[:, None, None, :]
    scale = d**-0.5
    off = ops.Dropout(0.1)
    off.eval()
    ours = lambda *a: ops.multi_head_attention(*a, mask, heads, scale, off)  # noqa: E731 - short test closures
    ref = lambda *a: _split_heads_attention(*a, mask, heads, scale)  # noqa: E731 - short test closures
    np.testing.assert_allclose(np.array(ours(q, k, v)), np.array(ref(q, k, v)), atol=2e-5)
    _, grads = mx.vjp(ours, [q, k, v], [g])
    _, expected = mx.vjp(ref, [q, k, v], [g])
    for got, want in zip(grads, expected, strict=True):
        np.testing.assert_allclose(np.array(got), np.array(want), atol=5e-5)


def test_attention_dropout_forward_and_backward_use_one_mask():
    b, s, heads, d = 2, 24, 3, 16
    q, k, v, g = (_normal((b, s, heads * d), 10 + i) for i in range(4))
    seed = mx.array([123], dtype=mx.uint32)
    mask = mx.zeros((b, s))
    out, probs = K.attention_forward(q, k, v, mask, seed, heads, 0.25, 0.2)
    # the kernel's mask is the dropout kernel's mask over (batch, heads, seq, seq) with that seed
    keep = K.dropout(mx.ones(probs.shape), seed, 0.2)
    assert 0.7 < float((keep > 0).mean()) < 0.9
    ref = lambda a, b_, c: _split_heads_attention(a, b_, c, mask[:, None, None, :], heads, 0.25, keep)  # noqa: E731 - short test closures
    np.testing.assert_allclose(np.array(out), np.array(ref(q, k, v)), atol=2e-5)
    grads = K.attention_backward(q, k, v, probs, g, seed, heads, 0.25, 0.2)
    _, expected = mx.vjp(ref, [q, k, v], [g])
    for got, want in zip(grads, expected, strict=True):
        np.testing.assert_allclose(np.array(got), np.array(want), atol=5e-5)


def test_attention_in_a_bert_layer_trains_like_the_split_heads_path():
    """The model's attention through the kernel and through MLX ops: same loss and gradients."""
    from lora_tasks.models.bert import BertConfig, BertModel

    cfg = BertConfig(vocab_size=50, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                     max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertModel(cfg)
    ids = mx.array(np.random.default_rng(0).integers(0, 50, (3, 17)))
    attn = mx.array(np.array([[1] * 17, [1] * 11 + [0] * 6, [1] * 5 + [0] * 12]))

    def loss(m):
        return (m(ids, attn) ** 2).mean()

    fused_loss, fused = nn.value_and_grad(model, loss)(model)
    impl = ops._impl()
    kernel, impl.attention = impl.attention, None
    try:
        split_loss, split = nn.value_and_grad(model, loss)(model)
    finally:
        impl.attention = kernel
    assert abs(fused_loss.item() - split_loss.item()) < 1e-5
    from mlx.utils import tree_flatten

    for (name, a), (_, b) in zip(tree_flatten(fused), tree_flatten(split), strict=True):
        np.testing.assert_allclose(np.array(a), np.array(b), atol=2e-5, err_msg=name)


def _check_attention_kernels(mod, b, s, heads, d, p):
    """``mod``'s attention forward and backward against MLX ops on split heads, with padding and dropout."""
    q, k, v, g = (_normal((b, s, heads * d), 20 + i) for i in range(4))
    lengths = mx.array([s, max(1, s - 9), max(1, s // 2)][:b])
    mask = mx.where(mx.arange(s)[None] < lengths[:, None], 0.0, mx.finfo(mx.float32).min)
    seed = mx.array([99], dtype=mx.uint32)
    scale = d**-0.5
    out, probs = mod.attention_forward(q, k, v, mask, seed, heads, scale, p)
    keep = mod.dropout(mx.ones(probs.shape), seed, p) if p > 0 else None
    ref = lambda a, b_, c: _split_heads_attention(a, b_, c, mask[:, None, None, :], heads, scale, keep)  # noqa: E731
    np.testing.assert_allclose(np.array(out), np.array(ref(q, k, v)), atol=2e-5)
    grads = mod.attention_backward(q, k, v, probs, g, seed, heads, scale, p)
    _, expected = mx.vjp(ref, [q, k, v], [g])
    for got, want in zip(grads, expected, strict=True):
        np.testing.assert_allclose(np.array(got), np.array(want), atol=5e-5)


# seq 128 (the train step's), and shapes whose seq and head size leave partial register blocks
@pytest.mark.parametrize("b, s, heads, d, p", [(2, 128, 2, 32, 0.0), (2, 128, 2, 32, 0.1), (3, 45, 3, 24, 0.2),
                                               (2, 7, 2, 40, 0.0)])
def test_attention_kernels_at_train_step_and_odd_shapes(b, s, heads, d, p):
    _check_attention_kernels(K, b, s, heads, d, p)


def test_attention_avx2_build_matches_mlx_ops(tmp_path):
    """The AVX2 variant (6x16 blocks), built here with AVX-512 switched off: the path AVX2-only CPUs run."""
    tc = dataclasses.replace(build.find_toolchain(None), extra_flags=("-mno-avx512f",))
    path, name, _ = build.build(tc, tmp_path)
    mod = build.load(path, name)
    assert mod.attention_block() == "6x16"
    for shape in [(2, 64, 2, 32, 0.1), (3, 37, 4, 20, 0.0)]:
        _check_attention_kernels(mod, *shape)


def test_kernels_reject_bad_arguments_with_a_message():
    with pytest.raises(ValueError, match="p must be in"):
        K.dropout(mx.ones((4,)), mx.zeros((1,), dtype=mx.uint32), 1.0)
    with pytest.raises(ValueError, match="differ in shape"):
        K.gelu_backward(mx.ones((4,)), mx.ones((5,)))
    with pytest.raises(ValueError, match="size of x's last axis"):
        K.layer_norm_forward(mx.ones((2, 4)), mx.ones((5,)), mx.ones((5,)), 1e-5)
    seed = mx.zeros((1,), dtype=mx.uint32)
    with pytest.raises(ValueError, match="heads must divide"):
        K.attention_forward(mx.ones((2, 3, 8)), mx.ones((2, 3, 8)), mx.ones((2, 3, 8)), mx.zeros((2, 3)), seed, 3, 1.0, 0.0)
    with pytest.raises(ValueError, match=r"mask must be additive with shape \(batch, seq\)"):
        K.attention_forward(mx.ones((2, 3, 8)), mx.ones((2, 3, 8)), mx.ones((2, 3, 8)), mx.zeros((2, 1, 1, 3)), seed, 2, 1.0, 0.0)


def test_a_second_build_reuses_the_cached_library(tmp_path):
    tc = build.find_toolchain(None)  # no MKL named: the std::thread variant, built afresh in tmp_path
    path, name, built = build.build(tc, tmp_path)
    assert built and path.exists() and name in path.name
    mtime = path.stat().st_mtime_ns
    path2, _, built2 = build.build(tc, tmp_path)
    assert (path2, built2) == (path, False) and path.stat().st_mtime_ns == mtime
    assert not list(tmp_path.glob("*.tmp*"))  # nothing half-written left behind
    mod = build.load(path, name)
    assert mod.threading == "std::thread"
    x = _normal((64, 1000), 7)
    np.testing.assert_allclose(np.array(mod.gelu_forward(x)), np.array(ops.gelu_exact(x)), atol=2e-6)


def _run(code: str, **env) -> subprocess.CompletedProcess:
    full = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, cwd=ROOT, timeout=300)


PROBE = (
    "import lora_tasks, mlx.core as mx\n"
    "from lora_tasks import native\nfrom lora_tasks.models import ops\n"
    "x = mx.linspace(-5, 5, 1001)\n"
    "print(native.native_info().summary())\n"
    "print(mx.abs(ops.gelu(x) - ops.gelu_exact(x)).max().item() < 2e-6)\n"
)


def test_opting_out_uses_mlx_ops():
    proc = _run(PROBE, KAGGLE_LORA_NATIVE_KERNELS="0")
    assert proc.returncode == 0, proc.stderr
    assert "MLX ops (KAGGLE_LORA_NATIVE_KERNELS=0)" in proc.stdout and proc.stdout.strip().endswith("True")


def test_a_broken_compiler_warns_with_the_fix_and_falls_back(tmp_path):
    proc = _run(PROBE, CXX="/bin/false", XDG_CACHE_HOME=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "native CPU kernels unavailable" in proc.stderr and "KAGGLE_LORA_NATIVE_KERNELS=0" in proc.stderr
    assert "MLX ops" in proc.stdout and proc.stdout.strip().endswith("True")
    assert not list(tmp_path.rglob("_kaggle_lora_kernels_*"))  # no library, no half-written file


def test_every_header_beside_the_kernels_is_in_the_build_fingerprint():
    # a header left out of builder.HEADERS would not rebuild the cached library when it is edited
    folder = build.SOURCE.parent
    beside = {p.name for pattern in ("*.h", "*.inc") for p in folder.glob(pattern)}
    assert beside == {h.name for h in build.HEADERS}
