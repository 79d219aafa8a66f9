"""Shared fixtures of the Kaggle-layer tests: an isolated HOME, the fake server, a real client.

Every fixture isolates HOME and KAGGLE_CONFIG_DIR in tmp_path, so the user's ~/.kaggle is never
read or written, and the client is the official ``kaggle`` client pointed at the fake server.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest

from lora_tasks import kaggle as kio
from lora_tasks.testing import fake_kaggle as fk

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
SHARED = ["titanic", "house-prices-advanced-regression-techniques", "nlp-getting-started"]
SAMPLE = {
    "titanic": "gender_submission.csv",
    "house-prices-advanced-regression-techniques": "sample_submission.csv",
    "nlp-getting-started": "sample_submission.csv",
}
needs_datasets = pytest.mark.skipif(not DATASETS.is_dir(), reason=f"shared datasets missing at {DATASETS}")
CREDENTIAL_VARIABLES = ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_ENVIRONMENT", "XDG_CONFIG_HOME")


@pytest.fixture
def isolated_home(tmp_path, monkeypatch) -> Path:
    """A HOME and KAGGLE_CONFIG_DIR with no credentials at all."""
    home = tmp_path / "home"
    (home / ".kaggle").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / ".kaggle"))
    for name in CREDENTIAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def creds(isolated_home, monkeypatch) -> Path:
    """Legacy username/key credentials of the fake server, via environment variables."""
    monkeypatch.setenv("KAGGLE_USERNAME", fk.DEFAULT_USERNAME)
    monkeypatch.setenv("KAGGLE_KEY", fk.DEFAULT_KEY)
    return isolated_home


@pytest.fixture(scope="module")
def solutions(tmp_path_factory) -> dict[str, Path]:
    return fk.derive_solutions(DATASETS, tmp_path_factory.mktemp("solutions"))


@pytest.fixture
def server(solutions):
    with fk.serve(DATASETS, solutions, pending_polls=1) as srv:
        yield srv


@pytest.fixture
def client(server, creds) -> kio.KaggleClient:
    return kio.KaggleClient(server.url, timeout=5)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def prediction(slug: str, tmp_path: Path) -> Path:
    """A plausible, imperfect prediction for each shared competition."""
    test = pd.read_csv(DATASETS / slug / "test.csv")
    if slug == "titanic":
        frame = pd.DataFrame({"PassengerId": test.PassengerId, "Survived": (test.Sex == "female").astype(int)})
    elif slug == "nlp-getting-started":
        frame = pd.DataFrame({"id": test.id, "target": test.text.str.contains("fire|storm", case=False).astype(int)})
    else:
        frame = pd.DataFrame({"Id": test.Id, "SalePrice": 60_000.0 + 90.0 * test.GrLivArea})
    return write(frame, tmp_path / f"{slug}-submission.csv")
