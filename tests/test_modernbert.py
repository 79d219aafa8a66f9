"""ModernBERT encoder: golden parity with transformers, loading, heads, masks, LoRA on the fused
projection, and clear errors. The golden fixture comes from scripts/make_modernbert_fixture.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from lora_tasks.models import (
    BertWithHead,
    ModernBertConfig,
    ModernBertModel,
    ModernBertWithHead,
    WeightLoadError,
    load_encoder,
    ops,
)
from lora_tasks.models.modernbert import GLOBAL, LOCAL, LORA_TARGETS, qkv_slices

FOLDER = "modernbert_tiny"
SENTENCES = [
    "the quick brown fox jumps over the lazy dog near the house",
    "the price of the house",
    "a fox",
    "a",
]


@pytest.fixture(scope="module")
def golden(fixtures_dir):
    return dict(np.load(fixtures_dir / "modernbert_tiny_expected.npz"))


@pytest.fixture(scope="module")
def tiny(fixtures_dir):
    return load_encoder(fixtures_dir / FOLDER)


def _run(model, ids, mask=None) -> np.ndarray:
    return np.array(model(mx.array(ids), None if mask is None else mx.array(mask)))


def _max_diff(model, golden) -> float:
    ours = _run(model, golden["input_ids"], golden["attention_mask"])
    real = golden["attention_mask"].astype(bool)
    return float(np.abs(ours - golden["last_hidden_state"])[real].max())


# ---- parity with transformers ------------------------------------------------------------------


def test_golden_has_padding_and_a_row_longer_than_the_window(golden, tiny):
    assert golden["attention_mask"].min() == 0
    assert golden["attention_mask"].sum(axis=1).max() > 4 * tiny.config.local_attention
    assert tiny.config.layer_types == [GLOBAL, LOCAL, GLOBAL]


def test_matches_transformers_golden(tiny, golden):
    assert _max_diff(tiny.model, golden) < 1e-4


def test_matches_transformers_golden_exactly_with_stock_kernels(tiny, golden, monkeypatch):
    """With MLX's own erf and exp (no fast CPU approximations) the model math is exact to 1e-5."""
    monkeypatch.setattr(ops, "gelu", ops.gelu_exact)
    monkeypatch.setattr(ops, "softmax", ops.softmax_stock)
    assert _max_diff(tiny.model, golden) < 1e-5


def test_tokenizer_gives_the_golden_ids(tiny, golden):
    enc = tiny.tokenizer(SENTENCES, max_length=64)
    np.testing.assert_array_equal(enc.input_ids, golden["input_ids"])
    np.testing.assert_array_equal(enc.attention_mask, golden["attention_mask"])


def test_original_hub_config_style_gives_the_same_model(tmp_path, fixtures_dir, golden):
    """answerdotai/ModernBERT-base's config.json predates layer_types/rope_parameters."""
    folder = tmp_path / "m"
    shutil.copytree(fixtures_dir / FOLDER, folder)
    cfg = json.loads((folder / "config.json").read_text())
    rope = cfg.pop("rope_parameters")
    del cfg["layer_types"]
    cfg.update(global_attn_every_n_layers=2, global_rope_theta=rope["full_attention"]["rope_theta"],
               local_rope_theta=rope["sliding_attention"]["rope_theta"])
    (folder / "config.json").write_text(json.dumps(cfg))
    assert _max_diff(load_encoder(folder).model, golden) < 1e-4


def test_modernbert_base_config_reads_as_published():
    cfg = ModernBertConfig.from_dict({
        "model_type": "modernbert", "hidden_size": 768, "intermediate_size": 1152, "num_hidden_layers": 22,
        "num_attention_heads": 12, "global_attn_every_n_layers": 3, "global_rope_theta": 160000.0,
        "local_rope_theta": 10000.0, "local_attention": 128, "norm_eps": 1e-5, "norm_bias": False,
        "attention_bias": False, "mlp_bias": False, "vocab_size": 50368, "pad_token_id": 50283,
        "hidden_activation": "gelu", "max_position_embeddings": 8192, "position_embedding_type": "absolute",
    })
    assert cfg.layer_types[:4] == [GLOBAL, LOCAL, LOCAL, GLOBAL] and cfg.layer_types.count(GLOBAL) == 8
    assert cfg.window_radius == 64 and cfg.rope_theta(GLOBAL) == 160000.0 and cfg.rope_theta(LOCAL) == 10000.0


