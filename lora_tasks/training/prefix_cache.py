"""Frozen-prefix cache: compute the frozen lower layers once, train every adapter from there.

When adapters touch only the top layers, the layers below them are frozen and (with their
dropout off) map an input to the same hidden states in every epoch and for every adapter. We
run them once per dataset, keep the states (in memory, or on disk under a content hash), and
train and predict with a thin wrapper that starts at the first adapted layer. With K adapters
trained for E epochs this replaces K*E forward+backward passes through the prefix by one
forward pass.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import secrets
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from lora_tasks.data.batching import forward_batches
from lora_tasks.diskspace import writing
from lora_tasks.training.train import Dataset

log = logging.getLogger("lora_tasks.training.prefix_cache")

_LAYER = re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\.")


def first_adapted_layer(model: nn.Module) -> int:
    """Index of the lowest encoder layer holding a trainable parameter (LoRA or unfrozen weight)."""
    layers = [int(m.group(1)) for k, _ in tree_flatten(model.trainable_parameters()) if (m := _LAYER.search(k))]
    if not layers:
        return model.num_layers  # only the head trains: the whole encoder is a frozen prefix
    return min(layers)


class FromPrefix(nn.Module):
    """``model`` seen from encoder layer ``start`` on: inputs are cached hidden states.

    It exposes the head interface the training engine needs (``head_type``, ``loss``), so
    :func:`lora_tasks.training.train.train` and :func:`lora_tasks.training.train.predict` work on it unchanged.
    """

    def __init__(self, model: nn.Module, start: int) -> None:
        super().__init__()
        self.model = model
        self.start = start
        self.head_type = model.head_type

    def __call__(self, hidden: mx.array, attention_mask: mx.array | None = None, token_type_ids=None) -> mx.array:
        return self.model.forward_from(self.start, hidden, attention_mask)

    def loss(self, logits: mx.array, labels: mx.array, class_weights: mx.array | None = None) -> mx.array:
        return self.model.loss(logits, labels, class_weights)


def prefix_key(model: nn.Module, data: Dataset, start: int) -> str:
    """Content hash of what the prefix states depend on: the inputs and the frozen weights below ``start``."""
    h = hashlib.sha256(f"start={start}".encode())
    for arr in (data.input_ids, data.attention_mask, data.token_type_ids):
        h.update(np.ascontiguousarray(arr).tobytes())
    # the encoder's weights outside the adapted layers: embeddings, the layers below ``start`` and
    # shared ones such as MPNet's relative position bias
    frozen = [(k, v) for k, v in tree_flatten(model.parameters())
              if k.startswith("bert.") and (not (m := _LAYER.search(k)) or int(m.group(1)) < start)]
    for k, v in sorted(frozen, key=lambda kv: kv[0]):
        h.update(k.encode())
        h.update(str(v.dtype).encode())
        # numpy has no bfloat16: hash a bf16 base's raw 16-bit words
        h.update(np.array(v.view(mx.uint16) if v.dtype == mx.bfloat16 else v).tobytes())
    return h.hexdigest()[:24]


def compute_prefix(model: nn.Module, data: Dataset, start: int, batch_size: int = 64) -> np.ndarray:
    """Hidden states entering layer ``start`` for every row: float32 (rows, width, hidden), eval mode.

    Rows run longest first in batches cut to their longest row, of at most ``batch_size`` rows and
    :data:`~lora_tasks.data.batching.FORWARD_TOKENS` tokens (padding is most of a
    short-text dataset's width: tweets average ~30 of 80 tokens), so the layers compute little
    padding; positions past a batch's longest row stay zero (masked out wherever states are used)."""
    was_training = model.training
    model.eval()
    n, width = data.input_ids.shape
    lengths = data.lengths
    states: np.ndarray | None = None
    try:
        for idx in forward_batches(lengths, batch_size):
            w = max(int(lengths[idx].max()), 1)
            h = model.hidden_before(start, mx.array(data.input_ids[idx, :w]), mx.array(data.attention_mask[idx, :w]),
                                    mx.array(data.token_type_ids[idx, :w]))
            h = np.array(h.astype(mx.float32))
            if states is None:
                states = np.zeros((n, width, h.shape[-1]), np.float32)
            states[idx, :w] = h
    finally:
        model.train(was_training)
    return states if states is not None else np.zeros((0, width, 0), np.float32)


def prefix_dataset(
    model: nn.Module, data: Dataset, start: int | None = None, cache_dir: str | os.PathLike | None = None
) -> tuple[FromPrefix, Dataset]:
    """(wrapped model, dataset of cached states) for training or predicting from the prefix.

    With ``cache_dir`` the states are kept on disk under their content hash, so every adapter and
    every later run on the same data and base weights reuses them (loaded memory-mapped).
    """
    start = first_adapted_layer(model) if start is None else start
    if cache_dir is None:
        return FromPrefix(model, start), _with_states(data, _compute(model, data, start, None))
    path = Path(cache_dir) / f"prefix-{prefix_key(model, data, start)}.npy"
    states = _load(path)
    if states is None:
        # one writer: folds started together wait here, then read what the first one wrote
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            states = _load(path)
            if states is None:
                states = _compute(model, data, start, path)
                tmp = path.with_name(f".{path.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp.npy")
                try:
                    with writing(path, int(states.nbytes), partial=tmp):  # a full disk names the file
                        np.save(tmp, states)
                    os.replace(tmp, path)
                finally:
                    tmp.unlink(missing_ok=True)
    return FromPrefix(model, start), _with_states(data, states)


def _with_states(data: Dataset, states: np.ndarray) -> Dataset:
    return Dataset(states, data.attention_mask, data.token_type_ids, data.labels)


def _load(path: Path) -> np.ndarray | None:
    """The cached states, memory-mapped; None when absent or unreadable (then they are recomputed)."""
    if not path.exists():
        return None
    try:
        return np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:  # a truncated or foreign file: computed again over it
        log.warning("Frozen-prefix cache %s is unreadable (%s); computing it again", path, exc)
        return None


def _compute(model: nn.Module, data: Dataset, start: int, path: Path | None) -> np.ndarray:
    # minutes on a CPU for long rows: say so before starting
    log.info("Frozen-prefix cache: computing the hidden states entering layer %d for %d rows once%s", start,
             len(data.input_ids), f" (kept at {path})" if path is not None else "")
    t0 = time.perf_counter()
    states = compute_prefix(model, data, start)
    log.info("Frozen-prefix cache: %d rows in %.0f s", len(data.input_ids), time.perf_counter() - t0)
    return states
