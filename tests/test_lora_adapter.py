"""LoRAAdapter on real MiniLM and tiny random BERTs: identity at init, freezing through the gradient
tree, parameter report, layer-specific ranks, state files, load errors, merge/unmerge."""

from __future__ import annotations

import warnings

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

import lora_tasks
from lora_tasks.lora import AdapterLoadError, DoRALinear, LoRAAdapter, LoRAConfig, LoRALinear, read_adapter_file
from lora_tasks.lora.adapter import AdapterFileError, BaseModelMismatchWarning
from lora_tasks.models import BertConfig, BertWithHead, load_encoder
from lora_tasks.training.factory import create_bert_with_lora, create_model_with_lora

TINY = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=32)
BERT_BASE = BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
# r=8 on Q,K,V,O of BERT-base with a binary head: stated in README.md's LoRA section.
BERT_BASE_PERCENT = "0.54%"


def _batch(vocab=50, seed=0, shape=(3, 7)):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, size=shape)
    mask = np.ones(shape, dtype=np.int32)
    mask[0, -2:] = 0
    return mx.array(ids), mx.array(mask)


def _perturb(adapter: LoRAAdapter, seed: int = 3, scale: float = 0.05) -> None:
    """Give every adapter non-zero B (and DoRA a non-trivial magnitude) so it changes outputs."""
    key = mx.random.key(seed)
    for layer in adapter.layers.values():
        key, k1 = mx.random.split(key)
        layer.lora_b = mx.random.normal(layer.lora_b.shape, key=k1) * scale
        if isinstance(layer, DoRALinear):
            layer.magnitude = layer.magnitude * 1.1


def _tiny(preset="balanced", **kw):
    return create_bert_with_lora("multiclass_classification", preset, num_labels=3, config=TINY, pretrained=False,
                                 seed=0, **kw)


# ---- applying -----------------------------------------------------------------------------------


@pytest.mark.parametrize("use_dora", [False, True])
def test_fresh_adapter_leaves_minilm_outputs_unchanged(minilm, use_dora):
    enc = load_encoder()  # fresh copy: the session fixture must stay unadapted
    ids, mask = _batch(vocab=30000, shape=(2, 12))
    before = np.array(minilm.model(ids, mask))
    adapter = LoRAAdapter(enc.model, LoRAConfig(r=8, target_modules=("q", "k", "v", "o", "intermediate", "output"),
                                                use_dora=use_dora))
    assert len(adapter.layers) == 6 * 6
    assert all(type(layer) is (DoRALinear if use_dora else LoRALinear) for layer in adapter.layers.values())
    np.testing.assert_allclose(np.array(enc.model(ids, mask)), before, atol=1e-5)
    _perturb(adapter)
    assert np.abs(np.array(enc.model(ids, mask)) - before).max() > 1e-3  # the adapters are in the path


def test_layers_replaced_at_hf_paths_and_model_keeps_eval_mode():
    model, adapter = _tiny("efficient")
    assert list(adapter.layers) == [
        "bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.value",
        "bert.encoder.layer.1.attention.self.query", "bert.encoder.layer.1.attention.self.value",
    ]
    assert model.bert.encoder.layer[1].attention.self.value is adapter.layers["bert.encoder.layer.1.attention.self.value"]
    assert not any(m.training for _, m in model.named_modules())


def test_output_target_does_not_touch_attention_output():
    _, adapter = _tiny(LoRAConfig(target_modules=("output",)))
    assert sorted(adapter.layers) == ["bert.encoder.layer.0.output.dense", "bert.encoder.layer.1.output.dense"]


