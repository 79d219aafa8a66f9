"""Competitions we never saw, with no config file: the whole run (download, prepare, plan, train,
blend, submit, score) against the fake Kaggle server, on synthetic Kaggle shapes, with the tiny
model. What must come out is a file in the sample submission's exact format, scored by the
server with the metric Kaggle's listing names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lora_tasks import steps
from lora_tasks.data.competition import find_config_file
from lora_tasks.kaggle import SubmissionValidationError
from lora_tasks.options import RunOptions
from lora_tasks.task import Task
from lora_tasks.testing import fake_kaggle as fk
from lora_tasks.testing.shapes import build_shape, shape

TRAIN_ONLY = "shape-train-only-columns"
BOOL = "shape-binary-bool"
MULTILABEL = "shape-multilabel"
MULTITARGET = "shape-multitarget-regression"
SHAPES = (TRAIN_ONLY, BOOL, MULTILABEL, MULTITARGET)
#: The fake server's scorer for each shape (its names differ from ours; it scores several
#: target columns by mean columnwise AUC, and RMSE on the first column).
SERVER_METRICS = {TRAIN_ONLY: "rmsle", BOOL: "accuracy", MULTILABEL: "mean_columnwise_auc", MULTITARGET: "rmse"}


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("served")
    for slug in SHAPES:
        assert find_config_file(slug, None) is None, "zero config: no competitions/<slug>.toml may exist"
        build_shape(slug, root)
    return root


@pytest.fixture(scope="module")
def server(served):
    evaluation = {slug: shape(slug).expected.kaggle_metric for slug in SHAPES}
    with fk.serve(served, metrics=SERVER_METRICS, evaluation_metrics=evaluation, pending_polls=1) as srv:
        yield srv


def _options(slug: str, server, work: Path, **kw) -> RunOptions:
    return RunOptions(competition=slug, work_dir=str(work), kaggle_endpoint=server.url, tiny=True, folds=2,
                      epochs=1, max_seq_len=32, message=f"zero-config {slug}", **kw)


def _run(slug: str, server, work: Path) -> steps.PipelineResult:
    result = steps.run_pipeline(_options(slug, server, work), run_key=f"zc-{slug}")
    assert result.submission is not None and not result.submission.reused
    return result


def _server_score(served: Path, slug: str, submission: Path) -> float:
    """The score computed independently from the file and the hidden solution, as text."""
    sub = pd.read_csv(submission, dtype=str, keep_default_na=False)
    solution = pd.read_csv(served / slug / fk.SOLUTION_FILE_NAME, dtype=str, keep_default_na=False)
    return fk.score_submission(sub, solution, SERVER_METRICS[slug])


def _sample(served: Path, slug: str) -> pd.DataFrame:
    return pd.read_csv(served / slug / shape(slug).expected.sample_file, dtype=str, keep_default_na=False)


def _check_format(served: Path, slug: str, submission: Path) -> pd.DataFrame:
    """Header, ids (as text, in order) and row count exactly the sample's; returns the file as text."""
    sample = _sample(served, slug)
    frame = pd.read_csv(submission, dtype=str, keep_default_na=False)
    assert list(frame.columns) == list(sample.columns)
    id_col = shape(slug).expected.id_column
    assert frame[id_col].tolist() == sample[id_col].tolist()
    return frame


def test_a_train_only_column_is_excluded_and_the_metric_comes_from_kaggle(creds, served, server, tmp_path):
    result = _run(TRAIN_ONLY, server, tmp_path / "work")
    prepared = steps.Prepared.load(result.prepared_path)
    assert [e.name for e in prepared.excluded] == ["casual", "registered"]
    assert all("only in train.csv" in e.reason for e in prepared.excluded)
    assert (prepared.metric, prepared.metric_source) == ("rmsle", "kaggle metadata")
    assert prepared.kaggle_metric == "Root Mean Squared Logarithmic Error"
    text = " ".join(prepared.train_texts[:50]).lower()
    assert "casual" not in text and "registered" not in text and "color is" in text
    # the scikit-learn members ran on test.csv's columns: a train-only feature would have failed them
    assert {"lightgbm", "catboost", "hist_gbm", "linear"} <= set(result.combined.member_scores)
    frame = _check_format(served, TRAIN_ONLY, result.submission_path)
    values = frame["count"].astype(float)
    assert np.isfinite(values).all() and (values >= 0).all()
    assert result.public_score == pytest.approx(_server_score(served, TRAIN_ONLY, result.submission_path))


