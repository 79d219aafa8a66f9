"""Which compute backend MLX runs on, and the CPU-only speed set-up that goes with it.

Why this module exists: the Linux wheel of MLX (``mlx[cpu]``) links a bundled *reference* BLAS,
so an fp32 GEMM runs at ~6 GFLOP/s. Loading an optimized BLAS with ``RTLD_GLOBAL`` *before*
``mlx.core`` is first imported puts its ``cblas_sgemm`` ahead of the bundled one in the dynamic
linker's global scope, and MLX's GEMMs then run at 100-190 GFLOP/s. ``lora_tasks/__init__.py``
calls :func:`configure` before anything imports MLX.

Every CPU-only trick of the project sits behind :func:`is_cpu_backend` so that the same code runs
unchanged on Apple silicon, where MLX uses Metal and Accelerate.

Provider order (first found wins):

1. ``KAGGLE_LORA_BLAS``: a path to a shared library, or ``mkl`` / ``openblas`` to force a
   provider, or ``none`` to keep MLX's bundled BLAS.
2. OpenBLAS from PyPI (``scipy-openblas32``, a dependency on Linux). Its symbols carry a
   ``scipy_`` prefix, so a three-line C shim exporting ``cblas_sgemm`` is compiled once (~0.1 s,
   cached) and preloaded. Measured at MiniLM's shapes on a 2-core AMD EPYC (AVX2), fp32 GEMM
   2048x384 @ 384x1536: 126-148 GFLOP/s against MKL's 75-80, and the LoRA train step 0.98x of
   PyTorch+PEFT against 0.82x with MKL (same runs, alternating).
3. Intel MKL installed in the running Python environment (PyPI ``mkl``, a dependency of this
   package on Linux x86_64): ``<prefix>/lib/libmkl_rt.so*``. Used when no C compiler exists.
4. A system OpenBLAS (Debian ``libopenblas0-pthread``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import hashlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("lora_tasks")

ENV_VAR = "KAGGLE_LORA_BLAS"
FIX_HINT = (
    "Install `scipy-openblas32` and a C compiler (gcc), or Intel MKL (`pip install mkl`) into this "
    "environment, or a system OpenBLAS "
    "(`apt-get install libopenblas0-pthread`), or point KAGGLE_LORA_BLAS at a BLAS shared library."
)

_OPENBLAS_GLOBS = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas*.so*",
    "/usr/lib/x86_64-linux-gnu/libopenblas*.so*",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas*.so*",
    "/usr/lib/aarch64-linux-gnu/libopenblas*.so*",
    "/usr/lib64/libopenblas*.so*",
    "/usr/lib/libopenblas*.so*",
)


@dataclass(frozen=True)
class BlasInfo:
    """What serves MLX's matrix multiplications in this process."""

    provider: str  # "mkl", "openblas", "custom", "bundled-reference", "metal/accelerate"
    path: str | None  # library file that was preloaded, if any
    reason: str  # why this provider was chosen, or why none was
    tried: tuple[str, ...] = field(default_factory=tuple)

    @property
    def fast(self) -> bool:
        return self.provider != "bundled-reference"

    def summary(self) -> str:
        where = f" ({self.path})" if self.path else ""
        return f"BLAS: {self.provider}{where}: {self.reason}"


_INFO: BlasInfo | None = None


def is_cpu_backend() -> bool:
    """True where MLX computes on the CPU: Linux (the ``mlx[cpu]`` wheel) or no Metal device.

    This is the one check behind which every CPU-only trick lives (BLAS preload, compiler flags
    for ``mx.compile``, dequantize-then-GEMM for 4-bit weights).
    """
    if sys.platform != "darwin":
        return True
    if "mlx.core" in sys.modules:
        import mlx.core as mx

        return not mx.metal.is_available()
    return False


def _mkl_candidates() -> list[str]:
    prefixes = {sys.prefix, sys.base_prefix, os.environ.get("CONDA_PREFIX", "")}
    found: list[str] = []
    for prefix in filter(None, prefixes):
        found += sorted(glob.glob(os.path.join(prefix, "lib", "libmkl_rt.so*")), reverse=True)
    return found


