"""RoBERTa, DistilBERT and ELECTRA: golden parity with transformers, their name and config
translations, LoRA and the frozen-prefix cache on them, and clear errors. The golden fixtures come
from scripts/make_bert_family_fixtures.py (tiny random models saved by transformers)."""

from __future__ import annotations

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from lora_tasks.data.tokenizer import Tokenizer
from lora_tasks.lora import export_peft, import_peft
from lora_tasks.models import (
    BertModel,
    BertWithHead,
    DistilBertConfig,
    DistilBertModel,
    ElectraConfig,
    ElectraModel,
    RobertaConfig,
    RobertaModel,
    load_encoder,
)
from lora_tasks.models.distilbert import distilbert_to_ours
from lora_tasks.models.electra import electra_to_ours
from lora_tasks.models.roberta import padding_positions, roberta_to_ours
from lora_tasks.models.weights import load_weights
from lora_tasks.training.factory import create_bert_with_lora, create_model_with_lora
from lora_tasks.training.prefix_cache import first_adapted_layer, prefix_dataset
from lora_tasks.training.train import Dataset

SENTENCES = ["the quick brown fox jumps over the lazy dog", "the price of the house", "a fox"]
KINDS = {"roberta": (RobertaModel, RobertaConfig), "distilbert": (DistilBertModel, DistilBertConfig),
         "electra": (ElectraModel, ElectraConfig)}


def _golden(fixtures_dir, kind: str) -> dict:
    return dict(np.load(fixtures_dir / f"{kind}_tiny_expected.npz"))


def _hidden(model, g: dict) -> np.ndarray:
    return np.array(model(mx.array(g["input_ids"]), mx.array(g["attention_mask"])))


def _max_error(ours: np.ndarray, g: dict) -> float:
    return float(np.abs(ours - g["last_hidden_state"])[g["attention_mask"].astype(bool)].max())


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_loads_its_own_architecture_and_matches_transformers(fixtures_dir, kind):
    g = _golden(fixtures_dir, kind)
    assert g["attention_mask"].min() == 0  # padded rows are part of the check
    loaded = load_encoder(fixtures_dir / f"{kind}_tiny")
    model_cls, config_cls = KINDS[kind]
    assert type(loaded.model) is model_cls and type(loaded.config) is config_cls
    assert _max_error(_hidden(loaded.model, g), g) < 1e-4


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_our_tokenizer_reproduces_the_golden_ids(fixtures_dir, kind):
    g = _golden(fixtures_dir, kind)
    tok = Tokenizer.from_file(fixtures_dir / f"{kind}_tiny" / "tokenizer.json")
    assert tok.pad_id == (1 if kind == "roberta" else 0)
    enc = tok(SENTENCES, max_length=64)
    np.testing.assert_array_equal(enc.input_ids, g["input_ids"])
    np.testing.assert_array_equal(enc.attention_mask, g["attention_mask"])


def test_roberta_read_as_a_bert_would_be_wrong(fixtures_dir):
    """The reason RoBERTa has its own class: BERT's positions (0, 1, ...) shift every state."""
    folder = fixtures_dir / "roberta_tiny"
    g = _golden(fixtures_dir, "roberta")
    as_bert = BertModel(RobertaConfig.from_file(folder / "config.json"), add_pooler=False)
    load_weights(as_bert, folder / "model.safetensors", name_map=roberta_to_ours)
    assert _max_error(_hidden(as_bert, g), g) > 1e-2


def test_roberta_positions_count_real_tokens_from_the_pad_id(fixtures_dir):
    ids = mx.array([[0, 7, 9, 2, 1, 1], [0, 8, 2, 1, 1, 1]])
    np.testing.assert_array_equal(np.array(padding_positions(ids, 1)), [[2, 3, 4, 5, 1, 1], [2, 3, 4, 1, 1, 1]])
    loaded = load_encoder(fixtures_dir / "roberta_tiny")
    g = _golden(fixtures_dir, "roberta")
    n = int(g["attention_mask"][1].sum())
    alone = np.array(loaded.model(mx.array(g["input_ids"][1:2, :n]), mx.array(g["attention_mask"][1:2, :n])))
    np.testing.assert_allclose(alone[0], _hidden(loaded.model, g)[1, :n], atol=1e-5)


