"""Training checkpoints: adapter and optimizer state plus progress, written atomically, read with clear errors.

A checkpoint is one ``.safetensors`` file (``model.*`` trainable weights, ``optim.*`` optimizer
state, the progress as JSON metadata) beside ``best.safetensors`` (the best epoch's weights). Every
write goes to a unique temp file that is renamed into place, so a kill or a second process
writing the same checkpoint never leaves a half-written file; a file that cannot be read is an
error naming it and the way out, never a raw MLX error.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_unflatten

from lora_tasks.diskspace import array_bytes, writing

CHECKPOINT_FILE = "checkpoint.safetensors"
BEST_FILE = "best.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read; the message names the file and how to start over."""


def save_checkpoint(path: Path, model: nn.Module, optimizer: optim.Optimizer, meta: dict) -> None:
    """Adapter (trainable) weights, optimizer state and progress, in one atomic file."""
    arrays = {f"model.{k}": v for k, v in tree_flatten(model.trainable_parameters())}
    arrays.update({f"optim.{k}": v for k, v in tree_flatten(optimizer.state) if isinstance(v, mx.array)})
    atomic_save(path, arrays, {"meta": json.dumps(meta)})


def load_checkpoint(path: Path, model: nn.Module, optimizer: optim.Optimizer) -> dict:
    """Restore the weights and optimizer state of :func:`save_checkpoint`; return its progress."""
    arrays, metadata = read_checkpoint_file(path)
    model.update(tree_unflatten([(k[6:], v) for k, v in arrays.items() if k.startswith("model.")]))
    optimizer.state = tree_unflatten([(k[6:], v) for k, v in arrays.items() if k.startswith("optim.")])
    return json.loads(metadata["meta"])


def read_checkpoint_file(path: Path) -> tuple[dict[str, mx.array], dict[str, str]]:
    """Arrays and metadata of a checkpoint; :class:`CheckpointError` naming the file if it cannot be read."""
    try:
        arrays, metadata = mx.load(str(path), return_metadata=True)
        if "meta" in metadata:
            json.loads(metadata["meta"])
    except Exception as exc:
        raise CheckpointError(
            f"Cannot read the checkpoint {path} ({type(exc).__name__}: {exc}); it is incomplete or corrupt. "
            "Delete it or run with --refresh to train this adapter from the start."
        ) from exc
    return dict(arrays), dict(metadata)


def peek_meta(path: Path) -> dict:
    """The progress stored in a checkpoint, without touching a model."""
    _, metadata = read_checkpoint_file(path)
    return json.loads(metadata.get("meta", "{}"))


def atomic_save(path: Path, arrays: dict[str, mx.array], metadata: dict[str, str] | None = None) -> None:
    """Write to a unique temp file and rename: a kill never leaves a half-written file under ``path``,
    and two processes writing the same checkpoint never share a temp file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp.safetensors")
    try:
        with writing(path, array_bytes(arrays.values()), partial=tmp):  # a full disk names the file
            mx.save_safetensors(str(tmp), arrays, metadata=metadata or {})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


__all__ = ["BEST_FILE", "CHECKPOINT_FILE", "CheckpointError", "atomic_save", "load_checkpoint", "peek_meta",
           "read_checkpoint_file", "save_checkpoint"]
