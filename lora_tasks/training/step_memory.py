"""Keep a train step's memory in MLX's buffer cache between steps, on the CPU.

Why: MLX keeps freed buffers for reuse only up to its cache limit (32 MB by default on the CPU). A
BERT train step frees far more than that (each layer's attention probabilities alone are batch x
heads x seq^2 floats), so every step handed most of its memory back to the OS and the next one
faulted fresh, zeroed pages in again: a share of the step's time that no part of the step's profile
(:mod:`lora_tasks.training.step_profile`) counted (``tests/test_step_memory.py`` counts the faults).
With the limit at the step's peak memory, the next step reuses the buffers instead.

The cost: between steps the process keeps the memory the step used at its peak instead of giving
it back. The step reaches that peak anyway, every step. On Metal MLX's own limit (a share of the
device's memory) already covers a step, and nothing changes.
"""

from __future__ import annotations

import mlx.core as mx

from lora_tasks.backend import is_cpu_backend


def cache_step_memory(peak_bytes: int | None = None) -> int | None:
    """Raise MLX's buffer cache limit (never lower it) to ``peak_bytes``, by default the peak memory
    MLX has seen so far: call it after a step has run. Returns the limit now in force, or None off
    the CPU backend (where the limit is left alone)."""
    if not is_cpu_backend():
        return None
    peak = mx.get_peak_memory() if peak_bytes is None else int(peak_bytes)
    if peak < 0:
        raise ValueError(f"peak_bytes must be >= 0, got {peak_bytes}; pass None to use MLX's peak memory")
    current = mx.set_cache_limit(peak)  # returns the previous limit
    if current > peak:
        mx.set_cache_limit(current)
    return max(current, peak)


__all__ = ["cache_step_memory"]
