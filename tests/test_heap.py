"""lora_tasks.heap: freed memory stays mapped, so buffers of a new size reuse pages already faulted in
(counted with getrusage's minor page faults, never a wall time), and the user's own settings win."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lora_tasks import heap

pytestmark = pytest.mark.skipif(heap._libc() is None, reason="glibc's mallopt (Linux)")

# Buffers of a new size each time, as batches cut to their longest row are, freed before the next,
# allocated in a worker thread as Prefect's task runner does. Run in a fresh process: the heap
# settings are made once, at import.
_FAULTS = """
import json, resource
from concurrent.futures import ThreadPoolExecutor
import lora_tasks
import mlx.core as mx
from lora_tasks.heap import heap_info

mx.set_cache_limit(0)  # MLX hands every freed buffer to malloc at once: what a miss of its cache comes to

def faults_per_buffer():
    sizes = [(96 + 7 * i) << 18 for i in range(8)]  # floats: 96-145 MB, over glibc's largest mmap threshold
    mx.eval(mx.full((max(sizes),), 1.0))  # the heap grows to the largest once
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for size in sizes:
        mx.eval(mx.full((size,), 1.0))  # written, then freed
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / len(sizes)

with ThreadPoolExecutor(1) as pool:
    faults = pool.submit(faults_per_buffer).result()
print(json.dumps({"kept": heap_info().kept, "faults": faults}))
"""


def _faults(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in (heap.ENV_VAR, *heap.GLIBC_VARS)}
    done = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, timeout=300,
                          env={**clean, **env})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_buffers_of_new_sizes_reuse_the_freed_pages():
    kept, default = _faults(), _faults(**{heap.ENV_VAR: "default"})
    assert kept["kept"] and not default["kept"]
    # glibc's defaults map and unmap each buffer: every one of its ~30k pages faults in again
    assert default["faults"] > 10_000, default
    assert kept["faults"] < default["faults"] / 20, (kept, default)


@pytest.mark.parametrize(("env", "reason"), [
    ({heap.ENV_VAR: "default"}, "KAGGLE_LORA_HEAP=default"),
    ({heap.ENV_VAR: "defualt"}, "neither keep nor default: glibc's defaults"),
    ({"MALLOC_ARENA_MAX": "4"}, "MALLOC_ARENA_MAX set: glibc's settings as given"),
    ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}, "GLIBC_TUNABLES set"),
])
def test_the_users_settings_win(monkeypatch, env, reason):
    for var in (heap.ENV_VAR, *heap.GLIBC_VARS):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(heap, "_INFO", None)  # decided again under this environment, then restored
    info = heap.keep_freed_memory()
    assert not info.kept and reason in info.reason
    assert "glibc defaults" in info.summary()

