"""Submission checks before upload: header, rows, ids and their order, and every value as written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _kaggle_helpers import DATASETS, needs_datasets, sha, write

from lora_tasks import kaggle as kio

pytestmark = needs_datasets
pytest_plugins = ["_kaggle_helpers"]  # the shared fixtures: isolated_home, creds, solutions, server, client


@pytest.fixture
def titanic_sample() -> Path:
    return DATASETS / "titanic" / "gender_submission.csv"


def test_valid_submission_passes(titanic_sample):
    check = kio.validate_submission(titanic_sample, titanic_sample)
    assert check.rows == 418 and check.columns == ("PassengerId", "Survived")
    assert check.sha256 == sha(titanic_sample)


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda f: f.rename(columns={"Survived": "survived"}), "columns are"),
        (lambda f: f[["Survived", "PassengerId"]], "same order"),
        (lambda f: f.iloc[:-1], "417 rows but sample_submission has 418"),
        (lambda f: f.assign(PassengerId=f.PassengerId + 10_000), "values not in sample_submission"),
        (lambda f: f.assign(PassengerId=[892] * len(f)), "duplicate PassengerId"),
        (lambda f: f.assign(Survived=f.Survived.astype(float).where(f.index != 3)), "NaN"),
        (lambda f: f.assign(Survived=f.Survived.astype(float).where(f.index != 3, np.inf)), "infinite"),
        (lambda f: f.assign(Survived=f.Survived * 0.5), "must hold integers"),
        (lambda f: f.assign(Survived="yes"), "must be numeric"),
    ],
    ids=["column-name", "column-order", "length", "ids", "duplicate-ids", "nan", "inf", "float-labels", "text"],
)
def test_invalid_submissions_are_rejected(mutate, fragment, titanic_sample, tmp_path):
    bad = write(mutate(pd.read_csv(titanic_sample)), tmp_path / "bad.csv")
    with pytest.raises(kio.SubmissionValidationError) as info:
        kio.validate_submission(bad, titanic_sample)
    assert fragment in str(info.value)
    assert "nothing was uploaded" in str(info.value)
    assert not kio.is_retryable(info.value)


def test_float_target_accepts_floats(tmp_path):
    sample = DATASETS / "house-prices-advanced-regression-techniques" / "sample_submission.csv"
    frame = pd.read_csv(sample)
    sub = write(frame.assign(SalePrice=frame.SalePrice.round(0).astype(int)), tmp_path / "s.csv")
    assert kio.validate_submission(sub, sample).rows == 1459


def test_invalid_file_is_never_uploaded(client, server, titanic_sample, tmp_path):
    bad = write(pd.read_csv(titanic_sample).iloc[:10], tmp_path / "bad.csv")
    with pytest.raises(kio.SubmissionValidationError):
        kio.submit("titanic", bad, "m", "run-v", tmp_path / "state", client, sample_submission_path=titanic_sample)
    assert server.requests == []
    assert not (tmp_path / "state").exists()



# ------------------------------------------------------------------------------------------
# exact spelling, probabilities, id order (synthetic samples in Kaggle's shapes)
# ------------------------------------------------------------------------------------------


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _problems(path: Path, sample: Path, **kwargs) -> list[str]:
    with pytest.raises(kio.SubmissionValidationError) as info:
        kio.validate_submission(path, sample, **kwargs)
    assert "nothing was uploaded" in str(info.value)
    return info.value.problems


@pytest.fixture
def bool_sample(tmp_path) -> Path:
    return _csv(tmp_path / "sample.csv", "PassengerId,Transported\n0013_01,False\n0018_01,False\n0019_01,False\n")


@pytest.mark.parametrize("given", [True, False], ids=["allowed-values", "inferred-from-sample"])
def test_zero_one_for_bool_labels_is_refused(given, bool_sample, tmp_path):
    bad = _csv(tmp_path / "sub.csv", "PassengerId,Transported\n0013_01,1\n0018_01,0\n0019_01,True\n")
    kwargs = {"allowed_values": {"Transported": ["False", "True"]}} if given else {}
    problems = _problems(bad, bool_sample, **kwargs)
    assert len(problems) == 1
    assert "'Transported'" in problems[0] and "2 rows" in problems[0]
    assert "PassengerId=0013_01: '1'" in problems[0]  # an example row: its id and its value
    assert "['False', 'True']" in problems[0]  # what was expected
    good = _csv(tmp_path / "good.csv", "PassengerId,Transported\n0013_01,True\n0018_01,False\n0019_01,True\n")
    assert kio.validate_submission(good, bool_sample, **kwargs).rows == 3


def test_float_spelling_of_integer_labels_is_refused(tmp_path):
    sample = _csv(tmp_path / "sample.csv", "id,label\n1,0\n2,0\n3,0\n")
    bad = _csv(tmp_path / "sub.csv", "id,label\n1,1.0\n2,2\n3,0\n")
    inferred = _problems(bad, sample)
    assert len(inferred) == 1 and "must hold integers" in inferred[0] and "id=1: '1.0'" in inferred[0]
    allowed = _problems(bad, sample, allowed_values={"label": {"0", "1", "2"}})
    assert len(allowed) == 1 and "not allowed labels" in allowed[0] and "id=1: '1.0'" in allowed[0]


def test_string_labels_must_match_exactly(tmp_path):
    sample = _csv(tmp_path / "sample.csv", "id,answer\n1,no\n2,no\n")
    allowed = {"answer": ["no", "yes"]}
    assert kio.validate_submission(_csv(tmp_path / "ok.csv", "id,answer\n1,yes\n2,no\n"), sample, allowed_values=allowed)
    problems = _problems(_csv(tmp_path / "bad.csv", "id,answer\n1,Yes\n2,no\n"), sample, allowed_values=allowed)
    assert "id=1: 'Yes'" in problems[0]


@pytest.fixture
def proba_sample(tmp_path) -> Path:
    return _csv(tmp_path / "sample.csv", "id,A,B,C\n10,0.2,0.3,0.5\n11,0.2,0.3,0.5\n12,0.2,0.3,0.5\n")


PROBA = {"probability_columns": ["A", "B", "C"], "rows_sum_to_one": True}


def test_valid_probabilities_pass(proba_sample, tmp_path):
    good = _csv(tmp_path / "sub.csv", "id,A,B,C\n10,0.1,0.1,0.8\n11,1,0,0\n12,0.33333333,0.33333333,0.33333334\n")
    assert kio.validate_submission(good, proba_sample, **PROBA).rows == 3


@pytest.mark.parametrize(
    "text, column, fragment",
    [
        ("id,A,B\n10,0.5,0.5\n11,0.5,0.5\n12,0.5,0.5\n", None, "missing ['C']"),
        ("id,A,B,C\n10,0.5,,0.5\n11,0.2,0.3,0.5\n12,0.2,0.3,0.5\n", "B", "empty/NaN values: 1 row, e.g. id=10: ''"),
        ("id,A,B,C\n10,0.5,nan,0.5\n11,0.2,0.3,0.5\n12,0.2,0.3,0.5\n", "B", "empty/NaN values: 1 row, e.g. id=10: 'nan'"),
        ("id,A,B,C\n10,0.2,0.3,0.5\n11,inf,0.3,0.5\n12,0.2,0.3,0.5\n", "A", "infinite values: 1 row, e.g. id=11: 'inf'"),
        ("id,A,B,C\n10,0.2,0.3,0.5\n12,0.2,0.3,0.5\n11,0.2,0.3,0.5\n", None, "another order"),
        ("id,A,B,C\n10,1.2,-0.2,0\n11,0.2,0.3,0.5\n12,0.2,0.3,0.5\n", "A", "outside [0, 1]: 1 row, e.g. id=10: '1.2'"),
        ("id,A,B,C\n10,0.2,0.3,0.4\n11,0.2,0.3,0.5\n12,0.5,0.5,0.5\n", None, "sum to 1 within 1e-06: 2 rows do not, e.g. id=10: sum 0.9"),
    ],
    ids=["missing-class-column", "empty", "nan", "inf", "permuted-ids", "probability-1.2", "rows-not-summing-to-1"],
)
def test_wrong_probability_files_are_refused(text, column, fragment, proba_sample, tmp_path):
    problems = _problems(_csv(tmp_path / "sub.csv", text), proba_sample, **PROBA)
    assert any(fragment in p for p in problems), problems
    if column is not None:
        assert any(f"column {column!r}" in p and fragment in p for p in problems)


def test_permuted_ids_name_the_first_difference(proba_sample, tmp_path):
    text = "id,A,B,C\n10,0.2,0.3,0.5\n12,0.2,0.3,0.5\n11,0.2,0.3,0.5\n"
    (problem,) = _problems(_csv(tmp_path / "sub.csv", text), proba_sample, **PROBA)
    assert "2 rows differ; first at row 2: got '12', expected '11'" in problem


def test_ids_are_compared_as_written(tmp_path):
    sample = _csv(tmp_path / "sample.csv", "id,y\n007,1.5\n008,1.5\n")
    (problem, other) = _problems(_csv(tmp_path / "sub.csv", "id,y\n7,1.5\n8,1.5\n"), sample)
    assert "2 id values not in sample_submission, e.g. ['7', '8']" in problem
    assert "missing, e.g. ['007', '008']" in other


def test_every_problem_is_reported_at_once(proba_sample, tmp_path):
    text = "id,A,B,C\n10,1.2,x,0.5\n11,0.2,0.3,inf\n"
    problems = _problems(_csv(tmp_path / "sub.csv", text), proba_sample, **PROBA)
    joined = " | ".join(problems)
    for fragment in ("2 rows but sample_submission has 3", "outside [0, 1]", "non-numbers", "infinite", "missing, e.g. ['12']"):
        assert fragment in joined
    assert len(problems) >= 5


def test_a_column_named_for_checks_must_exist(proba_sample, tmp_path):
    good = _csv(tmp_path / "sub.csv", "id,A,B,C\n10,0.2,0.3,0.5\n11,0.2,0.3,0.5\n12,0.2,0.3,0.5\n")
    (problem,) = _problems(good, proba_sample, probability_columns=["A", "B", "C", "D"])
    assert "'D' was named for checking but is not in the sample submission" in problem
