"""Issue 35 item 8 (disk full): a write that fails for lack of space names the file, the space it
needed and the space free, and leaves no half file behind.

The real test fills a tiny tmpfs (mounted in a private mount namespace: ``unshare -rm``, or as
root), so MLX's and numpy's own writers hit ENOSPC; the injected one makes numpy's writer raise
ENOSPC, and runs everywhere."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lora_tasks.diskspace import DiskFullError, human_bytes, writing
from lora_tasks.steps import store

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import lora_tasks
import mlx.core as mx
import numpy as np
from lora_tasks.diskspace import DiskFullError
from lora_tasks.lora import LoRAConfig, apply_lora
from lora_tasks.steps.store import save_array
from lora_tasks.training.checkpoints import atomic_save
from _tiny import tiny_model

root = Path(sys.argv[1])
(root / "filler").write_bytes(b"x" * (60 * 1024))  # the 64 KiB disk keeps about 4 KiB free
out = {{}}
model = tiny_model()
adapter = apply_lora(model, LoRAConfig(r=16, target_modules=("query", "key", "value", "dense")))
tries = {{
    "adapter": lambda: adapter.save(root / "adapter.safetensors"),
    "checkpoint": lambda: atomic_save(root / "ckpt" / "checkpoint.safetensors", {{"w": mx.ones((64, 64))}}),
    "array": lambda: save_array(np.ones((64, 64), dtype=np.float32), root / "out", "oof"),
}}
for name, write in tries.items():
    try:
        write()
        out[name] = "written"
    except DiskFullError as exc:
        out[name] = {{"message": str(exc), "needed": exc.needed, "free": exc.free, "filename": exc.filename}}
    except Exception as exc:
        out[name] = f"{{type(exc).__name__}}: {{exc}}"
out["left"] = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
print(json.dumps(out))
"""


def _run_on_tiny_disk(tmp_path: Path) -> dict | None:
    """The child on a 64 KiB tmpfs; None when this machine cannot mount one."""
    mount = tmp_path / "tiny-disk"
    mount.mkdir()
    code = CHILD.format(tests=str(REPO / "tests"))
    script = 'mount -t tmpfs -o size=64k tmpfs "$1" && exec "$2" -c "$3" "$1"'
    for prefix in (["unshare", "-rm"], ["unshare", "-m"]):
        if shutil.which(prefix[0]) is None:
            return None
        done = subprocess.run([*prefix, "sh", "-c", script, "sh", str(mount), sys.executable, code],
                              capture_output=True, text=True, timeout=300, cwd=REPO)
        if done.returncode == 0:
            return json.loads(done.stdout.strip().splitlines()[-1])
        if "mount" not in done.stderr and "unshare" not in done.stderr:
            raise AssertionError(done.stderr[-3000:])
    return None


def test_a_full_disk_names_the_file_and_the_space(tmp_path):
    got = _run_on_tiny_disk(tmp_path)
    if got is None:
        pytest.skip("cannot mount a tmpfs here (no unshare -rm and not root)")
    for name, file in (("adapter", "adapter.safetensors"), ("checkpoint", "checkpoint.safetensors"),
                       ("array", "oof-<content hash>.npy")):
        result = got[name]
        assert isinstance(result, dict), f"{name}: {result}"
        assert file in result["message"] and "No space left to write" in result["message"]
        assert result["needed"] and result["needed"] > result["free"] >= 0
        assert f"needs about {human_bytes(result['needed'])}" in result["message"]
        assert "--work-dir" in result["message"]
    assert got["left"] == ["filler"], "no half-written file is left on the full disk"


def test_enospc_from_numpy_becomes_a_disk_full_error_naming_the_file(tmp_path, monkeypatch):
    def full_disk(fh, array, allow_pickle=False):  # numpy's writer, on a disk with no room
        fh.write(b"\x93NUMPY")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full_disk)
    with pytest.raises(DiskFullError) as err:
        store.save_array(np.zeros(1000, dtype=np.float32), tmp_path / "out", "test")
    message = str(err.value)
    assert str(tmp_path / "out" / "test-<content hash>.npy") in message
    assert "needs about 3.9 KiB" in message and "is free there" in message
    assert err.value.errno == errno.ENOSPC and isinstance(err.value, OSError)
    assert list((tmp_path / "out").iterdir()) == [], "the temp file is removed"


def test_other_write_errors_pass_through_unchanged(tmp_path):
    with pytest.raises(PermissionError):
        with writing(tmp_path / "x"):
            raise PermissionError(errno.EACCES, "Permission denied")
    with pytest.raises(OSError, match=r"Cannot write .*x.*the disk has .* free"):
        with writing(tmp_path / "x", needed=10):  # MLX's words, but the disk has room: not space
            raise RuntimeError("[write] Unable to write 10 bytes to file.")
