"""Shared test fixtures. Tests never reach the network: the hub is switched to offline mode."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# the cost probe's points go to a cache of this session, never the user's (a test that wants a
# fresh probe points KAGGLE_LORA_PROBE_CACHE at its own tmp_path)
os.environ["KAGGLE_LORA_PROBE_CACHE"] = tempfile.mkdtemp(prefix="kaggle-lora-probe-")
# the members' timings too: a test run must neither read the user's nor leave its own in them
os.environ["KAGGLE_LORA_MEMBER_COSTS"] = tempfile.mkdtemp(prefix="kaggle-lora-member-costs-")

import pytest

import lora_tasks  # noqa: F401 - sets up the BLAS before any test imports mlx

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
SHARED_DATASETS = REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not SHARED_DATASETS.is_dir():
        pytest.fail(f"Real Kaggle files expected at {SHARED_DATASETS} (../shared/datasets beside the checkout).")
    return SHARED_DATASETS


@pytest.fixture(scope="session")
def minilm():
    """The real all-MiniLM-L6-v2 encoder (bare BertModel) and tokenizer, loaded once."""
    from lora_tasks.models import load_encoder

    return load_encoder()


@pytest.fixture(scope="session")
def harness():
    """One Prefect test harness (a temporary API server, ~10 s to start) for the whole session:
    the flow, task and Dask tests all report to it."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture
def creds(tmp_path, monkeypatch):
    """The fake Kaggle server's credentials for one test, in a private HOME: the user's own
    credentials and config never reach the code under test (monkeypatch restores them after)."""
    from lora_tasks.testing import fake_kaggle as fk

    home = tmp_path / "home"
    (home / ".kaggle").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / ".kaggle"))
    for name in ("KAGGLE_API_TOKEN", "KAGGLE_API_ENVIRONMENT", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_USERNAME", fk.DEFAULT_USERNAME)
    monkeypatch.setenv("KAGGLE_KEY", fk.DEFAULT_KEY)


@pytest.fixture(scope="module")
def fake_creds(tmp_path_factory):
    """The fake Kaggle server's credentials in an isolated config dir, for one test module (set in
    os.environ, so worker processes started meanwhile inherit them); the old values come back after."""
    from lora_tasks.testing import fake_kaggle as fk

    home = tmp_path_factory.mktemp("kaggle-home")
    wanted = {"KAGGLE_CONFIG_DIR": str(home), "KAGGLE_USERNAME": fk.DEFAULT_USERNAME, "KAGGLE_KEY": fk.DEFAULT_KEY}
    dropped = ("KAGGLE_API_TOKEN", "KAGGLE_API_ENVIRONMENT")
    saved = {k: os.environ.get(k) for k in (*wanted, *dropped)}
    os.environ.update(wanted)
    for k in dropped:
        os.environ.pop(k, None)
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    """The offline demo competition served by the fake Kaggle server: ``(server, served folder)``."""
    from lora_tasks.testing import fake_kaggle as fk
    from lora_tasks.testing.demo import build_demo_competition

    served = tmp_path_factory.mktemp("served")
    build_demo_competition(served)
    with fk.serve(served, pending_polls=1) as server:
        yield server, served
