"""PEFT format: import the adapter PEFT itself wrote (golden outputs), export, round trips, errors."""

from __future__ import annotations

import json
import re
import shutil

import mlx.core as mx
import numpy as np
import pytest

from lora_tasks.lora import AdapterLoadError, LoRAAdapter, LoRAConfig, LoRALinear, export_peft, import_peft
from lora_tasks.models import BertConfig, BertModel, BertWithHead, load_encoder
from lora_tasks.training.factory import create_bert_with_lora, create_model_with_lora

TINY = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=32)


def _run(model, batch):
    return np.array(model(mx.array(batch["input_ids"]), mx.array(batch["attention_mask"]),
                          mx.array(batch["token_type_ids"])))


def _perturb(adapter, seed=5):
    key = mx.random.key(seed)
    for layer in adapter.layers.values():
        key, sub = mx.random.split(key)
        layer.lora_b = mx.random.normal(layer.lora_b.shape, key=sub) * 0.1
        if "magnitude" in layer:
            layer.magnitude = layer.magnitude * 0.9


def _ids(shape=(2, 9), vocab=50):
    rng = np.random.default_rng(0)
    return mx.array(rng.integers(1, vocab, size=shape)), mx.ones(shape, dtype=mx.int32)


# ---- the adapter PEFT wrote ---------------------------------------------------------------------


def test_import_the_adapter_peft_wrote_matches_peft_outputs(fixtures_dir):
    expected = np.load(fixtures_dir / "peft_tiny_lora_expected.npz")
    base = load_encoder(fixtures_dir / "tiny_bert_bin").model
    without = _run(base, expected)
    adapter = LoRAAdapter.from_peft(base, fixtures_dir / "peft_tiny_lora")
    assert adapter.config.r == 4 and adapter.config.resolved_alpha == 8.0
    assert adapter.config.target_modules == ("query", "value")
    assert len(adapter.layers) == 4
    ours = _run(base, expected)
    mask = expected["attention_mask"].astype(bool)
    assert np.abs(without - expected["last_hidden_state"])[mask].max() > 1e-3  # the adapter matters
    assert np.abs(ours - expected["last_hidden_state"])[mask].max() < 1e-5


def test_peft_adapter_imports_onto_the_encoder_inside_a_head_model(fixtures_dir):
    expected = np.load(fixtures_dir / "peft_tiny_lora_expected.npz")
    model = load_encoder(fixtures_dir / "tiny_bert_bin", head_type="binary_classification").model
    adapter = import_peft(model, fixtures_dir / "peft_tiny_lora")
    assert "bert.encoder.layer.1.attention.self.value" in adapter.layers
    ours = _run(model.bert, expected)
    mask = expected["attention_mask"].astype(bool)
    assert np.abs(ours - expected["last_hidden_state"])[mask].max() < 1e-5


def test_reexporting_the_peft_adapter_gives_back_its_exact_tensors(fixtures_dir, tmp_path):
    base = load_encoder(fixtures_dir / "tiny_bert_bin").model
    adapter = import_peft(base, fixtures_dir / "peft_tiny_lora")
    out = export_peft(adapter, tmp_path / "again")
    theirs = mx.load(str(fixtures_dir / "peft_tiny_lora" / "adapter_model.safetensors"))
    ours = mx.load(str(out / "adapter_model.safetensors"))
    assert set(ours) == set(theirs)
    for key in theirs:
        np.testing.assert_array_equal(np.array(ours[key]), np.array(theirs[key]))
    cfg = json.loads((out / "adapter_config.json").read_text())
    original = json.loads((fixtures_dir / "peft_tiny_lora" / "adapter_config.json").read_text())
    for field in ("peft_type", "r", "lora_alpha", "target_modules", "use_rslora", "use_dora", "lora_dropout", "bias"):
        assert cfg[field] == original[field], field


# ---- our export -------------------------------------------------------------------------------