# ---- loading and heads ---------------------------------------------------------------------------


def test_load_encoder_dispatches_on_model_type(tiny, fixtures_dir):
    assert isinstance(tiny.model, ModernBertModel) and isinstance(tiny.config, ModernBertConfig)
    assert tiny.source == fixtures_dir / FOLDER
    assert not tiny.model.training
    names = {k for k, _ in tree_flatten(tiny.model.parameters())}
    # HF's names exactly; no biases; layer 0 has no attn_norm (the embedding norm precedes it)
    assert {"embeddings.tok_embeddings.weight", "embeddings.norm.weight", "layers.1.attn_norm.weight",
            "layers.0.attn.Wqkv.weight", "layers.0.attn.Wo.weight", "layers.0.mlp_norm.weight",
            "layers.0.mlp.Wi.weight", "layers.0.mlp.Wo.weight", "final_norm.weight"} <= names
    assert "layers.0.attn_norm.weight" not in names and not any(n.endswith(".bias") for n in names)


def test_load_encoder_with_head_loads_the_encoder_under_model(tiny, fixtures_dir, golden):
    enc = load_encoder(fixtures_dir / FOLDER, head_type="multiclass_classification", num_labels=3, pooling="cls")
    net = enc.model
    assert isinstance(net, ModernBertWithHead) and net.backbone is net.model and not net.training
    np.testing.assert_array_equal(np.array(net.model.layers[2].mlp.Wo.weight),
                                  np.array(tiny.model.layers[2].mlp.Wo.weight))
    logits = net(mx.array(golden["input_ids"]), mx.array(golden["attention_mask"]))
    assert logits.shape == (4, 3)


@pytest.mark.parametrize("extra", [
    ("decoder.bias", "head.dense.weight", "head.norm.weight"),  # ModernBertForMaskedLM (the hub's base model)
    ("classifier.weight", "classifier.bias", "head.dense.weight", "head.norm.weight"),  # ...ForSequenceClassification
])
def test_checkpoints_of_hf_task_models_load(tmp_path, fixtures_dir, golden, extra):
    """Task checkpoints prefix the encoder with ``model.`` and add head entries (key sets as
    transformers 5.24 saves them); the encoder loads, the task head is ignored."""
    folder = tmp_path / "m"
    shutil.copytree(fixtures_dir / FOLDER, folder)
    weights = {"model." + k: v for k, v in mx.load(str(folder / "model.safetensors")).items()}
    weights.update({k: mx.zeros((2, 2)) for k in extra})
    mx.save_safetensors(str(folder / "model.safetensors"), weights)
    assert _max_diff(load_encoder(folder).model, golden) < 1e-4


def test_bert_with_head_exposes_the_same_backbone_accessor():
    from lora_tasks.models import BertConfig

    net = BertWithHead(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=16, max_position_embeddings=16))
    assert net.backbone is net.bert


SMALL = dict(vocab_size=30, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
             max_position_embeddings=64, local_attention=4, global_attn_every_n_layers=2, pad_token_id=0)


@pytest.mark.parametrize("head_type,num_labels,shape", [
    ("binary_classification", 1, (3,)),
    ("multiclass_classification", 4, (3, 4)),
    ("multilabel_classification", 5, (3, 5)),
    ("regression", 1, (3, 1)),
])
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_head_shapes_and_losses(head_type, num_labels, shape, pooling):
    mx.random.seed(0)
    net = ModernBertWithHead(ModernBertConfig(**SMALL), head_type, num_labels, pooling=pooling)
    net.eval()
    ids = mx.array(np.random.default_rng(0).integers(1, 30, (3, 7)))
    mask = mx.array(np.array([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5]))
    logits = net(ids, mask, mx.zeros_like(ids))  # token_type_ids accepted and ignored, as for BERT
    assert logits.shape == shape
    labels = {
        "binary_classification": mx.array([0, 1, 1]),
        "multiclass_classification": mx.array([0, 3, 2]),
        "multilabel_classification": mx.array(np.eye(5)[[0, 1, 2]]),
        "regression": mx.array([[0.5], [1.0], [-2.0]]),
    }[head_type]
    loss = net.loss(logits, labels)
    assert loss.shape == () and np.isfinite(loss.item())


def test_pooler_pooling_is_refused_with_the_alternatives():
    with pytest.raises(ValueError, match="no pooler.*'cls' or 'mean'"):
        ModernBertWithHead(ModernBertConfig(**SMALL), pooling="pooler")


