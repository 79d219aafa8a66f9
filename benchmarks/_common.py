"""Shared helpers of the benchmark scripts: the result table, the JSON file, the PyTorch peer.

Every benchmark writes ``benchmarks/results/<name>.json``: a list of rows with ``name``,
``value``, ``unit`` and, where a peer ran in the same run, ``peer_value`` and ``ratio_vs_peer``
(> 1 means we are better).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

if "mlx.core" in sys.modules and "lora_tasks" not in sys.modules:
    # Measuring MLX's bundled reference BLAS would make every number meaningless (docs/performance.md).
    raise SystemExit("import lora_tasks before mlx in the benchmark script: it sets up the BLAS MLX calls; keep the "
                     "`import lora_tasks` above an `# isort: split` line so the linter cannot reorder it")

RESULTS = Path(__file__).resolve().parent / "results"
PEERS = Path(__file__).resolve().parent / "peers"


def row(name: str, value: float, unit: str, peer: float | None = None, higher_is_better: bool = True, **extra) -> dict:
    r = {"name": name, "value": round(float(value), 4), "unit": unit}
    if peer is not None and peer > 0 and value > 0:
        r["peer_value"] = round(float(peer), 4)
        r["ratio_vs_peer"] = round(value / peer if higher_is_better else peer / value, 3)
    r.update(extra)
    return r


def median_seconds(fn, repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``mx.eval(fn())`` over ``repeats`` calls, after ``warmup`` untimed ones (compiles,
    caches and thread pools settle first)."""
    import mlx.core as mx  # here, not at the top: the script has set up the BLAS by now

    for _ in range(warmup):
        mx.eval(fn())
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        mx.eval(fn())
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def cpu_row_fields() -> dict:
    """The CPU a row was measured on: its model, cores and the flags that decide which kernels run
    (numbers from an AVX2-only machine and from one with avx512_bf16 must never be mixed up)."""
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")
    return {"cpu": model, "cores": os.cpu_count(), "cpu_flags": [f for f in wanted if f in flags]}


T = TypeVar("T")


def kept_trials(name: str, trial_type: Callable[..., T]) -> list[T]:
    """The trials kept in ``results/<name>.json`` (each row's ``trial`` field), so a later call adds
    to them; none when the file does not exist yet."""
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return []
    return [trial_type(**r["trial"]) for r in json.loads(path.read_text()) if "trial" in r]


def write_results(name: str, rows: list[dict]) -> Path:
    cpu = cpu_row_fields()
    rows = [{**r, **{k: v for k, v in cpu.items() if k not in r}} for r in rows]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rows, indent=2) + "\n")
    tmp.replace(path)
    width = max(len(r["name"]) for r in rows)
    print(f"\n{'name':<{width}}  {'value':>10}  {'unit':<12} {'peer':>10}  {'ratio':>6}")
    for r in rows:
        peer = f"{r['peer_value']:>10.3f}" if "peer_value" in r else f"{'-':>10}"
        ratio = f"{r['ratio_vs_peer']:>6.2f}" if "ratio_vs_peer" in r else f"{'-':>6}"
        print(f"{r['name']:<{width}}  {r['value']:>10.3f}  {r['unit']:<12} {peer}  {ratio}")
    print(f"machine: {platform.machine()}, {cpu['cpu']}, {os.cpu_count()} cores, flags {' '.join(cpu['cpu_flags'])}; "
          f"wrote {path}")
    return path


def peer_python() -> str | None:
    """A Python with torch (+ transformers, peft) for the peer: $KAGGLE_LORA_PEER_PYTHON, or this one."""
    exe = os.environ.get("KAGGLE_LORA_PEER_PYTHON") or sys.executable
    ok = subprocess.run([exe, "-c", "import torch, transformers"], capture_output=True).returncode == 0
    if not ok:
        print(f"(no PyTorch peer: {exe} lacks torch/transformers; set KAGGLE_LORA_PEER_PYTHON to a Python "
              "that has `pip install torch==2.13.0 transformers peft`)")
        return None
    return exe


def run_peer(script: str, *args: str) -> dict | None:
    exe = peer_python()
    if exe is None:
        return None
    out = subprocess.run([exe, str(PEERS / script), *args], capture_output=True, text=True)
    if out.returncode != 0:
        print(f"(peer {script} failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode})")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def minilm_dir() -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from lora_tasks.hub import resolve_model_dir

    return str(resolve_model_dir(None))


@dataclass
class CliRun:
    """One ``kaggle-lora run`` of a benchmark: its exit code, wall time, the summary it wrote
    (``--json-out``; None when it failed), the last lines of its log, and its work folder (kept
    until the caller's ``with`` ends, so the submission file can still be read)."""

    code: int
    wall_s: float
    summary: dict | None
    tail: str
    work: Path


@contextlib.contextmanager
def kaggle_lora_run(competition: str, limit: str, server, log_path: Path, *extra: str) -> Iterator[CliRun]:
    """``kaggle-lora run --competition C --time-limit L --no-submit`` in a fresh work folder,
    against ``server`` (a fake Kaggle server), its output in ``log_path``."""
    import tempfile

    exe = Path(sys.executable).with_name("kaggle-lora")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kl-bench-") as work:
        out_json = Path(work) / "summary.json"
        cmd = [str(exe), "run", "--competition", competition, "--time-limit", limit, "--no-submit",
               "--work-dir", work, "--kaggle-endpoint", server.url, "--json-out", str(out_json), *extra]
        # --kaggle-endpoint reaches the fake server directly: only its credentials are needed (its
        # client_env() proxy settings are for the kaggle CLI and would also catch Prefect's local API)
        env = {**os.environ, "KAGGLE_USERNAME": server.username, "KAGGLE_KEY": server.key, "HF_HUB_OFFLINE": "1",
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        print(f"$ {' '.join(cmd[1:])}   (log: {log_path})", flush=True)
        start = time.perf_counter()
        with log_path.open("w") as log:
            code = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        wall = time.perf_counter() - start
        tail = " / ".join(log_path.read_text().strip().splitlines()[-3:])
        summary = json.loads(out_json.read_text()) if code == 0 else None
        yield CliRun(code, wall, summary, tail, Path(work))
