"""Shared test fixtures. Tests never reach the network: the hub is switched to offline mode."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import lora_tasks  # noqa: E402,F401 - sets up the BLAS before any test imports mlx
import pytest  # noqa: E402

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