def test_gradients_reach_every_projection():
    mx.random.seed(0)
    net = ModernBertWithHead(ModernBertConfig(**SMALL), "regression", 1)
    ids = mx.array(np.random.default_rng(1).integers(1, 30, (2, 12)))
    loss_and_grad = nn.value_and_grad(net, lambda x, y: net.loss(net(x), y))
    loss, grads = loss_and_grad(ids, mx.array([[0.5], [-1.0]]))
    flat = dict(tree_flatten(grads))
    for name in ("model.layers.0.attn.Wqkv.weight", "model.layers.1.attn.Wo.weight", "model.layers.1.mlp.Wi.weight",
                 "model.embeddings.norm.weight", "head.classifier.weight"):
        g = np.array(flat[name])
        assert np.isfinite(g).all() and np.abs(g).max() > 0, name


def test_bfloat16_runs_and_stays_close(fixtures_dir, golden):
    enc = load_encoder(fixtures_dir / FOLDER, dtype=mx.bfloat16)
    out = np.array(enc.model(mx.array(golden["input_ids"]), mx.array(golden["attention_mask"])).astype(mx.float32))
    real = golden["attention_mask"].astype(bool)
    a, b = out[real], golden["last_hidden_state"][real]
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert np.isfinite(out).all() and cos.min() > 0.98


# ---- masks -------------------------------------------------------------------------------------


def test_padding_does_not_change_real_tokens(tiny, golden):
    """Padding far beyond the local window: rows alone, unpadded, equal their padded versions."""
    ids, mask = golden["input_ids"], golden["attention_mask"]
    wide_ids = np.pad(ids, ((0, 0), (0, 64 - ids.shape[1])))
    wide_mask = np.pad(mask, ((0, 0), (0, 64 - ids.shape[1])))
    padded = _run(tiny.model, wide_ids, wide_mask)
    for i in range(len(ids)):
        n = int(mask[i].sum())
        alone = _run(tiny.model, ids[i : i + 1, :n])[0]
        np.testing.assert_allclose(padded[i, :n], alone, atol=2e-5)


def _position0_changes(layer_types: list[str], changed_position: int) -> bool:
    """Does changing one token at ``changed_position`` change the output at position 0?"""
    mx.random.seed(3)
    cfg = ModernBertConfig(**{**SMALL, "num_hidden_layers": len(layer_types), "layer_types": layer_types,
                              "local_attention": 8})
    model = ModernBertModel(cfg)
    model.eval()
    ids = np.arange(1, 21)[None]
    other = ids.copy()
    other[0, changed_position] = 29
    return float(np.abs(_run(model, ids)[0, 0] - _run(model, other)[0, 0]).max()) > 1e-6


def test_local_attention_sees_exactly_half_the_window_each_side():
    """local_attention=8: one local layer sees +-4 tokens (inclusive), as transformers does;
    two local layers see +-8; one global layer sees everything."""
    assert _position0_changes([LOCAL], 4)
    assert not _position0_changes([LOCAL], 5)
    assert not _position0_changes([LOCAL], 19)
    assert _position0_changes([LOCAL, LOCAL], 8)
    assert not _position0_changes([LOCAL, LOCAL], 9)
    assert _position0_changes([GLOBAL], 19)
    assert _position0_changes([LOCAL, GLOBAL], 19)


# ---- LoRA on the fused projection ---------------------------------------------------------------


class _SlicedLoRA(nn.Module):
    """A minimal LoRA for the test: adds B A x only to the given output rows of the base linear."""

    def __init__(self, base: nn.Linear, rows: list[slice], r: int = 2) -> None:
        super().__init__()
        out_dims, in_dims = base.weight.shape
        self.base = base
        self.lora_a = mx.random.normal((r, in_dims)) * 0.1
        self.lora_b = mx.zeros((out_dims, r))
        mask = np.zeros((out_dims, 1), np.float32)
        for s in rows:
            mask[s] = 1.0
        self._rows = mx.array(mask)

    def __call__(self, x: mx.array) -> mx.array:
        return self.base(x) + (x @ self.lora_a.T) @ (self.lora_b * self._rows).T


