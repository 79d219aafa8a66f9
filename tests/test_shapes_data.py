"""Every Kaggle shape of lora_tasks.testing.shapes, read with no config file.

For each shape: ``load_competition`` infers the expected id, targets, task, metric (from
Kaggle's ``evaluation_metric`` string), submission content and excluded columns, and a perfect
prediction rendered by the inferred format is, byte for byte, the hidden solution file (which
the generator writes in the sample submission's layout), with the sample's header and ids.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression, Ridge

from lora_tasks.data.competition import load_competition
from lora_tasks.data.csv_io import read_csv
from lora_tasks.data.submission_format import write_csv
from lora_tasks.testing.fake_kaggle import SOLUTION_FILE_NAME
from lora_tasks.testing.real_shapes import all_shapes
from lora_tasks.testing.shapes import SHAPES, CompetitionShape, build_shape

_IDS = [s.slug for s in SHAPES]
ALL = all_shapes()  # with the shapes rebuilt from real competitions' layouts
_ALL_IDS = [s.slug for s in ALL]


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    """Every shape as its download unpacks (inner zips already opened)."""
    dest = tmp_path_factory.mktemp("shapes")
    for s in ALL:
        build_shape(s, dest, packed=False)
    return dest


def _load(s: CompetitionShape, dest):
    return load_competition(s.slug, data_dir=dest, competitions_dir=dest / "no-configs",
                            kaggle_metric=s.expected.kaggle_metric)


@pytest.mark.parametrize("s", ALL, ids=_ALL_IDS)
def test_inferred_with_no_config(s: CompetitionShape, shapes_dir):
    cfg = _load(s, shapes_dir)
    e = s.expected
    assert cfg.config_path is None
    assert cfg.id_column == e.id_column
    assert cfg.target_columns == e.target_columns
    assert cfg.task_type == e.task
    assert cfg.metric == e.metric and cfg.metric_source == "kaggle metadata" and cfg.kaggle_metric == e.kaggle_metric
    assert cfg.submission.prediction == e.prediction
    assert cfg.submission.classes == e.classes
    assert cfg.submission.target_transform == ("log1p" if e.metric == "rmsle" else "none")
    assert tuple(x.name for x in cfg.excluded) == e.excluded_columns
    assert (cfg.files.train, cfg.files.test, cfg.files.sample_submission) == (s.files.train, s.files.test, e.sample_file)
    assert cfg.data_dir.name == (s.subfolder or s.slug)
    features = set(cfg.feature_columns)
    assert not features & {e.id_column, *e.target_columns, *e.excluded_columns}
    assert features == set(cfg.read_test().columns) - {e.id_column}, "every test column but the id is a feature"
    for name in e.excluded_columns:
        assert name in cfg.describe() and "only in train.csv" in cfg.describe()


@pytest.mark.parametrize("s", SHAPES, ids=_IDS)
def test_rows_as_text_render_train_and_test(s: CompetitionShape, shapes_dir):
    cfg = _load(s, shapes_dir)
    train, test = cfg.read_train(), cfg.read_test()
    template = cfg.row_template(train)
    assert set(template.columns) == set(cfg.feature_columns)
    texts = template.render_frame(test)
    assert len(texts) == len(test) and all(texts)


def _perfect(cfg, solution: pd.DataFrame) -> np.ndarray:
    """The truth as the model side would hold it: class indices, class probabilities in the
    competition's class order, or values."""
    fmt = cfg.submission
    cols = list(fmt.value_columns)
    if fmt.prediction == "labels":
        spelled = [fmt.spell(c) for c in cfg.classes]
        return np.array([[spelled.index(v) for v in solution[c]] for c in cols]).T.squeeze(axis=1)
    if fmt.prediction == "probabilities" and fmt.rows_sum_to_one:
        spelled = [fmt.spell(c) for c in cfg.classes]
        return np.stack([solution[c].astype(float).to_numpy() for c in spelled], axis=1)
    matrix = np.stack([solution[c].astype(float).to_numpy() for c in cols], axis=1)
    return matrix[:, 0] if matrix.shape[1] == 1 else matrix


@pytest.mark.parametrize("s", ALL, ids=_ALL_IDS)
def test_perfect_prediction_renders_as_the_solution(s: CompetitionShape, shapes_dir, tmp_path):
    cfg = _load(s, shapes_dir)
    solution_path = shapes_dir / s.slug / SOLUTION_FILE_NAME
    solution = read_csv(solution_path, as_text=True)
    frame = cfg.submission.render(cfg.read_test_ids(), _perfect(cfg, solution), cfg.classes)
    out = write_csv(frame, tmp_path / "submission.csv")
    assert out.read_text() == solution_path.read_text()
    sample = read_csv(cfg.sample_submission_path, as_text=True)
    written = read_csv(out, as_text=True)
    assert list(written.columns) == list(sample.columns)
    assert written[cfg.id_column].tolist() == sample[cfg.id_column].tolist()
    for column, allowed in cfg.submission.allowed_values().items():
        assert set(written[column]) <= allowed


