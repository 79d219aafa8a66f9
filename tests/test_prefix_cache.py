"""Training from cached frozen-prefix states equals training through the whole model."""

from __future__ import annotations

import numpy as np
from mlx.utils import tree_flatten

from lora_tasks.models import BertConfig
from lora_tasks.training.factory import create_bert_with_lora
from lora_tasks.training.prefix_cache import FromPrefix, compute_prefix, first_adapted_layer, prefix_dataset
from lora_tasks.training.train import TrainConfig, predict, train
from tests._tiny import TINY, toy_data


def _top_only_model(seed: int = 0):
    """A LoRA model with adapters on layers 2-3 of 4 only (a top-only preset)."""
    cfg = BertConfig(**{**TINY, "num_hidden_layers": 4, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})
    model, _ = create_bert_with_lora("binary_classification", "balanced", config=cfg, pretrained=False,
                                     seed=seed, dropout=0.0, layers_to_transform=(2, 3))
    return model


def test_first_adapted_layer_follows_trainable_parameters():
    model = _top_only_model()
    assert first_adapted_layer(model) == 2
    keys = [k for k, _ in tree_flatten(model.trainable_parameters())]
    assert all(".layer.0." not in k and ".layer.1." not in k for k in keys)
    assert any(".layer.2." in k for k in keys) and any(".layer.3." in k for k in keys)


def test_layers_to_transform_is_validated():
    import pytest

    from lora_tasks.lora import LoRAConfig

    with pytest.raises(ValueError, match="layer indices >= 0"):
        LoRAConfig(layers_to_transform=(-1,))
    with pytest.raises(ValueError, match=r"in layers \[7\]"):
        create_bert_with_lora("binary_classification", "balanced", config=BertConfig(**TINY), pretrained=False,
                              layers_to_transform=(7,))


def test_training_from_prefix_matches_plain_training(tmp_path):
    data = toy_data(96)
    cfg = TrainConfig(epochs=2, batch_size=16, early_stopping_patience=None, compile=False)
    plain = _top_only_model()
    res_plain = train(plain, data, None, cfg)
    cached_model = _top_only_model()
    wrapped, cached = prefix_dataset(cached_model, data, cache_dir=tmp_path)
    assert isinstance(wrapped, FromPrefix) and wrapped.start == 2
    assert cached.input_ids.shape == (96, 12, 32)
    res_cached = train(wrapped, cached, None, cfg)
    np.testing.assert_allclose([r["train_loss"] for r in res_cached.history],
                               [r["train_loss"] for r in res_plain.history], rtol=1e-4)
    np.testing.assert_allclose(predict(wrapped, cached), predict(plain, data), atol=1e-4)


def test_prefix_states_are_cached_on_disk_by_content(tmp_path, caplog):
    data = toy_data(32)
    model = _top_only_model()
    with caplog.at_level("INFO", logger="lora_tasks.training.prefix_cache"):
        _, first = prefix_dataset(model, data, cache_dir=tmp_path)
    files = list(tmp_path.glob("prefix-*.npy"))
    assert len(files) == 1
    assert "computing the hidden states entering layer 2 for 32 rows once" in caplog.text  # long work says so
    caplog.clear()
    with caplog.at_level("INFO", logger="lora_tasks.training.prefix_cache"):
        _, again = prefix_dataset(model, data, cache_dir=tmp_path)
    assert isinstance(again.input_ids, np.memmap) and not caplog.text  # loaded, not recomputed
    np.testing.assert_array_equal(np.asarray(again.input_ids), first.input_ids)
    other = toy_data(32, seed=3)
    prefix_dataset(model, other, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("prefix-*.npy"))) == 2  # other inputs, other key
    np.testing.assert_allclose(compute_prefix(model, data, 2), first.input_ids, atol=1e-6)


def test_prefix_rows_run_cut_to_their_length_and_keep_zeros_past_it():
    """Batches are cut to their longest row: every row's states equal that row run alone, and
    batches of short rows leave the positions past their longest row zero."""
    import mlx.core as mx

    data = toy_data(40, seed=5)
    model = _top_only_model()
    states = compute_prefix(model, data, 2, batch_size=8)
    assert states.shape == (40, 12, model.bert.config.hidden_size)
    for i in range(40):
        n = int(data.attention_mask[i].sum())
        alone = model.hidden_before(2, mx.array(data.input_ids[i:i + 1, :n]), mx.array(data.attention_mask[i:i + 1, :n]))
        np.testing.assert_allclose(states[i, :n], np.array(alone)[0], atol=1e-5)
    shortest = np.argsort(-data.lengths, kind="stable")[-8:]  # the last batch: the 8 shortest rows
    assert not states[shortest, int(data.lengths[shortest].max()):].any()


def test_an_unreadable_cache_file_is_computed_again(tmp_path, caplog):
    data = toy_data(32)
    model = _top_only_model()
    _, first = prefix_dataset(model, data, cache_dir=tmp_path)
    (path,) = tmp_path.glob("prefix-*.npy")
    path.write_bytes(path.read_bytes()[:40])  # truncated inside the header
    with caplog.at_level("INFO", logger="lora_tasks.training.prefix_cache"):
        _, again = prefix_dataset(model, data, cache_dir=tmp_path)
    assert "is unreadable" in caplog.text and "computing the hidden states" in caplog.text
    np.testing.assert_array_equal(np.asarray(again.input_ids), first.input_ids)
    np.testing.assert_array_equal(np.load(path), first.input_ids)  # the file is whole again


_WRITER = """
import logging, sys, time
from pathlib import Path
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
from tests.test_prefix_cache import _top_only_model
from tests._tiny import toy_data
from lora_tasks.training.prefix_cache import prefix_dataset
model, data = _top_only_model(), toy_data(64)
go = Path(sys.argv[1]) / "go"
while not go.exists():  # the barrier: both processes ask for the cache at the same moment
    time.sleep(0.01)
_, cached = prefix_dataset(model, data, cache_dir=sys.argv[1])
print("rows", len(cached.input_ids))
"""


def test_folds_started_together_compute_the_prefix_once(tmp_path):
    import subprocess
    import sys
    import time
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], cwd=repo, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    time.sleep(3)  # both have imported MLX and built their model (or are about to): then open the barrier
    (tmp_path / "go").touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    logs = "".join(out for out, _ in outs)
    assert logs.count("rows 64") == 2
    assert logs.count("computing the hidden states") == 1  # one writer; the other read its file
    assert len(list(tmp_path.glob("prefix-*.npy"))) == 1 and not list(tmp_path.glob(".*tmp*"))
