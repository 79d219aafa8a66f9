"""Rows of many widths: a train epoch and the frozen-prefix pass with freed memory kept in the heap
(``lora_tasks.heap``, the default on a Linux CPU) against glibc's defaults (``KAGGLE_LORA_HEAP=default``).

    python benchmarks/heap.py [--rows 320] [--epochs 2] [--rounds 2]

Why rows of many widths: a run cuts each batch to its longest row, so the batches change size
from one step to the next, and MLX's buffer cache (which reuses a buffer only for a request of
nearly its size) misses. The cost probe times one shape repeated, which never misses. Each side
runs in its own process (the heap is set up at import), on the real MiniLM from the prefix of its
top 2 layers, in a worker thread as Prefect's task runner runs a fold; the sides take turns for
``--rounds`` and each reports its median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from _common import row, write_results

#: (name, batch size, narrowest and widest row in tokens): a table of long text rows and short texts.
SHAPES = (("wide rows (300-496 tokens), batch 16", 16, 300, 496), ("short rows (24-128 tokens), batch 64", 64, 24, 128))

_ONE_SIDE = """
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
import lora_tasks
import numpy as np
from lora_tasks.heap import heap_info
from lora_tasks.training.factory import build_model
from lora_tasks.training.prefix_cache import prefix_dataset
from lora_tasks.training.train import Dataset, TrainConfig, train

rows, epochs, batch, narrow, wide = (int(a) for a in sys.argv[1:6])
rng = np.random.default_rng(0)
lengths = rng.integers(narrow, wide + 1, rows)
mask = (np.arange(wide)[None] < lengths[:, None]).astype(np.int32)
ids = rng.integers(1000, 20000, (rows, wide)).astype(np.int32) * mask
data = Dataset(ids, mask, np.zeros_like(ids), rng.normal(size=rows).astype(np.float32))

def fold():
    model = build_model("regression", "efficient", 1, top_layers=2, compute_dtype="auto")[0]
    t = time.perf_counter()
    wrapped, states = prefix_dataset(model, data)
    prefix = time.perf_counter() - t
    result = train(wrapped, states, None, TrainConfig(epochs=epochs, batch_size=batch, early_stopping_patience=None))
    return prefix, [h["seconds"] for h in result.history]

with ThreadPoolExecutor(1) as pool:
    prefix, epoch_s = pool.submit(fold).result()
print(json.dumps({"kept": heap_info().kept, "prefix_ms": 1000 * prefix / rows,
                  "epoch_ms": 1000 * min(epoch_s) / rows}))
"""


def one_side(kept: bool, args: argparse.Namespace, batch: int, narrow: int, wide: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "KAGGLE_LORA_HEAP"}
    if not kept:
        env["KAGGLE_LORA_HEAP"] = "default"
    done = subprocess.run([sys.executable, "-c", _ONE_SIDE, str(args.rows), str(args.epochs), str(batch), str(narrow),
                           str(wide)], capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["kept"] != kept:
        raise SystemExit(f"the heap was {'kept' if result['kept'] else 'left at glibc defaults'} in a run meant to be "
                         f"the other: a MALLOC_* or GLIBC_TUNABLES variable of yours decides it; unset it")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=320)
    ap.add_argument("--epochs", type=int, default=2, help="epochs per fold; each side reports its fastest")
    ap.add_argument("--rounds", type=int, default=2, help="turns of each side (medians reported)")
    args = ap.parse_args()
    rows = []
    for name, batch, narrow, wide in SHAPES:
        runs: dict[bool, list[dict]] = {True: [], False: []}
        for _ in range(args.rounds):
            for kept in (True, False):
                runs[kept].append(one_side(kept, args, batch, narrow, wide))
        for part, key in (("train epoch", "epoch_ms"), ("frozen-prefix pass", "prefix_ms")):
            ours = statistics.median(r[key] for r in runs[True])
            glibc = statistics.median(r[key] for r in runs[False])
            rows.append(row(f"{part}, {name}: heap kept vs glibc defaults", ours, "ms/row", glibc,
                            higher_is_better=False, rounds={k: [r[key] for r in v] for k, v in
                                                            (("kept", runs[True]), ("glibc", runs[False]))}))
    write_results("heap", rows)


if __name__ == "__main__":
    main()