def test_only_adapters_and_head_receive_gradients():
    model, adapter = _tiny("balanced", use_dora=True)
    model.train()
    ids, mask = _batch()
    labels = mx.array([0, 2, 1])
    loss_and_grad = nn.value_and_grad(model, lambda i, m, y: model.loss(model(i, m), y))
    _, grads = loss_and_grad(ids, mask, labels)
    got = {k for k, _ in tree_flatten(grads)}
    assert got == set(adapter.get_lora_state_dict())
    assert {k for k in got if k.startswith("head.")} == {"head.classifier.weight", "head.classifier.bias"}
    assert sum(k.endswith(".magnitude") for k in got) == 8
    assert not any("embeddings" in k or k.endswith("query.linear.weight") for k in got)


def test_freeze_bert_false_trains_everything():
    model, _ = _tiny("efficient", freeze_bert=False)
    trainable = {k for k, _ in tree_flatten(model.trainable_parameters())}
    assert "bert.embeddings.word_embeddings.weight" in trainable
    assert "bert.encoder.layer.0.attention.self.query.lora_a" in trainable


def test_parameter_report_counts_exactly():
    model, adapter = _tiny("balanced")
    rep = adapter.parameter_report()
    lora = 2 * 4 * 8 * (16 + 16)  # layers x targets x r x (in + out)
    head = 16 * 3 + 3
    assert (rep.lora, rep.head, rep.trainable) == (lora, head, lora + head)
    assert rep.total == sum(v.size for _, v in tree_flatten(model.parameters()))
    assert rep.percentage == pytest.approx(100 * rep.trainable / rep.total)
    assert "trainable%" in str(rep)


def test_bert_base_r8_qkvo_trains_under_two_percent_as_the_readme_says(readme_text):
    # config only: parameters are lazy arrays and are never computed
    _, adapter = create_bert_with_lora("binary_classification", "balanced", config=BERT_BASE, pretrained=False)
    rep = adapter.parameter_report()
    assert rep.lora == 12 * 4 * 8 * (768 + 768)
    assert rep.percentage < 2.0
    assert f"{rep.percentage:.2f}%" == BERT_BASE_PERCENT
    assert BERT_BASE_PERCENT in readme_text


