"""Forward throughput of an encoder (default MiniLM): MLX (with the active BLAS) against PyTorch, same run.

    python benchmarks/encoder.py [--seqs 64,128] [--batch 32] [--repeats 7] [--model all-mpnet-base-v2]
Set KAGGLE_LORA_PEER_PYTHON to a Python with torch + transformers for the peer column. With
``--model`` the rows go to ``results/encoder_<name>.json`` (the MiniLM rows stay in encoder.json).
"""

from __future__ import annotations

import argparse
import time

import lora_tasks  # noqa: F401 - BLAS set-up before mlx
import mlx.core as mx
import numpy as np
from _common import minilm_dir, row, run_peer, write_results

from lora_tasks.models import load_encoder


def median_rate(fn, batch: int, repeats: int) -> float:
    for _ in range(2):
        mx.eval(fn())
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        mx.eval(fn())
        times.append(time.perf_counter() - t)
    return batch / sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seqs", default="64,128")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--model", default=None, help="model id or folder (default: the offline MiniLM)")
    args = ap.parse_args()
    print(lora_tasks.blas_info().summary())
    enc = load_encoder(args.model)
    model = enc.model
    label = "minilm" if args.model is None else enc.source.name.lower()
    forward = mx.compile(lambda i, m: model(i, m))
    folder = minilm_dir() if args.model is None else str(enc.source)
    peer = run_peer("torch_peer.py", "forward", folder, "--seqs", args.seqs, "--batch", str(args.batch))
    rows = []
    for seq in [int(s) for s in args.seqs.split(",")]:
        ids = mx.array(np.random.default_rng(0).integers(1000, 2000, (args.batch, seq)))
        mask = mx.ones((args.batch, seq), dtype=mx.int32)
        ours = median_rate(lambda: forward(ids, mask), args.batch, args.repeats)
        rows.append(row(f"forward {label} b{args.batch} s{seq}", ours, "samples/s",
                        peer.get(f"forward_{seq}") if peer else None, blas=lora_tasks.blas_info().provider))
    write_results("encoder" if args.model is None else f"encoder_{label.replace('-', '_')}", rows)


if __name__ == "__main__":
    main()
