"""Where measured step costs are kept: the user's cache dir, one JSON file per measured point.

Why in the user's cache dir (``$XDG_CACHE_HOME/kaggle-lora/cost-probe``, or
``$KAGGLE_LORA_PROBE_CACHE``) and not the run's work dir: a probe costs seconds, and the costs
belong to the machine and the model, not to a competition. A run on another competition, in
another work dir, reuses what an earlier run measured and scales it to its own widths
(:func:`lora_tasks.budget.costs.costs_from_points`).

A :class:`ProbeProfile` says what a set of points is valid for: the machine (CPU model, a digest
of its flags, the cores), the model (its identity and adapter preset), the compute dtype, what was
timed, the versions of MLX and this package, and the native kernels' build. Each point of a profile (one width and batch) is
its own file, so concurrent runs never overwrite each other's points.
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

CACHE_VERSION = 5  # bump when the probe measures differently (5: its steps keep their memory in MLX's cache, as training's do)
PROBE_CACHE_ENV = "KAGGLE_LORA_PROBE_CACHE"


def user_cache_dir(name: str, override_env: str) -> Path:
    """A folder of what this machine measured: ``$<override_env>``, else
    ``$XDG_CACHE_HOME/kaggle-lora/<name>`` (``~/.cache`` by default). The override lets a test
    session keep its measurements out of the user's."""
    override = os.environ.get(override_env)
    if override:
        return Path(override)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kaggle-lora" / name


def probe_cache_dir() -> Path:
    """``$KAGGLE_LORA_PROBE_CACHE``, else ``$XDG_CACHE_HOME/kaggle-lora/cost-probe`` (``~/.cache`` by default)."""
    return user_cache_dir("cost-probe", PROBE_CACHE_ENV)


def _cpuinfo_field(name: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(name):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model string (``/proc/cpuinfo`` on Linux, else what ``platform`` knows)."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine() or "unknown cpu"


def cpu_flags_digest() -> str:
    """A short digest of the CPU's feature flags: two VMs with one model string can differ in
    ``avx512_bf16`` (and so in what the kernels run), so the flags are part of the machine."""
    flags = _cpuinfo_field("flags") or platform.machine()
    return hashlib.sha256(" ".join(sorted(flags.split())).encode()).hexdigest()[:8]


def machine_id() -> str:
    """``<cpu model> x<cores> flags:<digest>``: costs measured on one machine kind hold on the same kind."""
    return f"{cpu_model()} x{os.cpu_count() or 1} flags:{cpu_flags_digest()}"


def kernels_build() -> str:
    """The native CPU kernels' build, named by the fingerprint of their sources and flags ("none" off
    the CPU or without them). Why in the key: a faster GEMM or attention makes every step cost
    measured with the old kernels wrong, and the package's version does not change with them."""
    from lora_tasks.backend import is_cpu_backend

    if not is_cpu_backend():
        return "none"
    from lora_tasks import native

    path = native.native_info().path
    return Path(path).name.split(".")[0] if path else "none"


def _versions() -> str:
    out = []
    for dist in ("mlx", "kaggle-lora"):
        try:
            out.append(f"{dist}={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            out.append(f"{dist}=none")
    out.append(f"kernels={kernels_build()}")
    return ",".join(out)


@dataclass(frozen=True)
class ProbeProfile:
    """What a set of cached points is valid for (everything but the width and the batch)."""

    machine: str
    model: str  # model identity with its adapter preset, e.g. "all-MiniLM-L6-v2-1a2b3c4d:balanced"
    dtype: str  # the resolved compute dtype: "float32" or "bfloat16"
    timed_tops: tuple[int, ...]
    versions: str = ""
    cache_version: int = CACHE_VERSION

    @classmethod
    def here(cls, model: str, dtype: str, timed_tops: tuple[int, ...]) -> ProbeProfile:
        return cls(machine_id(), model, dtype, tuple(sorted(timed_tops)), _versions())

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def points_key(self, cache_dir: str | os.PathLike) -> str:
        """The path prefix of this profile's points in ``cache_dir`` (:func:`forget_points` takes it)."""
        return str(Path(cache_dir) / f"cost-probe-{self.digest()}")

    def point_path(self, cache_dir: str | os.PathLike, seq_len: int, batch_size: int) -> Path:
        return Path(f"{self.points_key(cache_dir)}-s{int(seq_len)}-b{int(batch_size)}.json")


def _read_point(path: Path, profile: ProbeProfile) -> StepCosts | None:
    try:
        payload = json.loads(path.read_text())
        if payload.get("profile") != json.loads(json.dumps(asdict(profile))):
            return None
        c = payload["costs"]
        c["top_step_s"] = tuple((int(n), float(s)) for n, s in c["top_step_s"])
        return StepCosts(**c)
    except (OSError, ValueError, KeyError, TypeError) as exc:  # a broken file is re-measured, not fatal
        log.warning("cost probe cache %s is unreadable (%s); measuring again", path, exc)
        return None


def load_points(profile: ProbeProfile, cache_dir: str | os.PathLike) -> list[StepCosts]:
    """Every point cached for ``profile`` (any width and batch), narrowest first."""
    folder = Path(cache_dir)
    if not folder.is_dir():
        return []
    points = [p for p in (_read_point(f, profile) for f in folder.glob(f"cost-probe-{profile.digest()}-*.json"))
              if p is not None]
    return sorted(points, key=lambda c: (c.seq_len, c.batch_size))


def forget_points(points_key: str, measured_before: float | None = None) -> int:
    """Drop the points of one profile (``points_key``: :meth:`ProbeProfile.points_key`) that were
    written before ``measured_before`` (a ``time.time()``; None: every one), so the next plan with
    that model measures again; how many files went. Why a whole profile: a run that trained faster
    than its points said shows they were timed while other work shared the cores (contention only
    ever slows a step), and the others were likely taken in the same state. Why the time: a rerun
    of an old run from its cache sees the old verdict again, and must not drop points that a later
    run measured since."""
    key = Path(points_key)
    gone = 0
    for path in key.parent.glob(f"{key.name}-s*-b*.json"):
        try:
            if measured_before is None or path.stat().st_mtime < measured_before:
                path.unlink()
                gone += 1
        except OSError:  # another run dropped it first, or a read-only cache
            pass
    return gone


def save_point(profile: ProbeProfile, costs: StepCosts, cache_dir: str | os.PathLike) -> Path:
    """Write atomically (a unique temp name, then rename): concurrent runs never read half a file."""
    path = profile.point_path(cache_dir, costs.seq_len, costs.batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    tmp.write_text(json.dumps({"profile": asdict(profile), "costs": asdict(costs)}, indent=1, sort_keys=True))
    os.replace(tmp, path)
    return path
