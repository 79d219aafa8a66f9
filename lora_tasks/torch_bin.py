"""Read a PyTorch ``pytorch_model.bin`` / ``adapter_model.bin`` without torch, into numpy arrays.

The file is a zip of pickled storages. The unpickler allows only the few classes a ``state_dict``
needs (tensor rebuild, storage types, OrderedDict), so a checkpoint cannot run code on load.
Numpy only, no MLX: both the encoders (:mod:`lora_tasks.models.weights`) and the PEFT adapter
reader (:mod:`lora_tasks.lora.peft_format`) use it without depending on each other.
"""

from __future__ import annotations

import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np


class WeightLoadError(ValueError):
    """Weights that do not fit the model; the message lists every offending key."""


# ---- pytorch_model.bin without torch ---------------------------------------------------------

_TORCH_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": None,  # handled below
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name = name


def _rebuild_tensor(storage, offset, size, stride, *args):
    array, _ = storage
    if not size:
        return array[offset : offset + 1].reshape(())
    itemsize = array.itemsize
    return np.lib.stride_tricks.as_strided(
        array[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
    ).copy()


def load_torch_bin(path: Path) -> dict[str, np.ndarray]:
    """Read a PyTorch ``state_dict`` zip file into numpy arrays, without importing torch."""
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = next((n for n in names if n.endswith("data.pkl")), None)
        if pkl is None:
            raise WeightLoadError(f"{path} is not a PyTorch zip checkpoint (no data.pkl inside).")
        root = pkl[: -len("data.pkl")]
        cache: dict[str, np.ndarray] = {}

        class _Unpickler(pickle.Unpickler):
            def find_class(self, module: str, name: str) -> Any:
                if module == "torch._utils" and name in {"_rebuild_tensor_v2", "_rebuild_tensor"}:
                    return _rebuild_tensor
                if module == "torch" and name.endswith("Storage"):
                    return _StorageType(name)
                if module == "collections" and name == "OrderedDict":
                    return OrderedDict
                raise WeightLoadError(f"{path}: unsupported object {module}.{name} in checkpoint.")

            def persistent_load(self, pid: Any) -> Any:
                _, storage_type, key, _location, _numel = pid
                if key not in cache:
                    raw = zf.read(f"{root}data/{key}")
                    if storage_type.name == "BFloat16Storage":
                        u16 = np.frombuffer(raw, dtype=np.uint16)
                        cache[key] = (u16.astype(np.uint32) << 16).view(np.float32)
                    else:
                        cache[key] = np.frombuffer(raw, dtype=_TORCH_DTYPES[storage_type.name])
                return cache[key], storage_type

        with zf.open(pkl) as fh:
            state = _Unpickler(fh).load()
    return {k: np.asarray(v) for k, v in state.items()}
