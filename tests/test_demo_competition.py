"""The offline ``demo`` competition: built from scikit-learn data, served and scored end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from sklearn.metrics import accuracy_score

from lora_tasks import kaggle as kio
from lora_tasks.testing import fake_kaggle as fk
from lora_tasks.testing.demo import DEMO_SLUG, build_demo_competition


@pytest.fixture
def demo_root(tmp_path) -> Path:
    build_demo_competition(tmp_path / "competitions")
    return tmp_path / "competitions"


def test_demo_files_have_kaggle_shape(demo_root):
    folder = demo_root / DEMO_SLUG
    assert sorted(p.name for p in folder.iterdir()) == ["sample_submission.csv", "solution.csv", "test.csv", "train.csv"]
    train, test = pd.read_csv(folder / "train.csv"), pd.read_csv(folder / "test.csv")
    sample, solution = pd.read_csv(folder / "sample_submission.csv"), pd.read_csv(folder / "solution.csv")
    assert len(train) + len(test) == 569
    assert list(train.columns[:2]) == ["id", "mean_radius"] and train.columns[-1] == "target"
    assert "target" not in test.columns
    assert list(sample.columns) == list(solution.columns) == ["id", "target"]
    assert list(sample.id) == list(test.id) == list(solution.id)
    assert set(train.id).isdisjoint(test.id)
    assert set(solution.target) == {0, 1} and set(train.target) == {0, 1}


def test_demo_is_deterministic(tmp_path):
    a = build_demo_competition(tmp_path / "a")
    b = build_demo_competition(tmp_path / "b")
    for name in ("train.csv", "test.csv", "sample_submission.csv", "solution.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_demo_runs_offline_through_the_real_client(demo_root, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "home" / ".kaggle"))
    monkeypatch.delenv("KAGGLE_API_TOKEN", raising=False)
    monkeypatch.setenv("KAGGLE_USERNAME", fk.DEFAULT_USERNAME)
    monkeypatch.setenv("KAGGLE_KEY", fk.DEFAULT_KEY)
    with fk.serve(demo_root) as server:
        client = kio.KaggleClient(server.url, timeout=5)
        folder = kio.download_competition(DEMO_SLUG, tmp_path / "data", client)
        assert not (folder / "solution.csv").exists()  # hidden solution never leaves the server
        test = pd.read_csv(folder / "test.csv")
        prediction = pd.DataFrame({"id": test.id, "target": (test.mean_radius < 15).astype(int)})
        path = tmp_path / "submission.csv"
        prediction.to_csv(path, index=False)
        kio.validate_submission(path, folder / "sample_submission.csv")
        result = kio.submit(DEMO_SLUG, path, "demo baseline", "demo-run-1", tmp_path / "state", client)
        scored = kio.wait_for_score(DEMO_SLUG, result.ref, client, timeout_s=5, poll_s=0.01)
    solution = pd.read_csv(demo_root / DEMO_SLUG / "solution.csv")
    expected = accuracy_score(solution.target, prediction.set_index("id").loc[solution.id, "target"])
    assert 0.5 < expected < 1
    assert scored.public_score == pytest.approx(expected, rel=1e-12)


def test_kaggle_layers_do_not_import_mlx():
    code = (
        "import sys, lora_tasks.kaggle, lora_tasks.testing.fake_kaggle, lora_tasks.testing.demo; "
        "bad = [m for m in sys.modules if m == 'mlx' or m.startswith(('mlx.', 'lora_tasks.models'))]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
