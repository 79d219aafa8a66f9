"""The competition's evaluation metric, read through the real ``kaggle`` client from the fake server's
``ListCompetitions`` (as the real listing carries ``evaluation_metric``), and scored by it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _kaggle_helpers import needs_datasets
from sklearn.metrics import log_loss, roc_auc_score

from lora_tasks import kaggle as kio
from lora_tasks.testing import fake_kaggle as fk

pytest_plugins = ["_kaggle_helpers"]  # the shared fixtures: isolated_home, creds, solutions, server, client


@needs_datasets
@pytest.mark.parametrize(
    "slug, expected",
    [
        ("titanic", "Categorization Accuracy"),
        ("house-prices-advanced-regression-techniques", "Root Mean Squared Logarithmic Error"),
        ("nlp-getting-started", "F1 Score"),
    ],
)
def test_metric_of_each_shared_competition(slug, expected, client, server):
    assert kio.competition_metric(slug, client) == expected
    assert ("POST", "ListCompetitions") in server.requests


def _competitions(root, metrics: dict[str, str]) -> None:
    for slug in metrics:
        (root / slug).mkdir(parents=True)
        (root / slug / "test.csv").write_text("id,x\n1,0.5\n")


def test_the_exact_slug_is_picked_among_search_hits(creds, tmp_path):
    metrics = {"abc": "rmse", "abc-extra": "qwk", "xabc": "mae"}
    _competitions(tmp_path / "data", metrics)
    with fk.serve(tmp_path / "data", metrics=metrics) as srv:
        client = kio.KaggleClient(srv.url, timeout=5)
        assert kio.competition_metric("abc", client) == "Root Mean Squared Error"
        assert kio.competition_metric("abc-extra", client) == "Quadratic Weighted Kappa"
        assert kio.competition_metric("xabc", client) == "Mean Absolute Error"


def test_absent_metric_or_competition_is_none(creds, tmp_path, caplog):
    _competitions(tmp_path / "data", {"quiet": "accuracy", "custom": "accuracy"})
    texts = {"quiet": None, "custom": "Some Host-Defined Score"}
    with fk.serve(tmp_path / "data", evaluation_metrics=texts) as srv:
        client = kio.KaggleClient(srv.url, timeout=5)
        assert kio.competition_metric("quiet", client) is None
        assert kio.competition_metric("custom", client) == "Some Host-Defined Score"
        assert kio.competition_metric("nowhere", client) is None
    assert "has no 'nowhere'" in caplog.text


def test_unreachable_or_failing_kaggle_is_none_not_fatal(creds, tmp_path, caplog):
    _competitions(tmp_path / "data", {"abc": "rmse"})
    with fk.serve(tmp_path / "data") as srv:
        srv.inject(fk.FAULT_500, method="ListCompetitions")
        assert kio.competition_metric("abc", kio.KaggleClient(srv.url, timeout=5)) is None
        url = srv.url
    assert kio.competition_metric("abc", kio.KaggleClient(url, timeout=1)) is None
    assert caplog.text.count("Could not read the evaluation metric of 'abc'") == 2


def test_no_credentials_is_none_not_fatal(isolated_home, tmp_path):
    _competitions(tmp_path / "data", {"abc": "rmse"})
    with fk.serve(tmp_path / "data") as srv:
        assert kio.competition_metric("abc", kio.KaggleClient(srv.url, timeout=5)) is None


def test_multiclass_probabilities_are_scored_with_the_listed_metric(creds, tmp_path):
    """A zero-config style round trip: read the metric, submit probabilities, get Kaggle's score."""
    rng = np.random.default_rng(0)
    classes = ["cat", "dog", "fox"]
    truth = rng.integers(0, 3, size=40)
    folder = tmp_path / "data" / "animals"
    folder.mkdir(parents=True)
    ids = [f"{i:04d}" for i in range(40)]  # leading zeros survive as text
    onehot = pd.DataFrame(np.eye(3, dtype=int)[truth], columns=classes).assign(id=ids)[["id", *classes]]
    onehot.to_csv(folder / fk.SOLUTION_FILE_NAME, index=False)
    pd.DataFrame({"id": ids, **{c: 1 / 3 for c in classes}}).to_csv(folder / "sample_submission.csv", index=False)
    probs = rng.dirichlet(np.ones(3), size=40)
    submission = tmp_path / "submission.csv"
    pd.DataFrame(probs, columns=classes).assign(id=ids)[["id", *classes]].to_csv(submission, index=False)
    with fk.serve(tmp_path / "data", metrics={"animals": "multiclass_logloss"}, pending_polls=0) as srv:
        client = kio.KaggleClient(srv.url, timeout=5)
        assert kio.competition_metric("animals", client) == "Multiclass Loss"
        kio.validate_submission(submission, folder / "sample_submission.csv",
                                probability_columns=classes, rows_sum_to_one=True)
        result = kio.submit("animals", submission, "probs", "run-animals", tmp_path / "state", client)
        scored = kio.wait_for_score("animals", result.ref, client, timeout_s=5, poll_s=0.01)
    written = pd.read_csv(submission)[classes].to_numpy()
    assert scored.public_score == pytest.approx(log_loss(truth, written / written.sum(axis=1, keepdims=True)))


def test_mean_columnwise_auc_round_trip(creds, tmp_path):
    rng = np.random.default_rng(1)
    labels = ["toxic", "insult"]
    truth = rng.integers(0, 2, size=(50, 2))
    folder = tmp_path / "data" / "comments"
    folder.mkdir(parents=True)
    ids = list(range(50))
    pd.DataFrame(truth, columns=labels).assign(id=ids)[["id", *labels]].to_csv(folder / fk.SOLUTION_FILE_NAME, index=False)
    probs = np.clip(truth * 0.3 + rng.random((50, 2)) * 0.7, 0, 1).round(6)
    submission = tmp_path / "submission.csv"
    pd.DataFrame(probs, columns=labels).assign(id=ids)[["id", *labels]].to_csv(submission, index=False)
    with fk.serve(tmp_path / "data", metrics={"comments": "mean_columnwise_auc"}, pending_polls=0) as srv:
        client = kio.KaggleClient(srv.url, timeout=5)
        assert "Mean Columnwise Area Under" in kio.competition_metric("comments", client)
        result = kio.submit("comments", submission, "probs", "run-comments", tmp_path / "state", client)
        scored = kio.wait_for_score("comments", result.ref, client, timeout_s=5, poll_s=0.01)
    expected = np.mean([roc_auc_score(truth[:, j], probs[:, j]) for j in range(2)])
    assert 0.5 < expected < 1 and scored.public_score == pytest.approx(expected)
