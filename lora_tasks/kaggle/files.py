"""Small file helpers of the Kaggle layer: atomic JSON writes, a streamed sha256, unique temp
names, a named exclusive lock and an atomic swap of two folders.

Why atomic with a unique temp name: state files (download manifests, submission intents) are
read by later runs and possibly written by two runs at once; a fixed temp name would let one
writer rename the other's half-written file into place. Why the swap: a data folder replaced
by two renames is missing in between, and a reader (another run's prepare step) would fail.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import os
import secrets
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def unique_name(prefix: str, suffix: str = "") -> str:
    """``<prefix>.<pid>.<random><suffix>``: a name no other process or thread will pick."""
    return f"{prefix}.{os.getpid()}.{secrets.token_hex(4)}{suffix}"


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` to ``path`` through a unique temp file (pid + random) and a rename."""
    tmp = path.with_name(unique_name(f".{path.name}", ".tmp"))
    try:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when it is missing or unreadable (state is advisory)."""
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def lock_dir() -> Path:
    """This user's private folder of lock files in the system temp dir (created 0700).

    Why outside the data folder: the data folder holds only competition folders (the fake
    server and users list it), and a lock file must never be deleted while in use, so it
    cannot be cleaned up next to the data either.
    """
    folder = Path(tempfile.gettempdir()) / f"kaggle-lora-locks-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise PermissionError(
            f"lock folder {folder} is not a private folder of this user (a symlink, someone else's, "
            "or writable by others); remove it or point TMPDIR at a private folder."
        )
    return folder


@contextlib.contextmanager
def exclusive_lock(name: str, waiting_message: str = "") -> Iterator[Path]:
    """Hold an exclusive ``fcntl.flock`` on the lock file ``name`` for the ``with`` block.

    Blocks until the lock is free (logging ``waiting_message`` once when it has to wait). The
    kernel drops the lock when the process dies, so a killed run never leaves it held. The file
    stays in place on purpose: unlinking a lock file lets a third process lock a new inode.
    """
    path = lock_dir() / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting_message:
                logger.info("%s (lock file %s, released when that run ends)", waiting_message, path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        os.close(fd)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # Linux renameat2 flag
_RENAME_SWAP = 2  # macOS renamex_np flag
_UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, getattr(errno, "ENOTSUP", errno.EINVAL), getattr(errno, "EOPNOTSUPP", errno.EINVAL)}


def _native_exchange() -> Callable[[bytes, bytes], int] | None:
    """The C call that swaps two paths in one step (Linux ``renameat2``, macOS ``renamex_np``)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    if sys.platform.startswith("linux"):
        renameat2 = getattr(libc, "renameat2", None)
        if renameat2 is not None:
            renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            renameat2.restype = ctypes.c_int
            return lambda a, b: renameat2(_AT_FDCWD, a, _AT_FDCWD, b, _RENAME_EXCHANGE)
    elif sys.platform == "darwin":
        renamex_np = getattr(libc, "renamex_np", None)
        if renamex_np is not None:
            renamex_np.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
            renamex_np.restype = ctypes.c_int
            return lambda a, b: renamex_np(a, b, _RENAME_SWAP)
    return None


_EXCHANGE = _native_exchange()


def exchange_paths(first: Path, second: Path) -> bool:
    """Swap two existing paths (folders included) in one atomic step; False when unsupported.

    Why: a reader of ``second`` then sees either the old or the new folder, never none. False
    means this platform or file system has no such call (the caller falls back to renames);
    any other failure raises ``OSError`` naming both paths.
    """
    if _EXCHANGE is None:
        return False
    if _EXCHANGE(os.fsencode(first), os.fsencode(second)) == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, f"swapping {first} and {second} failed: {os.strerror(code)}", str(first))
