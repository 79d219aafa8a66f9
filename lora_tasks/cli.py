"""``kaggle-lora`` command line: the library's own commands (the Prefect pipeline lives in flows/)."""

from __future__ import annotations

import argparse
import logging
import sys
import time

import lora_tasks

log = logging.getLogger("lora_tasks")


def _embed(args: argparse.Namespace) -> int:
    import mlx.core as mx
    import numpy as np

    from lora_tasks.models import load_encoder
    from lora_tasks.models.heads import mean_pool

    t0 = time.perf_counter()
    enc = load_encoder(args.model)
    print(f"model: {enc.source} ({enc.config.num_hidden_layers} layers, hidden {enc.config.hidden_size})")
    batch = enc.tokenizer(args.sentences, max_length=args.max_length)
    hidden = enc.model(mx.array(batch.input_ids), mx.array(batch.attention_mask), mx.array(batch.token_type_ids))
    vecs = np.array(mean_pool(hidden, mx.array(batch.attention_mask)))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    for text, v in zip(args.sentences, vecs):
        print(f"  [{', '.join(f'{x:+.3f}' for x in v[:4])}, ...]  {text}")
    if len(vecs) > 1:
        sims = vecs @ vecs.T
        print("cosine similarity to the first sentence:", ", ".join(f"{s:.3f}" for s in sims[0, 1:]))
    print(f"done in {time.perf_counter() - t0:.2f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kaggle-lora", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    embed = sub.add_parser("embed", help="Embed sentences with an encoder (default: offline all-MiniLM-L6-v2).")
    embed.add_argument("sentences", nargs="*", default=[
        "A fire broke out near the harbour last night.",
        "Firefighters fought a blaze at the docks.",
        "I love this new pair of shoes.",
    ])
    embed.add_argument("--model", default=None, help="Local folder or hub id (default: the offline MiniLM).")
    embed.add_argument("--max-length", type=int, default=128)
    embed.set_defaults(func=_embed)
    sub.add_parser(
        "blas", help="Print which BLAS serves MLX's matrix multiplications and which CPU kernels run."
    ).set_defaults(func=_kernels)
    return parser


def _kernels(args: argparse.Namespace) -> int:
    from lora_tasks.native import native_info  # builds the native kernels on first use (~15 s)

    print(native_info().summary())
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    print(lora_tasks.blas_info().summary())
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
