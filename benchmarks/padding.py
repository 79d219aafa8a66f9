"""Padding saved by length-bucketed batching on the three real competitions.

    python benchmarks/padding.py [--batch 32] [--seed 0]

For each competition the training rows are serialized as the model sees them, tokenized with
MiniLM (lengths capped at the auto-configured max_seq_len), and one epoch of batches is counted
three ways: every batch padded to the global maximum, random batches padded to their own
longest row, and length-bucketed batches (lora_tasks.data.batching). Token slots are what the
encoder computes; fewer slots for the same rows is time saved. Writes
benchmarks/results/padding.json (rows of name, value, unit).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

from lora_tasks.data.autoconfig import auto_configure
from lora_tasks.data.batching import padding_report
from lora_tasks.data.competition import load_competition
from lora_tasks.data.profile import profile_competition
from lora_tasks.data.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
RESULTS = Path(__file__).resolve().parent / "results"
COMPETITIONS = ("titanic", "house-prices-advanced-regression-techniques", "nlp-getting-started")


def measure(slug: str, tok: Tokenizer, batch_size: int, seed: int) -> list[dict]:
    cfg = load_competition(slug, SHARED)
    frame = cfg.read_train()
    settings = auto_configure(profile_competition(cfg, tokenizer=tok, train=frame), competition=cfg)
    lengths = tok.lengths(cfg.row_template(frame).render_frame(frame))
    r = padding_report(lengths, batch_size, seed=seed, max_len=settings.max_seq_len)
    short = slug.split("-")[0] if slug.startswith("house") else slug
    return [
        {"name": f"{short}/rows", "value": r.rows, "unit": "rows"},
        {"name": f"{short}/max_seq_len", "value": settings.max_seq_len, "unit": "tokens"},
        {"name": f"{short}/real_tokens", "value": r.real_tokens, "unit": "tokens"},
        {"name": f"{short}/padded_global_max", "value": r.global_max_tokens, "unit": "tokens"},
        {"name": f"{short}/padded_random_dynamic", "value": r.random_dynamic_tokens, "unit": "tokens"},
        {"name": f"{short}/padded_bucketed", "value": r.bucketed_tokens, "unit": "tokens"},
        {"name": f"{short}/saved_vs_random_dynamic", "value": round(100 * r.saved_vs_random, 2), "unit": "%"},
        {"name": f"{short}/saved_vs_global_max", "value": round(100 * r.saved_vs_global_max, 2), "unit": "%"},
        {"name": f"{short}/bucketed_efficiency", "value": round(100 * r.bucketed_efficiency, 2), "unit": "% real"},
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    tok = Tokenizer.from_pretrained(None)
    rows = [r for slug in COMPETITIONS for r in measure(slug, tok, args.batch, args.seed)]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "padding.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rows, indent=2) + "\n")
    os.replace(tmp, path)
    width = max(len(r["name"]) for r in rows)
    print(f"{'name':<{width}}  {'value':>12}  unit   (batch {args.batch}, seed {args.seed})")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['value']:>12,}  {r['unit']}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
