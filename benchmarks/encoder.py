"""Forward throughput of an encoder (default MiniLM): MLX (with the active BLAS) against PyTorch, same run.

    python benchmarks/encoder.py [--seqs 64,128] [--batch 32] [--repeats 7] [--model all-mpnet-base-v2] [--dtype bfloat16]

Two comparisons per sequence length: ours fp32 against PyTorch fp32, and ours with the weights in
``--dtype`` (bf16 weights and GEMMs) against PyTorch under bf16 autocast. Without avx512_bf16 both
bf16 sides measure fallbacks; the rows say so.
Set KAGGLE_LORA_PEER_PYTHON to a Python with torch + transformers for the peer column. With
``--model`` the rows go to ``results/encoder_<name>.json`` (the MiniLM rows stay in encoder.json).
"""

from __future__ import annotations

import argparse

import lora_tasks  # sets up the BLAS: must come before mlx (kept here by the split below)

# isort: split
import mlx.core as mx
import numpy as np
from _common import median_seconds, minilm_dir, row, run_peer, write_results

from lora_tasks.models import load_encoder
from lora_tasks.native import kernels
from lora_tasks.training.precision import cast_frozen_base, compute_dtype_choice


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seqs", default="64,128")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--model", default=None, help="model id or folder (default: the offline MiniLM)")
    ap.add_argument("--dtype", default="bfloat16", choices=["auto", "bfloat16"],
                    help="our compute dtype against PyTorch's bf16 autocast (auto: fp32 where the CPU lacks avx512_bf16)")
    args = ap.parse_args()
    print(lora_tasks.blas_info().summary())
    bf16 = compute_dtype_choice(args.dtype)
    print(bf16.summary())
    enc = load_encoder(args.model)
    model = enc.model
    label = "minilm" if args.model is None else enc.source.name.lower()
    forwards = {"fp32": mx.compile(lambda i, m: model(i, m))}
    if bf16.name == "bfloat16":
        model16 = load_encoder(args.model).model
        model16.freeze()  # the whole encoder is the frozen base here
        cast_frozen_base(model16, bf16.dtype)
        forwards["bf16"] = mx.compile(lambda i, m: model16(i, m))
    folder = minilm_dir() if args.model is None else str(enc.source)
    peer = run_peer("torch_peer.py", "forward", folder, "--seqs", args.seqs, "--batch", str(args.batch),
                    "--precisions", "fp32,bf16")
    k = kernels()
    has_bf16 = bool(k is not None and k.cpu_features()["avx512_bf16"])
    rows = []
    for seq in [int(s) for s in args.seqs.split(",")]:
        ids = mx.array(np.random.default_rng(0).integers(1000, 2000, (args.batch, seq)))
        mask = mx.ones((args.batch, seq), dtype=mx.int32)
        for p, forward in forwards.items():
            ours = args.batch / median_seconds(lambda forward=forward, ids=ids, mask=mask: forward(ids, mask), args.repeats)
            if p == "fp32":
                rows.append(row(f"forward {label} b{args.batch} s{seq}", ours, "samples/s",
                                peer.get(f"forward_{seq}") if peer else None, blas=lora_tasks.blas_info().provider))
                continue
            extra = {"compute_dtype": bf16.summary(), "avx512_bf16": has_bf16}
            if not has_bf16:
                extra["note"] = ("this CPU has no avx512_bf16: the bf16 rows measure fallbacks (ours: " + bf16.gemm +
                                 "; PyTorch: autocast without the bf16 instructions)")
            rows.append(row(f"forward {label} b{args.batch} s{seq} bf16 vs torch bf16 autocast", ours, "samples/s",
                            peer.get(f"forward_bf16_{seq}") if peer else None, blas=lora_tasks.blas_info().provider,
                            **extra))
    write_results("encoder" if args.model is None else f"encoder_{label.replace('-', '_')}", rows)


if __name__ == "__main__":
    main()
