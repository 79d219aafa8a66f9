"""One LoRA training step (forward, backward, AdamW) on MiniLM, r=8 on Q,K,V,O, batch 32:
MLX against PyTorch + PEFT on the same machine in the same run, plus where MLX's time goes.

    python benchmarks/train_step.py [--seqs 64,128] [--batch 32] [--repeats 5] [--rounds 3] [--no-profile]
                                    [--dtype bfloat16] [--quick]

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

from lora_tasks.native import kernels, native_info
from lora_tasks.training.factory import create_bert_with_lora
from lora_tasks.training.precision import compute_dtype_choice
from lora_tasks.training.step_memory import cache_step_memory
from lora_tasks.training.step_profile import StepProfile, profile_step


def batch_for(batch: int, seq: int) -> tuple[mx.array, mx.array, mx.array]:
    ids = mx.array(np.random.default_rng(0).integers(1000, 2000, (batch, seq)))
    return ids, mx.ones((batch, seq), dtype=mx.int32), mx.array(np.arange(batch) % 2)


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


def profile(model: nn.Module, step, label: str, ids: mx.array, mask: mx.array, y: mx.array, repeats: int) -> list[dict]:
    """Where the step's time goes (:func:`lora_tasks.training.step_profile.profile_step`): each part
    timed with the model's own modules (a bf16 base through its bf16 GEMM), compiled, all layers in
    one graph; the last rows are what the parts leave unaccounted and their sum over the step.

    The step (``step``: the compiled function and its state) is timed again just before and just after
    the parts, and their mean is what the parts are held against: the machine's speed drifts, and the
    rounds' median was taken minutes earlier."""
    fn, state = step

    def time_step() -> float:
        return median_seconds(lambda: (fn(ids, mask, y), state), repeats)

    before = time_step()
    parts = profile_step(model, ids, mask, y, before, repeats=repeats).parts
    prof = StepProfile((before + time_step()) / 2, parts)
    step_seconds = prof.step_s
    seq = ids.shape[1]
    rows = [row(f"profile s{seq} {label}: {p.name}", p.seconds * 1e3, "ms/step", share=round(p.seconds / step_seconds, 3))
            for p in prof.parts]
    rows.append(row(f"profile s{seq} {label}: the step minus its parts", prof.unaccounted_s * 1e3, "ms/step",
                    share=round(prof.unaccounted_s / step_seconds, 3)))
    rows.append(row(f"profile s{seq} {label}: parts / step", prof.ratio, "ratio", step_ms=round(step_seconds * 1e3, 1),
                    within_10_percent=abs(prof.ratio - 1) <= 0.1))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seqs", default="64,128")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="alternating peer/MLX rounds (medians reported)")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--quick", action="store_true", help="seq 64, one round, 3 repeats: to see that it runs")
    ap.add_argument("--dtype", default="bfloat16", choices=["auto", "bfloat16"],
                    help="our compute dtype against PyTorch's bf16 autocast (auto: fp32 where the CPU lacks avx512_bf16)")
    args = ap.parse_args()
    if args.quick:
        args.seqs, args.rounds, args.repeats = "64", 1, 3
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
            ids, mask, y = batch_for(args.batch, seq)
            for p, (step, state) in steps.items():
                mx.eval(step(ids, mask, y), state)
                cache_step_memory()  # as training does after each step (lora_tasks.training.step_memory)
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
            ids, mask, y = batch_for(args.batch, seq)
            for p, model in models.items():
                rows += profile(model, steps[p], p, ids, mask, y, args.repeats)
    write_results("train_step", rows)


if __name__ == "__main__":
    main()
