"""One LoRA training step (forward, backward, AdamW) on MiniLM, r=8 on Q,K,V,O, batch 32:
MLX against PyTorch + PEFT on the same machine in the same run, plus where MLX's time goes.

    python benchmarks/train_step.py [--seqs 64,128] [--batch 32] [--repeats 5] [--rounds 3] [--no-profile]
                                    [--dtype bfloat16]

Two comparisons per sequence length: ours in fp32 against PyTorch in fp32, and ours with the frozen
base in ``--dtype`` (bf16 weights and GEMMs) against PyTorch under bf16 autocast, its strongest CPU
setting. Without avx512_bf16 (see ``/proc/cpuinfo``) both bf16 sides measure fallbacks; the rows say so.

The machine is a shared VM whose speed drifts by 15-20% within minutes, so the peer and MLX take
turns for ``--rounds`` rounds and each side's median over the rounds is reported.
"""

from __future__ import annotations

import argparse

import lora_tasks  # sets up the BLAS: must come before mlx (kept here by the split below)

# isort: split
import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from _common import median_seconds, minilm_dir, row, run_peer, write_results

from lora_tasks.models import ops
from lora_tasks.native import kernels, native_info
from lora_tasks.training.factory import create_bert_with_lora
from lora_tasks.training.precision import compute_dtype_choice


def make_step(model: nn.Module):
    opt = optim.AdamW(learning_rate=1e-4)

    def loss_fn(m, ids, mask, y):
        return m.loss(m(ids, mask), y)

    loss_and_grad = nn.value_and_grad(model, loss_fn)

    def step(ids, mask, y):
        loss, grads = loss_and_grad(model, ids, mask, y)
        opt.update(model, grads)
        return loss

    state = [model.state, opt.state, mx.random.state]
    return mx.compile(step, inputs=state, outputs=state), state


