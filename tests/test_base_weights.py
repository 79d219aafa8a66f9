"""Issue 35 item 4: an adapter file and a fold checkpoint record the base model's weights, not just
its class and config, so another checkpoint of the same architecture (another fine-tune of the
same model, equal shapes and config) is refused, or warned about with ``strict=False``."""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from _tiny import toy_data

from lora_tasks.lora import AdapterLoadError, LoRAAdapter, read_adapter_file
from lora_tasks.lora.adapter import BaseModelMismatchWarning
from lora_tasks.training.factory import create_bert_with_lora
from lora_tasks.training.train import TrainConfig, train

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny RoBERTa fixture and a copy whose weights differ slightly (same names, shapes, config)."""
    root = tmp_path_factory.mktemp("models")
    a, b = root / "a", root / "b"
    shutil.copytree(FIXTURES / "roberta_tiny", a)
    shutil.copytree(FIXTURES / "roberta_tiny", b)
    weights = dict(mx.load(str(b / "model.safetensors")))
    name = next(k for k in sorted(weights) if k.endswith("query.weight"))
    weights[name] = weights[name] + 0.01
    mx.save_safetensors(str(b / "model.safetensors"), weights)
    return a, b


def _model(folder: Path):
    return create_bert_with_lora("binary_classification", "balanced", num_labels=1, model=str(folder), seed=0)


def test_an_adapter_trained_on_another_checkpoint_is_refused_or_warned(two_checkpoints, tmp_path):
    a, b = two_checkpoints
    _, adapter = _model(a)
    for layer in adapter.layers.values():
        layer.lora_b = mx.ones(layer.lora_b.shape) * 0.01
    path = adapter.save(tmp_path / "adapter.safetensors")
    meta = read_adapter_file(path)[1]
    assert meta["base_weights"].startswith("content:")

    _, on_b = _model(b)
    with pytest.raises(AdapterLoadError, match=r"base model base_weights: file 'content:[0-9a-f]+'.*strict=False"):
        on_b.load(path)
    net_b, _ = create_bert_with_lora("binary_classification", "balanced", num_labels=1, model=str(b), seed=0)
    with pytest.raises(AdapterLoadError, match="base_weights"):
        LoRAAdapter.from_file(net_b, path)
    with pytest.warns(BaseModelMismatchWarning, match="base_weights"):
        on_b.load(path, strict=False)

    _, on_a = _model(a)  # the same checkpoint, loaded again: not a word
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        on_a.load(path)
    for key, value in adapter.get_lora_state_dict().items():
        np.testing.assert_array_equal(np.array(on_a.get_lora_state_dict()[key]), np.array(value))


def test_a_fold_checkpoint_of_another_checkpoint_is_not_resumed(two_checkpoints, tmp_path, caplog):
    a, b = two_checkpoints
    data = toy_data(48)
    cfg = TrainConfig(epochs=1, batch_size=16, early_stopping_patience=None, compile=False)
    ckpt = tmp_path / "ckpt"
    caplog.set_level(logging.INFO, logger="lora_tasks")
    train(_model(a)[0], data.subset(np.arange(32)), data.subset(np.arange(32, 48)), cfg, checkpoint_dir=ckpt)
    again = train(_model(a)[0], data.subset(np.arange(32)), data.subset(np.arange(32, 48)), cfg, checkpoint_dir=ckpt)
    assert again.resumed_from_epoch == 1, "the same base resumes its checkpoint"
    other = train(_model(b)[0], data.subset(np.arange(32)), data.subset(np.arange(32, 48)), cfg, checkpoint_dir=ckpt)
    assert other.resumed_from_epoch == 0, "another checkpoint of the architecture starts afresh"
    assert "is for other data or settings; starting afresh" in caplog.text
