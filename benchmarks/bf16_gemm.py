"""The frozen base's GEMM on its own: our bf16 kernel, the fp32 upcast, and PyTorch's bf16 matmul.

    python benchmarks/bf16_gemm.py [--shapes 2048x384x1536,2048x1536x384,2048x384x384] [--repeats 9] [--rounds 5]

Each shape ``MxKxN`` is ``x (M, K) @ w.T`` with ``w`` (N, K) frozen in bf16, as in ``bf16_linear``.
Three of ours per shape, all in this process: the native primitive (``KAGGLE_LORA_BF16_GEMM=native``:
the AVX512-BF16 micro-kernel where cpuid reports it, the portable kernel elsewhere), the upcast path
(the weight widened to fp32 for the BLAS's sgemm) and a plain fp32 GEMM. The peer is PyTorch's bf16
matmul (oneDNN, ``vdpbf16ps`` where the CPU has it) with the same threads; its ratio is against our
native kernel. The defaults are MiniLM's FFN up and down projections and its attention projections
at batch 32 x 64 tokens. Per shape, the peer and ours alternate ``--rounds`` times; each side's
median over the rounds is its value, and every round's ratio is kept in the row: a single round
of a few milliseconds' GEMM moves by several percent with the machine's state. Where the CPU has
avx512_bf16, the first rows are the machine's ceiling (``bf16_peak.cpp``: ``vdpbf16ps`` on registers
alone, one thread and all of them), against which both GEMMs' rates can be read.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from statistics import median

import lora_tasks  # sets up the BLAS: must come before mlx (kept here by the split below)

# isort: split
import mlx.core as mx
from _common import median_seconds, row, run_peer, write_results

from lora_tasks.models import ops
from lora_tasks.native import kernels, native_info


def gflops(fn, m: int, k: int, n: int, repeats: int, warm_seconds: float = 0.3) -> float:
    """Median GFLOP/s of ``fn`` (2·M·K·N flops per call), after calling it for ``warm_seconds``: for a while
    after another process (the peer) leaves a core, the scheduler still counts that core busy and wakes a
    second thread on the first one's core, so the first calls of a short GEMM measure one core, not the
    steady state of a training loop."""
    end = time.perf_counter() + warm_seconds
    while time.perf_counter() < end:
        mx.eval(fn())
    return 2 * m * k * n / median_seconds(fn, repeats) / 1e9


def with_mode(mode: str, fn):
    """``fn`` run with ``KAGGLE_LORA_BF16_GEMM`` set to ``mode`` (read on every ``bf16_linear`` call)."""

    def call():
        before = os.environ.get(ops.BF16_GEMM_ENV)
        os.environ[ops.BF16_GEMM_ENV] = mode
        try:
            return fn()
        finally:
            if before is None:
                os.environ.pop(ops.BF16_GEMM_ENV)
            else:
                os.environ[ops.BF16_GEMM_ENV] = before

    return call


def measure_shape(m: int, k: int, n: int, repeats: int) -> tuple[float, float, float]:
    """GFLOP/s of the native bf16 primitive, the fp32 upcast and a plain fp32 GEMM at one shape."""
    x = mx.random.normal((m, k))
    w = mx.random.normal((n, k)).astype(mx.bfloat16)
    w32 = w.astype(mx.float32)
    mx.eval(x, w, w32)
    native = gflops(with_mode("native", lambda: ops.bf16_linear(x, w)), m, k, n, repeats)
    upcast = gflops(with_mode("upcast", lambda: ops.bf16_linear(x, w)), m, k, n, repeats)
    return native, upcast, gflops(lambda: x @ w32.T, m, k, n, repeats)


def ceiling_rows(threads: int) -> list[dict]:
    """The ``vdpbf16ps`` ceiling from ``bf16_peak.cpp``, built with the machine's compiler; no rows where the
    CPU lacks avx512_bf16 or there is no compiler."""
    k = kernels()
    compiler = os.environ.get("CXX") or shutil.which("g++")
    if k is None or not k.cpu_features().get("avx512_bf16") or compiler is None:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "bf16_peak"
        subprocess.run([compiler, "-O2", "-march=native", "-pthread", str(Path(__file__).with_name("bf16_peak.cpp")),
                        "-o", str(exe)], check=True)
        peak = json.loads(subprocess.run([str(exe), str(threads)], check=True, capture_output=True,
                                         text=True).stdout)
    return [row("vdpbf16ps ceiling, registers only, 1 thread", peak["one"], "GFLOP/s"),
            row(f"vdpbf16ps ceiling, registers only, {threads} threads", peak["all"], "GFLOP/s")]


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    try:
        shapes = [tuple(int(v) for v in s.lower().split("x")) for s in text.split(",") if s.strip()]
    except ValueError:
        shapes = []
    if not shapes or any(len(s) != 3 or min(s) < 1 for s in shapes):
        raise SystemExit(f"--shapes {text!r}: give MxKxN[,MxKxN...] with positive sizes, e.g. 2048x384x1536")
    return shapes  # type: ignore[return-value]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="2048x384x1536,2048x1536x384,2048x384x384")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--rounds", type=int, default=5, help="peer and ours alternate this many times per shape")
    args = ap.parse_args()
    if args.rounds < 1:
        raise SystemExit(f"--rounds is how many times the peer and ours alternate; pass 1 or more, not {args.rounds}")
    shapes = parse_shapes(args.shapes)
    print(lora_tasks.blas_info().summary())
    info = native_info()
    kernel = info.bf16_kernel or "none (no native kernels: native means upcast)"
    print(f"bf16 GEMM kernel: {kernel}; KAGGLE_LORA_BF16_GEMM=auto picks {ops.bf16_gemm_mode()}")
    rows = ceiling_rows(info.threads or os.cpu_count() or 1)
    for m, k, n in shapes:
        # the peer runs per shape, right before ours: on a shared machine, load that comes and goes then
        # disturbs both sides of a ratio alike more often than when all of the peer runs first
        peers, ours = [], []
        for _ in range(args.rounds):
            peers.append(run_peer("torch_peer.py", "gemm", "-", "--shapes", f"{m}x{k}x{n}", "--repeats",
                                  str(args.repeats), "--threads", str(info.threads or os.cpu_count() or 1)) or {})
            ours.append(measure_shape(m, k, n, args.repeats))
        native, upcast, fp32 = (median(o[i] for o in ours) for i in range(3))
        label = f"{m}x{k} @ {k}x{n}"
        peer_bf16 = [p.get(f"gemm_bf16_{m}x{k}x{n}") for p in peers]
        torch_bf16 = median(v for v in peer_bf16 if v) if all(peer_bf16) else None
        torch_fp32 = median(p[f"gemm_fp32_{m}x{k}x{n}"] for p in peers) if all(peer_bf16) else None
        per_round = [round(o[0] / v, 3) for o, v in zip(ours, peer_bf16, strict=True) if v]
        rows += [
            row(f"bf16 GEMM {label}, native ({kernel}) vs PyTorch bf16 matmul", native, "GFLOP/s", torch_bf16,
                bf16_kernel=info.bf16_kernel, rounds=args.rounds, round_ratios=per_round),
            row(f"bf16 GEMM {label}, fp32 upcast for the BLAS", upcast, "GFLOP/s", torch_bf16),
            row(f"fp32 GEMM {label}", fp32, "GFLOP/s", torch_fp32),
        ]
    write_results("bf16_gemm", rows)


if __name__ == "__main__":
    main()
