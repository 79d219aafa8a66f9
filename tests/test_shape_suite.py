"""The shape suite: every Kaggle shape of :mod:`lora_tasks.testing.shapes`, end to end, no config.

For each shape, the whole run (download from the fake Kaggle server, prepare, plan, train two
tiny-model folds for one epoch, scikit-learn members, blend, write, validate, submit, read the
score) goes as a new user's would: no config file, only the competition's files and Kaggle's
listing (whose ``evaluationMetric`` is the shape's). Checked against the shape's own files:
the submission has the sample's header, test.csv's ids as written and in order, labels spelled
exactly as train.csv spells them, probabilities in [0, 1] (multiclass rows summing to 1); the
fake server scored it COMPLETE with the shape's metric, and it beats the sample submission's
constant guess (so probability columns are not swapped and values are not off-scale).

Then, per shape, wrong files built from its hidden solution (which is a right submission) are
refused by :func:`lora_tasks.kaggle.validate_submission` before anything is uploaded: 0/1 for
True/False and other mis-spelled labels, a missing value column, a NaN, permuted ids.

Two shapes go through the Prefect flow too: train-only columns, and bool labels.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lora_tasks.data.competition import find_config_file, load_competition
from lora_tasks.data.csv_io import read_csv
from lora_tasks.kaggle import SubmissionValidationError, validate_submission
from lora_tasks.metrics import get_metric
from lora_tasks.options import RunOptions
from lora_tasks.prefect.flow import kaggle_lora
from lora_tasks.steps import Prepared, run_pipeline
from lora_tasks.steps.plan import Plan
from lora_tasks.testing import fake_kaggle as fk
from lora_tasks.testing.real_shapes import all_shapes
from lora_tasks.testing.shapes import SHAPES, CompetitionShape, build_all_shapes

ALL = all_shapes()  # the shapes we thought of, then those rebuilt from real competitions' layouts
_IDS = [s.slug for s in ALL]
FAST = {"tiny": True, "folds": 2, "epochs": 1, "max_seq_len": 64, "retry_delay_s": 0.05, "score_poll_s": 0.05}


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Path:
    """Every shape written once, as the fake server's data folder (inner zips and all)."""
    dest = tmp_path_factory.mktemp("shapes-served")
    build_all_shapes(dest, ALL)
    return dest


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    """Every shape as its download unpacks (no inner zips): what the checks below read."""
    dest = tmp_path_factory.mktemp("shapes-plain")
    build_all_shapes(dest, ALL, packed=False)
    return dest


@pytest.fixture(scope="module")
def shape_server(served, fake_creds):
    """One fake Kaggle server for the module; each shape folder names its own metric and
    ``evaluationMetric`` (the shapes' ``.fake-kaggle.json``)."""
    with fk.serve(served, pending_polls=1) as server:
        yield server


@pytest.fixture(scope="module")
def shared_work(tmp_path_factory) -> Path:
    """One work dir for the real competitions' shapes, as a user running several competitions
    has: the cost probe and token cache are measured once per model shape, not once per run."""
    return tmp_path_factory.mktemp("shapes-work")


def _text(path: Path) -> pd.DataFrame:
    return read_csv(path, as_text=True)


