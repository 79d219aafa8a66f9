"""One LoRA training step (forward, backward, AdamW) on MiniLM, r=8 on Q,K,V,O, batch 32:
MLX against PyTorch + PEFT on the same machine in the same run, plus where MLX's time goes.

    python benchmarks/train_step.py [--seqs 64,128] [--batch 32] [--repeats 5] [--rounds 3] [--no-profile]

The machine is a shared VM whose speed drifts by 15-20% within minutes, so the peer and MLX take
turns for ``--rounds`` rounds and each side's median over the rounds is reported.
"""

from __future__ import annotations

import argparse
import time

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from _common import minilm_dir, row, run_peer, write_results

import lora_tasks  # noqa: F401 - BLAS set-up before mlx
from lora_tasks.factory import create_bert_with_lora
from lora_tasks.models import ops
from lora_tasks.native import native_info


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


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn`` (which must evaluate its result)."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


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
        return timed(lambda: mx.eval(mx.vjp(f, list(a), [cotangent])), repeats)

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
    args = ap.parse_args()
    print(lora_tasks.blas_info().summary())
    print(native_info().summary())
    model, adapter = create_bert_with_lora("binary_classification", "balanced", dropout=0.0, seed=0)
    model.train()
    step, state = make_step(model)
    seqs = [int(s) for s in args.seqs.split(",")]
    ours: dict[int, list[float]] = {seq: [] for seq in seqs}
    theirs: dict[int, list[float]] = {seq: [] for seq in seqs}
    for r in range(args.rounds):
        peer = run_peer("torch_peer.py", "train_step", minilm_dir(), "--seqs", args.seqs, "--batch", str(args.batch))
        for seq in seqs:
            ids = mx.array(np.random.default_rng(0).integers(1000, 2000, (args.batch, seq)))
            mask = mx.ones((args.batch, seq), dtype=mx.int32)
            y = mx.array(np.arange(args.batch) % 2)
            sec = timed(lambda: mx.eval(step(ids, mask, y), state), args.repeats)
            ours[seq].append(args.batch / sec)
            if peer:
                theirs[seq].append(peer[f"train_step_{seq}"])
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"s{seq} {ours[seq][-1]:.1f}" + (f" vs {theirs[seq][-1]:.1f}" if theirs[seq] else "") for seq in seqs))
    rows = []
    for seq in seqs:
        rows.append(row(f"lora train step minilm r8 qkvo b{args.batch} s{seq}", float(np.median(ours[seq])), "samples/s",
                        float(np.median(theirs[seq])) if theirs[seq] else None, blas=lora_tasks.blas_info().provider,
                        kernels=native_info().summary(), rounds=args.rounds,
                        rounds_ours=[round(v, 2) for v in ours[seq]], rounds_peer=[round(v, 2) for v in theirs[seq]]))
        if not args.no_profile:
            rows += profile(args.batch, seq, model.config, args.repeats, args.batch / rows[-1]["value"])
    write_results("train_step", rows)


if __name__ == "__main__":
    main()
