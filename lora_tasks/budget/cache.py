"""Where measured step costs are kept: one JSON file per machine, model, length bucket and batch.

Why on disk: a probe costs seconds, a plan is made on every run, and the same machine trains the
same model at the same lengths again and again. The key holds everything that decides the
timing: the CPU model and core count, the model (and its adapter preset and head), the length
bucket, the batch, what was timed, and the versions of MLX and this package.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import secrets
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from lora_tasks.budget.costs import StepCosts

log = logging.getLogger("lora_tasks.budget")

CACHE_VERSION = 1  # bump when the probe measures differently


def cpu_model() -> str:
    """The CPU's model string (``/proc/cpuinfo`` on Linux, else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def machine_id() -> str:
    """``<cpu model> x<cores>``: step costs measured on one machine kind hold on the same kind."""
    return f"{cpu_model()} x{os.cpu_count() or 1}"


def _versions() -> str:
    out = []
    for dist in ("mlx", "kaggle-lora"):
        try:
            out.append(f"{dist}={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            out.append(f"{dist}=none")
    return ",".join(out)


@dataclass(frozen=True)
class ProbeKey:
    """What a cached probe is valid for."""

    machine: str
    model: str  # model identity with its adapter preset and head, e.g. "minilm:balanced:binary"
    seq_len: int  # the length bucket
    batch_size: int
    timed_tops: tuple[int, ...]
    versions: str = ""
    cache_version: int = CACHE_VERSION

    @classmethod
    def here(cls, model: str, seq_len: int, batch_size: int, timed_tops: tuple[int, ...]) -> ProbeKey:
        return cls(machine_id(), model, int(seq_len), int(batch_size), tuple(sorted(timed_tops)), _versions())

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def path(self, cache_dir: str | os.PathLike) -> Path:
        return Path(cache_dir) / f"cost-probe-{self.digest()}.json"


def load_costs(key: ProbeKey, cache_dir: str | os.PathLike) -> StepCosts | None:
    """The cached costs for ``key``, or None (missing, unreadable or for another key)."""
    path = key.path(cache_dir)
    if not path.exists():
        return None
    try:
        payload = json.loads(path.read_text())
        if payload.get("key") != json.loads(json.dumps(asdict(key))):
            return None
        c = payload["costs"]
        c["top_step_s"] = tuple((int(n), float(s)) for n, s in c["top_step_s"])
        return StepCosts(**c)
    except (OSError, ValueError, KeyError, TypeError) as exc:  # a broken file is re-measured, not fatal
        log.warning("cost probe cache %s is unreadable (%s); measuring again", path, exc)
        return None


def save_costs(key: ProbeKey, costs: StepCosts, cache_dir: str | os.PathLike) -> Path:
    """Write atomically (a unique temp name, then rename): concurrent runs never read half a file."""
    path = key.path(cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    tmp.write_text(json.dumps({"key": asdict(key), "costs": asdict(costs)}, indent=1, sort_keys=True))
    os.replace(tmp, path)
    return path
