"""The optimized BLAS really serves MLX's GEMMs (checked through the loaded libraries, not time)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

import lora_tasks
from lora_tasks.backend import blas_info, sgemm_library


def test_blas_is_interposed_and_gemm_is_correct():
    import mlx.core as mx

    info = blas_info()
    assert info.fast, info.summary()
    served_by = sgemm_library()
    assert served_by is not None, "no globally visible cblas_sgemm: the BLAS was not preloaded"
    assert "mlx_cpu.libs" not in served_by and "libblas-" not in served_by
    assert os.path.realpath(info.path) == served_by
    # the library is mapped into this process
    maps = open("/proc/self/maps").read()
    assert served_by in maps
    if "libkaggle_lora_sgemm_" in served_by:  # the shim forwards to PyPI's OpenBLAS, also mapped
        assert "libscipy_openblas" in maps and info.provider == "openblas"

    rng = np.random.default_rng(0)
    a = rng.standard_normal((257, 129), dtype=np.float32)
    b = rng.standard_normal((129, 65), dtype=np.float32)
    out = np.array(mx.array(a) @ mx.array(b))
    np.testing.assert_allclose(out, a @ b, rtol=1e-4, atol=1e-4)


def test_override_none_keeps_bundled_blas_and_warns_with_fix():
    code = (
        "import logging; logging.basicConfig();"
        "import lora_tasks; from lora_tasks.backend import sgemm_library;"
        "i = lora_tasks.blas_info(); print(i.provider, sgemm_library())"
    )
    env = dict(os.environ, KAGGLE_LORA_BLAS="none")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["bundled-reference", "None"]


def test_override_with_missing_file_is_a_clear_error():
    env = dict(os.environ, KAGGLE_LORA_BLAS="/nonexistent/libblas.so")
    out = subprocess.run([sys.executable, "-c", "import lora_tasks"], env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert "KAGGLE_LORA_BLAS" in out.stderr and "names no file" in out.stderr


def _provider_in_child(**env) -> str:
    code = "import lora_tasks; print(lora_tasks.blas_info().summary())"
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env), capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_openblas_shim_is_the_default_and_mkl_can_be_forced(tmp_path):
    first = _provider_in_child(XDG_CACHE_HOME=str(tmp_path))
    assert first.startswith("BLAS: openblas") and "scipy-openblas32" in first, first
    shims = list((tmp_path / "kaggle-lora" / "blas").glob("libkaggle_lora_sgemm_*.so"))
    assert len(shims) == 1 and str(shims[0]) in first
    mtime = shims[0].stat().st_mtime_ns
    assert _provider_in_child(XDG_CACHE_HOME=str(tmp_path)) == first  # cached: not rebuilt
    assert shims[0].stat().st_mtime_ns == mtime
    assert not [p for p in shims[0].parent.iterdir() if ".tmp" in p.name or p.suffix == ".c"]
    assert _provider_in_child(KAGGLE_LORA_BLAS="mkl").startswith("BLAS: mkl")


def test_openblas_workers_spin_briefly_unless_the_user_says_otherwise():
    """OpenBLAS reads OPENBLAS_THREAD_TIMEOUT when it loads: the library's value, or the user's."""
    from lora_tasks.backend import OPENBLAS_SPIN

    code = ("import os, lora_tasks; lora_tasks.blas_info(); "
            "print(os.environ['OPENBLAS_THREAD_TIMEOUT'], '|', lora_tasks.blas_info().summary())")
    base = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    ours = subprocess.run([sys.executable, "-c", code], env=base, capture_output=True, text=True, check=True).stdout
    assert ours.startswith(f"{OPENBLAS_SPIN} |") and f"spin 2^{OPENBLAS_SPIN} cycles" in ours, ours
    theirs = subprocess.run([sys.executable, "-c", code], env=dict(base, OPENBLAS_THREAD_TIMEOUT="20"),
                            capture_output=True, text=True, check=True).stdout
    assert theirs.startswith("20 |") and "spin 2^20 cycles" in theirs, theirs
    mkl = subprocess.run([sys.executable, "-c", "import os, lora_tasks; lora_tasks.blas_info(); "
                          "print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'))"],
                         env=dict(base, KAGGLE_LORA_BLAS="mkl"), capture_output=True, text=True, check=True).stdout
    assert mkl.strip() == "None"  # MKL is left alone


def test_without_a_c_compiler_mkl_serves(tmp_path):
    summary = _provider_in_child(XDG_CACHE_HOME=str(tmp_path), CC="/bin/false")
    assert summary.startswith("BLAS: mkl"), summary
    assert not list(tmp_path.rglob("*.so"))


def test_importing_mlx_first_is_reported():
    code = "import mlx.core; import lora_tasks; print(lora_tasks.blas_info().reason)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Import lora_tasks first" in out.stdout


def test_blas_summary_names_provider():
    assert lora_tasks.blas_info().provider in lora_tasks.blas_info().summary()


def test_native_compiler_wrapper_never_calls_itself(tmp_path):
    """A child process inherits PATH with our wrapper first: the wrapper must still exec the real g++."""
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))
    code = "import lora_tasks, os; print(os.environ['PATH'])"
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    env["PATH"] = first.stdout.strip()
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    wrapper = tmp_path / "kaggle-lora" / "cxx" / "g++"
    target = wrapper.read_text().split('exec "')[1].split('"')[0]
    assert os.path.realpath(target) != os.path.realpath(wrapper)
    assert second.stdout.strip().split(os.pathsep).count(str(wrapper.parent)) == 1
    out = subprocess.run([str(wrapper), "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "g++" in out.stdout.lower() + out.stderr.lower() or "gcc" in out.stdout.lower()