def test_electra_projects_narrow_embeddings_up(fixtures_dir):
    loaded = load_encoder(fixtures_dir / "electra_tiny")
    emb = loaded.model.embeddings
    assert loaded.config.embedding_size == 16 and emb.word_embeddings.weight.shape == (62, 16)
    assert emb.project.weight.shape == (32, 16)  # checkpoint's embeddings_project, kept in the embeddings
    same_width = ElectraModel(ElectraConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                            intermediate_size=16, max_position_embeddings=8))
    assert "project" not in same_width.embeddings  # embedding_size unset: no projection


# ---- names and configs ---------------------------------------------------------------------------


@pytest.mark.parametrize("name_map, theirs, ours", [
    (roberta_to_ours, "roberta.encoder.layer.0.attention.self.query.weight", "encoder.layer.0.attention.self.query.weight"),
    (roberta_to_ours, "roberta.embeddings.position_embeddings.weight", "embeddings.position_embeddings.weight"),
    (distilbert_to_ours, "distilbert.transformer.layer.1.ffn.lin2.bias", "encoder.layer.1.output.dense.bias"),
    (distilbert_to_ours, "transformer.layer.0.attention.out_lin.weight", "encoder.layer.0.attention.output.dense.weight"),
    (distilbert_to_ours, "transformer.layer.0.sa_layer_norm.weight", "encoder.layer.0.attention.output.LayerNorm.weight"),
    (distilbert_to_ours, "transformer.layer.2.output_layer_norm.bias", "encoder.layer.2.output.LayerNorm.bias"),
    (distilbert_to_ours, "transformer.layer.0.ffn.lin1.weight", "encoder.layer.0.intermediate.dense.weight"),
    (distilbert_to_ours, "embeddings.LayerNorm.weight", "embeddings.LayerNorm.weight"),
    (electra_to_ours, "electra.embeddings_project.weight", "embeddings.project.weight"),
    (electra_to_ours, "electra.encoder.layer.1.output.dense.bias", "encoder.layer.1.output.dense.bias"),
])
def test_checkpoint_names_map_onto_berts(name_map, theirs, ours):
    assert name_map(theirs) == ours


def test_distilbert_config_reads_its_own_keys_and_ours(fixtures_dir):
    cfg = DistilBertConfig.from_file(fixtures_dir / "distilbert_tiny" / "config.json")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (32, 2, 4, 48)
    assert cfg.hidden_act == "gelu" and cfg.layer_norm_eps == 1e-12 and cfg.model_type == "distilbert"
    assert DistilBertConfig.from_dict(cfg.to_dict()) == cfg  # a saved copy (BERT's keys) reads back the same


def test_a_fine_tunes_checkpoint_loads_without_its_classifier(fixtures_dir, tmp_path):
    """``RobertaForSequenceClassification``-style files: a ``roberta.`` prefix and a classifier head,
    which we drop (our task head starts fresh)."""
    folder = tmp_path / "roberta-ft"
    shutil.copytree(fixtures_dir / "roberta_tiny", folder)
    weights = load_file(folder / "model.safetensors")
    weights = {f"roberta.{k}": v for k, v in weights.items()}
    weights["classifier.dense.weight"] = np.zeros((32, 32), np.float32)
    weights["classifier.out_proj.weight"] = np.zeros((2, 32), np.float32)
    save_file(weights, str(folder / "model.safetensors"))
    g = _golden(fixtures_dir, "roberta")
    assert _max_error(_hidden(load_encoder(folder).model, g), g) < 1e-4