def test_bool_labels_are_submitted_as_train_csv_spells_them(creds, served, server, tmp_path):
    result = _run(BOOL, server, tmp_path / "work")
    prepared = steps.Prepared.load(result.prepared_path)
    assert prepared.task is Task.BINARY and prepared.metric_source == "kaggle metadata"
    frame = _check_format(served, BOOL, result.submission_path)
    assert set(frame["Transported"]) <= {"True", "False"} and len(set(frame["Transported"])) == 2
    lines = result.submission_path.read_text().splitlines()
    assert lines[0] == "id,Transported" and lines[1].split(",")[1] in ("True", "False")
    score = _server_score(served, BOOL, result.submission_path)
    assert result.public_score == pytest.approx(score) and score > 0.6, "True/False read as the right labels"

    # the same labels written 0/1 would score zero on Kaggle: the validator refuses them first
    wrong = tmp_path / "zero-one.csv"
    frame.assign(Transported=(frame["Transported"] == "True").astype(int)).to_csv(wrong, index=False)
    with pytest.raises(SubmissionValidationError, match="Transported"):
        steps.validate(wrong, result.prepared_path)


def test_multilabel_trains_one_sigmoid_per_label_and_submits_a_column_each(creds, served, server, tmp_path):
    result = _run(MULTILABEL, server, tmp_path / "work")
    prepared = steps.Prepared.load(result.prepared_path)
    labels = ["toxic", "obscene", "insult"]
    assert (prepared.task, prepared.head_type, prepared.num_labels) == (Task.MULTILABEL, "multilabel_classification", 3)
    assert prepared.metric == "mean_columnwise_roc_auc" and np.asarray(prepared.y).shape == (len(prepared.train_texts), 3)
    oof = np.load(result.adapters[0].oof_path)
    assert oof.shape == (len(prepared.train_texts), 3)
    assert np.load(result.combined.test_path).shape == (len(prepared.test_ids), 3)
    frame = _check_format(served, MULTILABEL, result.submission_path)
    probs = frame[labels].astype(float).to_numpy()
    assert ((probs >= 0) & (probs <= 1)).all()
    score = _server_score(served, MULTILABEL, result.submission_path)
    assert result.public_score == pytest.approx(score) and score > 0.6


def test_multitarget_regression_trains_k_outputs_and_submits_every_target(creds, served, server, tmp_path):
    result = _run(MULTITARGET, server, tmp_path / "work")
    prepared = steps.Prepared.load(result.prepared_path)
    assert (prepared.task, prepared.head_type, prepared.num_labels) == (Task.MULTITARGET_REGRESSION, "regression", 2)
    assert (prepared.metric, prepared.metric_source) == ("mcrmse", "kaggle metadata")
    assert np.load(result.adapters[-1].oof_path).shape == (len(prepared.train_texts), 2)
    frame = _check_format(served, MULTITARGET, result.submission_path)
    values = frame[["cohesion", "syntax"]].astype(float).to_numpy()
    assert np.isfinite(values).all() and values.std(axis=0).min() > 0
    assert result.public_score == pytest.approx(_server_score(served, MULTITARGET, result.submission_path))


def test_plan_shows_the_excluded_columns_and_where_the_metric_came_from(creds, server, tmp_path):
    plans = steps.plan_run(_options(TRAIN_ONLY, server, tmp_path / "work"))
    shown = steps.Plan.load(plans["lora"]).competition_markdown
    assert "`casual`" in shown and "`registered`" in shown and "only in train.csv" in shown
    assert "kaggle metadata: 'Root Mean Squared Logarithmic Error'" in shown
    assert "| id column | `id` |" in shown and "`count`" in shown and "regression" in shown


def test_plan_cli_prints_the_competition(creds, server, tmp_path, capsys):
    from lora_tasks.cli import show_plan

    assert show_plan(_options(BOOL, server, tmp_path / "work")) == 0
    out = capsys.readouterr().out
    assert "### Competition: shape-binary-bool" in out and "kaggle metadata" in out
    assert "one of False, True" in out, "the submission format, with train.csv's spelling"


@pytest.mark.parametrize("listed", [None, "Some Custom Leaderboard Metric"])
def test_without_a_known_kaggle_metric_the_task_decides_it(creds, served, tmp_path, listed):
    """No evaluation_metric in the listing, or one we do not know (warned, naming it): the
    metric is inferred from the task, and the plan says so."""
    with fk.serve(served, metrics=SERVER_METRICS, evaluation_metrics={BOOL: listed}) as srv:
        if listed:
            with pytest.warns(UserWarning, match=listed):
                plans = steps.plan_run(_options(BOOL, srv, tmp_path / "work"))
        else:
            plans = steps.plan_run(_options(BOOL, srv, tmp_path / "work"))
    shown = steps.Plan.load(plans["lora"]).competition_markdown
    assert "| metric | accuracy | inferred |" in shown and "kaggle metadata" not in shown
    record = steps.CompetitionMetadata.find(tmp_path / "work" / "data", BOOL)
    assert record == steps.CompetitionMetadata(BOOL, listed)
