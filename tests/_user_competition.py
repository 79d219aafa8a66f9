"""A user's own competition for the tests of ``--target`` / ``--id`` / ``./competitions/``:
one whose target cannot be inferred from its files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

SLUG = "user-target"


def write_competition(folder: Path, *, n_train: int = 120, n_test: int = 40, seed: int = 0) -> Path:
    """A competition whose target cannot be inferred: the sample's value column is ``prediction``
    (not in train.csv), and train.csv has two columns test.csv lacks (``label`` and the
    train-only ``agreement``). ``label`` follows ``x1``; ``solution.csv`` holds the test truth."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    x1, x2 = np.round(rng.normal(size=n), 4), np.round(rng.normal(size=n), 4)
    color = rng.choice(["red", "green", "blue"], size=n)
    label = (x1 + 0.2 * rng.normal(size=n) > 0).astype(int)
    frame = pd.DataFrame({"id": np.arange(1, n + 1), "x1": x1, "x2": x2, "color": color, "label": label,
                          "agreement": np.round(rng.uniform(size=n), 3)})
    train, test = frame.iloc[:n_train], frame.iloc[n_train:]
    folder.mkdir(parents=True, exist_ok=True)
    train.to_csv(folder / "train.csv", index=False)
    test.drop(columns=["label", "agreement"]).to_csv(folder / "test.csv", index=False)
    pd.DataFrame({"id": test["id"], "prediction": 0}).to_csv(folder / "sample_submission.csv", index=False)
    pd.DataFrame({"id": test["id"], "prediction": test["label"]}).to_csv(folder / "solution.csv", index=False)
    (folder / ".fake-kaggle.json").write_text('{"metric": "accuracy", "evaluation_metric": "Categorization Accuracy"}')
    return folder