def test_an_unknown_model_type_names_the_ones_we_build(fixtures_dir, tmp_path):
    folder = tmp_path / "gpt"
    shutil.copytree(fixtures_dir / "roberta_tiny", folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    with pytest.raises(ValueError, match=r"model_type='gpt2'.*'roberta'.*'distilbert'.*'electra'.*'modernbert'"):
        load_encoder(folder)


def test_pooler_pooling_on_distilbert_is_a_clear_error(fixtures_dir):
    with pytest.raises(ValueError, match="DistilBERT has no pooler.*'mean'"):
        load_encoder(fixtures_dir / "distilbert_tiny", head_type="binary_classification", pooling="pooler")


# ---- LoRA, the prefix cache, PEFT, random models -------------------------------------------------


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_lora_trains_from_the_prefix_like_the_whole_model_and_merges(fixtures_dir, kind):
    folder = fixtures_dir / f"{kind}_tiny"
    model, adapter = create_bert_with_lora("binary_classification", "balanced", model=folder, seed=0, dropout=0.0,
                                           layers_to_transform=(1,))
    assert isinstance(model, BertWithHead) and type(model.bert) is KINDS[kind][0]
    assert "bert.encoder.layer.1.attention.self.query" in adapter.layers  # BERT's target names
    assert all(p.startswith("bert.encoder.layer.1.") for p in adapter.layers)
    for layer in adapter.layers.values():  # non-zero B, so the adapters change the outputs
        layer.lora_b = mx.random.normal(layer.lora_b.shape) * 0.5
    enc = Tokenizer.from_file(folder / "tokenizer.json")(SENTENCES, max_length=64)
    full = np.array(model(mx.array(enc.input_ids), mx.array(enc.attention_mask)))
    assert first_adapted_layer(model) == 1
    wrapped, states = prefix_dataset(model, Dataset.from_encoded(enc, np.array([1, 0, 1])), 1)
    np.testing.assert_allclose(np.array(wrapped(mx.array(states.input_ids), mx.array(states.attention_mask))),
                               full, atol=1e-5)
    adapter.merge_adapters()
    np.testing.assert_allclose(np.array(model(mx.array(enc.input_ids), mx.array(enc.attention_mask))), full,
                               atol=1e-4)


def test_an_adapter_peft_wrote_on_roberta_imports_and_matches_peft(fixtures_dir):
    g = dict(np.load(fixtures_dir / "peft_roberta_lora_expected.npz"))
    base = load_encoder(fixtures_dir / "roberta_tiny").model
    before = _hidden(base, g)
    adapter = import_peft(base, fixtures_dir / "peft_roberta_lora")
    assert len(adapter.layers) == 4  # query and value of two layers
    assert _max_error(_hidden(base, g), g) < 1e-4 and _max_error(before, g) > 1e-2  # the adapter matters
    head_model = load_encoder(fixtures_dir / "roberta_tiny", head_type="binary_classification").model
    import_peft(head_model, fixtures_dir / "peft_roberta_lora")  # onto the encoder inside a head model
    assert _max_error(_hidden(head_model.bert, g), g) < 1e-4


@pytest.mark.parametrize("kind, layers, patterned", [("mpnet", 9, {}), ("distilbert", 6, {"output.dense": (2, 3.0)})])
def test_adapters_peft_wrote_under_other_layer_names_import_and_match_peft(fixtures_dir, kind, layers, patterned):
    """PEFT on transformers' MPNetModel (targets q, v, o) and DistilBertModel (q_lin, v_lin, lin2
    with a rank and alpha pattern) names the layers as those checkpoints do; they land on ours."""
    g = dict(np.load(fixtures_dir / f"peft_{kind}_lora_expected.npz"))
    base = load_encoder(fixtures_dir / f"{kind}_tiny").model
    before = _hidden(base, g)
    adapter = import_peft(base, fixtures_dir / f"peft_{kind}_lora")
    assert len(adapter.layers) == layers
    assert _max_error(_hidden(base, g), g) < 1e-4 and _max_error(before, g) > 1e-2  # the adapter matters
    for path, layer in adapter.layers.items():
        suffix = path.split(".", 3)[3]
        assert (layer.r, layer.alpha) == patterned.get(suffix, (4, 8.0)), path


@pytest.mark.parametrize("kind, query_key, targets", [
    ("roberta", "encoder.layer.0.attention.self.query", ["query", "key", "value", "attention.output.dense",
                                                        "intermediate.dense", "output.dense"]),
    ("electra", "encoder.layer.0.attention.self.query", None),
    ("mpnet", "encoder.layer.0.attention.attn.q", ["attention.attn.q", "attention.attn.k", "attention.attn.v",
                                                   "attention.attn.o", "intermediate.dense", "output.dense"]),
    ("distilbert", "transformer.layer.0.attention.q_lin", ["attention.q_lin", "attention.k_lin", "attention.v_lin",
                                                           "attention.out_lin", "ffn.lin1", "ffn.lin2"]),
])
def test_peft_export_round_trips_under_the_checkpoints_names(fixtures_dir, tmp_path, kind, query_key, targets):
    """The export names layers as transformers' model of that architecture does, so PEFT loads it
    there (checked with PEFT on the tiny fixtures: RoBERTa 1.8e-6, ELECTRA 1.3e-6, MPNet 1.9e-6,
    DistilBERT 3.7e-6 against our outputs); here, our own import of it."""
    folder = fixtures_dir / f"{kind}_tiny"
    g = _golden(fixtures_dir, kind)
    model, adapter = create_model_with_lora("bert", "expressive", model=folder, seed=0)
    for layer in adapter.layers.values():
        layer.lora_b = mx.random.normal(layer.lora_b.shape) * 0.3
    ours = _hidden(model, g)
    export_peft(adapter, tmp_path / "peft")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["r"] == adapter.config.r
    if targets is not None:
        assert config["target_modules"] == targets
    keys = set(mx.load(str(tmp_path / "peft" / "adapter_model.safetensors")))
    assert f"base_model.model.{query_key}.lora_A.weight" in keys
    fresh = load_encoder(folder).model
    import_peft(fresh, tmp_path / "peft")
    np.testing.assert_allclose(_hidden(fresh, g), ours, atol=1e-5)


def test_an_output_only_adapter_needs_no_regex_where_names_do_not_clash(fixtures_dir, tmp_path):
    """BERT's FFN output ``output.dense`` also ends ``attention.output.dense`` (a regex spares it);
    DistilBERT's ``ffn.lin2`` and MPNet's ``output.dense`` (its attention output is ``attn.o``) do not."""
    for kind, name in (("distilbert", "ffn.lin2"), ("mpnet", "output.dense")):
        _, adapter = create_model_with_lora("bert", {"target_modules": ("output",)}, model=fixtures_dir / f"{kind}_tiny",
                                            seed=0)
        config = json.loads((export_peft(adapter, tmp_path / kind) / "adapter_config.json").read_text())
        assert config["target_modules"] == [name]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_factories_build_a_random_model_of_the_configs_kind(kind):
    model_cls, config_cls = KINDS[kind]
    cfg = config_cls(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=40)
    model, adapter = create_bert_with_lora("regression", "efficient", config=cfg, pretrained=False, seed=0)
    assert type(model.bert) is model_cls and adapter.layers
    out = model(mx.array([[0, 7, 9, 2, 1]]), mx.array([[1, 1, 1, 1, 0]]))
    assert out.shape == (1, 1) and np.isfinite(np.array(out)).all()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_model_shape_reads_each_configs_own_keys(fixtures_dir, kind):
    """Auto-configuration sizes the model from config.json, whatever the architecture calls its keys."""
    from lora_tasks.training.factory import model_shape

    shape = model_shape(fixtures_dir / f"{kind}_tiny")
    assert (shape["hidden_size"], shape["num_layers"]) == (32, 2)
    assert shape["model_max_len"] == (64 if kind != "roberta" else 66)
