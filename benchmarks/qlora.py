"""QLoRA against fp32 LoRA on MiniLM (real weights): weight memory, peak RSS, train-step speed.

Each configuration runs in its own process (so ``ru_maxrss`` is its own peak), twice, in the order
fp32, 4-bit, 4-bit+embeddings, fp32, 4-bit, 4-bit+embeddings; speeds are medians over every timed
step of both runs (the machine is shared: other test runs move single numbers).

    /work/venv/bin/python benchmarks/qlora.py [--steps 6] [--rounds 2]

Rows: peer = fp32 LoRA with the same targets (preset ``efficient`` = ``qlora_memory``'s r 4 on
query, value). ``ratio_vs_peer`` > 1 is better: for memory it is fp32 / ours.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
BATCH, SEQ = 32, 64


def one(kind: str, steps: int) -> dict:
    import resource

    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    import numpy as np

    import lora_tasks  # noqa: F401  (BLAS first)
    from lora_tasks.lora.quantized import array_bytes
    from lora_tasks.models.heads import head_loss
    from lora_tasks.training.factory import create_bert_with_lora, create_qlora_model

    if kind == "fp32":
        model, adapter = create_bert_with_lora("binary_classification", "efficient", seed=0)
    else:
        model, adapter = create_qlora_model("bert_with_head", "qlora_memory", seed=0,
                                            quantize_embeddings=(kind == "qlora_emb"))
    mx.eval(model.parameters())
    weight_bytes = array_bytes(model)
    linear_bytes = sum(
        int(v.nbytes)
        for p, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.QuantizedLinear)) and not p.startswith("head")
        for _, v in __import__("mlx.utils").utils.tree_flatten(m.parameters())
    )
    rng = np.random.default_rng(0)
    ids = mx.array(rng.integers(1000, 30000, size=(BATCH, SEQ)))
    mask = mx.ones((BATCH, SEQ), dtype=mx.int32)
    labels = mx.array(rng.integers(0, 2, size=BATCH).astype(np.float32))
    model.train()
    opt = optim.AdamW(learning_rate=1e-4)

    def loss_fn(m):
        return head_loss("binary_classification", m(ids, mask), labels)

    step = nn.value_and_grad(model, loss_fn)
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        loss, grads = step(model)
        opt.update(model, grads)
        mx.eval(loss, model.parameters(), opt.state)
        if i >= 2:  # warm-up
            times.append(time.perf_counter() - t)
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"kind": kind, "weight_bytes": weight_bytes, "linear_bytes": linear_bytes,
            "rss_mb": rss_kb / 1024, "samples_per_s": [BATCH / t for t in times]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--one", choices=["fp32", "qlora", "qlora_emb"])
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.steps)))
        return

    from _common import row, write_results

    runs: dict[str, list[dict]] = {"fp32": [], "qlora": [], "qlora_emb": []}
    for _ in range(args.rounds):
        for kind in runs:
            out = subprocess.run([sys.executable, __file__, "--one", kind, "--steps", str(args.steps)],
                                 capture_output=True, text=True, check=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{kind}: {statistics.median(res['samples_per_s']):.2f} samples/s, rss {res['rss_mb']:.0f} MB")
            runs[kind].append(res)

    def med(kind: str, key: str) -> float:
        if key == "samples_per_s":
            return statistics.median(s for r in runs[kind] for s in r[key])
        return statistics.median(r[key] for r in runs[kind])

    mb = 1 / 2**20
    fp_w, fp_l = med("fp32", "weight_bytes") * mb, med("fp32", "linear_bytes") * mb
    rows = [
        row("qlora_memory 4-bit: all weight arrays", med("qlora", "weight_bytes") * mb, "MB", fp_w,
            higher_is_better=False),
        row("qlora_memory 4-bit: encoder linears", med("qlora", "linear_bytes") * mb, "MB", fp_l,
            higher_is_better=False),
        row("qlora_memory 4-bit + 4-bit embeddings: all weight arrays", med("qlora_emb", "weight_bytes") * mb, "MB",
            fp_w, higher_is_better=False),
        row("qlora_memory 4-bit: peak RSS (train, batch 32, seq 64)", med("qlora", "rss_mb"), "MB",
            med("fp32", "rss_mb"), higher_is_better=False),
        row("qlora_memory 4-bit + 4-bit embeddings: peak RSS", med("qlora_emb", "rss_mb"), "MB",
            med("fp32", "rss_mb"), higher_is_better=False),
        row("qlora_memory 4-bit: train step (batch 32, seq 64)", med("qlora", "samples_per_s"), "samples/s",
            med("fp32", "samples_per_s")),
        row("qlora_memory 4-bit + 4-bit embeddings: train step", med("qlora_emb", "samples_per_s"), "samples/s",
            med("fp32", "samples_per_s")),
    ]
    for r in rows:
        r["peer"] = "fp32 LoRA (preset efficient: r 4 on query, value), same process layout"
        r["runs"] = args.rounds
    write_results("qlora", rows)


if __name__ == "__main__":
    main()
