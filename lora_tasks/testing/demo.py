"""The ``demo`` competition: a Kaggle-shaped competition that needs no Kaggle account.

Why: a fresh machine with no credentials and no internet must still be able to run the whole
pipeline (download, train, validate, submit, score) through the same code path as a real
competition. The data is scikit-learn's bundled breast-cancer set (binary classification,
569 rows, 30 numeric features), which ships inside an installed dependency, so nothing is
downloaded. The fake Kaggle server serves it and scores submissions with accuracy.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import numpy as np
import pandas as pd

from .fake_kaggle import SOLUTION_FILE_NAME

DEMO_SLUG = "demo"
DEMO_ID_COLUMN = "id"
DEMO_TARGET_COLUMN = "target"
DEMO_TEST_FRACTION = 0.3
#: What Kaggle's competition listing would say in ``evaluation_metric`` (the fake server can serve it).
DEMO_EVALUATION_METRIC = "Categorization Accuracy"
_SEED = 20240601


def build_demo_competition(dest: str | os.PathLike[str]) -> Path:
    """Write the ``demo`` competition under ``dest`` and return its folder ``dest/demo``.

    Files: ``train.csv`` (id, 30 features, target), ``test.csv`` (id, features),
    ``sample_submission.csv`` (id, target=0) and the hidden ``solution.csv`` (id, target),
    which the fake server never lists or serves but scores against. Pass ``dest`` as the fake
    server's data folder. The split is stratified and seeded, and files are written to a temp
    name then renamed, so two builds give byte-identical files and a crash leaves no half file.
    """
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    bunch = load_breast_cancer(as_frame=True)
    features: pd.DataFrame = bunch.data.copy()
    features.columns = [_column_name(c) for c in features.columns]
    target = bunch.target.astype("int64")
    frame = features.assign(**{DEMO_TARGET_COLUMN: target})
    frame.insert(0, DEMO_ID_COLUMN, np.arange(1, len(frame) + 1, dtype="int64"))

    train, test = train_test_split(
        frame, test_size=DEMO_TEST_FRACTION, random_state=_SEED, stratify=frame[DEMO_TARGET_COLUMN]
    )
    train = train.sort_values(DEMO_ID_COLUMN)
    test = test.sort_values(DEMO_ID_COLUMN)

    folder = Path(dest) / DEMO_SLUG
    folder.mkdir(parents=True, exist_ok=True)
    _write_csv(train, folder / "train.csv")
    _write_csv(test.drop(columns=[DEMO_TARGET_COLUMN]), folder / "test.csv")
    sample = pd.DataFrame({DEMO_ID_COLUMN: test[DEMO_ID_COLUMN], DEMO_TARGET_COLUMN: 0})
    _write_csv(sample, folder / "sample_submission.csv")
    _write_csv(test[[DEMO_ID_COLUMN, DEMO_TARGET_COLUMN]], folder / SOLUTION_FILE_NAME)
    return folder


def _column_name(name: str) -> str:
    """``mean radius`` -> ``mean_radius``: CSV headers without spaces, like Kaggle's."""
    return name.strip().replace(" ", "_")


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")  # two builds at once never share it
    try:
        frame.to_csv(tmp, index=False, float_format="%.10g", lineterminator="\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