def _openblas_candidates() -> list[str]:
    found: list[str] = []
    for pattern in _OPENBLAS_GLOBS:
        found += sorted(glob.glob(pattern))
    name = ctypes.util.find_library("openblas")
    if name:
        found.append(name)
    return found


_SGEMM_SHIM = """\
/* kaggle-lora: cblas_sgemm for MLX, served by PyPI's scipy-openblas32 (whose symbols are prefixed) */
extern void scipy_cblas_sgemm(int, int, int, int, int, int, float, const float*, int,
                              const float*, int, float, float*, int);
void cblas_sgemm(int order, int ta, int tb, int m, int n, int k, float alpha, const float* a,
                 int lda, const float* b, int ldb, float beta, float* c, int ldc) {
  scipy_cblas_sgemm(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
"""


def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kaggle-lora"


def _scipy_openblas_candidates() -> list[str]:
    """The cblas_sgemm shim over PyPI's OpenBLAS, compiled on first use (empty when impossible)."""
    spec = importlib.util.find_spec("scipy_openblas32")
    if spec is None or not spec.submodule_search_locations:
        return []
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib" / "libscipy_openblas.so"
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not lib.exists() or compiler is None:
        log.debug("no OpenBLAS shim: library %s exists=%s, C compiler %s", lib, lib.exists(), compiler)
        return []
    stat = lib.stat()
    fingerprint = f"{_SGEMM_SHIM}\0{lib.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}"
    key = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    shim = _cache_root() / "blas" / f"libkaggle_lora_sgemm_{key}.so"
    if shim.exists():
        return [str(shim)]
    try:
        shim.parent.mkdir(parents=True, exist_ok=True)
        src = shim.with_name(f"{shim.stem}.{os.getpid()}.c")
        tmp = shim.with_name(f"{shim.name}.tmp{os.getpid()}")
        src.write_text(_SGEMM_SHIM)
        cmd = [compiler, "-O2", "-shared", "-fPIC", str(src), "-o", str(tmp),
               f"-L{lib.parent}", "-lscipy_openblas", f"-Wl,-rpath,{lib.parent}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        src.unlink(missing_ok=True)
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            log.debug("OpenBLAS shim did not compile: %s", proc.stderr.strip()[-500:])
            return []
        tmp.replace(shim)  # atomic: a concurrent process sees the whole file or none
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("no OpenBLAS shim: %s", exc)
        return []
    return [str(shim)]


#: OpenBLAS's idle workers spin 2**N cycles before they sleep (N=28 by default: ~0.1 s). Between
#: GEMMs the native kernels' threads and MLX's stream thread need that core: with the default the
#: spinning worker took it from them, and the LoRA train step (MiniLM, batch 32, seq 64) ran at
#: 25-27 samples/s; with N=6, 29-33 (alternating runs, same process settings otherwise). A value
#: the user sets is kept.
OPENBLAS_SPIN = 6


def _preload(path: str, provider: str) -> None:
    if provider == "openblas":
        os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", str(OPENBLAS_SPIN))  # read when the library loads
    # No KMP_BLOCKTIME=0 for MKL: it makes MKL's threads sleep after every call, and MLX's
    # batched attention matmuls (hundreds of tiny GEMMs) became 15x slower (35 ms against 2 ms).
    ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)


def _choose() -> BlasInfo:
    tried: list[str] = []
    override = os.environ.get(ENV_VAR, "").strip()
    if override.lower() in {"none", "off", "0", "bundled"}:
        return BlasInfo("bundled-reference", None, f"{ENV_VAR}={override} keeps MLX's bundled BLAS")
    if override and override.lower() not in {"mkl", "openblas"}:
        if not Path(override).exists():
            raise RuntimeError(
                f"{ENV_VAR}={override!r} names no file. Set it to a BLAS shared library "
                "(e.g. /usr/lib/x86_64-linux-gnu/libopenblas.so.0), to 'mkl', 'openblas' or 'none'."
            )
        _preload(override, "custom")
        return BlasInfo("custom", override, f"forced by {ENV_VAR}", (override,))

    order = ["scipy-openblas", "mkl", "openblas"]
    if override:
        order = ["scipy-openblas", "openblas"] if override.lower() == "openblas" else [override.lower()]
    finders = {"scipy-openblas": _scipy_openblas_candidates, "mkl": _mkl_candidates, "openblas": _openblas_candidates}
    for source in order:
        provider = "mkl" if source == "mkl" else "openblas"
        for path in finders[source]():
            tried.append(path)
            try:
                _preload(path, provider)
            except OSError as exc:  # broken install: try the next one
                log.debug("could not load %s: %s", path, exc)
                continue
            why = f"forced by {ENV_VAR}" if override else "best provider found"
            if source == "scipy-openblas":
                why += " (PyPI scipy-openblas32 through a cblas_sgemm shim)"
            if provider == "openblas":
                why += f"; idle workers spin 2^{os.environ['OPENBLAS_THREAD_TIMEOUT']} cycles (OPENBLAS_THREAD_TIMEOUT)"
            return BlasInfo(provider, path, why, tuple(tried))
    return BlasInfo(
        "bundled-reference",
        None,
        "no optimized BLAS found; fp32 GEMM runs ~30x slower. " + FIX_HINT,
        tuple(tried),
    )


