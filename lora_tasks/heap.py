"""Keep freed memory in the process's heap on a Linux CPU, so the next batch's buffers reuse pages
that are already mapped instead of faulting fresh ones in.

Why: MLX's buffer cache hands a freed buffer back only for a request of nearly its size (within
two pages). Batches cut to their longest row change size from one step to the next, so the cache
misses, and each miss is a new allocation. glibc serves a large one (over its mmap threshold, at
most 32 MB) with its own ``mmap`` and unmaps it when it is freed, so every step faulted its
activations in as fresh zeroed pages. On MiniLM at 300-500 tokens a row that made a train epoch
and the frozen-prefix pass about 1.6-2x slower than the same shapes repeated, which is what the
cost probe times (``docs/performance.md``, "Memory between batches").

With ``mmap`` off for the heap, one arena for every thread (Prefect runs tasks in worker threads,
whose own arenas would ``mmap`` anything over 64 MB) and no trimming of the heap's top, a freed
block stays mapped and glibc's free lists serve the next batch's sizes from it.

The cost: the process keeps its peak heap mapped until it exits, as MLX's buffer cache already
keeps a train step's peak (:mod:`lora_tasks.training.step_memory`). A run reaches that peak
anyway, every step. Set ``KAGGLE_LORA_HEAP=default`` (``keep``, the default, applies them), or any of glibc's own ``MALLOC_*``
variables or ``GLIBC_TUNABLES``, to keep glibc's defaults (your settings win). Other C libraries
(musl) and macOS are left alone: on Metal, MLX's buffers are not malloc's.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from dataclasses import dataclass

ENV_VAR = "KAGGLE_LORA_HEAP"
#: glibc's variables for the same settings: when the user set one, their choice stands.
GLIBC_VARS = ("GLIBC_TUNABLES", "MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_",
              "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")

# mallopt's parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX, M_ARENA_MAX = -1, -2, -4, -8
#: Free memory at the heap's top that glibc may give back: the most an int says (2 GiB), so a
#: step's activations are never handed back between steps.
TRIM_THRESHOLD = 2**31 - 1
#: How much more than asked the heap grows by each time: fewer ``brk`` calls while a run warms up.
TOP_PAD = 64 << 20


@dataclass(frozen=True)
class HeapInfo:
    """Whether freed memory stays in this process's heap, and why (or why not)."""

    kept: bool
    reason: str

    def summary(self) -> str:
        return f"Heap: {'freed memory stays mapped' if self.kept else 'glibc defaults'} ({self.reason})"


_INFO: HeapInfo | None = None


def _libc() -> ctypes.CDLL | None:
    """glibc, or None where the C library has no ``mallopt`` (musl, macOS)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt  # noqa: B018 - raises AttributeError off glibc
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory() -> HeapInfo:
    """Apply the heap settings once (idempotent); call before threads start allocating."""
    global _INFO
    if _INFO is not None:
        return _INFO
    choice = os.environ.get(ENV_VAR, "keep").strip().lower() or "keep"
    if choice != "keep":
        why = "" if choice == "default" else " (neither keep nor default: glibc's defaults, the safe side)"
        _INFO = HeapInfo(False, f"{ENV_VAR}={os.environ[ENV_VAR]}{why}")
        return _INFO
    theirs = [v for v in GLIBC_VARS if os.environ.get(v)]
    if theirs:
        _INFO = HeapInfo(False, f"{', '.join(theirs)} set: glibc's settings as given")
        return _INFO
    libc = _libc()
    if libc is None:
        _INFO = HeapInfo(False, "not glibc on Linux")
        return _INFO
    done = [libc.mallopt(M_ARENA_MAX, 1), libc.mallopt(M_MMAP_MAX, 0),
            libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD), libc.mallopt(M_TOP_PAD, TOP_PAD)]
    if not all(done):  # mallopt returns 1 on success
        _INFO = HeapInfo(False, f"mallopt refused a setting ({done})")
        return _INFO
    _INFO = HeapInfo(True, f"glibc: one arena, no mmap, no trim; {ENV_VAR}=default keeps glibc's defaults")
    return _INFO


def heap_info() -> HeapInfo:
    """What :func:`keep_freed_memory` decided for this process."""
    return keep_freed_memory()


__all__ = ["HeapInfo", "heap_info", "keep_freed_memory"]
