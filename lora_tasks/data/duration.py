"""Durations as a user writes them (``20m``, ``1h30m``, ``90s``, ``600``) and as a person reads them."""

from __future__ import annotations

import math
import re

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0}
ACCEPTED_FORMS = "a number of seconds (600), or hours/minutes/seconds such as 20m, 1h, 90s, 1h30m"


def parse_duration(text: str | float) -> float:
    """Seconds in ``text``: ``"20m"`` -> 1200.0, ``"1h30m"`` -> 5400.0, ``"600"`` or 600 -> 600.0.

    Why this small grammar: ``--time-limit`` arrives from a command line, a flow parameter and a
    TOML file, and all three should read the same way a person says it. A bare number is
    seconds (AutoGluon's ``time_limit`` convention). Zero, negative and unknown units are errors
    that list the accepted forms.
    """
    if isinstance(text, bool):
        raise TypeError(f"time limit {text!r} is not a duration; use {ACCEPTED_FORMS}.")
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        raw = str(text).strip().lower().replace(" ", "")
        seconds = _parse_text(raw, text)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"time limit {text!r} must be a positive duration; use {ACCEPTED_FORMS}.")
    return seconds


def _parse_text(raw: str, original: object) -> float:
    try:
        return float(raw)
    except ValueError:
        pass
    pos, seconds, seen = 0, 0.0, []
    for match in _PART.finditer(raw):
        if match.start() != pos:
            break
        unit = match.group(2)
        if unit in seen or (seen and "hms".index(unit) < "hms".index(seen[-1])):
            raise ValueError(f"time limit {original!r} repeats or reorders its units; write them once, in the "
                             f"order h, m, s ({ACCEPTED_FORMS}).")
        seen.append(unit)
        seconds += float(match.group(1)) * _UNIT_S[unit]
        pos = match.end()
    if not seen or pos != len(raw):
        raise ValueError(f"time limit {original!r} is not a duration; use {ACCEPTED_FORMS}.")
    return seconds


def format_duration(seconds: float) -> str:
    """``40 s``, ``14.2 min``, ``1.5 h``: the unit a person reads a plan's estimate in."""
    if not math.isfinite(seconds):
        return "unknown"
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def limit_argument(seconds: float) -> str:
    """``seconds`` rounded up to whole minutes as a ``--time-limit`` value (``25m``)."""
    return f"{max(1, math.ceil(seconds / 60))}m"
