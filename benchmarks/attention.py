"""BERT's attention on its own, forward and backward: the native fused kernel against MLX's ops.

    python benchmarks/attention.py [--seqs 64,128] [--batch 32] [--heads 12] [--head-dim 32] [--repeats 7]

MiniLM's shape by default (12 heads of 32, batch 32), one layer, no dropout (as the train step
benchmark runs it). Ours is :func:`lora_tasks.models.ops.multi_head_attention` on the CPU with the
native kernels: heads read in place, (batch, head) pairs over the cores, QK^T, softmax and PV fused.
The peer column is the same attention through MLX's own ops on split heads (the path without the
kernels), in this process, alternating with ours. GFLOP/s counts the four GEMMs' forward and backward
multiply-adds (6 GEMMs of 2·seq²·head_dim flops per pair).
"""

from __future__ import annotations

import argparse

import lora_tasks  # sets up the BLAS: must come before mlx (kept here by the split below)

# isort: split
import mlx.core as mx
import numpy as np
from _common import median_seconds, row, write_results

from lora_tasks.models import ops
from lora_tasks.native import kernels, native_info


def split_heads_attention(q, k, v, heads: int, scale: float) -> mx.array:
    """MLX's own ops on (batch, heads, seq, dim): the reference and the peer."""
    b, s, hd = q.shape
    t = lambda x: x.reshape(b, s, heads, hd // heads).transpose(0, 2, 1, 3)  # noqa: E731 - a short reshape
    probs = mx.softmax((t(q) * scale) @ t(k).swapaxes(-1, -2), axis=-1, precise=True)
    return (probs @ t(v)).transpose(0, 2, 1, 3).reshape(b, s, hd)


def fwd_bwd(fn, q, k, v, g):
    """Forward and the gradients of q, k, v, compiled as the train step is."""
    return mx.compile(lambda a, b, c: mx.vjp(fn, [a, b, c], [g]))


def measure(seq: int, args: argparse.Namespace, off: ops.Dropout, block: str) -> dict:
    """One row: ours and MLX's ops at ``seq``, checked equal first, timed alternately."""
    heads, dim, batch = args.heads, args.head_dim, args.batch
    q, k, v, g = (mx.random.normal((batch, seq, heads * dim), key=mx.random.key(i)) for i in range(4))
    mx.eval(q, k, v, g)
    scale = dim**-0.5
    ours = fwd_bwd(lambda a, b, c: ops.multi_head_attention(a, b, c, None, heads, scale, off), q, k, v, g)
    mlx = fwd_bwd(lambda a, b, c: split_heads_attention(a, b, c, heads, scale), q, k, v, g)
    got, want = ours(q, k, v), mlx(q, k, v)
    err = max(float(mx.abs(a - b).max()) for a, b in zip([*got[0], *got[1]], [*want[0], *want[1]], strict=True))
    if not np.isfinite(err) or err > 1e-3:
        raise SystemExit(f"seq {seq}: the kernel and MLX's ops differ by {err:g}; not timing a wrong result")
    times: dict[str, list[float]] = {"ours": [], "mlx": []}
    for _ in range(args.rounds):
        times["ours"].append(median_seconds(lambda: ours(q, k, v), args.repeats))
        times["mlx"].append(median_seconds(lambda: mlx(q, k, v), args.repeats))
    t_ours, t_mlx = float(np.median(times["ours"])), float(np.median(times["mlx"]))
    flops = 6 * 2 * seq * seq * dim * batch * heads
    return row(f"attention fwd+bwd b{batch} s{seq} {heads}x{dim}, native ({block} blocks) vs MLX ops", t_ours * 1e3,
               "ms", t_mlx * 1e3, higher_is_better=False, gflops=round(flops / t_ours / 1e9, 1), max_abs_diff=err,
               rounds_ours_ms=[round(t * 1e3, 2) for t in times["ours"]],
               rounds_mlx_ms=[round(t * 1e3, 2) for t in times["mlx"]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seqs", default="64,128")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=3, help="alternating ours/MLX rounds (medians reported)")
    args = ap.parse_args()
    print(lora_tasks.blas_info().summary())
    print(native_info().summary())
    k_ = kernels()
    if k_ is None:
        raise SystemExit(f"the native kernels are unavailable ({native_info().reason}): nothing to measure")
    block = k_.attention_block()
    off = ops.Dropout(0.1)
    off.eval()
    rows = [measure(seq, args, off, block) for seq in (int(s) for s in args.seqs.split(","))]
    write_results("attention", rows)


if __name__ == "__main__":
    main()
