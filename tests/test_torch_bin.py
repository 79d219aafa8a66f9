"""The ``pytorch_model.bin`` reader refuses crafted files: hand-written pickles whose tensors
claim more elements than their storage holds give a clear error, never an out-of-bounds read or
a crash."""

from __future__ import annotations

import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lora_tasks.torch_bin import WeightLoadError, load_torch_bin

# ---- a PyTorch zip checkpoint written by hand (protocol-2 pickle opcodes, no torch needed) ------


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _int(value: int) -> bytes:
    if -(1 << 31) <= value < (1 << 31):
        return b"J" + struct.pack("<i", value)
    return b"\x8a\x08" + struct.pack("<q", value)  # LONG1, 8 bytes


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _ordered_dict() -> bytes:
    return _global("collections", "OrderedDict") + b")R"


def tensor(key: str, offset: int, size: tuple[int, ...], stride: tuple[int, ...], *, numel: int = 4,
           storage_type: str = "FloatStorage") -> bytes:
    """``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())``."""
    storage = _tuple(_str("storage"), _global("torch", storage_type), _str(key), _str("cpu"), _int(numel)) + b"Q"
    args = _tuple(storage, _int(offset), _tuple(*map(_int, size)), _tuple(*map(_int, stride)), b"\x89", _ordered_dict())
    return _global("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def write_bin(path: Path, tensors: dict[str, bytes], storages: dict[str, bytes], *, state: bytes | None = None) -> Path:
    items = b"".join(_str(name) + body for name, body in tensors.items())
    pickled = b"\x80\x02" + (state if state is not None else _ordered_dict() + b"(" + items + b"u") + b"."
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickled)
        for key, raw in storages.items():
            zf.writestr(f"archive/data/{key}", raw)
    return path


FOUR_FLOATS = np.arange(1, 5, dtype=np.float32).tobytes()


def test_a_hand_written_file_loads_to_the_right_arrays(tmp_path):
    path = write_bin(tmp_path / "ok.bin", {
        "w": tensor("0", 0, (2, 2), (2, 1)),
        "wt": tensor("0", 0, (2, 2), (1, 2)),
        "tail": tensor("0", 2, (2,), (1,)),
        "scalar": tensor("0", 3, (), ()),
        "empty": tensor("0", 0, (0, 3), (3, 1)),
    }, {"0": FOUR_FLOATS})
    state = load_torch_bin(path)
    np.testing.assert_array_equal(state["w"], [[1, 2], [3, 4]])
    np.testing.assert_array_equal(state["wt"], [[1, 3], [2, 4]])
    np.testing.assert_array_equal(state["tail"], [3, 4])
    assert state["scalar"].shape == () and state["scalar"] == 4
    assert state["empty"].shape == (0, 3)


@pytest.mark.parametrize("offset, size, stride, words", [
    (0, (128, 128), (128, 1), "past the end of its storage"),  # 16,384 floats from 4
    (3, (2,), (1,), "past the end of its storage"),  # one element past the end
    (0, (2, 2), (1 << 40, 1), "past the end of its storage"),  # a stride far outside the heap
    (-2, (2,), (1,), "storage offset is -2"),
    (0, (2, 2), (-1, 1), "negative entry"),
    (0, (2, 2), (2,), "another number of dimensions"),
    (0, (1 << 20, 1 << 20), (0, 0), "more than any checkpoint holds"),  # stride 0: a 4 TiB allocation
])
def test_a_tensor_outside_its_storage_is_refused(tmp_path, offset, size, stride, words):
    path = write_bin(tmp_path / "bad.bin", {"w": tensor("0", offset, size, stride)}, {"0": FOUR_FLOATS})
    with pytest.raises(WeightLoadError, match=words) as err:
        load_torch_bin(path)
    assert str(path) in str(err.value)


def test_a_storage_shorter_than_it_claims_is_refused(tmp_path):
    path = write_bin(tmp_path / "short.bin", {"w": tensor("0", 0, (4,), (1,), numel=8)}, {"0": FOUR_FLOATS})
    with pytest.raises(WeightLoadError, match="do not hold 8 elements"):
        load_torch_bin(path)
    odd = write_bin(tmp_path / "odd.bin", {"w": tensor("0", 0, (1,), (1,), numel=1)}, {"0": b"\x00\x00\x80"})
    with pytest.raises(WeightLoadError, match="truncated or corrupt"):
        load_torch_bin(odd)
    missing = write_bin(tmp_path / "missing.bin", {"w": tensor("7", 0, (1,), (1,))}, {"0": FOUR_FLOATS})
    with pytest.raises(WeightLoadError, match="archive/data/7 named in data.pkl is not in the file"):
        load_torch_bin(missing)


def test_a_tensor_on_something_other_than_a_storage_is_refused(tmp_path):
    fake_storage = _tuple(_tuple(_int(1), _int(2)), _str("x"))  # a plain tuple where the storage goes
    body = _global("torch._utils", "_rebuild_tensor_v2") + _tuple(fake_storage, _int(0), _tuple(_int(2)), _tuple(_int(1)),
                                                                    b"\x89", _ordered_dict()) + b"R"
    path = write_bin(tmp_path / "fake.bin", {"w": body}, {})
    with pytest.raises(WeightLoadError, match="not on a storage of the file"):
        load_torch_bin(path)


def test_code_and_non_state_dicts_are_refused(tmp_path):
    system = _global("os", "system") + _tuple(_str("echo pwned")) + b"R"
    with pytest.raises(WeightLoadError, match="unsupported object os.system"):
        load_torch_bin(write_bin(tmp_path / "rce.bin", {}, {}, state=system))
    with pytest.raises(WeightLoadError, match="does not hold a state_dict"):
        load_torch_bin(write_bin(tmp_path / "list.bin", {}, {}, state=b"]"))
    with pytest.raises(WeightLoadError, match="data.pkl cannot be read"):
        load_torch_bin(write_bin(tmp_path / "junk.bin", {}, {}, state=b"\xff"))


def test_a_crafted_file_never_crashes_the_process(tmp_path):
    """The file that read far outside the heap: in a child process, so a crash would show as a
    signal exit code instead of killing the test run."""
    path = write_bin(tmp_path / "crash.bin", {"w": tensor("0", 1 << 40, (1024, 1024), (1 << 30, 1 << 20))},
                     {"0": FOUR_FLOATS})
    code = ("import sys\nfrom lora_tasks.torch_bin import WeightLoadError, load_torch_bin\n"
            "try:\n    load_torch_bin(sys.argv[1])\nexcept WeightLoadError as exc:\n    print(exc)\n    sys.exit(3)\n")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, (done.returncode, done.stderr[-2000:])
    assert "past the end of its storage" in done.stdout
