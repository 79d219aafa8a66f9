"""Adapter merging on tiny random BERTs, checked against the explicit sums of the task vectors."""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest

from lora_tasks.lora import LoRAConfig
from lora_tasks.lora.merge import MergeCompatibilityError, merge_adapters, merge_into_base
from lora_tasks.models import BertConfig
from lora_tasks.models.encoder import BertWithHead
from lora_tasks.training.factory import create_bert_with_lora

TINY = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=32)
BASE_SEED = 0


def make(cfg: LoRAConfig, seed: int, tiny: dict | None = None):
    """A tiny model on the shared random base (BASE_SEED) with random non-zero LoRA factors and head."""
    model, adapter = create_bert_with_lora(config=BertConfig(**(tiny or TINY)), pretrained=False, seed=BASE_SEED,
                                           lora_preset=cfg)
    rng = np.random.default_rng(seed)
    state = {}
    for key, value in adapter.get_lora_state_dict().items():
        v = np.array(value)
        noise = rng.normal(0, 0.3, v.shape)
        state[key] = mx.array((v * (1 + 0.2 * noise) if key.endswith("magnitude") else noise).astype(np.float32))
    adapter.load_lora_state_dict(state)
    return model, adapter


def explicit_delta(adapter, path: str) -> np.ndarray:
    """scale * B @ A with the scale computed here from the config (alpha/r, or alpha/sqrt(r) for rsLoRA)."""
    cfg = adapter.config
    layer = adapter.layers[path]
    r = layer.lora_a.shape[0]
    alpha = cfg.resolved_alpha
    scale = alpha / math.sqrt(r) if cfg.use_rslora else alpha / r
    return scale * (np.array(layer.lora_b, dtype=np.float64) @ np.array(layer.lora_a, dtype=np.float64))


def base_model():
    mx.random.seed(BASE_SEED)
    model = BertWithHead(BertConfig(**TINY), "binary_classification", 1)
    model.eval()
    return model


def model_with_lora():
    model, _ = create_bert_with_lora(config=BertConfig(**TINY), pretrained=False, seed=BASE_SEED, lora_preset="efficient")
    return model


INPUTS = mx.array(np.random.default_rng(9).integers(1, 50, (3, 10)).astype(np.int32))


@pytest.fixture(scope="module")
def rslora_pair():
    """rsLoRA adapters with different ranks and alphas: each must keep its own scale."""
    a = make(LoRAConfig(r=4, alpha=8, dropout=0.0, use_rslora=True, target_modules=("query", "value")), seed=1)
    b = make(LoRAConfig(r=8, alpha=4, dropout=0.0, use_rslora=True, target_modules=("query", "value")), seed=2)
    return a, b


def test_shared_base_is_shared(rslora_pair):
    (_, a), (_, b) = rslora_pair
    for path in a.layers:
        np.testing.assert_array_equal(np.array(a.layers[path].base_weight()), np.array(b.layers[path].base_weight()))


@pytest.mark.parametrize("method", ["linear", "cat"])
def test_linear_and_cat_are_the_exact_weighted_sum(rslora_pair, method):
    (_, a), (_, b) = rslora_pair
    w = [0.7, 0.5]
    merged = merge_adapters([a, b], w, method)
    model, adapter = create_bert_with_lora(config=BertConfig(**TINY), pretrained=False, seed=BASE_SEED,
                                           lora_preset=merged.config)
    adapter.load_lora_state_dict(merged.state)
    for path in a.layers:
        expected = w[0] * explicit_delta(a, path) + w[1] * explicit_delta(b, path)
        np.testing.assert_allclose(merged.deltas[path], expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.array(adapter.layers[path].delta_weight()), expected, rtol=1e-4, atol=1e-5)
        assert adapter.layers[path].r == 12 and adapter.layers[path].scale == 1.0
    assert merged.is_exact
    # b's scale taken as plain alpha/r (the rsLoRA scaling bug) would not match
    wrong = w[0] * explicit_delta(a, path) + w[1] * explicit_delta(b, path) * (4 / 8) / (4 / math.sqrt(8))
    assert not np.allclose(merged.deltas[path], wrong, atol=1e-4)