@pytest.mark.parametrize("use_dora", [False, True])
def test_export_layout_and_round_trip(tmp_path, use_dora):
    cfg = LoRAConfig(r=4, alpha=6, dropout=0.05, target_modules=("query", "key", "value", "o"), use_dora=use_dora,
                     use_rslora=True, layer_specific_config={"encoder.layer.1.attention.self": {"r": 2}})
    model, adapter = create_model_with_lora("bert", cfg, config=TINY, pretrained=False, seed=0)
    _perturb(adapter)
    ids, mask = _ids()
    expected = np.array(model(ids, mask))
    out = adapter.export_peft(tmp_path / "peft")

    tensors = mx.load(str(out / "adapter_model.safetensors"))
    assert tensors["base_model.model.encoder.layer.0.attention.self.query.lora_A.weight"].shape == (4, 16)
    assert tensors["base_model.model.encoder.layer.0.attention.output.dense.lora_B.weight"].shape == (16, 4)
    assert tensors["base_model.model.encoder.layer.1.attention.self.key.lora_A.weight"].shape == (2, 16)
    assert ("base_model.model.encoder.layer.0.attention.self.value.lora_magnitude_vector" in tensors) == use_dora
    assert len(tensors) == 2 * 4 * (3 if use_dora else 2)

    pc = json.loads((out / "adapter_config.json").read_text())
    assert pc["peft_type"] == "LORA" and pc["r"] == 4 and pc["lora_alpha"] == 6.0
    assert pc["use_rslora"] is True and pc["use_dora"] is use_dora and pc["lora_dropout"] == 0.05
    assert pc["target_modules"] == ["query", "key", "value", "attention.output.dense"]
    assert pc["rank_pattern"] == {f"encoder.layer.1.attention.self.{t}": 2 for t in ("query", "key", "value")}
    assert pc["alpha_pattern"] == {}

    plain = _plain("bert")  # same base weights, no adapters
    imported = import_peft(plain, out)
    assert imported.config.use_dora is use_dora and imported.config.use_rslora
    assert imported.layers["encoder.layer.1.attention.self.key"].r == 2
    assert imported.config.for_layer("encoder.layer.1.attention.self.key").alpha == 6.0
    np.testing.assert_allclose(np.array(plain(ids, mask)), expected, atol=1e-6)


def test_head_travels_next_to_the_peft_files(tmp_path):
    model, adapter = create_bert_with_lora("multiclass_classification", "efficient", num_labels=3, config=TINY,
                                           pretrained=False, seed=0)
    _perturb(adapter)
    model.head.classifier.weight = model.head.classifier.weight * 3
    ids, mask = _ids()
    expected = np.array(model(ids, mask))
    out = export_peft(adapter, tmp_path / "p")
    assert (out / "head.safetensors").is_file()
    other = _plain("bert_with_head")
    import_peft(other, out)
    np.testing.assert_allclose(np.array(other(ids, mask)), expected, atol=1e-6)


def _plain(kind):
    """A model with the factory's seed-0 base weights and no adapters."""
    mx.random.seed(0)
    net = BertWithHead(TINY, "multiclass_classification", 3) if kind == "bert_with_head" else BertModel(TINY, False)
    net.eval()
    return net


def test_output_only_targets_export_as_a_regex_that_spares_attention_output(tmp_path):
    _, adapter = create_model_with_lora("bert", LoRAConfig(target_modules=("output",)), config=TINY, pretrained=False)
    pattern = json.loads((export_peft(adapter, tmp_path / "o") / "adapter_config.json").read_text())["target_modules"]
    assert isinstance(pattern, str)
    assert re.fullmatch(pattern, "encoder.layer.0.output.dense")
    assert re.fullmatch(pattern, "bert.encoder.layer.3.output.dense")
    assert not re.fullmatch(pattern, "encoder.layer.0.attention.output.dense")


# ---- errors -----------------------------------------------------------------------------------


def test_importing_onto_another_shape_lists_every_mismatch(fixtures_dir):
    plain = BertModel(BertConfig(vocab_size=50, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32, max_position_embeddings=32), add_pooler=False)
    with pytest.raises(AdapterLoadError) as err:
        import_peft(plain, fixtures_dir / "peft_tiny_lora")
    msg = str(err.value)
    assert msg.count("shape mismatch:") == 4  # layer 0: query/value x A/B
    assert msg.count("not in this model:") == 2  # layer 1: query, value
    assert "encoder.layer.0.attention.self.query.lora_a: adapter (4, 32), model (4, 24)" in msg
    assert not any(isinstance(m, LoRALinear) for _, m in plain.named_modules())  # the model was left untouched


def test_non_lora_peft_adapters_are_refused(fixtures_dir, tmp_path):
    folder = tmp_path / "ia3"
    shutil.copytree(fixtures_dir / "peft_tiny_lora", folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**cfg, "peft_type": "IA3"}))
    with pytest.raises(ValueError, match="only LORA"):
        import_peft(load_encoder(fixtures_dir / "tiny_bert_bin").model, folder)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        import_peft(load_encoder(fixtures_dir / "tiny_bert_bin").model, tmp_path / "nowhere")


def test_a_truncated_peft_folder_names_the_broken_file(fixtures_dir, tmp_path):
    from lora_tasks.lora.adapter import AdapterFileError

    folder = tmp_path / "broken"
    shutil.copytree(fixtures_dir / "peft_tiny_lora", folder)
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(AdapterFileError, match="Delete it or run with --refresh") as err:
        import_peft(load_encoder(fixtures_dir / "tiny_bert_bin").model, folder)
    assert str(weights) in str(err.value)
    (folder / "adapter_config.json").write_text('{"peft_type": "LO')
    with pytest.raises(AdapterFileError, match="adapter_config.json.*not JSON"):
        import_peft(load_encoder(fixtures_dir / "tiny_bert_bin").model, folder)
