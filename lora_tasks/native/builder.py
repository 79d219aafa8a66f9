"""Compile ``kernels.cpp`` into a Python extension once per machine, and load it.

Why at run time and not at install time: the kernels are built with ``-march=native`` for the
CPU they run on, against the exact MLX and Python in use (the extension shares MLX's nanobind
type registry, so it must match MLX's nanobind ABI). A build takes ~15 s and is cached under
``$XDG_CACHE_HOME/kaggle-lora/native`` by a hash of everything that goes into it; concurrent
processes wait on a file lock instead of compiling twice, and a build is written to a temporary
name and renamed, so a killed build never leaves a broken library behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

SOURCE = Path(__file__).with_name("kernels.cpp")
# files kernels.cpp includes: part of the fingerprint, so editing them rebuilds
HEADERS = tuple(Path(__file__).with_name(name) for name in (
    "attention.h", "bf16_gemm.h", "bf16_microkernel.inc", "bf16_weight_cache.h", "cpu_features.h", "elementwise.h",
    "lora_branch.h", "multi_primitives.h", "native_math.h", "threads.h", "unary_primitives.h", "worker_pool.h"))
FIX_HINT = (
    "install a C++ compiler and the Python headers (Debian: `apt-get install g++ python3-dev`) and "
    "`pip install nanobind`, or set KAGGLE_LORA_NATIVE_KERNELS=0 to use MLX's own ops (slower on CPU)"
)


class NativeBuildError(RuntimeError):
    """The kernels could not be built or loaded; the message names the cause and the fix."""


@dataclass(frozen=True)
class Toolchain:
    """Everything a build depends on; its fingerprint names the cached library."""

    compiler: str
    compiler_version: str
    python_include: str
    nanobind_dir: str
    nanobind_version: str
    mlx_dir: str
    mlx_version: str
    openmp_lib: str | None  # the BLAS's OpenMP runtime (MKL's libiomp5), shared with it
    cpu_flags: str
    # appended to -march=native: tests build the AVX2 variant on an AVX-512 machine with ("-mno-avx512f",)
    extra_flags: tuple[str, ...] = ()

    def flags(self, module_name: str) -> list[str]:
        nb = Path(self.nanobind_dir)
        mlx_lib = str(Path(self.mlx_dir) / "lib")
        args = [
            "-std=c++20", "-O3", "-march=native", *self.extra_flags, "-fno-trapping-math", "-fno-math-errno", "-ffp-contract=fast",
            "-fPIC", "-shared", "-fvisibility=hidden", "-DNDEBUG",
            # MLX registers its types in nanobind's "mlx" domain; joining it lets us take mx.array
            "-DNB_DOMAIN=mlx", f"-DKL_MODULE_NAME={module_name}",
            f"-I{self.python_include}", f"-I{nb / 'include'}", f"-I{nb / 'ext' / 'robin_map' / 'include'}",
            f"-I{Path(self.mlx_dir) / 'include'}",
        ]
        if self.openmp_lib:
            args += ["-DKL_OPENMP", "-fopenmp"]
        args += [str(SOURCE), str(nb / "src" / "nb_combined.cpp"), f"-L{mlx_lib}", "-lmlx", f"-Wl,-rpath,{mlx_lib}"]
        if self.openmp_lib:
            # link the BLAS's own runtime (it provides the GOMP entry points) instead of libgomp
            omp_dir = str(Path(self.openmp_lib).parent)
            args += ["-Wl,--as-needed", f"-L{omp_dir}", "-liomp5", f"-Wl,-rpath,{omp_dir}"]
        return args

    def fingerprint(self) -> str:
        h = hashlib.sha256(SOURCE.read_bytes())
        for header in HEADERS:
            h.update(b"\0" + header.read_bytes())
        for part in (self.compiler, self.compiler_version, self.python_include, self.nanobind_version,
                     self.mlx_dir, self.mlx_version, self.openmp_lib or "", self.cpu_flags,
                     sysconfig.get_config_var("EXT_SUFFIX") or "", " ".join(self.flags("m"))):
            h.update(b"\0" + part.encode())
        return h.hexdigest()[:16]


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kaggle-lora" / "native"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return hashlib.sha256(line.encode()).hexdigest()[:16]
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _openmp_runtime(blas_path: str | None) -> str | None:
    """MKL's OpenMP runtime beside the preloaded MKL, if that is the BLAS in use."""
    if not blas_path or "mkl" not in Path(blas_path).name:
        return None
    lib = Path(blas_path).parent / "libiomp5.so"
    return str(lib) if lib.exists() else None