def profile(batch: int, seq: int, cfg, repeats: int, step_seconds: float) -> list[dict]:
    """Forward+backward time of each kind of work in one step, at the model's shapes (the kernels
    the model uses on this backend), and the rest of the step: copies, adds, LoRA, AdamW.

    Each part evaluates its forward value and its input gradients for a given cotangent (the
    frozen weights get none), as the step does."""
    h, heads, inter, layers = cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size, cfg.num_hidden_layers
    n = batch * seq
    x_h = mx.random.normal((n, h))
    x_i = mx.random.normal((n, inter))
    w_hh, w_ih, w_hi = mx.random.normal((h, h)), mx.random.normal((inter, h)), mx.random.normal((h, inter))
    qkv = [mx.random.normal((batch, seq, h)) for _ in range(3)]
    mask = mx.zeros((batch, 1, 1, seq))
    norm = ops.LayerNorm(h, eps=1e-12)
    drop = ops.Dropout(0.1)
    drop.train()

    def fb(f, *a):
        cotangent = mx.random.normal(f(*a).shape)  # what the layer above sends back in the step
        return median_seconds(lambda: mx.vjp(f, list(a), [cotangent]), repeats)

    parts = {
        "linear GEMMs (Q,K,V,O,FFN)": 4 * fb(lambda x: x @ w_hh.T, x_h) + fb(lambda x: x @ w_ih.T, x_h) + fb(lambda x: x @ w_hi.T, x_i),
        "attention (QK^T, softmax, dropout, PV)": fb(
            lambda q, k, v: ops.multi_head_attention(q, k, v, mask, heads, (h // heads) ** -0.5, drop), *qkv),
        "GELU": fb(ops.gelu, x_i),
        "layer norm (x2)": 2 * fb(norm, x_h),
        "dropout (x2)": 2 * fb(drop, x_h),
    }
    parts = {k: v * layers for k, v in parts.items()}
    parts["rest of the step (copies, adds, LoRA, loss, AdamW)"] = max(step_seconds - sum(parts.values()), 0.0)
    return [row(f"profile s{seq}: {k}", v * 1e3, "ms/step", share=round(v / step_seconds, 3)) for k, v in parts.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seqs", default="64,128")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="alternating peer/MLX rounds (medians reported)")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--dtype", default="bfloat16", choices=["auto", "bfloat16"],
                    help="our compute dtype against PyTorch's bf16 autocast (auto: fp32 where the CPU lacks avx512_bf16)")
    args = ap.parse_args()
    print(lora_tasks.blas_info().summary())
    print(native_info().summary())
    bf16 = compute_dtype_choice(args.dtype)
    print(bf16.summary())
    models = {"fp32": create_bert_with_lora("binary_classification", "balanced", dropout=0.0, seed=0)[0]}
    if bf16.name == "bfloat16":
        models["bf16"] = create_bert_with_lora("binary_classification", "balanced", dropout=0.0, seed=0,
                                               compute_dtype=args.dtype)[0]
    steps = {}
    for name, model in models.items():
        model.train()
        steps[name] = make_step(model)
    seqs = [int(s) for s in args.seqs.split(",")]
    ours = {(p, seq): [] for p in models for seq in seqs}
    theirs = {(p, seq): [] for p in ("fp32", "bf16") for seq in seqs}
    for r in range(args.rounds):
        peer = run_peer("torch_peer.py", "train_step", minilm_dir(), "--seqs", args.seqs, "--batch", str(args.batch),
                        "--precisions", "fp32,bf16")
        for seq in seqs:
            ids = mx.array(np.random.default_rng(0).integers(1000, 2000, (args.batch, seq)))
            mask = mx.ones((args.batch, seq), dtype=mx.int32)
            y = mx.array(np.arange(args.batch) % 2)
            for p, (step, state) in steps.items():
                sec = median_seconds(lambda step=step, state=state, ids=ids, mask=mask, y=y: (step(ids, mask, y), state),
                                     args.repeats)
                ours[(p, seq)].append(args.batch / sec)
            if peer:
                theirs[("fp32", seq)].append(peer[f"train_step_{seq}"])
                theirs[("bf16", seq)].append(peer[f"train_step_bf16_{seq}"])
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"s{seq} {p} {ours[(p, seq)][-1]:.1f}" + (f" vs {theirs[(p, seq)][-1]:.1f}" if theirs[(p, seq)] else "")
            for seq in seqs for p in models))
    k = kernels()
    cpu = k.cpu_features() if k is not None else {}
    note = None if cpu.get("avx512_bf16") else (
        "this CPU has no avx512_bf16: the bf16 rows measure fallbacks (ours: " + bf16.gemm + "; PyTorch: autocast "
        "without the bf16 instructions), not the AVX512-BF16 kernel")
    rows = []
    for seq in seqs:
        for p in models:
            label = f"lora train step minilm r8 qkvo b{args.batch} s{seq}"
            extra = {"blas": lora_tasks.blas_info().provider, "kernels": native_info().summary(), "rounds": args.rounds}
            if p == "bf16":
                label += " bf16 base vs torch bf16 autocast"
                extra.update(compute_dtype=bf16.summary(), avx512_bf16=bool(cpu.get("avx512_bf16")))
                if note:
                    extra["note"] = note
            peer_runs = theirs[(p, seq)]
            rows.append(row(label, float(np.median(ours[(p, seq)])), "samples/s",
                            float(np.median(peer_runs)) if peer_runs else None, **extra,
                            rounds_ours=[round(v, 2) for v in ours[(p, seq)]], rounds_peer=[round(v, 2) for v in peer_runs]))
        if "bf16" not in models and theirs[("bf16", seq)]:  # auto chose fp32 here: ours fp32 against the bf16 peer
            rows.append(row(f"lora train step minilm r8 qkvo b{args.batch} s{seq} fp32 ({bf16.summary()}) vs torch bf16 "
                            "autocast", float(np.median(ours[("fp32", seq)])), "samples/s",
                            float(np.median(theirs[("bf16", seq)])), avx512_bf16=bool(cpu.get("avx512_bf16"))))
        if not args.no_profile:
            fp32_rate = next(r["value"] for r in rows if r["name"] == f"lora train step minilm r8 qkvo b{args.batch} s{seq}")
            rows += profile(args.batch, seq, models["fp32"].config, args.repeats, args.batch / fp32_rate)
    write_results("train_step", rows)


if __name__ == "__main__":
    main()
