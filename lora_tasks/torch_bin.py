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


class _Storage:
    """One storage read from the zip: its elements and the file member it came from (for errors)."""

    def __init__(self, array: np.ndarray, member: str) -> None:
        self.array = array
        self.member = member


#: Largest tensor the loader builds (elements): a crafted size with stride 0 would otherwise
#: ask for an allocation of any size from a few bytes of storage.
MAX_TENSOR_ELEMENTS = 1 << 34


def _index_list(value: Any, what: str, where: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(type(v) is int for v in value):
        raise WeightLoadError(f"{where}: the tensor's {what} is {value!r}, not a list of integers.")
    if any(v < 0 for v in value):
        raise WeightLoadError(f"{where}: the tensor's {what} {tuple(value)} has a negative entry.")
    return tuple(value)


def checked_view(storage: Any, offset: Any, size: Any, stride: Any, where: str) -> np.ndarray:
    """A copy of the tensor ``(offset, size, stride)`` over ``storage``, after checking that
    every element it addresses lies inside the storage.

    Why: ``as_strided`` trusts its arguments; a crafted checkpoint with a 4-element storage and
    a large size or stride would read (and hand back) whatever memory follows the storage, or
    crash the process. Each check names the file member and the numbers that do not fit."""
    if not isinstance(storage, _Storage):
        raise WeightLoadError(f"{where}: a tensor is built on {type(storage).__name__}, not on a storage of the file.")
    array = storage.array
    where = f"{where} (storage {storage.member}, {array.size} elements)"
    if type(offset) is not int or offset < 0:
        raise WeightLoadError(f"{where}: the tensor's storage offset is {offset!r}, not a non-negative integer.")
    shape = _index_list(size, "size", where)
    strides = _index_list(stride, "stride", where)
    if len(strides) != len(shape):
        raise WeightLoadError(f"{where}: the tensor has size {shape} but stride {strides} (another number of dimensions).")
    numel = int(np.prod(shape, dtype=object)) if shape else 1
    if numel > MAX_TENSOR_ELEMENTS:
        raise WeightLoadError(f"{where}: the tensor's size {shape} asks for {numel} elements, more than any checkpoint holds.")
    if numel == 0:
        return np.zeros(shape, dtype=array.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(shape, strides, strict=True))
    if last >= array.size:
        raise WeightLoadError(
            f"{where}: the tensor (offset {offset}, size {shape}, stride {strides}) reaches element {last}, "
            f"past the end of its storage. The file is corrupt or crafted; do not use it (download it again)."
        )
    itemsize = array.itemsize
    view = np.lib.stride_tricks.as_strided(array[offset:], shape=shape, strides=tuple(s * itemsize for s in strides))
    return view.copy()


def load_torch_bin(path: Path) -> dict[str, np.ndarray]:
    """Read a PyTorch ``state_dict`` zip file into numpy arrays, without importing torch."""
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = next((n for n in names if n.endswith("data.pkl")), None)
        if pkl is None:
            raise WeightLoadError(f"{path} is not a PyTorch zip checkpoint (no data.pkl inside).")
        root = pkl[: -len("data.pkl")]
        cache: dict[str, np.ndarray] = {}

        def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> np.ndarray:
            return checked_view(storage, offset, size, stride, str(path))

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
                if not (isinstance(pid, tuple) and len(pid) == 5 and isinstance(pid[1], _StorageType)
                        and pid[1].name in _TORCH_DTYPES and isinstance(pid[2], str)):
                    raise WeightLoadError(f"{path}: a storage reference in data.pkl is malformed ({pid!r:.120}).")
                _, storage_type, key, _location, numel = pid
                if key not in cache:
                    cache[key] = _read_storage(zf, f"{root}data/{key}", storage_type.name, numel, path)
                return cache[key]

        with zf.open(pkl) as fh:
            try:
                state = _Unpickler(fh).load()
            except WeightLoadError:
                raise
            except Exception as exc:  # a malformed pickle: name the file, never a bare pickle error
                raise WeightLoadError(f"{path}: data.pkl cannot be read ({type(exc).__name__}: {exc}). "
                                      "The file is corrupt or not a PyTorch state_dict; download it again.") from exc
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in state.items()):
        raise WeightLoadError(f"{path}: data.pkl does not hold a state_dict (names to tensors).")
    return dict(state)


def _read_storage(zf: zipfile.ZipFile, member: str, type_name: str, numel: Any, path: Path) -> _Storage:
    """One storage's elements; its byte length must hold the element count the pickle states."""
    try:
        raw = zf.read(member)
    except KeyError:
        raise WeightLoadError(f"{path}: the storage {member} named in data.pkl is not in the file.") from None
    itemsize = 2 if type_name == "BFloat16Storage" else np.dtype(_TORCH_DTYPES[type_name]).itemsize
    if len(raw) % itemsize or type(numel) is not int or len(raw) // itemsize < numel:
        raise WeightLoadError(f"{path}: the storage {member} has {len(raw)} bytes, which do not hold {numel!r} "
                              f"elements of {itemsize} bytes. The file is truncated or corrupt; download it again.")
    if type_name == "BFloat16Storage":
        u16 = np.frombuffer(raw, dtype=np.uint16)
        return _Storage((u16.astype(np.uint32) << 16).view(np.float32), member)
    return _Storage(np.frombuffer(raw, dtype=_TORCH_DTYPES[type_name]), member)