def test_leading_zero_ids_survive(shapes_dir):
    cfg = _load(next(s for s in SHAPES if s.slug == "shape-leading-zero-ids"), shapes_dir)
    ids = cfg.read_test_ids()
    assert ids[0] == "00241" and all(len(i) == 5 for i in ids)


def test_bool_labels_are_written_true_false(shapes_dir, tmp_path):
    cfg = _load(next(s for s in SHAPES if s.slug == "shape-binary-bool"), shapes_dir)
    assert cfg.classes == (False, True) and cfg.submission.dtype == "bool"
    frame = cfg.submission.render(["1", "2"], np.array([1, 0]), cfg.classes)
    text = write_csv(frame, tmp_path / "s.csv").read_text()
    assert text == "id,Transported\n1,True\n2,False\n"
    assert cfg.submission.allowed_values() == {"Transported": {"True", "False"}}


@pytest.mark.parametrize("s", SHAPES, ids=_IDS)
def test_without_kaggle_metric_the_data_alone_decides(s: CompetitionShape, shapes_dir):
    cfg = load_competition(s.slug, data_dir=shapes_dir, competitions_dir=shapes_dir / "no-configs")
    e = s.expected
    assert (cfg.id_column, cfg.target_columns, cfg.task_type) == (e.id_column, e.target_columns, e.task)
    assert cfg.submission.prediction == e.prediction, "the sample's values say labels / probabilities / values"
    assert cfg.metric_source == "inferred" and cfg.kaggle_metric is None


def test_unknown_kaggle_metric_warns_and_falls_back(shapes_dir):
    s = next(s for s in SHAPES if s.slug == "shape-regression")
    with pytest.warns(UserWarning, match="'Weighted Gini Of Something'"):
        cfg = load_competition(s.slug, data_dir=shapes_dir, competitions_dir=shapes_dir / "no-configs",
                               kaggle_metric="Weighted Gini Of Something")
    assert cfg.metric == "rmse" and cfg.metric_source == "inferred"


def _design(cfg, train: pd.DataFrame, test: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The shapes' features as a linear model sees them: one-hot categories, word counts for text."""
    text = [c for c in cfg.feature_columns if not pd.api.types.is_numeric_dtype(train[c]) and train[c].str.count(" ").mean() > 2]
    if text:
        vec = CountVectorizer().fit(train[text[0]])
        return vec.transform(train[text[0]]).toarray(), vec.transform(test[text[0]]).toarray()
    both = pd.get_dummies(pd.concat([train[list(cfg.feature_columns)], test[list(cfg.feature_columns)]]), dtype=float)
    return both.iloc[: len(train)].to_numpy(), both.iloc[len(train):].to_numpy()


@pytest.mark.parametrize("s", SHAPES, ids=_IDS)
def test_every_shape_has_a_learnable_signal(s: CompetitionShape, shapes_dir):
    """A linear model on the features beats the constant guess on the hidden solution, so an
    end-to-end run on a shape can be checked for a real score, not only a valid file."""
    cfg = _load(s, shapes_dir)
    train, test = cfg.read_train(), cfg.read_test()
    solution = read_csv(shapes_dir / s.slug / SOLUTION_FILE_NAME)
    x_train, x_test = _design(cfg, train, test)
    if cfg.submission.rows_sum_to_one:  # one-hot solution columns: back to one label column
        truth = {cfg.target_columns[0]: solution[list(cfg.submission.value_columns)].idxmax(axis=1)}
    else:
        truth = {c: solution[c] for c in cfg.target_columns}
    for column, y_true in truth.items():
        y_train = train[column]
        if cfg.task_type in ("regression", "multitarget_regression"):
            pred = Ridge(alpha=1.0).fit(x_train, np.log1p(y_train) if cfg.metric == "rmsle" else y_train).predict(x_test)
            target = np.log1p(y_true) if cfg.metric == "rmsle" else y_true
            r2 = 1 - np.mean((target - pred) ** 2) / np.var(target)
            assert r2 > 0.3, f"{column}: R2 {r2:.2f}"
        else:
            pred = LogisticRegression(max_iter=1000).fit(x_train, y_train.astype(str)).predict(x_test)
            accuracy = float(np.mean(pred == y_true.astype(str).to_numpy()))
            majority = float(y_true.astype(str).value_counts(normalize=True).iloc[0])
            assert accuracy > majority + 0.1, f"{column}: accuracy {accuracy:.2f}, majority {majority:.2f}"
