"""The cost probe's estimate against real training: MiniLM on a few hundred titanic rows.

    python benchmarks/budget_estimate.py [--rows 400] [--batch 32] [--epochs 2]

Times the probe (cold, then from its cache), prices one fold's adapter-epoch with the cost
model (adapters on every layer, and on the top 2 layers over the frozen-prefix cache), then
trains that fold for real and compares: epoch seconds (the last epoch: the first one also
compiles), prefix states and prediction. Then prices the table of issue 23 (7,000 rows of ~70
tokens) and shows what the planner picks within the default limit. Writes
``benchmarks/results/budget_estimate.json``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import row, write_results

import lora_tasks  # noqa: F401 - BLAS set-up before mlx
from lora_tasks.budget import (
    DEFAULT_TIME_LIMIT_S,
    Candidate,
    MemberCosts,
    Workload,
    effective_width,
    estimate_cost,
    estimate_members,
    padded_width,
    plan_within_budget,
)
from lora_tasks.budget.probe import probe_costs
from lora_tasks.data.competition import load_competition
from lora_tasks.data.tokenizer import Tokenizer
from lora_tasks.training.factory import build_model
from lora_tasks.training.precision import compute_dtype_choice
from lora_tasks.training.prefix_cache import prefix_dataset
from lora_tasks.training.train import Dataset, TrainConfig, predict, train

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "titanic"
SHARED_DATA = Path("/work/shared/datasets/titanic")
HEAD = "binary_classification"
PRESET = "balanced"


def titanic_rows(n: int, max_len: int, seed: int = 0) -> tuple[Dataset, float]:
    folder = DATA if DATA.exists() else SHARED_DATA
    config = load_competition("titanic", data_dir=folder)
    train_frame = config.read_train().sample(n=n, random_state=seed).reset_index(drop=True)
    texts = config.row_template(train_frame).render_frame(train_frame)
    enc = Tokenizer.from_pretrained(None)(texts, max_length=max_len)
    data = Dataset.from_encoded(enc, train_frame[config.target_column].astype(np.int32).to_numpy())
    return data, float(data.lengths.mean())


DTYPE = "float32"  # set from --dtype in main()


def factory(top: int | None):
    return build_model(HEAD, PRESET, 1, top_layers=top, seed=0, compute_dtype=DTYPE)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=400)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "auto"),
                    help="the compute dtype of the frozen base (auto: bfloat16 where the CPU has avx512_bf16)")
    args = ap.parse_args()
    global DTYPE
    DTYPE = compute_dtype_choice(args.dtype).name

    data, mean_tokens = titanic_rows(args.rows, args.max_len)
    guess = effective_width(args.max_len, mean_tokens)
    work = Workload(train_rows=len(data), test_rows=0, max_seq_len=args.max_len, mean_tokens=mean_tokens, columns=10,
                    batch_width=padded_width(data.lengths, args.batch))
    # the machine is shared: its load decides absolute seconds, so it is recorded with them
    load = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    note = (f"load {load:.1f} on {cores} cores: other processes share the cores, so the seconds and the "
            "estimate/measured ratios below measure contention as much as the model; compare on a quiet machine"
            if load > cores else "quiet machine")
    if load > cores:
        print(f"warning: {note}")
    rows: list[dict] = [row("load_average_at_start", load, "runnable", note=note),
                        row("compute_dtype", 16 if DTYPE == "bfloat16" else 32, "bits", dtype=DTYPE),
                        row("mean_tokens_per_row", mean_tokens, "tokens"),
                        row("width_guessed_from_mean", guess, "tokens"),
                        row("width_of_the_batches", work.width, "tokens")]
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        costs = probe_costs(factory, model_id=f"minilm:{PRESET}", seq_len=work.width, batch_size=args.batch,
                            cache_dir=cache, dtype=DTYPE).costs
        rows.append(row("probe_cold", time.perf_counter() - t0, "s"))
        t0 = time.perf_counter()
        probe_costs(factory, model_id=f"minilm:{PRESET}", seq_len=work.width, batch_size=args.batch,
                    cache_dir=cache, dtype=DTYPE)
        rows.append(row("probe_cached", time.perf_counter() - t0, "s"))
    rows += [row("probe_full_step", costs.full_step_s, "s"), row("probe_top2_step", costs.step_s(2), "s"),
             row("probe_forward_per_row", costs.forward_row_s * 1000, "ms")]

    folds = 5
    valid = np.arange(len(data)) % folds == 0
    train_data, valid_data = data.subset(np.flatnonzero(~valid)), data.subset(np.flatnonzero(valid))
    members = MemberCosts(0.0, "not part of this comparison")
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch, early_stopping_patience=None, metric="accuracy")
    for label, top in (("full", None), ("top2", 2)):
        est = estimate_cost(Candidate(label, folds, args.epochs, top, args.batch), work, costs, members)
        net = factory(top)
        t0 = time.perf_counter()
        if top is None:
            trainee, tr, va = net, train_data, valid_data
        else:
            trainee, states = prefix_dataset(net, data)
            tr, va = states.subset(np.flatnonzero(~valid)), states.subset(np.flatnonzero(valid))
            prefix_s = time.perf_counter() - t0
            rows.append(row("top2_prefix_states", prefix_s, "s", estimate=round(est.prefix_s, 3),
                            estimate_over_measured=round(est.prefix_s / prefix_s, 3)))
        net.train()
        result = train(trainee, tr, va, cfg)
        epoch_s = result.history[-1]["seconds"]
        rows.append(row(f"{label}_epoch_measured", epoch_s, "s", first_epoch_s=result.history[0]["seconds"],
                        estimate=round(est.epoch_s, 3), estimate_over_measured=round(est.epoch_s / epoch_s, 3)))
        t0 = time.perf_counter()
        predict(trainee, va)
        predict_s = time.perf_counter() - t0
        per_fold_est = est.predict_s / folds
        rows.append(row(f"{label}_predict_valid", predict_s, "s", estimate=round(per_fold_est, 3),
                        estimate_over_measured=round(per_fold_est / max(predict_s, 1e-9), 3)))

    # issue 23's table: 7,000 rows of ~70 tokens, 5 folds x 4 epochs on every layer, batch 64
    big = Workload(train_rows=7000, test_rows=3000, max_seq_len=96, mean_tokens=70.0, columns=12)
    rules = Candidate("rules", 5, 4, None, 64)
    untuned = estimate_cost(rules, big, costs, estimate_members(big, 5), 60.0)
    rows.append(row("issue23_full_depth_epoch_estimate", untuned.epoch_s, "s", reason=untuned.reason))
    choice = plan_within_budget(rules, big, costs, estimate_members(big, 5), DEFAULT_TIME_LIMIT_S)
    rows.append(row("issue23_default_limit_plan", choice.chosen.total_s / 60 if choice.fits else float("nan"), "min",
                    choice=choice.chosen.candidate.name if choice.fits else "none", reason=choice.reason))
    rows.append(row("load_average_at_end", os.getloadavg()[0], "runnable"))
    write_results("budget_estimate", rows)


if __name__ == "__main__":
    main()
