"""Every package of lora_tasks imports on its own in a fresh interpreter (no import cycles that
only the usual import order hides)."""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

import lora_tasks

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(lora_tasks.__path__, "lora_tasks.") if ".testing" not in m.name
)


def test_the_module_list_is_not_empty():
    assert {"lora_tasks.lora", "lora_tasks.models", "lora_tasks.native", "lora_tasks.models.ops"} <= set(MODULES)


def _import_first(module: str) -> str | None:
    """``module`` imported first in a fresh interpreter: None, or the last line of its error."""
    code = "import importlib, sys\nimportlib.import_module(sys.argv[1])\n"
    proc = subprocess.run([sys.executable, "-c", code, module], capture_output=True, text=True, timeout=300)
    return None if proc.returncode == 0 else f"{module}: {proc.stderr.strip().splitlines()[-1]}"


@pytest.mark.parametrize("chunk", range(4))
def test_each_module_imports_first(chunk):
    # one fresh interpreter per module, one per core at a time: an interpreter's import is single-threaded
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        failed = [f for f in pool.map(_import_first, MODULES[chunk::4]) if f]
    assert not failed, failed
