"""PyTorch (+ PEFT) peer of our MLX benchmarks, run in its own process: what a user would pick instead.

    python torch_peer.py forward|train_step MODEL_DIR --seqs 64,128 --batch 32 --threads 2 --precisions fp32,bf16
    python torch_peer.py gemm - --shapes 2048x384x1536 --threads 2
Prints one JSON line: {"forward_64": samples_per_s, "forward_bf16_64": ..., ...}; for gemm,
{"gemm_bf16_MxKxN": GFLOP/s, "gemm_fp32_MxKxN": ...}, x (M, K) @ w.T with w (N, K) in bf16 or fp32. ``bf16`` runs the same
model under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (weights fp32, GEMMs in bf16 via oneDNN where
the CPU has avx512_bf16): the strongest CPU setting a PyTorch user has.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after two untimed ones (PyTorch runs eagerly)."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def measure(model, opt, args: argparse.Namespace, seq: int, bf16: bool) -> float:
    """Median samples/s of one forward (``opt`` None) or one train step at ``seq``."""
    ids = torch.randint(1000, 2000, (args.batch, seq))
    mask = torch.ones_like(ids)
    y = (torch.arange(args.batch) % 2).float().unsqueeze(-1)

    def cast():
        return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step() -> None:
        if opt is None:
            with torch.inference_mode(), cast():
                model(input_ids=ids, attention_mask=mask)
        else:
            with cast():
                logits = model(input_ids=ids, attention_mask=mask).logits
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y)
            loss.backward()
            opt.step()
            opt.zero_grad()

    return args.batch / median_seconds(step, args.repeats)


def gemm_gflops(shapes: str, repeats: int) -> dict[str, float]:
    """Median GFLOP/s of ``x @ w.T`` per shape, with x and w both bf16 (oneDNN's bf16 GEMM) and both fp32."""
    out = {}
    for shape in shapes.split(","):
        m, k, n = (int(v) for v in shape.lower().split("x"))
        for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            x, w = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
            with torch.inference_mode():
                # warmed for as long as ours is (bf16_gemm.gflops): right after our process leaves a core, the
                # scheduler can put both of the peer's threads on one core for its first calls
                end = time.perf_counter() + 0.3
                while time.perf_counter() < end:
                    x @ w.T
                seconds = median_seconds(lambda x=x, w=w: x @ w.T, repeats)
            out[f"gemm_{name}_{m}x{k}x{n}"] = 2 * m * k * n / seconds / 1e9
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["forward", "train_step", "gemm"])
    ap.add_argument("model_dir")
    ap.add_argument("--seqs", default="64,128")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--precisions", default="fp32", help="comma list of fp32, bf16 (autocast)")
    ap.add_argument("--shapes", default="2048x384x1536", help="gemm: comma list of MxKxN")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.mode == "gemm":
        print(json.dumps(gemm_gflops(args.shapes, args.repeats)))
        return
    from transformers import AutoModel, BertForSequenceClassification

    out = {}
    opt = None
    if args.mode == "forward":
        model = AutoModel.from_pretrained(args.model_dir).eval()  # BERT or MPNet, from config.json
    else:
        from peft import LoraConfig, get_peft_model

        base = BertForSequenceClassification.from_pretrained(args.model_dir, num_labels=1)
        cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["query", "key", "value", "attention.output.dense"])
        model = get_peft_model(base, cfg)
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    unknown = set(precisions) - {"fp32", "bf16"}
    if unknown:
        raise SystemExit(f"unknown --precisions {sorted(unknown)}; use fp32 and/or bf16")
    for precision in precisions:
        for seq in [int(s) for s in args.seqs.split(",")]:
            key = f"{args.mode}_{seq}" if precision == "fp32" else f"{args.mode}_{precision}_{seq}"
            out[key] = measure(model, opt, args, seq, precision == "bf16")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