@pytest.fixture(scope="module")
def readme_text():
    from pathlib import Path

    return (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_no_head_training_when_disabled():
    model, adapter = _tiny("efficient", train_head=False)
    assert not any(k.startswith("head.") for k in adapter.get_lora_state_dict())
    assert not any(k.startswith("head.") for k, _ in tree_flatten(model.trainable_parameters()))


# ---- layer-specific config and errors -----------------------------------------------------------


def test_layer_specific_ranks_are_applied():
    cfg = LoRAConfig(r=8, target_modules=("query", "value"),
                     layer_specific_config={"bert.encoder.layer.1.attention": {"r": 4, "alpha": 2},
                                            "bert.encoder.layer.0.attention.self.value": {"r": 2}})
    _, adapter = _tiny(cfg)
    layers = adapter.layers
    assert layers["bert.encoder.layer.0.attention.self.query"].r == 8
    assert layers["bert.encoder.layer.0.attention.self.value"].r == 2
    assert layers["bert.encoder.layer.0.attention.self.value"].lora_a.shape == (2, 16)
    assert (layers["bert.encoder.layer.1.attention.self.query"].r, layers["bert.encoder.layer.1.attention.self.query"].scale) == (4, 0.5)


def test_layer_path_that_matches_nothing_names_the_fix():
    with pytest.raises(ValueError) as err:
        _tiny(LoRAConfig(layer_specific_config={"bert.encoder.layer.11.attention": {"r": 16},
                                                "encoder.layer.0.attention": {"r": 4},
                                                "bert.encoder.layer.0.intermediate": {"r": 4}}))
    msg = str(err.value)
    assert "'bert.encoder.layer.11.attention'" in msg and "encoder layers 0..1" in msg
    assert "use 'bert.encoder.layer.0.attention'" in msg
    assert "not LoRA targets" in msg
    # on a bare encoder the 'bert.' prefix is the problem
    with pytest.raises(ValueError, match="use 'encoder.layer.0.attention'"):
        create_model_with_lora("bert", LoRAConfig(layer_specific_config={"bert.encoder.layer.0.attention": {"r": 4}}),
                               config=TINY, pretrained=False)


def test_model_without_bert_layers_and_double_application_are_errors():
    with pytest.raises(ValueError, match="No module"):
        LoRAAdapter(nn.Sequential(nn.Linear(4, 4)), LoRAConfig())
    model, _ = _tiny("efficient")
    with pytest.raises(ValueError, match="already has LoRA layers"):
        LoRAAdapter(model, LoRAConfig())


@pytest.mark.parametrize("preset", ["qlora_memory", "qlora_quality"])
def test_qlora_presets_build_a_4bit_base(preset):
    # (QLoRA landed: tests/test_qlora.py covers it; here only that the presets now apply)
    from lora_tasks.lora.quantized import QLoRALinear

    cfg = BertConfig(vocab_size=50, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=16)
    _, adapter = create_bert_with_lora("binary_classification", preset, config=cfg, pretrained=False)
    assert adapter.layers and all(isinstance(layer, QLoRALinear) for layer in adapter.layers.values())
    with pytest.raises(NotImplementedError, match="DoRA"):
        create_bert_with_lora("binary_classification", preset, config=cfg, pretrained=False, use_dora=True)


def test_factory_argument_errors():
    with pytest.raises(ValueError, match="pretrained=False"):
        create_bert_with_lora(config=TINY, pretrained=True)
    with pytest.raises(ValueError, match="model_type"):
        create_model_with_lora("gpt", config=TINY, pretrained=False)
    with pytest.raises(TypeError, match="LoRAConfig fields"):
        create_bert_with_lora(config=TINY, pretrained=False, rank=4)


# ---- state, files, load errors ------------------------------------------------------------------


def test_state_dict_round_trip_through_a_file(tmp_path):
    model, adapter = _tiny("balanced", use_dora=True)
    _perturb(adapter)
    model.head.classifier.weight = model.head.classifier.weight + 0.5  # the trained head is saved too
    ids, mask = _batch()
    expected = np.array(model(ids, mask))
    path = adapter.save(tmp_path / "adapters" / "fold0.safetensors")
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["fold0.safetensors"]  # no temp left

    _, meta = read_adapter_file(path)
    assert meta["lora_tasks_version"] == lora_tasks.__version__
    assert LoRAConfig.from_json(meta["lora_config"]) == adapter.config

    fresh, fresh_adapter = _tiny("balanced", use_dora=True)  # same seed: same base weights
    assert not np.allclose(np.array(fresh(ids, mask)), expected, atol=1e-4)
    fresh_adapter.load(path)
    np.testing.assert_allclose(np.array(fresh(ids, mask)), expected, atol=1e-6)

    # from_file applies the config stored in the file to a plain model
    mx.random.seed(0)
    plain = BertWithHead(TINY, "multiclass_classification", 3)
    plain.eval()
    restored = LoRAAdapter.from_file(plain, path)
    assert restored.config == adapter.config and len(restored.layers) == 8
    np.testing.assert_allclose(np.array(plain(ids, mask)), expected, atol=1e-6)


def test_get_and_load_state_dict_in_memory():
    model, adapter = _tiny("efficient")
    _perturb(adapter)
    state = adapter.get_lora_state_dict()
    assert set(state) == {f"bert.encoder.layer.{i}.attention.self.{t}.lora_{ab}" for i in (0, 1)
                          for t in ("query", "value") for ab in "ab"} | {"head.classifier.weight", "head.classifier.bias"}
    _, other = _tiny("efficient")
    other.load_lora_state_dict(state)
    for key, value in other.get_lora_state_dict().items():
        np.testing.assert_array_equal(np.array(value), np.array(state[key]))


def test_loading_into_another_shape_lists_every_mismatch(tmp_path):
    _, adapter = _tiny("balanced")
    path = adapter.save(tmp_path / "a.safetensors")
    _, small = _tiny("efficient", r=4)  # other rank, fewer targets
    with pytest.raises(AdapterLoadError) as err:
        small.load(path)
    msg = str(err.value)
    # rank 8 vs 4 on query/value: 8 shape mismatches; key/attention_output: 8 keys the model lacks
    assert msg.count("shape mismatch:") == 8
    assert msg.count("not in this model:") == 8
    assert "bert.encoder.layer.1.attention.self.query.lora_a: adapter state (8, 16), model (4, 16)" in msg
    assert "config r: file 8, adapter 4" in msg

    wide = BertConfig(**{**TINY.to_dict(), "hidden_size": 24, "intermediate_size": 48})
    _, other = create_bert_with_lora("multiclass_classification", "balanced", num_labels=3, config=wide,
                                     pretrained=False)
    with pytest.raises(AdapterLoadError) as err:
        other.load(path)
    assert str(err.value).count("shape mismatch:") == 2 * 4 * 2 + 1  # every lora_a/lora_b, and the head weight


def test_loading_with_a_different_scale_is_an_error(tmp_path):
    _, adapter = _tiny("efficient")
    path = adapter.save(tmp_path / "a")
    assert path.suffix == ".safetensors"
    _, other = _tiny("efficient", alpha=1.0)
    with pytest.raises(AdapterLoadError, match="config alpha: file 8.0, adapter 1.0"):
        other.load(path)


def test_a_truncated_adapter_file_names_the_file_and_the_fix(tmp_path):
    _, adapter = _tiny("efficient")
    path = adapter.save(tmp_path / "fold0.safetensors")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _, other = _tiny("efficient")
    for load in (lambda: other.load(path), lambda: read_adapter_file(path),
                 lambda: LoRAAdapter.from_file(BertWithHead(TINY, "multiclass_classification", 3), path)):
        with pytest.raises(AdapterFileError) as err:
            load()
        assert str(path) in str(err.value) and "Delete it or run with --refresh" in str(err.value)
    assert isinstance(err.value, AdapterLoadError)  # callers catching the old error still catch it


def _same_shapes_other_base():
    """A model with TINY's shapes whose config differs in a setting that changes what it computes."""
    other = BertConfig(**{**TINY.to_dict(), "layer_norm_eps": 1e-5})
    return create_bert_with_lora("multiclass_classification", "balanced", num_labels=3, config=other,
                                 pretrained=False, seed=0)


def test_an_adapter_from_another_base_model_is_refused_or_warned(tmp_path):
    model, adapter = _tiny("balanced")
    _perturb(adapter)
    path = adapter.save(tmp_path / "a.safetensors")
    meta = read_adapter_file(path)[1]
    assert meta["model_class"] == "BertWithHead" and len(meta["base_config_sha256"]) == 16

    other_model, other = _same_shapes_other_base()
    with pytest.raises(AdapterLoadError, match=r"(?s)\(1 problems\).*base model base_config_sha256: file '[0-9a-f]{16}'.*strict=False") as err:
        other.load(path)
    assert "shape mismatch" not in str(err.value)  # the shapes fit: only the base differs
    with pytest.raises(AdapterLoadError, match="base model base_config_sha256"):
        LoRAAdapter.from_file(BertWithHead(BertConfig(**{**TINY.to_dict(), "layer_norm_eps": 1e-5}),
                                           "multiclass_classification", 3), path)

    with pytest.warns(BaseModelMismatchWarning, match="trained on another base model"):
        other.load(path, strict=False)
    for key, value in adapter.get_lora_state_dict().items():
        np.testing.assert_array_equal(np.array(other.get_lora_state_dict()[key]), np.array(value))

    # the same base (same config, same class) loads without a word
    _, same = _tiny("balanced")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same.load(path)


def test_a_multi_adapter_file_from_another_base_model_is_refused(tmp_path):
    from lora_tasks.training.factory import create_multi_adapter_model

    _, manager = create_multi_adapter_model({"a": "efficient"}, "multiclass_classification", 3, config=TINY,
                                            pretrained=False, seed=0)
    path = manager.save(tmp_path / "multi.safetensors")
    other = BertConfig(**{**TINY.to_dict(), "layer_norm_eps": 1e-5})
    _, elsewhere = create_multi_adapter_model({"a": "efficient"}, "multiclass_classification", 3, config=other,
                                              pretrained=False, seed=0)
    with pytest.raises(AdapterLoadError, match="base model base_config_sha256"):
        elsewhere.load(path)
    with pytest.warns(BaseModelMismatchWarning):
        elsewhere.load(path, strict=False)


# ---- merge ------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_dora", [False, True])
def test_merge_and_unmerge_on_real_minilm(use_dora):
    model, adapter = create_model_with_lora("bert", LoRAConfig(r=8, target_modules=("q", "k", "v", "o", "intermediate",
                                                                                      "output"), use_dora=use_dora))
    _perturb(adapter, scale=0.1)
    ids, mask = _batch(vocab=30000, shape=(3, 16))
    unmerged = np.array(model(ids, mask))
    base = {p: np.array(layer.linear.weight) for p, layer in adapter.layers.items()}
    adapter.merge_adapters()
    assert adapter.merged
    merged = np.array(model(ids, mask))
    assert np.abs(merged - unmerged).max() < 1e-5
    adapter.unmerge_adapters()
    assert not adapter.merged
    for p, layer in adapter.layers.items():
        np.testing.assert_array_equal(np.array(layer.linear.weight), base[p])
    np.testing.assert_allclose(np.array(model(ids, mask)), unmerged, atol=1e-6)


def test_loading_state_while_merged_keeps_merged_outputs_right():
    model, adapter = _tiny("balanced")
    _perturb(adapter)
    state = adapter.get_lora_state_dict()
    ids, mask = _batch()
    expected = np.array(model(ids, mask))
    other, other_adapter = _tiny("balanced")
    other_adapter.merge_adapters()
    other_adapter.load_lora_state_dict(state)
    assert other_adapter.merged
    np.testing.assert_allclose(np.array(other(ids, mask)), expected, atol=1e-5)


# ---- modes and compilation ----------------------------------------------------------------------


def test_model_train_and_eval_reach_the_adapter_dropout():
    model, adapter = _tiny(LoRAConfig(r=4, dropout=0.5))
    _perturb(adapter, scale=0.5)
    ids, mask = _batch()
    evaluated = np.array(model(ids, mask))
    np.testing.assert_array_equal(np.array(model(ids, mask)), evaluated)
    model.train()
    for _, m in model.named_modules():  # isolate the adapters' dropout from BERT's own
        if isinstance(m, nn.Dropout) and not any(m is layer.dropout for layer in adapter.layers.values()):
            m.eval()
    assert all(layer.dropout.training for layer in adapter.layers.values())
    assert np.abs(np.array(model(ids, mask)) - evaluated).max() > 1e-4


def test_compiled_training_step_matches_eager():
    def step_grads(compiled: bool):
        model, adapter = _tiny("balanced", use_dora=True, dropout=0.0)
        _perturb(adapter)
        ids, mask = _batch()
        labels = mx.array([0, 1, 2])
        fn = nn.value_and_grad(model, lambda x, m, y: model.loss(model(x, m), y))
        if compiled:
            fn = mx.compile(fn, inputs=model.state)
        loss, grads = fn(ids, mask, labels)
        return loss.item(), dict(tree_flatten(grads))

    eager_loss, eager = step_grads(False)
    compiled_loss, compiled = step_grads(True)
    assert compiled_loss == pytest.approx(eager_loss, abs=1e-5)
    assert set(compiled) == set(eager)
    for key in eager:
        np.testing.assert_allclose(np.array(compiled[key]), np.array(eager[key]), atol=1e-5)
