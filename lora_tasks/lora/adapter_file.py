"""Adapter files as read from disk, and the errors of loading an adapter.

Why apart from :mod:`lora_tasks.lora.adapter`: the PEFT format (:mod:`lora_tasks.lora.peft_format`)
reads the same files and raises the same errors, and the adapter builds on the PEFT format, not
the other way round.
"""

from __future__ import annotations

import os
from pathlib import Path

import mlx.core as mx

#: The attribute of a model that holds its task head (and the head's key prefix in adapter files).
HEAD_ATTR = "head"


class AdapterLoadError(ValueError):
    """Adapter state that does not fit the model; the message lists every mismatching key and shape."""


class AdapterFileError(AdapterLoadError):
    """An adapter file that cannot be read at all (truncated, corrupt); the message names the file."""


def read_adapter_file(path: str | os.PathLike) -> tuple[dict[str, mx.array], dict[str, str]]:
    """Arrays and metadata of a ``.safetensors`` adapter file; :class:`AdapterFileError` naming the
    file when it cannot be read."""
    path = Path(path)
    if not path.is_file() and path.with_name(path.name + ".safetensors").is_file():
        path = path.with_name(path.name + ".safetensors")
    if not path.is_file():
        raise FileNotFoundError(f"No adapter file at {path}; pass the path LoRAAdapter.save returned.")
    try:
        arrays, metadata = mx.load(str(path), return_metadata=True)
    except Exception as exc:
        raise AdapterFileError(
            f"Cannot read the adapter file {path} ({type(exc).__name__}: {exc}); it is incomplete or corrupt. "
            "Delete it or run with --refresh to train it again."
        ) from exc
    return dict(arrays), dict(metadata)
