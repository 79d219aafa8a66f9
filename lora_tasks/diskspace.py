"""A write that fails for lack of space says which file, how much it needed and how much is free.

Why: MLX reports a full disk as "[write] Unable to write 2101363 bytes to file." and Python as
"[Errno 28] No space left on device", neither naming the file nor the folder to clean up. Every
writer of large files (adapters, checkpoints, token and prefix caches, step outputs) wraps its
write in :func:`writing`, which turns those errors into a :class:`DiskFullError` that names the
file, the space it needed, the space free there, and what to do. No MLX import here: the data
layer and the adapter library use it too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

#: errno values that mean "no room": the disk is full, or the user's quota is used up.
NO_SPACE = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
#: How MLX words a failed write (its C++ writer reports no errno).
MLX_WRITE_FAILED = "Unable to write"
#: How numpy words a short write (``ndarray.tofile``: no errno either).
SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")


class DiskFullError(OSError):
    """No room to write a file; the message names the file, the space needed and free, and the fix."""

    def __init__(self, path: str | os.PathLike, needed: int | None, free: int | None, cause: str) -> None:
        self.needed, self.free = needed, free
        need = f"about {human_bytes(needed)}" if needed else "more space"
        have = f"{human_bytes(free)} is free there" if free is not None else "the free space is unknown"
        message = (f"No space left to write {path}: it needs {need} and {have} ({cause}). Free some disk space "
                   "(old work dirs, ~/.cache/kaggle-lora) or point --work-dir / --data-dir at a disk with room, "
                   "then run again: the finished steps and checkpoints are kept and the rerun resumes from them.")
        super().__init__(errno.ENOSPC, message, str(path))

    def __str__(self) -> str:  # OSError's default adds "[Errno 28]" and the file name twice
        return str(self.strerror)


def human_bytes(n: int | None) -> str:
    """``2101363`` -> ``"2.0 MiB"``."""
    if n is None:
        return "?"
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover - the loop returns


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free space on the file system that holds ``path`` (its nearest existing folder)."""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def array_bytes(arrays: Iterable[Any]) -> int:
    """The bytes of the arrays a file will hold (MLX or numpy: anything with ``nbytes``)."""
    return sum(int(getattr(a, "nbytes", 0)) for a in arrays)


def _no_space(exc: BaseException) -> str | None:
    """``"certain"``: the OS said so (ENOSPC, EDQUOT); ``"likely"``: a writer that reports no errno
    stopped short (MLX's "Unable to write", numpy's "4096 requested and 992 written"); else None."""
    if isinstance(exc, OSError) and exc.errno in NO_SPACE:
        return "certain"
    text = str(exc)
    if isinstance(exc, RuntimeError) and MLX_WRITE_FAILED in text:
        return "likely"
    if isinstance(exc, OSError) and exc.errno is None and SHORT_WRITE.search(text):
        return "likely"
    return None


@contextlib.contextmanager
def writing(path: str | os.PathLike, needed: int | None = None, partial: str | os.PathLike | None = None) -> Iterator[None]:
    """Run a write of ``path`` (``needed``: its size, if known); a failure for lack of space becomes
    a :class:`DiskFullError` naming ``path``. ``partial``: the half-written temp file, deleted
    before the free space is measured (it is the caller's to delete anyway)."""
    try:
        yield
    except DiskFullError:
        raise
    except (OSError, RuntimeError) as exc:
        kind = _no_space(exc)
        if kind is None:
            raise
        if partial is not None:
            Path(partial).unlink(missing_ok=True)
        free = free_bytes(path)
        if kind == "likely" and needed and free is not None and free > 2 * needed + (1 << 20):
            # the writer gave no errno, and with that much room the cause is not space
            raise OSError(errno.EIO, f"Cannot write {path} ({exc}); the disk has {human_bytes(free)} free, so "
                                     "check the folder's permissions and the disk itself.", str(path)) from exc
        raise DiskFullError(path, needed, free, f"{type(exc).__name__}: {exc}") from exc


__all__ = ["DiskFullError", "array_bytes", "free_bytes", "human_bytes", "writing"]