def find_toolchain(blas_path: str | None) -> Toolchain:
    """Locate compiler, headers, nanobind and MLX; raise :class:`NativeBuildError` naming what is missing."""
    missing = [str(p) for p in (SOURCE, *HEADERS) if not p.exists()]
    if missing:
        raise NativeBuildError(f"the kernels' source files are missing from the installed package: {', '.join(missing)}; "
                               "reinstall kaggle-lora (its package data must include native/*.cpp, *.h, *.inc)")
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not compiler:
        raise NativeBuildError(f"no C++ compiler found (looked for $CXX, g++, c++); {FIX_HINT}")
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise NativeBuildError(f"the C++ compiler {compiler!r} does not run ({exc}); {FIX_HINT}") from exc
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").exists():
        raise NativeBuildError(f"the Python headers are missing (no Python.h in {include}); {FIX_HINT}")
    try:
        import nanobind
    except ImportError as exc:
        raise NativeBuildError(f"nanobind is not installed; {FIX_HINT}") from exc
    import mlx
    import mlx.core as mx

    return Toolchain(
        compiler=compiler,
        compiler_version=(version.stdout.splitlines() or [""])[0],
        python_include=include,
        nanobind_dir=str(Path(nanobind.__file__).parent),
        nanobind_version=nanobind.__version__,
        mlx_dir=str(Path(mlx.__path__[0])),
        mlx_version=mx.__version__,
        openmp_lib=_openmp_runtime(blas_path),
        cpu_flags=_cpu_flags(),
    )


def build(tc: Toolchain, directory: Path | None = None) -> tuple[Path, str, bool]:
    """The cached library for ``tc`` (compiled first if missing): (path, module name, built now)."""
    directory = directory or cache_dir()
    name = f"_kaggle_lora_kernels_{tc.fingerprint()}"
    path = directory / f"{name}{sysconfig.get_config_var('EXT_SUFFIX') or '.so'}"
    if path.exists():
        return path, name, False
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same library
        if path.exists():
            return path, name, False
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        cmd = [tc.compiler, *tc.flags(name), "-o", str(tmp)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as exc:
            raise NativeBuildError(f"compiling the native kernels failed to run ({exc}); {FIX_HINT}") from exc
        if proc.returncode != 0 or not tmp.exists():
            tmp.unlink(missing_ok=True)
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-12:])
            raise NativeBuildError(
                f"compiling the native kernels failed (exit {proc.returncode}):\n{tail}\n"
                f"command: {' '.join(cmd)}\nFix: {FIX_HINT}"
            )
        tmp.replace(path)
    return path, name, True


def load(path: Path, name: str) -> ModuleType:
    """Import the built library and check it accepts MLX arrays (a nanobind ABI mismatch would not)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise NativeBuildError(f"cannot import the native kernels from {path}")
    try:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except ImportError as exc:
        raise NativeBuildError(f"the native kernels in {path} do not load ({exc}); delete the file to rebuild") from exc
    import mlx.core as mx

    try:
        probe = module.gelu_forward(mx.zeros((4,)))
        mx.eval(probe)
    except TypeError as exc:
        raise NativeBuildError(
            f"the native kernels do not accept mlx arrays ({exc}): this nanobind does not match the one "
            f"MLX {mx.__version__} was built with; install the nanobind version pinned in pyproject.toml"
        ) from exc
    sys.modules[name] = module
    return module
