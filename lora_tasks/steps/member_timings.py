"""The members' timings kept per machine and table: the two samples the plan timed, and the seconds
each member took on the whole table in the last run that fit it.

Why keep the whole-table seconds: gradient boosting with early stopping does not scale with rows
the way a line through two samples says (a sample keeps a different number of rounds than the
table; CatBoost's seconds hardly grow with rows at these sizes). A run fits every member on the
whole table anyway, so what it measured is the exact price for the next plan of the same table,
which then times nothing (:func:`remember_round`). Each run moves the kept seconds halfway (in
ratio) to its own, so one run slowed by other work on the cores does not set the next price alone,
and the next runs take it back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lora_tasks.budget.cache import user_cache_dir
from lora_tasks.data.competition import CompetitionConfig
from lora_tasks.features.records import FeaturePlan

log = logging.getLogger("lora_tasks.steps.plan")

TIMING_VERSION = 4  # bump when the members or their timing change in a way the versions do not show
MEMBER_COSTS_ENV = "KAGGLE_LORA_MEMBER_COSTS"


@dataclass(frozen=True)
class CachedTimings:
    """What this machine measured for one table: ``samples`` (member -> seconds on the two timing
    samples), ``round`` (member -> seconds on the whole table, in the last run that fit it) and
    ``epoch_factor`` (the adapters' epochs over the cost probe's price of them, in the runs of the
    table so far: :mod:`lora_tasks.steps.epoch_calibration`; None: no run measured one)."""

    samples: dict[str, tuple[float, float]]
    round: dict[str, float] = field(default_factory=dict)
    epoch_factor: float | None = None


def cache_dir() -> Path:
    """Where this machine keeps the members' timings: ``$KAGGLE_LORA_MEMBER_COSTS``, else
    ``$XDG_CACHE_HOME/kaggle-lora/member-costs`` (``~/.cache`` by default). The override keeps a
    test session's timings out of the user's, as ``$KAGGLE_LORA_PROBE_CACHE`` does the probe's."""
    return user_cache_dir("member-costs", MEMBER_COSTS_ENV)


def timing_key(frame: pd.DataFrame, config: CompetitionConfig, n_folds: int, seed: int,
               class_weight: str | None, features: FeaturePlan | None, sizes: tuple[int, int]) -> str:
    """Everything that decides the timings: the rows, what the members see of them (the generated
    features too), the folds, the sample sizes, the machine and the libraries' versions."""
    from importlib.metadata import version

    built = json.dumps(dataclasses.asdict(features), sort_keys=True, default=str) if builds(features) else ""
    parts = [str(pd.util.hash_pandas_object(frame, index=False).sum()), built, config.task_type,
             ",".join(config.target_columns), ",".join(config.excluded_columns), str(n_folds), str(seed),
             str(class_weight), f"{sizes[0]},{sizes[1]}", platform.node(), str(os.cpu_count()), str(TIMING_VERSION),
             *(f"{p}={version(p)}" for p in ("lightgbm", "catboost", "scikit-learn"))]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


def builds(features: FeaturePlan | None) -> bool:
    """Whether the features step generates any column (then the members are timed with them)."""
    return bool(features is not None and features.features)


def _seconds(value: object) -> float:
    """A cached number of seconds, or ValueError: a hand-edited or foreign file must not price a plan."""
    s = float(value)  # type: ignore[arg-type]
    if not (math.isfinite(s) and s >= 0):
        raise ValueError(f"{value!r} is not a number of seconds")
    return s


def load_timings(key: str) -> CachedTimings | None:
    """The timings kept under ``key``; None when absent or unreadable (the plan then times again)."""
    try:
        data = json.loads((cache_dir() / f"{key}.json").read_text())
        samples = {str(name): (_seconds(t[0]), _seconds(t[1])) for name, t in data["timings"].items()}
        whole = {str(name): _seconds(s) for name, s in (data.get("round") or {}).items()}
        factor = data.get("epoch_factor")
        factor = None if factor is None else _seconds(factor)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None
    return CachedTimings(samples, whole, factor or None)


def keep_timings(key: str, timings: CachedTimings) -> bool:
    """Write ``timings`` under ``key`` (a unique temp file, then renamed); False when the cache dir
    cannot be written, which only costs the next plan a new measurement."""
    folder = cache_dir()
    tmp = folder / f".tmp-{key}-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"timings": timings.samples, "round": timings.round,
                                   "epoch_factor": timings.epoch_factor}))
        tmp.replace(folder / f"{key}.json")
        return True
    except OSError as err:
        log.info("members' timings not cached (%s)", err)
        tmp.unlink(missing_ok=True)
        return False


def remember_round(key: str, seconds: dict[str, float]) -> bool:
    """Keep each member's ``seconds`` on the whole table beside the samples timed under ``key``, for
    the next plan of the table: halfway, in ratio, from the seconds kept before (the geometric mean),
    or as they are for a member with none. False when there is nothing to add to (no key, no timings
    kept, a number that is not finite)."""
    if not key or not seconds:
        return False
    found = load_timings(key)
    if found is None:
        return False
    try:
        whole = {name: _seconds(s) for name, s in seconds.items()}
    except (TypeError, ValueError):
        log.warning("members' round not cached: its seconds %s are not all finite", seconds)
        return False
    moved = {name: math.sqrt(found.round[name] * s) if found.round.get(name) else s for name, s in whole.items()}
    return keep_timings(key, dataclasses.replace(found, round={**found.round, **moved}))


__all__ = ["CachedTimings", "TIMING_VERSION", "builds", "cache_dir", "keep_timings", "load_timings",
           "remember_round", "timing_key"]
