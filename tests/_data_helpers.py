"""Shared helpers of the data-layer tests: the real Kaggle files and the real MiniLM tokenizer.

The files are read in place from ``../shared/datasets`` beside the checkout (never copied).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pandas as pd
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
TITANIC = "titanic"
HOUSE = "house-prices-advanced-regression-techniques"
TWEETS = "nlp-getting-started"
ALL = (TITANIC, HOUSE, TWEETS)


def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"Real Kaggle files expected at {SHARED} (../shared/datasets beside the checkout).")
    return SHARED


@lru_cache(maxsize=None)
def _read(slug: str, name: str) -> pd.DataFrame:
    return pd.read_csv(shared_dir() / slug / name)


def read_train(slug: str) -> pd.DataFrame:
    """A fresh copy of a competition's train.csv (tests may modify it)."""
    return _read(slug, "train.csv").copy()


def read_test(slug: str) -> pd.DataFrame:
    return _read(slug, "test.csv").copy()


@lru_cache(maxsize=1)
def tokenizer():
    """The real all-MiniLM-L6-v2 tokenizer, offline."""
    from lora_tasks.data.tokenizer import Tokenizer

    return Tokenizer.from_pretrained(None)


def copy_competition(name: str, dest: Path, *, source: str = TITANIC, train_frame: pd.DataFrame | None = None,
                     test: pd.DataFrame | None = None, sample: pd.DataFrame | None = None,
                     sample_name: str = "sample_submission.csv") -> Path:
    """Write a variant of real competition ``source`` into ``dest/name`` (for inference edge cases)."""
    folder = dest / name
    folder.mkdir(parents=True, exist_ok=True)
    (train_frame if train_frame is not None else read_train(source)).to_csv(folder / "train.csv", index=False)
    (test if test is not None else read_test(source)).to_csv(folder / "test.csv", index=False)
    if sample is not None:
        sample.to_csv(folder / sample_name, index=False)
    return folder