def test_merged_adapter_and_merge_into_base_compute_the_same(rslora_pair):
    (_, a), (_, b) = rslora_pair
    merged = merge_adapters([a, b], [0.6, 0.4], "linear")
    model, adapter = create_bert_with_lora(config=BertConfig(**TINY), pretrained=False, seed=BASE_SEED,
                                           lora_preset=merged.config)
    adapter.load_lora_state_dict(merged.state)
    deployed = merge_into_base(base_model(), merged)
    out_adapter, out_deployed = model(INPUTS), deployed(INPUTS)
    np.testing.assert_allclose(np.array(out_adapter), np.array(out_deployed), rtol=1e-4, atol=1e-5)
    # and the update did change the model
    assert not np.allclose(np.array(base_model()(INPUTS)), np.array(out_deployed), atol=1e-4)
    # the heads were averaged with the normalized weights
    key = [k for k in merged.state if k.startswith("head.")][0]
    ha, hb = np.array(a.get_lora_state_dict()[key]), np.array(b.get_lora_state_dict()[key])
    np.testing.assert_allclose(np.array(merged.state[key]), 0.6 * ha + 0.4 * hb, rtol=1e-5, atol=1e-6)


def test_svd_is_the_best_rank_r_approximation(rslora_pair):
    (_, a), (_, b) = rslora_pair
    w = [1.0, 1.0]
    merged = merge_adapters([a, b], w, "svd", rank=5)
    for path in a.layers:
        full = explicit_delta(a, path) + explicit_delta(b, path)
        u, s, vt = np.linalg.svd(full)
        best = (u[:, :5] * s[:5]) @ vt[:5]
        layer_a = np.array(merged.state[f"{path}.lora_a"], dtype=np.float64)
        layer_b = np.array(merged.state[f"{path}.lora_b"], dtype=np.float64)
        assert layer_a.shape == (5, full.shape[1]) and layer_b.shape == (full.shape[0], 5)
        np.testing.assert_allclose(layer_b @ layer_a, best, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(merged.deltas[path], full, rtol=1e-5, atol=1e-5)  # exact delta kept
        tail = math.sqrt(np.sum(s[5:] ** 2)) / np.linalg.norm(full)
        assert merged.approx_error[path] == pytest.approx(tail, rel=1e-3)
    assert not merged.is_exact
    assert merged.config.r == 5


def ref_ties(taus, w, density):
    """TIES (Yadav et al. 2023) written out directly on task vectors."""
    out = []
    for t in taus:
        k = int(density * t.size)
        thresh = np.sort(np.abs(t).ravel())[::-1][k - 1]
        out.append(np.where(np.abs(t) >= thresh, t, 0.0) * 1.0)
    trimmed = np.array([wi * t for wi, t in zip(w, out, strict=False)])
    elected = np.sign(trimmed.sum(0))
    elected[elected == 0] = 1
    merged = np.zeros_like(taus[0])
    count = np.zeros_like(taus[0])
    for t in trimmed:
        agree = (np.sign(t) == elected) & (t != 0)
        merged += np.where(agree, t, 0)
        count += agree
    return merged / np.maximum(count, 1)


def test_ties_matches_the_published_algorithm():
    cfg = LoRAConfig(r=4, alpha=8, dropout=0.0, target_modules=("query", "intermediate"))
    adapters = [make(cfg, seed=s)[1] for s in (3, 4, 5)]
    w = [1.0, 0.5, 0.8]
    merged = merge_adapters(adapters, w, "ties", density=0.3)
    for path in adapters[0].layers:
        taus = np.array([explicit_delta(ad, path) for ad in adapters])
        expected = ref_ties(taus, w, 0.3)
        np.testing.assert_allclose(merged.deltas[path], expected, rtol=1e-5, atol=1e-6)
        assert np.mean(expected == 0) > 0.2  # trimming and sign election really removed entries
        assert merged.approx_error[path] >= 0.0
    assert merged.config.r == 12  # default rank: sum of ranks


def test_dare_matches_a_direct_implementation_with_the_seed():
    cfg = LoRAConfig(r=4, alpha=8, dropout=0.0, target_modules=("query", "value"))
    adapters = [make(cfg, seed=s)[1] for s in (6, 7)]
    w = [0.5, 0.5]
    merged = merge_adapters(adapters, w, "dare", density=0.4, seed=11)
    rng = np.random.default_rng(11)
    for path in adapters[0].layers:  # layers in order, adapters in order: the documented draw order
        expected = np.zeros_like(explicit_delta(adapters[0], path))
        for wk, ad in zip(w, adapters, strict=False):
            tau = explicit_delta(ad, path)
            keep = rng.random(tau.shape) < 0.4
            expected += wk * np.where(keep, tau / 0.4, 0.0)
        np.testing.assert_allclose(merged.deltas[path], expected, rtol=1e-5, atol=1e-6)
    other = merge_adapters(adapters, w, "dare", density=0.4, seed=12)
    assert not np.allclose(other.deltas[path], merged.deltas[path])
    # density 1 keeps everything: DARE reduces to linear
    full = merge_adapters(adapters, w, "dare", density=1.0)
    lin = merge_adapters(adapters, w, "linear")
    np.testing.assert_allclose(full.deltas[path], lin.deltas[path], rtol=1e-5, atol=1e-6)


def test_dora_linear_merge_recomputes_magnitude_exactly():
    cfg = LoRAConfig(r=4, alpha=8, dropout=0.0, use_dora=True, target_modules=("query", "value"))
    (_, a), (_, b) = make(cfg, seed=21), make(cfg.replace(r=2, alpha=6), seed=22)
    w = [0.6, 0.4]
    merged = merge_adapters([a, b], w, "linear")
    assert merged.config.use_dora and merged.is_exact
    model, adapter = create_bert_with_lora(config=BertConfig(**TINY), pretrained=False, seed=BASE_SEED,
                                           lora_preset=merged.config)
    adapter.load_lora_state_dict(merged.state)
    for path in a.layers:
        base = np.array(a.layers[path].base_weight(), dtype=np.float64)
        effective = [np.array(x.layers[path].fuse().weight, dtype=np.float64) for x in (a, b)]
        expected = base + sum(wk * (e - base) for wk, e in zip(w, effective, strict=False))
        np.testing.assert_allclose(base + merged.deltas[path], expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.array(adapter.layers[path].fuse().weight), expected, rtol=1e-4, atol=1e-5)
        # averaging magnitudes (what a low-rank-space merge would do) gives a different weight
        m_avg = sum(wk * np.array(x.layers[path].magnitude) for wk, x in zip(w, (a, b), strict=False))
        assert not np.allclose(np.array(merged.state[f"{path}.magnitude"]), m_avg, atol=1e-4)
    deployed = merge_into_base(base_model(), merged)
    np.testing.assert_allclose(np.array(model(INPUTS)), np.array(deployed(INPUTS)), rtol=1e-4, atol=1e-5)


def test_dora_refuses_ties_and_names_alternatives():
    cfg = LoRAConfig(r=2, dropout=0.0, use_dora=True, target_modules=("query",))
    ads = [make(cfg, seed=s)[1] for s in (1, 2)]
    with pytest.raises(MergeCompatibilityError, match="method='linear'"):
        merge_adapters(ads, [0.5, 0.5], "ties")
    svd = merge_adapters(ads, [0.5, 0.5], "svd", rank=1)
    assert svd.state[f"{next(iter(ads[0].layers))}.lora_a"].shape[0] == 1


def test_incompatible_adapters_list_every_mismatch():
    a = make(LoRAConfig(r=2, dropout=0.0, target_modules=("query", "value")), seed=1)[1]
    b = make(LoRAConfig(r=2, dropout=0.0, target_modules=("query", "key")), seed=2)[1]
    c = make(LoRAConfig(r=2, dropout=0.0, target_modules=("query", "value")), seed=3, tiny=dict(TINY, hidden_size=16))[1]
    d = make(LoRAConfig(r=2, dropout=0.0, use_dora=True, target_modules=("query", "value")), seed=4)[1]
    with pytest.raises(MergeCompatibilityError) as err:
        merge_adapters([a, b, c, d])
    msg = str(err.value)
    assert "layer bert.encoder.layer.0.attention.self.value is adapted in adapter 0 only" in msg
    assert "attention.self.key is adapted in adapter 1 only" in msg
    assert "adapter 2 vs adapter 0: bert.encoder.layer.0.attention.self.query base shape (out, in) (16, 16) vs (32, 32)" in msg
    assert "adapter 3 vs adapter 0: use_dora True vs False" in msg
    # different base weights (another seed) are caught too
    other, e = create_bert_with_lora(config=BertConfig(**TINY), pretrained=False, seed=99,
                                     lora_preset=LoRAConfig(r=2, dropout=0.0, target_modules=("query", "value")))
    with pytest.raises(MergeCompatibilityError, match="base weights differ"):
        merge_adapters([a, e])
    with pytest.raises(ValueError, match="one finite weight per adapter"):
        merge_adapters([a, a], [1.0])


def test_state_dict_input_matches_adapter_input(rslora_pair):
    (_, a), (_, b) = rslora_pair
    from_objects = merge_adapters([a, b], [0.3, 0.7], "cat")
    from_states = merge_adapters([(a.get_lora_state_dict(), a.config), (b.get_lora_state_dict(), b.config)],
                                 [0.3, 0.7], "cat")
    for path, delta in from_objects.deltas.items():
        np.testing.assert_allclose(from_states.deltas[path], delta, rtol=1e-6, atol=1e-7)
    with pytest.raises(MergeCompatibilityError, match="LoRA layers"):
        merge_into_base(model_with_lora(), from_objects)
