"""Every package of lora_tasks imports on its own in a fresh interpreter (no import cycles that
only the usual import order hides)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import lora_tasks

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(lora_tasks.__path__, "lora_tasks.") if ".testing" not in m.name
)


def test_the_module_list_is_not_empty():
    assert {"lora_tasks.lora", "lora_tasks.models", "lora_tasks.native", "lora_tasks.models.ops"} <= set(MODULES)


@pytest.mark.parametrize("chunk", range(4))
def test_each_module_imports_first(chunk):
    mods = MODULES[chunk::4]
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    failed = []
    for m in mods:  # one fresh interpreter per module: each one is the first import
        proc = subprocess.run([sys.executable, "-c", code, m], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            failed.append(f"{m}: {proc.stderr.strip().splitlines()[-1]}")
    assert not failed, failed
