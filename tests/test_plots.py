"""The hand-written learning-curve SVG: valid XML, one polyline per fold and panel, points placed
by value (higher loss = higher on the chart = smaller SVG y), and the degenerate histories."""

from __future__ import annotations

import base64
import math
import xml.etree.ElementTree as ET

import pytest

from lora_tasks.plots import learning_curve_svg, svg_data_uri

NS = "{http://www.w3.org/2000/svg}"


def _history(losses, metric=None, name="valid_accuracy"):
    rows = [{"epoch": i + 1, "train_loss": loss} for i, loss in enumerate(losses)]
    for row, m in zip(rows, metric or [], strict=False):  # metric may cover fewer epochs
        row[name] = m
    return rows


def _polylines(svg: str, panel: str | None = None) -> list[ET.Element]:
    root = ET.fromstring(svg)
    assert root.tag == f"{NS}svg"
    lines = root.iter(f"{NS}polyline")
    return [p for p in lines if panel is None or p.get("data-panel") == panel]


def _points(line: ET.Element) -> list[tuple[float, float]]:
    return [tuple(float(v) for v in pair.split(",")) for pair in line.get("points").split()]


def test_one_polyline_per_fold_and_panel():
    histories = [_history([0.7, 0.5, 0.4], [0.6, 0.7, 0.75]), _history([0.8, 0.6, 0.55], [0.55, 0.6, 0.7]),
                 _history([0.9, 0.3, 0.2], [0.5, 0.8, 0.8])]
    svg = learning_curve_svg(histories)
    loss = _polylines(svg, "train_loss")
    metric = _polylines(svg, "valid_accuracy")
    assert [p.get("data-fold") for p in loss] == ["fold 0", "fold 1", "fold 2"]
    assert [p.get("data-fold") for p in metric] == ["fold 0", "fold 1", "fold 2"]
    assert len(_polylines(svg)) == 6
    assert len({p.get("stroke") for p in loss}) == 3, "every fold has its own colour"
    widths = [float(p.get("stroke-width")) for p in loss]
    assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1], "a hidden fold shows around a later one"
    assert all(len(_points(p)) == 3 for p in loss)
    text = "".join(ET.fromstring(svg).itertext())
    assert "train loss" in text and "valid accuracy" in text and "epoch" in text and "fold 2" in text


def test_point_heights_follow_the_values():
    losses = [0.9, 0.4, 0.6, 0.1, 0.3]
    svg = learning_curve_svg([_history(losses)])
    (line,) = _polylines(svg, "train_loss")
    pts = _points(line)
    xs, ys = [x for x, _ in pts], [y for _, y in pts]
    assert xs == sorted(xs) and len(set(xs)) == len(xs), "epochs run left to right"
    # larger loss -> higher on the chart -> smaller SVG y: the y order is the reverse of the loss order
    assert sorted(range(5), key=lambda i: ys[i]) == sorted(range(5), key=lambda i: -losses[i])
    # and the scale is linear: equal loss steps give equal pixel steps
    per_unit = [(ys[i] - ys[j]) / (losses[j] - losses[i]) for i, j in [(0, 1), (1, 2), (3, 4)]]
    assert max(per_unit) - min(per_unit) < 0.5
    assert not _polylines(svg, "valid_accuracy"), "no metric panel without validation values"


def test_folds_share_one_scale():
    svg = learning_curve_svg([_history([1.0, 0.8]), _history([0.5, 0.2])])
    a, b = (_points(p) for p in _polylines(svg, "train_loss"))
    assert max(y for _, y in a) < min(y for _, y in b), "fold 0's losses are all above fold 1's"


def test_empty_histories():
    for histories in ([], [[]], [[], []]):
        svg = learning_curve_svg(histories)
        root = ET.fromstring(svg)
        assert not list(root.iter(f"{NS}polyline"))
        assert "No epochs recorded." in "".join(root.itertext())


def test_one_epoch_and_flat_curves_are_drawn_inside_the_frame():
    svg = learning_curve_svg([_history([0.69], [0.5]), _history([0.5, 0.5, 0.5])])
    root = ET.fromstring(svg)
    width, height = float(root.get("width")), float(root.get("height"))
    lines = _polylines(svg)
    assert len(lines) == 3  # two loss lines, one metric line (fold 1 has no metric)
    for line in lines:
        for x, y in _points(line):
            assert math.isfinite(x) and math.isfinite(y) and 0 < x < width and 0 < y < height
    # a one-epoch fold still shows its point as a marker
    assert len(list(root.iter(f"{NS}circle"))) == 1 + 3 + 1


def test_non_finite_values_are_left_out_and_labels_escaped():
    hist = _history([0.7, float("nan"), 0.5], [0.6, 0.7, float("inf")])
    svg = learning_curve_svg([hist], labels=["fold <0> & co"])
    (loss,) = _polylines(svg, "train_loss")
    (metric,) = _polylines(svg, "valid_accuracy")
    assert len(_points(loss)) == 2 and len(_points(metric)) == 2
    assert loss.get("data-fold") == "fold <0> & co"
    with pytest.raises(ValueError, match="one label per fold"):
        learning_curve_svg([hist], labels=["a", "b"])


def test_data_uri_round_trips():
    svg = learning_curve_svg([_history([0.7, 0.5], [0.6, 0.7])])
    uri = svg_data_uri(svg)
    prefix = "data:image/svg+xml;base64,"
    assert uri.startswith(prefix)
    assert base64.b64decode(uri[len(prefix):]).decode("utf-8") == svg


def test_the_artifact_markdown_embeds_the_plot_in_fold_order():
    from pathlib import Path

    from lora_tasks.prefect.artifacts import learning_curve_plot_markdown
    from lora_tasks.steps import AdapterResult

    def result(fold, losses):
        history = [{"epoch": e + 1, "train_loss": v, "valid_accuracy": 0.5 + 0.1 * e} for e, v in enumerate(losses)]
        return AdapterResult(fold=fold, adapter_path=Path("a"), oof_path=Path("o"), test_path=Path("t"), n_train=8,
                               n_valid=2, best_epoch=len(losses), best_score=0.6, metric="accuracy", history=history)

    md = learning_curve_plot_markdown([result(1, [0.9, 0.8]), result(0, [0.5, 0.1])])
    prefix = "](data:image/svg+xml;base64,"
    assert md.startswith("### Learning curve") and prefix in md and md.endswith(")")
    svg = base64.b64decode(md.split(prefix, 1)[1][:-1]).decode("utf-8")
    loss = _polylines(svg, "train_loss")
    assert [p.get("data-fold") for p in loss] == ["fold 0", "fold 1"]
    assert max(y for _, y in _points(loss[1])) < min(y for _, y in _points(loss[0])), "fold 1's losses are higher"
