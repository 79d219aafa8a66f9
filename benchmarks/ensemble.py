"""Training K adapters on MiniLM: fused (one step, K-times batch), sequential, thread-parallel,
process-parallel (two worker processes, as Prefect's process runner trains folds); and the
frozen-prefix cache for a top-only preset against the plain path.

    python benchmarks/ensemble.py [--ks 2,4,8] [--steps 3] [--batch 16] [--seq 64]

Each mode runs in its own subprocess (clean memory; the thread mode with single-threaded BLAS,
MKL_NUM_THREADS=1, as PLATFORM_NOTES recommends). Steps are compiled LoRA steps (preset
"balanced", r=8 on Q,K,V,O; AdamW) with dropout off in every mode, timed as the median of
``--steps`` rounds after one warm-up round; a round is one step of each of the K adapters.
Rows give seconds per adapter-step (lower is better); the peer is sequential training at the
same K, so ``ratio_vs_peer`` > 1 means faster than sequential, and the ``cost vs K x one`` rows
are (time of K adapters) / (K x time of one adapter), goal <= 0.8.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import lora_tasks

HERE = Path(__file__).resolve().parent


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2]


# ---- workers (run in a subprocess each) ---------------------------------------------------------


def _models(k: int, preset: str = "balanced", **overrides):
    from lora_tasks.training.factory import create_bert_with_lora

    out = []
    for i in range(k):
        m, a = create_bert_with_lora("binary_classification", preset, dropout=0.0, seed=i, **overrides)
        m.eval()  # dropout off: compiled steps need no shared random state (threads would race on it)
        out.append((m, a))
    return out


def _make_step(model):
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim

    opt = optim.AdamW(learning_rate=1e-4)
    loss_and_grad = nn.value_and_grad(model, lambda m, ids, mask, y: m.loss(m(ids, mask), y))

    def step(ids, mask, y):
        loss, grads = loss_and_grad(model, ids, mask, y)
        opt.update(model, grads)
        return loss

    state = [model.state, opt.state]
    compiled = mx.compile(step, inputs=state, outputs=state)
    return lambda ids, mask, y: mx.eval(compiled(ids, mask, y), state)


def _wait_for_peers(barrier: str | None, parties: int) -> None:
    """Processes mode: each worker, warmed up, waits until every worker is, so their timed rounds overlap."""
    if not barrier:
        return
    Path(barrier, f"ready-{os.getpid()}").touch()
    while len(list(Path(barrier).glob("ready-*"))) < parties:
        time.sleep(0.01)


def worker_steps(mode: str, k: int, steps: int, batch: int, seq: int, barrier: str | None = None,
                 parties: int = 1) -> dict:
    import mlx.core as mx
    import numpy as np

    from lora_tasks.training.fused_training import FusedAdapters

    rng = np.random.default_rng(0)
    ids = mx.array(rng.integers(1000, 2000, (batch, seq)).astype(np.int32))
    mask = mx.ones((batch, seq), dtype=mx.int32)
    y = mx.array(np.arange(batch) % 2)
    pairs = _models(k)
    times: list[float] = []
    if mode == "fused":
        fused = FusedAdapters.from_models([m for m, _ in pairs], [a for _, a in pairs])
        fused.eval()
        step = _make_step(fused)
        for _ in range(steps + 1):
            t = time.perf_counter()
            step(ids, mask, y)
            times.append(time.perf_counter() - t)
    elif mode == "sequential":
        fns = [_make_step(m) for m, _ in pairs]
        for i in range(steps + 1):
            if i == 1:
                _wait_for_peers(barrier, parties)
            t = time.perf_counter()
            for fn in fns:
                fn(ids, mask, y)
            times.append(time.perf_counter() - t)
    elif mode == "threads":
        fns = [_make_step(m) for m, _ in pairs]
        n_threads = min(2, k)
        groups = [fns[j::n_threads] for j in range(n_threads)]
        barrier = threading.Barrier(n_threads + 1)

        def run(group):
            for _ in range(steps + 1):
                barrier.wait()
                for fn in group:
                    fn(ids, mask, y)
                barrier.wait()

        threads = [threading.Thread(target=run, args=(g,)) for g in groups]
        for th in threads:
            th.start()
        for _ in range(steps + 1):
            barrier.wait()
            t = time.perf_counter()
            barrier.wait()
            times.append(time.perf_counter() - t)
        for th in threads:
            th.join()
    else:
        raise ValueError(mode)
    return {"mode": mode, "k": k, "round_s": _median(times[1:]), "rounds": times[1:]}


def worker_prefix(mode: str, k: int, epochs: int, rows: int, batch: int, seq: int) -> dict:
    import numpy as np

    from lora_tasks.training.prefix_cache import FromPrefix, prefix_dataset
    from lora_tasks.training.train import Dataset, TrainConfig, train

    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 2000, (rows, seq)).astype(np.int32)
    data = Dataset(ids, np.ones_like(ids), np.zeros_like(ids), (np.arange(rows) % 2).astype(np.int32))
    cfg = TrainConfig(epochs=epochs, batch_size=batch, early_stopping_patience=None, learning_rate=1e-4)
    pairs = _models(k, "balanced", layers_to_transform=(4, 5))
    t = time.perf_counter()
    if mode == "prefix":
        # the K models share the frozen base (same checkpoint): the prefix states are computed once
        wrapped, cached = prefix_dataset(pairs[0][0], data)
        for i, (m, _) in enumerate(pairs):
            train(wrapped if i == 0 else FromPrefix(m, wrapped.start), cached, None, cfg)
    else:
        for m, _ in pairs:
            train(m, data, None, cfg)
    total = time.perf_counter() - t
    return {"mode": mode, "k": k, "epochs": epochs, "total_s": total, "per_adapter_epoch_s": total / (k * epochs)}


# ---- orchestration ------------------------------------------------------------------------------


def _run(args: list[str], single_blas: bool = False, timeout: float | None = None) -> dict | None:
    env = dict(os.environ)
    if single_blas:
        env.update(MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    try:
        out = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], capture_output=True, text=True,
                             env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"worker {args} did not finish in {timeout} s (killed); not measured", flush=True)
        return None
    if out.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _run_processes(k: int, common: list[str], single_blas: bool) -> dict:
    """What ``--runner process`` does for K fold adapters on this machine: two worker processes at
    once, each training its half sequentially (rounds synchronized after the warm-up). A round of
    all K is the slower worker's round."""
    import tempfile

    env = dict(os.environ)
    if single_blas:
        env.update(MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    halves = [k - k // 2, k // 2]
    with tempfile.TemporaryDirectory() as barrier:
        procs = [subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", "sequential", "--k",
                                   str(half), *common, "--barrier", barrier, "--parties", "2"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for half in halves]
        outs = [proc.communicate() for proc in procs]
    for proc, (_, err) in zip(procs, outs, strict=True):
        if proc.returncode != 0:
            raise RuntimeError(f"processes worker failed:\n{err[-3000:]}")
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    return {"mode": "processes", "k": k, "round_s": max(r["round_s"] for r in results),
            "rounds": [max(a, b) for a, b in zip(results[0]["rounds"], results[1]["rounds"], strict=True)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ks", default="2,4,8")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--prefix-k", type=int, default=4)
    ap.add_argument("--prefix-epochs", type=int, default=2)
    ap.add_argument("--prefix-rows", type=int, default=64)
    ap.add_argument("--thread-timeout", type=float, default=90.0)
    ap.add_argument("--worker", default=None)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--barrier", default=None)
    ap.add_argument("--parties", type=int, default=1)
    args = ap.parse_args()

    if args.worker in ("fused", "sequential", "threads"):
        print(json.dumps(worker_steps(args.worker, args.k, args.steps, args.batch, args.seq, args.barrier,
                                      args.parties)))
        return
    if args.worker in ("prefix", "plain"):
        print(json.dumps(worker_prefix(args.worker, args.k, args.prefix_epochs, args.prefix_rows, args.batch,
                                       args.seq)))
        return

    sys.path.insert(0, str(HERE.parent))
    sys.path.insert(0, str(HERE))
    from _common import row, write_results

    from lora_tasks.backend import is_cpu_backend
    from lora_tasks.training.fused_training import default_parallel_mode

    print(lora_tasks.blas_info().summary())
    rows = []
    common = ["--steps", str(args.steps), "--batch", str(args.batch), "--seq", str(args.seq)]
    raw = {}
    for k in [int(s) for s in args.ks.split(",")]:
        res = {}
        for mode in ("sequential", "fused", "threads"):
            # compiled steps in two Python threads have hung on this box: the thread mode gets a time limit
            res[mode] = _run(["--worker", mode, "--k", str(k), *common], single_blas=mode == "threads",
                             timeout=args.thread_timeout if mode == "threads" else None)
        if k >= 2:  # Prefect's process runner: as it runs (BLAS threads as configured), and with 1-thread BLAS
            res["processes"] = _run_processes(k, common, single_blas=False)
            res["processes-1blas"] = _run_processes(k, common, single_blas=True)
        for mode, r in res.items():
            if r is not None:
                print(f"K={k} {mode}: {r['round_s']:.2f} s/round (rounds {[round(x, 2) for x in r['rounds']]})",
                      flush=True)
        raw[k] = res
        seq_s = res["sequential"]["round_s"] / k
        labels = {"threads": "threads (2, BLAS 1 thread each)",
                  "processes": "processes (2, as --runner process runs them)",
                  "processes-1blas": "processes (2, BLAS 1 thread each)"}
        for mode in res:
            if res[mode] is None:
                rows.append(row(f"threads K={k}: not measured (hung past {args.thread_timeout:g} s)", 0.0, "s"))
                continue
            per = res[mode]["round_s"] / k
            label = labels.get(mode, mode)
            rows.append(row(f"{label} K={k} b{args.batch} s{args.seq}: time per adapter-step", per, "s",
                            None if mode == "sequential" else seq_s, higher_is_better=False))
            if mode != "sequential":
                rows.append(row(f"{label} K={k}: cost vs K x one adapter (goal <= 0.8)", per / seq_s, "x"))
    pk, pe = args.prefix_k, args.prefix_epochs
    pcommon = ["--k", str(pk), "--prefix-epochs", str(pe), "--prefix-rows", str(args.prefix_rows),
               "--batch", str(args.batch), "--seq", str(args.seq)]
    plain = _run(["--worker", "plain", *pcommon])
    prefix = _run(["--worker", "prefix", *pcommon])
    print(f"plain: {plain}\nprefix: {prefix}", flush=True)
    rows.append(row(f"top-only (layers 4,5) K={pk} x E={pe} on {args.prefix_rows} rows: plain path", plain["per_adapter_epoch_s"],
                    "s/adapter-epoch"))
    rows.append(row(f"top-only (layers 4,5) K={pk} x E={pe} on {args.prefix_rows} rows: frozen-prefix cache",
                    prefix["per_adapter_epoch_s"], "s/adapter-epoch", plain["per_adapter_epoch_s"],
                    higher_is_better=False))
    rows.append(row(f"default_parallel_mode() on this backend ({'cpu' if is_cpu_backend() else 'metal'})",
                    1.0 if default_parallel_mode() == "fused" else 0.0, "1=fused,0=sequential"))
    write_results("ensemble", rows)


if __name__ == "__main__":
    main()
