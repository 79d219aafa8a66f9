"""cache_step_memory: the train step's freed buffers stay in MLX's cache, so the next step reuses them
instead of faulting in fresh pages (counted with getrusage's minor page faults, never a wall time)."""

from __future__ import annotations

import mlx.core as mx
import pytest

import lora_tasks  # noqa: F401 - sets up the BLAS before MLX computes
from lora_tasks.backend import is_cpu_backend
from lora_tasks.training.step_memory import cache_step_memory

pytestmark = pytest.mark.skipif(not is_cpu_backend(), reason="the CPU backend's cache limit")


@pytest.fixture
def restore_cache_limit():
    before = mx.set_cache_limit(0)
    mx.set_cache_limit(before)
    yield before
    mx.set_cache_limit(before)
    mx.clear_cache()


def test_raises_the_limit_to_the_peak_and_never_lowers_it(restore_cache_limit):
    mx.set_cache_limit(1 << 20)
    assert cache_step_memory(1 << 30) == 1 << 30
    assert cache_step_memory(1 << 25) == 1 << 30  # a smaller peak leaves the larger limit
    assert mx.set_cache_limit(1 << 30) == 1 << 30
    mx.reset_peak_memory()
    mx.eval(mx.zeros((1 << 22,)))  # 16 MB: the default peak is MLX's
    assert cache_step_memory() >= max(1 << 30, mx.get_peak_memory())
    with pytest.raises(ValueError, match="peak_bytes must be >= 0"):
        cache_step_memory(-1)


# Run in a fresh process: in a long test session the allocator already holds pages from earlier
# tests, so the uncached step would fault nothing and the comparison would say nothing.
_STEP_FAULTS = """
import json, resource
import lora_tasks
import mlx.core as mx
from lora_tasks.training.step_memory import cache_step_memory

x = mx.random.normal((2048, 4096))  # 32 MB per temporary: more than the default CPU cache keeps
mx.eval(x)

def step():
    h = mx.maximum(x * 2.0 + 1.0, 0.0)  # temporaries freed as soon as the next op has read them
    return (h * h).sum()

def faults_per_call(calls=4):
    mx.eval(step())
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        mx.eval(step())
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / calls

mx.set_cache_limit(32 << 20)
mx.clear_cache()
before = faults_per_call()
mx.reset_peak_memory()
mx.eval(step())
cache_step_memory()
print(json.dumps({"before": before, "after": faults_per_call()}))
"""


def test_a_step_that_frees_more_than_the_default_cache_faults_no_pages_after_it():
    import json
    import os
    import subprocess
    import sys

    # with glibc's defaults: a heap that keeps freed memory (lora_tasks.heap) serves MLX's misses without faults
    env = {**os.environ, "KAGGLE_LORA_HEAP": "default"}
    done = subprocess.run([sys.executable, "-c", _STEP_FAULTS], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    faults = json.loads(done.stdout.strip().splitlines()[-1])
    before, after = faults["before"], faults["after"]
    assert before > 4000, f"expected the uncached step to fault its temporaries in ({before:.0f} faults per call)"
    assert after < before / 10, f"{after:.0f} faults per call with the cache at the step's peak, {before:.0f} without"
