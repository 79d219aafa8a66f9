"""Small synthetic competitions, one per Kaggle shape, each with what must be inferred from it.

Why: a user's own competition is the real test of the zero-config path, and Kaggle's shapes
differ in ways that break a pipeline silently (bool labels written 0/1, ids losing leading
zeros, a train-only column, probability columns in another order). Each shape here is a tiny
competition written the way Kaggle lays one out (``train.csv``, ``test.csv``, a sample
submission, and the hidden ``solution.csv`` the fake Kaggle server scores against), together
with a typed :class:`ShapeExpectation`: the id, targets, task, metric, submission content and
excluded columns a zero-config run must find, and the ``evaluation_metric`` string Kaggle's
listing would give. Every shape has a learnable signal (a few hundred rows), so an end-to-end
run can also be checked for a better-than-chance score.

Layout: ``<dest>/<slug>/`` holds the files (in ``<dest>/<slug>/<subfolder>/`` for the shape whose
zip has a folder), and ``<dest>/<slug>/solution.csv`` always sits at the top, where
:class:`~lora_tasks.testing.fake_kaggle.FakeKaggleServer` looks for it, next to the hidden
``.fake-kaggle.json`` that tells the server the shape's scoring metric and Kaggle's
``evaluation_metric`` text (so a server on ``<dest>`` needs no per-shape arguments). A solution has the
sample submission's columns and holds the truth (one-hot columns for class probabilities, as
Kaggle's own solution files do).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .fake_kaggle import COMPETITION_META_FILE, SOLUTION_FILE_NAME
from .shape_io import write_table, write_text

N_TRAIN = 240
N_TEST = 80
_SEED = 20260601
_COLORS = ("red", "green", "blue")


@dataclass(frozen=True)
class ShapeExpectation:
    """What a zero-config run must infer from a shape's files.

    ``classes`` are the label spellings as the files write them (empty unless labels or
    per-class probabilities); ``metric`` is our name for ``kaggle_metric``.
    """

    id_column: str
    target_columns: tuple[str, ...]
    task: str
    metric: str
    kaggle_metric: str
    prediction: str
    excluded_columns: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    sample_file: str = "sample_submission.csv"


@dataclass(frozen=True)
class ShapeTables:
    """The four tables of a shape, before writing."""

    train: pd.DataFrame
    test: pd.DataFrame
    sample: pd.DataFrame
    solution: pd.DataFrame


@dataclass(frozen=True)
class ShapeFiles:
    """How a shape's files are named and packed, as the competition's download has them.

    ``train`` / ``test``: the table names (``train.tsv``, ``application_train.csv``,
    ``train.csv.gz``; the sample's is :attr:`ShapeExpectation.sample_file`). ``zipped``: files
    shipped inside their own zip in the download, as ``(file, zip name)`` pairs
    (``("train.csv", "train.csv.zip")``, ``("train.csv", "train.zip")``). ``extra``: other
    tables of the download, written with a few rows of the train table's first columns.
    """

    train: str = "train.csv"
    test: str = "test.csv"
    zipped: tuple[tuple[str, str], ...] = ()
    extra: tuple[str, ...] = ()

    def zip_of(self, name: str) -> str | None:
        return dict(self.zipped).get(name)


@dataclass(frozen=True)
class CompetitionShape:
    """One Kaggle shape: its slug, what it exercises, what must be inferred, and its builder."""

    slug: str
    description: str
    expected: ShapeExpectation
    build: Callable[[np.random.Generator], ShapeTables] = field(repr=False)
    subfolder: str | None = None
    files: ShapeFiles = ShapeFiles()


# ------------------------------------------------------------------------------ signal


def _features(rng: np.random.Generator, n: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Two numeric columns and a colour; ``score`` is the signal every target is built from."""
    x1 = np.round(rng.normal(size=n), 4)
    x2 = np.round(rng.normal(size=n), 4)
    color = rng.choice(_COLORS, size=n)
    score = 1.5 * x1 - x2 + (color == "red") * 1.0 + rng.normal(scale=0.3, size=n)
    return pd.DataFrame({"x1": x1, "x2": x2, "color": color}), score


def _split(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    return frame.iloc[:N_TRAIN].reset_index(drop=True), frame.iloc[N_TRAIN:].reset_index(drop=True)


def _ids(n: int) -> np.ndarray:
    return np.arange(1, n + 1, dtype=np.int64)


def _labelled(rng: np.random.Generator, target: str, make: Callable[[np.ndarray], np.ndarray],
              id_column: str = "id", ids: np.ndarray | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Train (features + target), test (features) and the test rows' truth, from one signal."""
    n = N_TRAIN + N_TEST
    features, score = _features(rng, n)
    features.insert(0, id_column, _ids(n) if ids is None else ids)
    frame = features.assign(**{target: make(score)})
    train, test = _split(frame)
    return train, test.drop(columns=[target]), test[[id_column, target]]


def _single(rng: np.random.Generator, target: str, make: Callable[[np.ndarray], np.ndarray], placeholder: object,
            id_column: str = "id", ids: np.ndarray | None = None) -> ShapeTables:
    train, test, truth = _labelled(rng, target, make, id_column, ids)
    sample = pd.DataFrame({id_column: test[id_column], target: placeholder})
    return ShapeTables(train, test, sample, truth)


# ------------------------------------------------------------------------------ the shapes


def _binary_bool(rng: np.random.Generator) -> ShapeTables:
    return _single(rng, "Transported", lambda s: s > 0, False)


def _binary_yes_no(rng: np.random.Generator) -> ShapeTables:
    return _single(rng, "answer", lambda s: np.where(s > 0, "yes", "no"), "no")


def _binary_auc(rng: np.random.Generator) -> ShapeTables:
    return _single(rng, "target", lambda s: (s > 0).astype(np.int64), 0.5)


def _multiclass_labels(rng: np.random.Generator) -> ShapeTables:
    return _single(rng, "species", lambda s: np.select([s < -0.7, s < 0.7], ["adelie", "chinstrap"], "gentoo"), "adelie")


def _multiclass_probabilities(rng: np.random.Generator) -> ShapeTables:
    """Otto's shape: one probability column per class, in the sample's order (not sorted)."""
    train, test, truth = _labelled(rng, "level", lambda s: np.select([s < -0.7, s < 0.7], ["low", "mid"], "high"))
    order = ["low", "mid", "high"]
    sample = pd.DataFrame({"id": test["id"], **{c: 1 / 3 for c in order}})
    solution = pd.DataFrame({"id": truth["id"], **{c: (truth["level"] == c).astype(np.int64) for c in order}})
    return ShapeTables(train, test, sample, solution)


def _multilabel(rng: np.random.Generator) -> ShapeTables:
    """Toxic-comment's shape: several 0/1 targets, one probability column per label."""
    n = N_TRAIN + N_TEST
    features, score = _features(rng, n)
    features.insert(0, "id", _ids(n))
    labels = {
        "toxic": (score > 0).astype(np.int64),
        "obscene": (features["x2"].to_numpy() > 0.3).astype(np.int64),
        "insult": (features["color"].to_numpy() == "blue").astype(np.int64),
    }
    train, test = _split(features.assign(**labels))
    sample = pd.DataFrame({"id": test["id"], **{c: 0.5 for c in labels}})
    return ShapeTables(train, test.drop(columns=list(labels)), sample, test[["id", *labels]])


def _multitarget(rng: np.random.Generator) -> ShapeTables:
    """Essay-score shape: several float targets in half steps from 1 to 5."""
    n = N_TRAIN + N_TEST
    features, score = _features(rng, n)
    features.insert(0, "text_id", _ids(n))
    targets = {
        "cohesion": np.clip(np.round((3 + score) * 2) / 2, 1, 5),
        "syntax": np.clip(np.round((3 + features["x1"].to_numpy()) * 2) / 2, 1, 5),
    }
    train, test = _split(features.assign(**targets))
    sample = pd.DataFrame({"text_id": test["text_id"], **{c: 3.0 for c in targets}})
    return ShapeTables(train, test.drop(columns=list(targets)), sample, test[["text_id", *targets]])


def _regression(rng: np.random.Generator) -> ShapeTables:
    return _single(rng, "price", lambda s: np.round(100 + 20 * s, 3), 100.0)


def _regression_rmsle(rng: np.random.Generator) -> ShapeTables:
    return _single(rng, "sales", lambda s: np.round(np.exp(3 + s)).astype(np.int64), 0)


def _train_only(rng: np.random.Generator) -> ShapeTables:
    """Bike-sharing's shape: ``casual`` + ``registered`` = ``count``, and test.csv has neither."""
    n = N_TRAIN + N_TEST
    features, score = _features(rng, n)
    features.insert(0, "id", _ids(n))
    count = np.round(np.exp(3 + score)).astype(np.int64)
    casual = (count * 0.3).astype(np.int64)
    frame = features.assign(casual=casual, registered=count - casual, count=count)
    train, test = _split(frame)
    sample = pd.DataFrame({"id": test["id"], "count": 0})
    return ShapeTables(train, test.drop(columns=["casual", "registered", "count"]), sample, test[["id", "count"]])


def _id_not_first(rng: np.random.Generator) -> ShapeTables:
    tables = _single(rng, "label", lambda s: (s > 0).astype(np.int64), 0, id_column="row_id")
    order = ["x1", "color", "row_id", "x2"]
    return ShapeTables(tables.train[[*order, "label"]], tables.test[order], tables.sample, tables.solution)


def _leading_zeros(rng: np.random.Generator) -> ShapeTables:
    ids = np.array([f"{i:05d}" for i in range(1, N_TRAIN + N_TEST + 1)], dtype=object)
    return _single(rng, "label", lambda s: (s > 0).astype(np.int64), 0, ids=ids)


def _binary_int(rng: np.random.Generator) -> ShapeTables:
    return _single(rng, "label", lambda s: (s > 0).astype(np.int64), 0)


def _test_order(rng: np.random.Generator) -> ShapeTables:
    tables = _binary_int(rng)
    return ShapeTables(tables.train, tables.test[["color", "x2", "id", "x1"]], tables.sample, tables.solution)


_GOOD = ("great", "lovely", "superb", "happy", "excellent", "wonderful")
_BAD = ("awful", "broken", "sad", "terrible", "boring", "poor")
_FILLER = ("the", "movie", "was", "really", "quite", "plot", "acting", "and", "a", "film", "ending")


def _text_only(rng: np.random.Generator) -> ShapeTables:
    """A table whose only feature is free text (the sentiment words carry the label)."""
    n = N_TRAIN + N_TEST
    label = rng.integers(0, 2, size=n)
    texts = []
    for y in label:
        words = list(rng.choice(_FILLER, size=int(rng.integers(5, 10))))
        cue = _GOOD if (y == 1) != (rng.random() < 0.1) else _BAD
        for word in rng.choice(cue, size=2):
            words.insert(int(rng.integers(0, len(words) + 1)), str(word))
        texts.append(" ".join(words).capitalize() + ".")
    frame = pd.DataFrame({"id": _ids(n), "review": texts, "positive": label.astype(np.int64)})
    train, test = _split(frame)
    sample = pd.DataFrame({"id": test["id"], "positive": 0})
    return ShapeTables(train, test.drop(columns=["positive"]), sample, test[["id", "positive"]])


ACCURACY = "Categorization Accuracy"
_E = ShapeExpectation
SHAPES: tuple[CompetitionShape, ...] = (
    CompetitionShape("shape-binary-bool", "binary, labels True/False", _E(
        "id", ("Transported",), "binary", "accuracy", ACCURACY, "labels", classes=("False", "True")), _binary_bool),
    CompetitionShape("shape-binary-yes-no", "binary, string labels yes/no", _E(
        "id", ("answer",), "binary", "accuracy", ACCURACY, "labels", classes=("no", "yes")), _binary_yes_no),
    CompetitionShape("shape-binary-auc", "binary scored by AUC: probabilities", _E(
        "id", ("target",), "binary", "roc_auc", "Area Under Receiver Operating Characteristic Curve",
        "probabilities", classes=("0", "1")), _binary_auc),
    CompetitionShape("shape-multiclass-labels", "multiclass, string labels", _E(
        "id", ("species",), "multiclass", "accuracy", ACCURACY, "labels",
        classes=("adelie", "chinstrap", "gentoo")), _multiclass_labels),
    CompetitionShape("shape-multiclass-probabilities", "multiclass, one probability column per class (unsorted)", _E(
        "id", ("level",), "multiclass", "log_loss", "Multiclass Loss", "probabilities",
        classes=("high", "low", "mid")), _multiclass_probabilities),
    CompetitionShape("shape-multilabel", "several 0/1 targets, one probability column each", _E(
        "id", ("toxic", "obscene", "insult"), "multilabel", "mean_columnwise_roc_auc",
        "Mean Columnwise Area Under Receiver Operating Characteristic Curve", "probabilities",
        classes=("0", "1")), _multilabel),
    CompetitionShape("shape-multitarget-regression", "several float targets", _E(
        "text_id", ("cohesion", "syntax"), "multitarget_regression", "mcrmse",
        "Mean Columnwise Root Mean Squared Error", "values"), _multitarget),
    CompetitionShape("shape-regression", "regression scored by RMSE", _E(
        "id", ("price",), "regression", "rmse", "Root Mean Squared Error", "values"), _regression),
    CompetitionShape("shape-regression-rmsle", "regression of counts scored by RMSLE", _E(
        "id", ("sales",), "regression", "rmsle", "Root Mean Squared Logarithmic Error", "values"), _regression_rmsle),
    CompetitionShape("shape-train-only-columns", "train.csv has columns test.csv lacks", _E(
        "id", ("count",), "regression", "rmsle", "Root Mean Squared Logarithmic Error", "values",
        excluded_columns=("casual", "registered")), _train_only),
    CompetitionShape("shape-id-not-first", "the id is the third column", _E(
        "row_id", ("label",), "binary", "accuracy", ACCURACY, "labels", classes=("0", "1")), _id_not_first),
    CompetitionShape("shape-leading-zero-ids", "ids 00001.. whose zeros must survive", _E(
        "id", ("label",), "binary", "accuracy", ACCURACY, "labels", classes=("0", "1")), _leading_zeros),
    CompetitionShape("shape-sample-name", "the sample submission is sampleSubmission.csv", _E(
        "id", ("label",), "binary", "accuracy", ACCURACY, "labels", classes=("0", "1"),
        sample_file="sampleSubmission.csv"), _binary_int),
    CompetitionShape("shape-subfolder", "the zip holds its files in a folder", _E(
        "id", ("price",), "regression", "rmse", "Root Mean Squared Error", "values"), _regression, subfolder="data"),
    CompetitionShape("shape-test-column-order", "test.csv's columns in another order", _E(
        "id", ("label",), "binary", "accuracy", ACCURACY, "labels", classes=("0", "1")), _test_order),
    CompetitionShape("shape-text-only", "one free-text column, F1", _E(
        "id", ("positive",), "binary", "f1", "F1 Score", "labels", classes=("0", "1")), _text_only),
)


def shape(slug: str) -> CompetitionShape:
    """The shape called ``slug`` among :data:`SHAPES` (the real competitions' layouts:
    :func:`lora_tasks.testing.real_shapes.all_shapes`)."""
    shapes = SHAPES
    for s in shapes:
        if s.slug == slug:
            return s
    raise KeyError(f"No shape {slug!r}; shapes: {', '.join(s.slug for s in shapes)}.")


# ------------------------------------------------------------------------------ writing


def build_shape(which: CompetitionShape | str, dest: str | os.PathLike[str], *, packed: bool = True) -> Path:
    """Write one shape under ``dest`` (the fake server's data folder) and return its
    competition folder ``dest/<slug>``. Seeded by the slug, so rebuilds give the same files.
    ``packed=False`` leaves out the inner zips (the folder as a download unpacks it)."""
    s = shape(which) if isinstance(which, str) else which
    rng = np.random.default_rng([_SEED, *s.slug.encode()])
    tables = s.build(rng)
    top = Path(dest) / s.slug
    folder = top / s.subfolder if s.subfolder else top
    folder.mkdir(parents=True, exist_ok=True)
    layout = s.files
    for frame, name in ((tables.train, layout.train), (tables.test, layout.test), (tables.sample, s.expected.sample_file),
                        *((tables.train.iloc[:5, :3], name) for name in layout.extra)):
        write_table(frame, folder / name, zip_name=layout.zip_of(name) if packed else None)
    write_table(tables.solution, top / SOLUTION_FILE_NAME)
    meta = {"metric": s.expected.metric, "evaluation_metric": s.expected.kaggle_metric}
    write_text(json.dumps(meta, indent=1) + "\n", top / COMPETITION_META_FILE)
    return top


def build_all_shapes(dest: str | os.PathLike[str], shapes: tuple[CompetitionShape, ...] | None = None,
                     *, packed: bool = True) -> dict[str, Path]:
    """Every shape (of ``shapes``, default :data:`SHAPES`) under ``dest``: ``{slug: folder}``."""
    return {s.slug: build_shape(s, dest, packed=packed) for s in (SHAPES if shapes is None else shapes)}


def fake_server_metrics() -> dict[str, str]:
    """``{slug: metric}`` for :class:`FakeKaggleServer`'s ``metrics`` (a built shape's folder
    carries it too)."""
    return {s.slug: s.expected.metric for s in SHAPES}


def fake_server_evaluation_metrics() -> dict[str, str]:
    """``{slug: Kaggle's evaluation_metric text}`` for :class:`FakeKaggleServer`'s
    ``evaluation_metrics`` (a built shape's folder carries it too)."""
    return {s.slug: s.expected.kaggle_metric for s in SHAPES}