def test_lora_wraps_the_fused_qkv_and_a_slice_adapts_only_query_and_value(tiny, golden):
    model = load_encoder(tiny.source).model
    ids, mask = golden["input_ids"], golden["attention_mask"]
    before = _run(model, ids, mask)
    slices = qkv_slices(model.config)
    assert LORA_TARGETS["query"] == LORA_TARGETS["value"] == "attn.Wqkv"
    mx.random.seed(0)
    for layer in model.layers:
        layer.attn.Wqkv = _SlicedLoRA(layer.attn.Wqkv, [slices["query"], slices["value"]])
    np.testing.assert_allclose(_run(model, ids, mask), before, atol=1e-6)  # B = 0: no change
    names = {k for k, _ in tree_flatten(model.parameters())}
    assert {"layers.0.attn.Wqkv.lora_a", "layers.0.attn.Wqkv.base.weight"} <= names

    attn = model.layers[1].attn
    attn.Wqkv.lora_b = mx.ones_like(attn.Wqkv.lora_b)
    x = mx.array(np.random.default_rng(0).normal(size=(1, 5, model.config.hidden_size)).astype(np.float32))
    delta = np.array(attn.Wqkv(x) - attn.Wqkv.base(x))[0]
    assert np.abs(delta[:, slices["key"]]).max() == 0
    assert np.abs(delta[:, slices["query"]]).min() > 0 and np.abs(delta[:, slices["value"]]).min() > 0
    assert np.abs(_run(model, ids, mask) - before).max() > 1e-3


# ---- errors ------------------------------------------------------------------------------------


def _copy_with(tmp_path: Path, fixtures_dir: Path, **changes) -> Path:
    folder = tmp_path / "m"
    shutil.copytree(fixtures_dir / FOLDER, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_weights_of_another_shape_list_every_key(tmp_path, fixtures_dir):
    folder = _copy_with(tmp_path, fixtures_dir, intermediate_size=40)  # the file has 48
    with pytest.raises(WeightLoadError) as err:
        load_encoder(folder)
    msg = str(err.value)
    assert "model.safetensors" in msg and "Fix:" in msg
    for i in range(3):
        assert f"layers.{i}.mlp.Wi.weight: file has (96, 32), model expects (80, 32)" in msg
        assert f"layers.{i}.mlp.Wo.weight: file has (32, 48), model expects (32, 40)" in msg


def test_more_layers_than_the_file_names_the_missing_ones(tmp_path, fixtures_dir):
    folder = _copy_with(tmp_path, fixtures_dir, num_hidden_layers=4, layer_types=[GLOBAL, LOCAL, GLOBAL, LOCAL])
    with pytest.raises(WeightLoadError, match=r"missing from the file:\n\s+layers\.3\.attn\.Wo\.weight"):
        load_encoder(folder)


def test_bert_weights_under_a_modernbert_config_are_named(tmp_path, fixtures_dir):
    folder = tmp_path / "m"
    shutil.copytree(fixtures_dir / FOLDER, folder)
    (folder / "model.safetensors").unlink()
    shutil.copy(fixtures_dir / "tiny_bert_bin" / "pytorch_model.bin", folder)
    with pytest.raises(WeightLoadError) as err:
        load_encoder(folder)
    msg = str(err.value)
    assert "embeddings.tok_embeddings.weight" in msg and "embeddings.word_embeddings.weight" in msg


@pytest.mark.parametrize("changes,match", [
    ({"layer_types": [GLOBAL, "chunked_attention", GLOBAL]}, "layer_types"),
    ({"layer_types": [GLOBAL]}, "3 entries"),
    ({"num_attention_heads": 5}, "num_attention_heads=5"),
    ({"hidden_activation": "swish_glu"}, "hidden_activation='swish_glu'"),
    ({"rope_parameters": {"full_attention": {"rope_type": "yarn", "rope_theta": 1.0}}}, "rope_type='yarn'"),
])
def test_unsupported_configs_are_named(tmp_path, fixtures_dir, changes, match):
    with pytest.raises(ValueError, match=match):
        load_encoder(_copy_with(tmp_path, fixtures_dir, **changes))


def test_bias_flags_add_biases():
    cfg = ModernBertConfig(**SMALL, attention_bias=True, mlp_bias=True, norm_bias=True)
    names = {k for k, _ in tree_flatten(ModernBertModel(cfg).parameters())}
    assert {"layers.0.attn.Wqkv.bias", "layers.0.attn.Wo.bias", "layers.0.mlp.Wi.bias",
            "layers.1.mlp.Wo.bias", "layers.1.attn_norm.bias", "final_norm.bias", "embeddings.norm.bias"} <= names