def _shape_files(s: CompetitionShape, plain: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """train.csv, the sample submission and the hidden solution, as written (text)."""
    folder = plain / s.slug / (s.subfolder or "")
    return (_text(folder / s.files.train), _text(folder / s.expected.sample_file),
            _text(plain / s.slug / fk.SOLUTION_FILE_NAME))


def _train_column(s: CompetitionShape, column: str, train: pd.DataFrame) -> str:
    """The train.csv column a sample value column predicts (``prediction`` -> ``label``)."""
    return column if column in train.columns else s.expected.target_columns[0]


# ------------------------------------------------------------------------------ end to end


@pytest.mark.parametrize("s", ALL, ids=_IDS)
def test_zero_config_run_submits_a_file_the_server_scores(s: CompetitionShape, served, plain, shape_server, tmp_path,
                                                         shared_work):
    e = s.expected
    assert find_config_file(s.slug, None) is None, "the shape must run with no config file"
    work = shared_work if s not in SHAPES else tmp_path / "work"
    result = run_pipeline(RunOptions(competition=s.slug, kaggle_endpoint=shape_server.url,
                                     work_dir=str(work), **FAST), run_key=f"suite-{s.slug}")

    # what the zero-config run inferred
    prepared = Prepared.load(result.prepared_path)
    assert (prepared.id_column, tuple(prepared.target_columns), str(prepared.task)) == (
        e.id_column, e.target_columns, e.task)
    assert (prepared.metric, prepared.metric_source, prepared.kaggle_metric) == (
        e.metric, "kaggle metadata", e.kaggle_metric)
    assert prepared.submission.prediction == e.prediction
    assert tuple(x.name for x in prepared.excluded) == e.excluded_columns

    train, sample, solution = _shape_files(s, plain)
    plan_text = Plan.load(result.plan_path).competition_markdown  # what `kaggle-lora plan` prints
    for column in [c for c in sample.columns if c != e.id_column and c not in train.columns]:
        if column not in e.classes:  # a renamed target, not one column per class
            assert f"| sample column `{column}` | predicts train's `{_train_column(s, column, train)}` |" in plan_text
    if e.id_column not in train.columns and e.id_column not in _text(plain / s.slug / s.files.test).columns:
        assert "row numbers 1..N" in plan_text
    sub = _text(Path(result.submission_path))
    assert list(sub.columns) == list(sample.columns), "the sample's header, in its order"
    assert sub[e.id_column].tolist() == sample[e.id_column].tolist(), "test.csv's ids as written, in order"
    values = [c for c in sample.columns if c != e.id_column]
    if e.prediction == "labels":
        for column in values:
            spelled = set(train[_train_column(s, column, train)])  # the target's values as train.csv writes them
            assert set(sub[column]) <= spelled, f"{column}: {sorted(set(sub[column]) - spelled)} not in {spelled}"
    else:
        numbers = sub[values].astype(float).to_numpy()
        assert np.isfinite(numbers).all()
        if e.prediction == "probabilities":
            assert ((numbers >= 0) & (numbers <= 1)).all()
            if e.task == "multiclass":
                np.testing.assert_allclose(numbers.sum(axis=1), 1.0, atol=1e-6)

    # the server scored exactly this file with the shape's metric
    stored = [x for x in shape_server.submissions_for(s.slug) if x.content == Path(result.submission_path).read_bytes()]
    assert len(stored) == 1, "submitted exactly once"
    scored = stored[0]
    assert scored.status == "COMPLETE", scored.error_description
    assert scored.metric == e.metric
    assert math.isfinite(scored.public_score) and result.public_score == pytest.approx(scored.public_score)
    assert scored.public_score == pytest.approx(fk.score_submission(sub, solution, e.metric))
    constant = fk.score_submission(sample, solution, e.metric)
    assert get_metric(e.metric).is_better(scored.public_score, constant), (
        f"{e.metric} {scored.public_score:.4f} does not beat the sample's constant guess {constant:.4f}")


# ------------------------------------------------------------------------------ the validator


def _validate(s: CompetitionShape, plain: Path, path: Path) -> None:
    """The checks a run makes before uploading, from the format the data layer infers."""
    cfg = load_competition(s.slug, data_dir=plain, competitions_dir=plain / "no-configs",
                           kaggle_metric=s.expected.kaggle_metric)
    fmt = cfg.submission
    validate_submission(path, cfg.sample_submission_path, id_column=cfg.id_column,
                        dtypes={c: fmt.dtype for c in fmt.value_columns}, allowed_values=fmt.allowed_values(),
                        probability_columns=fmt.probability_columns, rows_sum_to_one=fmt.rows_sum_to_one)


def _misspelled(s: CompetitionShape, solution: pd.DataFrame) -> pd.DataFrame:
    """The shape's right answer written the way a careless pipeline writes it."""
    e, bad = s.expected, solution.copy()
    column = next(c for c in solution.columns if c != e.id_column)
    if e.prediction == "labels" and set(e.classes) == {"False", "True"}:
        bad[column] = bad[column].map({"False": "0", "True": "1"})  # 0/1 for bools
    elif e.prediction == "labels" and all(c.lstrip("-").isdigit() for c in e.classes):
        bad[column] = bad[column] + ".0"  # integer labels written as floats
    elif e.prediction == "labels":
        bad[column] = bad[column].str.upper()  # "YES" is not "yes"
    elif e.prediction == "probabilities":
        bad.loc[0, column] = "1.5"  # a probability above 1
    else:
        bad.loc[0, column] = "n/a"  # not a number
    return bad


def _wrong_files(s: CompetitionShape, solution: pd.DataFrame) -> dict[str, pd.DataFrame]:
    e = s.expected
    values = [c for c in solution.columns if c != e.id_column]
    permuted = solution.copy()
    permuted[e.id_column] = solution[e.id_column].iloc[[1, 0, *range(2, len(solution))]].to_numpy()
    nan = solution.copy()
    nan.loc[len(nan) // 2, values[-1]] = "NaN"
    return {
        "misspelled": _misspelled(s, solution),
        "missing-column": solution.drop(columns=[values[-1]]),
        "nan": nan,
        "permuted-id": permuted,
    }


@pytest.mark.parametrize("s", ALL, ids=_IDS)
def test_wrong_formats_are_refused_before_upload(s: CompetitionShape, plain, tmp_path):
    _, _, solution = _shape_files(s, plain)
    right = tmp_path / "right.csv"
    solution.to_csv(right, index=False)
    _validate(s, plain, right)  # the solution is a right submission: it passes
    for kind, frame in _wrong_files(s, solution).items():
        path = tmp_path / f"{kind}.csv"
        frame.to_csv(path, index=False)
        with pytest.raises(SubmissionValidationError) as refused:
            _validate(s, plain, path)
        assert refused.value.problems, kind


# ------------------------------------------------------------------------------ through Prefect


@pytest.mark.parametrize("slug", ["shape-train-only-columns", "shape-binary-bool"])
def test_flow_completes_and_submits_in_the_samples_format(slug, harness, served, plain, shape_server, tmp_path):
    s = next(x for x in SHAPES if x.slug == slug)
    summary = kaggle_lora(RunOptions(competition=s.slug, kaggle_endpoint=shape_server.url,
                                     work_dir=str(tmp_path / "work"), **FAST))
    assert summary.submitted and set(summary.task_states.values()) == {"Completed"}, summary.task_states
    [stored] = [x for x in shape_server.submissions_for(s.slug)
                if x.content == Path(summary.submission_path).read_bytes()]
    assert stored.status == "COMPLETE" and stored.metric == s.expected.metric
    assert summary.public_score == pytest.approx(stored.public_score)
    sub = _text(Path(summary.submission_path))
    train, sample, _ = _shape_files(s, plain)
    assert list(sub.columns) == list(sample.columns) and sub["id"].tolist() == sample["id"].tolist()
    target = s.expected.target_columns[0]
    if s.expected.prediction == "labels":
        assert set(sub[target]) <= set(train[target]) == set(s.expected.classes)
