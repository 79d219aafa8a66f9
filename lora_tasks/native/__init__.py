"""Native CPU kernels for MLX: GELU, softmax, LayerNorm, dropout, attention and a bf16 GEMM as threaded primitives.

Why: on MLX's CPU backend the element-wise part of a BERT train step ran on one thread in scalar
loops, and measured as slow as the GEMMs it sits between. :mod:`lora_tasks.models.ops` uses
these kernels on the CPU when they build, and MLX's own ops otherwise (Metal, no compiler, or
``KAGGLE_LORA_NATIVE_KERNELS=0``); either way the math is the same to ~1e-6.

The bf16 GEMM (``bf16_gemm.h``, for a frozen base stored in bf16, see
:mod:`lora_tasks.training.precision`) picks its micro-kernel at run time from cpuid: AVX512-BF16's
``vdpbf16ps`` where the CPU and OS support it, a portable one elsewhere; ``NativeInfo.bf16_kernel``
names the choice.

:func:`kernels` builds (once per machine, ~15 s, cached) and loads the extension on first use;
:func:`native_info` says what happened, and ``kaggle-lora blas`` prints it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import dataclass
from types import ModuleType

from lora_tasks.backend import blas_info, is_cpu_backend
from lora_tasks.native.builder import (
    NativeBuildError,
    Toolchain,
    build,
    cache_dir,
    find_toolchain,
    load,
)

log = logging.getLogger("lora_tasks")

ENV_VAR = "KAGGLE_LORA_NATIVE_KERNELS"


@dataclass(frozen=True)
class NativeInfo:
    """Whether the native kernels serve this process, and why (not)."""

    loaded: bool
    reason: str
    path: str | None = None
    threading: str | None = None
    threads: int | None = None
    bf16_kernel: str | None = None  # the bf16 GEMM micro-kernel cpuid selects: "avx512bf16" or "portable"

    def summary(self) -> str:
        if self.loaded:
            return (f"CPU kernels: native ({self.threading}, {self.threads} threads, bf16 GEMM {self.bf16_kernel}): "
                    f"{self.path}")
        return f"CPU kernels: MLX ops ({self.reason})"


_lock = threading.Lock()
_state: tuple[ModuleType | None, NativeInfo] | None = None


def _resolve() -> tuple[ModuleType | None, NativeInfo]:
    if os.environ.get(ENV_VAR, "1") == "0":
        return None, NativeInfo(False, f"{ENV_VAR}=0")
    if not is_cpu_backend():
        return None, NativeInfo(False, "not needed: MLX runs on Metal here")
    if not sys.platform.startswith("linux"):
        return None, NativeInfo(False, "native kernels are built on Linux only")
    try:
        tc = find_toolchain(blas_info().path)
        path, name, built = build(tc) if _cached(tc) else _build_with_notice(tc)
        module = load(path, name)
    except NativeBuildError as exc:
        log.warning("kaggle-lora native CPU kernels unavailable, using MLX ops (slower): %s", exc)
        return None, NativeInfo(False, str(exc).splitlines()[0])
    return module, NativeInfo(True, "built" if built else "cached", str(path), module.threading, module.threads(),
                              module.bf16_kernel())


def _cached(tc: Toolchain) -> bool:
    return any(cache_dir().glob(f"_kaggle_lora_kernels_{tc.fingerprint()}*.so"))


def _build_with_notice(tc: Toolchain) -> tuple:
    log.warning("compiling kaggle-lora's native CPU kernels for this machine (once, ~15-30 s)...")
    return build(tc)


def kernels() -> ModuleType | None:
    """The loaded extension, or ``None`` when MLX's own ops are to be used. Never raises."""
    global _state
    if _state is None:
        with _lock:
            if _state is None:
                _state = _resolve()
    return _state[0]


def native_info() -> NativeInfo:
    kernels()
    assert _state is not None
    return _state[1]


__all__ = ["ENV_VAR", "NativeBuildError", "NativeInfo", "kernels", "native_info"]