def _install_native_compiler_flags() -> None:
    """Make ``mx.compile``'s CPU kernels use this CPU's vector units.

    MLX compiles fused CPU kernels by shelling out to ``g++ -O3`` without ``-march``; a tiny
    ``g++`` wrapper on PATH that adds ``-march=native`` made GELU 3.4x and a compiled train step
    36-45% faster on this machine. Opt out with ``KAGGLE_LORA_NATIVE_CXX=0``.
    """
    if os.environ.get("KAGGLE_LORA_NATIVE_CXX", "1") == "0":
        return
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kaggle-lora" / "cxx"
    # the real compiler: search PATH without our own folder (a child process inherits it)
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and Path(d).resolve() != cache.resolve()]
    real = shutil.which("g++", path=os.pathsep.join(dirs))
    if real is None:
        return
    try:
        cache.mkdir(parents=True, exist_ok=True)
        wrapper = cache / "g++"
        script = f'#!/bin/sh\n# kaggle-lora: add -march=native to MLX JIT builds\nexec "{real}" -march=native "$@"\n'
        if not wrapper.exists() or wrapper.read_text() != script:
            tmp = wrapper.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(script)
            tmp.chmod(0o755)
            tmp.replace(wrapper)
    except OSError as exc:
        log.debug("no native compiler wrapper: %s", exc)
        return
    os.environ["PATH"] = os.pathsep.join([str(cache), *dirs])


def configure() -> BlasInfo:
    """Set up the fastest BLAS for MLX; idempotent. Must run before ``import mlx.core``."""
    global _INFO
    if _INFO is not None:
        return _INFO
    if not is_cpu_backend():
        _INFO = BlasInfo("metal/accelerate", None, "MLX uses Metal and Accelerate on this machine")
        return _INFO
    if "mlx.core" in sys.modules:
        _INFO = BlasInfo(
            "bundled-reference",
            None,
            "mlx.core was imported before lora_tasks, too late to interpose a BLAS. "
            "Import lora_tasks first.",
        )
        log.warning(_INFO.summary())
        return _INFO
    _INFO = _choose()
    _install_native_compiler_flags()
    if not _INFO.fast:
        log.warning(_INFO.summary())
    return _INFO


def blas_info() -> BlasInfo:
    """The BLAS provider serving MLX's GEMMs in this process."""
    return configure()


def sgemm_library() -> str | None:
    """The file of the library whose ``cblas_sgemm`` the dynamic linker resolves globally.

    This is the symbol MLX's GEMM binds to when an optimized BLAS was preloaded; ``None`` when
    no globally visible library exports it (MLX then uses its bundled, privately loaded BLAS).
    """

    class _DlInfo(ctypes.Structure):
        _fields_ = [
            ("dli_fname", ctypes.c_char_p),
            ("dli_fbase", ctypes.c_void_p),
            ("dli_sname", ctypes.c_char_p),
            ("dli_saddr", ctypes.c_void_p),
        ]

    try:
        sym = ctypes.CDLL(None).cblas_sgemm
    except AttributeError:
        return None
    info = _DlInfo()
    libdl = ctypes.CDLL(ctypes.util.find_library("dl") or "libdl.so.2")
    if not libdl.dladdr(ctypes.cast(sym, ctypes.c_void_p), ctypes.byref(info)):
        return None
    return os.path.realpath(info.dli_fname.decode())
