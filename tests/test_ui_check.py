"""The end-to-end UI check: scripts/ui_check.sh starts a Prefect server on loopback, runs the flow on
the offline demo with the tiny model, checks the artifacts through the API and screenshots the
pages with headless Chromium. Here: it passes, and its record (ui_check.json) holds what it found.
Needs /usr/bin/chromium (Debian: apt-get install -y chromium); skipped without it, except in CI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")

EXPECTED_KEYS = {"demo-data-profile", "demo-settings", "demo-cv", "demo-blend", "demo-learning-curve",
                 "demo-learning-curve-plot", "demo-submission"}
SHOTS = {"v2-flow-run.png", "v2-flow-run-artifacts.png", "v2-learning-curve-plot.png",
         "v1-flow-run.png", "v1-learning-curve-plot.png"}


@pytest.fixture(scope="module")
def ui_check(tmp_path_factory):
    if not CHROMIUM.exists():
        message = f"the UI check needs Chromium at {CHROMIUM} (apt-get install -y chromium)"
        if IN_CI:
            pytest.fail(message + "; CI is set, so this is a failure, not a skip")
        pytest.skip(message)
    if shutil.which("curl") is None:
        pytest.fail("scripts/ui_check.sh needs curl (apt-get install -y curl)")
    out = tmp_path_factory.mktemp("ui-check")
    env = dict(os.environ, UI_CHECK_OUT=str(out), PYTHON=sys.executable, CHROMIUM=str(CHROMIUM),
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.pop("PREFECT_API_URL", None)  # the script starts its own server
    proc = subprocess.run(["bash", str(REPO / "scripts" / "ui_check.sh")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=840)
    return proc, out


def test_the_script_passes_and_cleans_up(ui_check):
    proc, out = ui_check
    assert proc.returncode == 0, f"ui_check.sh failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
    assert "OK: UI check passed" in proc.stdout
    assert "stopped: " in proc.stdout and "stopped: nothing" not in proc.stdout


def test_the_api_shows_every_artifact(ui_check):
    proc, out = ui_check
    info = json.loads((out / "ui_check.json").read_text())
    assert info["state"] == "Completed"
    assert EXPECTED_KEYS <= set(info["artifact_keys"]), proc.stdout[-3000:]
    assert {"markdown", "table", "progress"} <= set(info["artifact_types"])
    assert info["progress_artifacts"] == info["folds"] >= 1, "one progress artifact per trained fold"
    assert info["public_score"] is not None


def test_screenshots_are_real(ui_check):
    proc, out = ui_check
    info = json.loads((out / "ui_check.json").read_text())
    assert set(info["screenshots"]) == SHOTS, proc.stdout[-3000:]
    for name, shot in info["screenshots"].items():
        png = out / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (shot["width"], shot["height"]) == (1400, 1000)
        assert shot["colours"] >= 50 and shot["top_colour_share"] < 0.97, f"{name} looks blank: {shot}"
    # the rendered pages (not just pixels): run name and state on the run page, the SVG on the plot page
    assert info["flow_run_name"] in (out / "v2-flow-run.html").read_text()
    assert 'src="data:image/svg+xml;base64,' in (out / "v2-learning-curve-plot.html").read_text()
