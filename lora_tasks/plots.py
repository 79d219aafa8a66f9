"""Learning curves as a hand-written SVG: one polyline per fold, no plotting library.

:func:`learning_curve_svg` is pure (histories in, SVG text out); :func:`svg_data_uri` wraps the text
so it can travel inside a Prefect image artifact (the UI shows it with a plain ``<img>``).
A history is what :class:`lora_tasks.training.train.TrainResult` records: one dict per epoch with
``epoch``, ``train_loss``, ``seconds`` and, when there was a validation split, ``valid_<metric>``.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from xml.sax.saxutils import escape, quoteattr

COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
_MARGIN = {"left": 58, "right": 12, "top": 28, "bottom": 40}

History = Sequence[Mapping[str, float]]


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _span(values: Sequence[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:  # a flat curve (or one point) still gets a visible axis
        pad = abs(lo) * 0.05 or 1.0
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.05
    return lo - pad, hi + pad


def _panel(x0: float, y0: float, w: float, h: float, title: str, key: str,
           series: Sequence[tuple[str, str, list[tuple[float, float]]]]) -> list[str]:
    """One chart: frame, title, ticks, and a polyline (plus point markers) per series."""
    left, top = x0 + _MARGIN["left"], y0 + _MARGIN["top"]
    pw, ph = w - _MARGIN["left"] - _MARGIN["right"], h - _MARGIN["top"] - _MARGIN["bottom"]
    out = [f'<text x="{x0 + w / 2:.1f}" y="{y0 + 17:.1f}" text-anchor="middle" font-weight="bold">{escape(title)}</text>']
    points = [p for _, _, pts in series for p in pts]
    if not points:
        out.append(f'<text x="{left + pw / 2:.1f}" y="{top + ph / 2:.1f}" text-anchor="middle" fill="#666">no values</text>')
        return out
    epochs = sorted({e for e, _ in points})
    e_lo, e_hi = epochs[0], epochs[-1]
    v_lo, v_hi = _span([v for _, v in points])

    def sx(e: float) -> float:
        return left + pw / 2 if e_hi == e_lo else left + (e - e_lo) / (e_hi - e_lo) * pw

    def sy(v: float) -> float:  # SVG y grows downwards: larger values sit higher
        return top + (v_hi - v) / (v_hi - v_lo) * ph

    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    for i in range(5):
        v = v_lo + (v_hi - v_lo) * i / 4
        y = sy(v)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{left - 5}" y="{y + 4:.1f}" text-anchor="end">{_fmt(v)}</text>')
    step = max(1, math.ceil(len(epochs) / 10))
    for e in epochs[::step]:
        out.append(f'<text x="{sx(e):.1f}" y="{top + ph + 16:.1f}" text-anchor="middle">{_fmt(e)}</text>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{top + ph + 32:.1f}" text-anchor="middle" fill="#444">epoch</text>')
    for i, (label, colour, pts) in enumerate(series):
        # earlier folds are drawn wider, so a fold hidden under an identical later one still shows
        wide = (len(series) - 1 - i) / max(len(series) - 1, 1)
        xy = " ".join(f"{sx(e):.1f},{sy(v):.1f}" for e, v in pts)
        out.append(f'<polyline class="curve" data-panel={quoteattr(key)} data-fold={quoteattr(label)} '
                   f'points="{xy}" fill="none" stroke="{colour}" stroke-width="{2 + 3 * wide:.1f}"/>')
        out += [f'<circle cx="{sx(e):.1f}" cy="{sy(v):.1f}" r="{3 + 2 * wide:.1f}" fill="{colour}"/>' for e, v in pts]
    return out


def learning_curve_svg(histories: Sequence[History], labels: Sequence[str] | None = None, *,
                       width: int = 760, height: int = 320) -> str:
    """Training loss (left) and the validation metric (right, when recorded) per epoch, one
    coloured polyline per fold; ``histories[i]`` is fold i's list of per-epoch dicts. Non-finite
    values are left out; with no epochs at all the SVG says so instead of drawing empty axes."""
    labels = list(labels) if labels is not None else [f"fold {i}" for i in range(len(histories))]
    if len(labels) != len(histories):
        raise ValueError(f"{len(labels)} labels for {len(histories)} histories: pass one label per fold.")
    metric = next((k for h in histories for row in h for k in row if k.startswith("valid_")), None)
    keys = ["train_loss"] + ([metric] if metric else [])
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'font-family="sans-serif" font-size="12"><rect width="{width}" height="{height}" fill="white"/>')
    if not any(histories):
        return head + f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">No epochs recorded.</text></svg>'
    legend_h = 22
    panel_w = width / len(keys)
    parts = [head]
    for i, key in enumerate(keys):
        series = []
        for f, (label, hist) in enumerate(zip(labels, histories, strict=True)):
            pts = [(float(row["epoch"]), float(row[key])) for row in hist if _finite(row.get(key)) and _finite(row.get("epoch"))]
            if pts:
                series.append((label, COLOURS[f % len(COLOURS)], sorted(pts)))
        title = "train loss" if key == "train_loss" else key.replace("_", " ", 1)
        parts += _panel(i * panel_w, 0, panel_w, height - legend_h, title, key, series)
    x = _MARGIN["left"]
    for f, label in enumerate(labels):
        colour = COLOURS[f % len(COLOURS)]
        parts.append(f'<rect x="{x}" y="{height - 16}" width="12" height="12" fill="{colour}"/>')
        parts.append(f'<text x="{x + 16}" y="{height - 6}">{escape(label)}</text>')
        x += 24 + 7 * len(label)
    return "".join(parts) + "</svg>"


def svg_data_uri(svg: str) -> str:
    """``data:image/svg+xml;base64,...``: an image URL that needs no file server."""
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")
