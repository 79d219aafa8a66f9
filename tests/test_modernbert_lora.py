"""LoRA targets on ModernBERT: q/k/v as row slices of the fused attn.Wqkv, Wo, Wi, mlp.Wo."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

import lora_tasks  # noqa: F401  (BLAS set-up before MLX)
from lora_tasks.lora import LoRAAdapter, LoRAConfig, LoRALinear, SlicedLoRALinear
from lora_tasks.lora.config import MODERNBERT_TARGETS, is_fused_qkv, layer_index, target_of_path, targets_of_path
from lora_tasks.lora.quantized import QSlicedLoRALinear, is_quantized
from lora_tasks.models import ModernBertConfig
from lora_tasks.models.heads import head_loss
from lora_tasks.models.modernbert import LORA_TARGETS, ModernBertWithHead, qkv_slices
from lora_tasks.training.factory import create_model_with_lora, create_qlora_model

CFG = ModernBertConfig.from_file(Path(__file__).parent / "fixtures" / "modernbert_tiny" / "config.json")
H = CFG.hidden_size
IDS = mx.array(np.random.default_rng(0).integers(4, CFG.vocab_size, size=(3, 10)))
MASK = mx.array(np.c_[np.ones((3, 7)), np.r_[np.ones((2, 3)), np.zeros((1, 3))]].astype(np.int32))


def _model(preset="efficient", **kw):
    return create_model_with_lora("modernbert_with_head", preset, config=CFG, pretrained=False, seed=0, **kw)


def _randomize(adapter, scale=0.5):
    rng = np.random.default_rng(3)
    for layer in adapter.layers.values():
        for key in layer.ADAPTER_KEYS:
            if key.startswith("lora_b"):
                layer[key] = mx.array(rng.normal(0, scale, size=layer[key].shape).astype(np.float32))


def test_path_mapping_matches_the_model_module():
    assert MODERNBERT_TARGETS == LORA_TARGETS
    assert targets_of_path("model.layers.3.attn.Wqkv") == ("query", "key", "value")
    assert is_fused_qkv("layers.0.attn.Wqkv") and not is_fused_qkv("layers.0.attn.Wo")
    assert target_of_path("model.layers.3.attn.Wqkv") is None  # three targets, not one
    assert target_of_path("layers.2.attn.Wo") == "attention_output"
    assert target_of_path("layers.2.mlp.Wi") == "intermediate"
    assert target_of_path("layers.2.mlp.Wo") == "output"
    assert target_of_path("layers.2.attn_norm") is None
    assert layer_index("model.layers.11.mlp.Wo") == 11
    # BERT paths are unchanged
    assert target_of_path("bert.encoder.layer.1.output.dense") == "output"
    assert layer_index("bert.encoder.layer.4.attention.self.query") == 4


def test_efficient_adapts_only_query_and_value_rows_and_starts_as_identity():
    mx.random.seed(0)
    plain = ModernBertWithHead(CFG, "binary_classification", 1, "mean")
    plain.eval()
    expected = np.array(plain(IDS, MASK))
    mx.random.seed(0)
    model, adapter = _model("efficient")
    np.testing.assert_allclose(np.array(model(IDS, MASK)), expected, atol=1e-6)  # B = 0 at init
    assert list(adapter.layers) == [f"model.layers.{i}.attn.Wqkv" for i in range(CFG.num_hidden_layers)]
    layer = adapter.layers["model.layers.1.attn.Wqkv"]
    assert isinstance(layer, SlicedLoRALinear) and layer.slice_names == ("query", "value")
    assert layer.slice_rows() == {k: v for k, v in qkv_slices(CFG).items() if k != "key"}
    # same trainable count as BERT's efficient: 2 targets x (r*H + H*r) per layer
    assert adapter.parameter_report().lora == CFG.num_hidden_layers * 2 * (4 * H + H * 4)

    _randomize(adapter)
    x = mx.random.normal((2, 5, H))
    delta = np.array(layer(x) - layer.linear(x))
    rows = qkv_slices(CFG)
    assert np.abs(delta[..., rows["key"]]).max() == 0.0
    assert np.abs(delta[..., rows["query"]]).min() >= 0 and np.abs(delta[..., rows["query"]]).max() > 1e-3
    assert np.abs(delta[..., rows["value"]]).max() > 1e-3
    # delta_weight is the same update as a matrix (what merging adds): only q and v rows
    dw = np.array(layer.delta_weight())
    np.testing.assert_allclose(np.array(x @ mx.array(dw).T), delta, atol=1e-5)
    assert np.abs(dw[rows["key"]]).max() == 0.0


def test_presets_reach_the_modernbert_modules():
    _, balanced = _model("balanced")
    paths = set(balanced.layers)
    assert paths == {f"model.layers.{i}.attn.{m}" for i in range(3) for m in ("Wqkv", "Wo")}
    assert balanced.layers["model.layers.0.attn.Wqkv"].slice_names == ("query", "key", "value")
    _, expressive = _model("expressive")
    assert {p.split(".", 3)[3] for p in expressive.layers} == {"attn.Wqkv", "attn.Wo", "mlp.Wi", "mlp.Wo"}
    assert type(expressive.layers["model.layers.2.mlp.Wi"]) is LoRALinear
    assert expressive.layers["model.layers.2.mlp.Wi"].lora_b.shape == (2 * CFG.intermediate_size, 16)
    # per-layer overrides and layers_to_transform use the ModernBERT paths
    cfg = LoRAConfig(r=4, target_modules=("key", "output"), layers_to_transform=(1, 2),
                     layer_specific_config={"model.layers.2.attn": {"r": 2}})
    _, adapter = _model(cfg)
    assert set(adapter.layers) == {f"model.layers.{i}.{m}" for i in (1, 2) for m in ("attn.Wqkv", "mlp.Wo")}
    assert adapter.layers["model.layers.2.attn.Wqkv"].r == 2 and adapter.layers["model.layers.2.mlp.Wo"].r == 4
    assert adapter.layers["model.layers.1.attn.Wqkv"].slice_names == ("key",)
    with pytest.raises(ValueError, match="layers.9"):
        _model(LoRAConfig(layer_specific_config={"model.layers.9": {"r": 2}}))


def test_training_updates_only_adapter_and_head_and_lowers_the_loss():
    model, adapter = _model("balanced", )
    trainable = {k for k, _ in tree_flatten(model.trainable_parameters())}
    assert trainable == set(adapter.get_lora_state_dict())
    assert any(k.endswith("Wqkv.lora_a_key") for k in trainable) and any(k.startswith("head.") for k in trainable)
    labels = mx.array([1.0, 0.0, 1.0])

    def loss_fn(m):
        return head_loss("binary_classification", m(IDS, MASK), labels)

    step = nn.value_and_grad(model, loss_fn)
    frozen = {k: np.array(v) for k, v in tree_flatten(model.parameters()) if k not in trainable}
    from mlx.optimizers import Adam

    opt = Adam(learning_rate=1e-2)
    start = float(loss_fn(model))
    for _ in range(20):
        _, grads = step(model)
        assert {k for k, _ in tree_flatten(grads)} == trainable
        opt.update(model, grads)
        mx.eval(model.parameters())
    assert float(loss_fn(model)) < start - 0.05
    now = dict(tree_flatten(model.parameters()))
    assert all(np.array_equal(frozen[k], np.array(now[k])) for k in frozen)


def test_merge_save_and_load_round_trip(tmp_path):
    model, adapter = _model("balanced")
    _randomize(adapter)
    expected = np.array(model(IDS, MASK))
    adapter.merge_adapters()
    np.testing.assert_allclose(np.array(model(IDS, MASK)), expected, atol=1e-4)
    adapter.unmerge_adapters()
    np.testing.assert_allclose(np.array(model(IDS, MASK)), expected, atol=1e-6)
    path = adapter.save(tmp_path / "mb")
    mx.random.seed(0)
    fresh = ModernBertWithHead(CFG, "binary_classification", 1, "mean")
    fresh.eval()
    LoRAAdapter.from_file(fresh, path)
    np.testing.assert_allclose(np.array(fresh(IDS, MASK)), expected, atol=1e-5)


def test_qlora_on_modernbert_slices_a_quantized_wqkv():
    # the tiny fixture has H = 32: groups of 32 (mlp.Wo's input 48 is no multiple: stays fp32)
    model, adapter = create_qlora_model("modernbert_with_head", "qlora_memory", config=CFG, pretrained=False,
                                        seed=0, group_size=32)
    layer = adapter.layers["model.layers.0.attn.Wqkv"]
    assert isinstance(layer, QSlicedLoRALinear) and is_quantized(layer.linear)
    assert layer.slice_names == ("query", "value") and layer.out_features == 3 * H and layer.in_features == H
    assert isinstance(model.model.layers[0].mlp.Wo, nn.Linear)  # not a multiple of the group size
    assert isinstance(model.model.layers[0].attn.Wo, nn.QuantizedLinear)
    _randomize(adapter)
    expected = np.array(model(IDS, MASK))
    from lora_tasks.lora.quantized import merge_quantized

    report = merge_quantized(adapter, requantize=True)
    assert 0 < report.max_rel_fro < 0.2
    assert np.abs(np.array(model(IDS, MASK)) - expected).max() < 0.1
    adapter.unmerge_adapters()
    merge_quantized(adapter, requantize=False)
    np.testing.assert_allclose(np.array(model(IDS, MASK)), expected, atol=1e-4)


@pytest.mark.parametrize("lora", ["expressive", {"target_modules": ("query", "value"), "use_rslora": True, "r": 4}])
def test_peft_export_writes_the_wqkv_slices_as_one_lora_of_their_summed_rank(fixtures_dir, tmp_path, lora):
    """PEFT adapts the fused Wqkv as a whole: the k slices export as rank r*k (A stacked, B block-wise)
    with alpha scaled to keep the update, so PEFT on transformers' ModernBertModel computes what we
    do (checked by hand with PEFT 0.21 on this fixture: 3.9e-5 for expressive, 1.5e-5 rsLoRA)."""
    import json

    from lora_tasks.lora import export_peft, import_peft

    model, adapter = create_model_with_lora("modernbert", lora, model=fixtures_dir / "modernbert_tiny", seed=0)
    for layer in adapter.layers.values():
        for key in getattr(layer, "ADAPTER_KEYS", ("lora_b",)):
            if key.startswith("lora_b"):
                setattr(layer, key, mx.random.normal(getattr(layer, key).shape) * 0.3)
    out = export_peft(adapter, tmp_path / "peft")
    config = json.loads((out / "adapter_config.json").read_text())
    tensors = mx.load(str(out / "adapter_model.safetensors"))
    assert config["target_modules"] == list(dict.fromkeys(MODERNBERT_TARGETS[t] for t in adapter.config.target_modules))
    for path, layer in adapter.layers.items():
        rel = path[path.index("layers."):]
        a, b = tensors[f"base_model.model.{rel}.lora_A.weight"], tensors[f"base_model.model.{rel}.lora_B.weight"]
        r = config["rank_pattern"].get(rel, config["r"])
        alpha = config["alpha_pattern"].get(rel, config["lora_alpha"])
        assert a.shape[0] == b.shape[1] == r
        scale = alpha / (np.sqrt(r) if config["use_rslora"] else r)
        np.testing.assert_allclose(np.array(scale * (b @ a)), np.array(layer.delta_weight()), atol=1e-6)
    wqkv = [p for p in adapter.layers if p.endswith("attn.Wqkv")]
    assert wqkv and all(config["rank_pattern"][p[p.index("layers."):]] == adapter.config.r * len(
        adapter.layers[p].slice_names) for p in wqkv)
    # and back: each slice at its own rank and alpha, the exact tensors, the same outputs
    from lora_tasks.models import load_encoder

    fresh = load_encoder(fixtures_dir / "modernbert_tiny").model
    back = import_peft(fresh, out)
    assert back.config.target_modules == adapter.config.target_modules and back.config.r == adapter.config.r
    assert back.config.resolved_alpha == adapter.config.resolved_alpha and not back.config.layer_specific_config
    ours = adapter.get_lora_state_dict()
    theirs = back.get_lora_state_dict()
    assert set(ours) == set(theirs)
    for key, value in ours.items():
        np.testing.assert_array_equal(np.array(theirs[key]), np.array(value), err_msg=key)
    np.testing.assert_allclose(np.array(fresh(IDS, MASK)), np.array(model(IDS, MASK)), atol=1e-5)


def test_an_adapter_peft_wrote_on_the_fused_wqkv_imports_and_matches_peft(fixtures_dir):
    """PEFT on transformers' ModernBertModel (targets Wqkv as one module and Wi with a rank and
    alpha pattern): one rank-4 pair on Wqkv lands as three rank-4 slices sharing its A."""
    from lora_tasks.lora import import_peft
    from lora_tasks.models import load_encoder

    g = np.load(fixtures_dir / "peft_modernbert_lora_expected.npz")
    base = load_encoder(fixtures_dir / "modernbert_tiny").model
    ids, mask = mx.array(g["input_ids"]), mx.array(g["attention_mask"])
    real = g["attention_mask"].astype(bool)
    before = np.array(base(ids, mask))
    adapter = import_peft(base, fixtures_dir / "peft_modernbert_lora")
    assert adapter.config.target_modules == ("query", "key", "value", "intermediate")
    wqkv = [layer for path, layer in adapter.layers.items() if path.endswith("attn.Wqkv")]
    assert len(wqkv) == CFG.num_hidden_layers and all(layer.slice_names == ("query", "key", "value") for layer in wqkv)
    assert all((layer.r, layer.alpha) == (4, 8.0) for layer in wqkv)
    assert {(layer.r, layer.alpha) for path, layer in adapter.layers.items() if path.endswith("mlp.Wi")} == {(2, 3.0)}
    after = np.array(base(ids, mask))
    assert np.abs(before - g["last_hidden_state"])[real].max() > 1e-2  # the adapter matters
    assert np.abs(after - g["last_hidden_state"])[real].max() < 1e-4
    head_model = load_encoder(fixtures_dir / "modernbert_tiny", head_type="binary_classification").model
    import_peft(head_model, fixtures_dir / "peft_modernbert_lora")  # onto the encoder inside a head model
    assert np.abs(np.array(head_model.model(ids, mask)) - g["last_hidden_state"])[real].max() < 1e-4


def test_a_dora_adapter_on_the_fused_wqkv_is_refused_naming_it(fixtures_dir, tmp_path):
    import json
    import shutil

    from lora_tasks.lora import AdapterLoadError, import_peft
    from lora_tasks.models import load_encoder

    folder = tmp_path / "dora"
    shutil.copytree(fixtures_dir / "peft_modernbert_lora", folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    base = load_encoder(fixtures_dir / "modernbert_tiny").model
    with pytest.raises(AdapterLoadError, match=r"DoRA on ModernBERT's fused Wqkv is not supported.*layers\.0\.attn\.Wqkv"):
        import_peft(base, folder)
    assert not any(isinstance(m, LoRALinear) for _, m in base.named_modules())  # nothing was put on the model
