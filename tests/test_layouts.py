"""The data layer on real competitions' layouts, each rebuilt as a small folder.

The rules of :mod:`lora_tasks.data.columns` (sample column -> train target, row-number ids) and
:mod:`lora_tasks.data.layout` (which files are train, test and the sample: ``.tsv``,
``.csv.gz``, other names), plus the row-count check, on frames of a few rows.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd
import pytest

from lora_tasks.data.competition import CompetitionConfigError, load_competition
from lora_tasks.data.csv_io import read_csv


def _folder(tmp_path: Path, files: dict[str, pd.DataFrame], name: str = "comp") -> Path:
    folder = tmp_path / name
    folder.mkdir(parents=True, exist_ok=True)
    for file, frame in files.items():
        sep = "\t" if ".tsv" in file else ","
        text = frame.to_csv(index=False, sep=sep, lineterminator="\n")
        if file.endswith(".gz"):
            (folder / file).write_bytes(gzip.compress(text.encode()))
        else:
            (folder / file).write_text(text)
    return folder


def _load(folder: Path, tmp_path: Path):
    return load_competition(folder.name, folder, competitions_dir=tmp_path / "no-configs")


N = 12


def _xy(n: int = N) -> pd.DataFrame:
    return pd.DataFrame({"x1": [float(i % 5) for i in range(n)], "x2": [f"w{i % 3}" for i in range(n)]})


# ------------------------------------------------------------------------------ target names


def test_sample_prediction_column_maps_to_the_one_train_column_test_lacks(tmp_path):
    """contradictory-my-dear-watson: the sample says ``id,prediction``, train.csv's target is ``label``."""
    train = _xy().assign(id=[f"t{i}" for i in range(N)], label=[i % 3 for i in range(N)])
    test = _xy(4).assign(id=[f"s{i}" for i in range(4)])
    sample = pd.DataFrame({"id": test["id"], "prediction": 0})
    cfg = _load(_folder(tmp_path, {"train.csv": train, "test.csv": test, "sample_submission.csv": sample}), tmp_path)
    assert cfg.target_columns == ("label",) and cfg.task_type == "multiclass"
    assert cfg.submission.columns == ("id", "prediction") and cfg.submission.classes == ("0", "1", "2")
    [match] = cfg.target_matches
    assert (match.sample_column, match.target, match.rule) == ("prediction", "label", "the one train column test lacks")
    plan = cfg.describe()
    assert "| sample column `prediction` | predicts train's `label` | inferred: the one train column test lacks |" in plan
    assert "label" not in cfg.feature_columns


@pytest.mark.parametrize("name", ["Predicted", "Expected", "target", "Prediction"])
def test_other_names_of_the_value_column_map_to_the_train_only_column(tmp_path, name):
    """Kaggle's own spellings (in-class competitions write ``Id,Predicted`` / ``Id,Expected``)."""
    train = _xy().assign(Id=range(N), SalePrice=[100.5 + i for i in range(N)])
    test = _xy(4).assign(Id=range(N, N + 4))
    sample = pd.DataFrame({"Id": test["Id"], name: 0.0})
    cfg = _load(_folder(tmp_path, {"train.csv": train, "test.csv": test, "sample_submission.csv": sample}), tmp_path)
    assert cfg.target_columns == ("SalePrice",) and cfg.task_type == "regression"
    assert cfg.submission.columns == ("Id", name)


def test_sample_column_in_another_case_maps_to_train_s_column(tmp_path):
    train = _xy().assign(id=range(N), label=[i % 2 for i in range(N)], extra=1)
    test = _xy(4).assign(id=range(N, N + 4))  # two train-only columns: only the case rule can match
    sample = pd.DataFrame({"id": test["id"], "Label": 0})
    cfg = _load(_folder(tmp_path, {"train.csv": train, "test.csv": test, "sample_submission.csv": sample}), tmp_path)
    assert cfg.target_columns == ("label",) and cfg.target_matches[0].rule == "same name in another case"
    assert [e.name for e in cfg.excluded] == ["extra"]
    assert "inferred: same name in another case" in cfg.describe()


def test_the_exact_name_wins_over_another_case(tmp_path):
    train = _xy().assign(id=range(N), target=[i % 2 for i in range(N)], Target=[i % 3 for i in range(N)])
    test = _xy(4).assign(id=range(N, N + 4))
    sample = pd.DataFrame({"id": test["id"], "Target": 0})
    cfg = _load(_folder(tmp_path, {"train.csv": train, "test.csv": test, "sample_submission.csv": sample}), tmp_path)
    assert cfg.target_columns == ("Target",) and cfg.target_matches[0].rule == "same name"
    assert "predicts train's" not in cfg.describe(), "an exact match needs no explanation"


# ------------------------------------------------------------------------------ row-number ids


@pytest.mark.parametrize("start", [1, 0])
def test_row_number_ids_are_written_from_test_csv_s_order(tmp_path, start):
    """digit-recognizer: test.csv has no id, the sample numbers its rows ``ImageId`` 1..N."""
    train = pd.DataFrame({"label": [i % 3 for i in range(N)], "pixel0": range(N), "pixel1": 0})
    test = pd.DataFrame({"pixel0": range(5), "pixel1": 0})
    sample = pd.DataFrame({"ImageId": range(start, start + 5), "Label": 0})
    cfg = _load(_folder(tmp_path, {"train.csv": train, "test.csv": test, "sample_submission.csv": sample}), tmp_path)
    assert cfg.id_column == "ImageId" and cfg.target_columns == ("label",)
    assert cfg.row_number_ids is not None and cfg.row_number_ids.start == start
    assert cfg.read_test_ids() == [str(start + i) for i in range(5)]
    assert "row numbers" in cfg.describe() and set(cfg.feature_columns) == {"pixel0", "pixel1"}


def test_a_sample_column_that_is_not_row_numbers_is_no_id(tmp_path):
    train = pd.DataFrame({"label": [i % 3 for i in range(N)], "pixel0": range(N)})
    test = pd.DataFrame({"pixel0": range(5)})
    sample = pd.DataFrame({"ImageId": [1, 2, 3, 5, 4], "Label": 0})
    folder = _folder(tmp_path, {"train.csv": train, "test.csv": test, "sample_submission.csv": sample})
    with pytest.raises(CompetitionConfigError, match="numbers test.csv's rows"):
        _load(folder, tmp_path)


# ------------------------------------------------------------------------------ row counts


@pytest.mark.parametrize("n_sample", [3, 5])
def test_sample_and_test_row_counts_must_agree(tmp_path, n_sample):
    train = _xy().assign(id=range(N), y=[i % 2 for i in range(N)])
    test = _xy(4).assign(id=range(N, N + 4))
    sample = pd.DataFrame({"id": range(N, N + n_sample), "y": 0})
    folder = _folder(tmp_path, {"train.csv": train, "test.csv": test, "sample_submission.csv": sample})
    with pytest.raises(CompetitionConfigError) as err:
        _load(folder, tmp_path)
    assert f"has {n_sample} rows but test.csv has 4" in str(err.value)


# ------------------------------------------------------------------------------ files


def test_tsv_files_are_read_with_tabs_and_no_quoting(tmp_path):
    """sentiment-analysis-on-movie-reviews: train.tsv / test.tsv, phrases with a lone quote."""
    phrases = ['a "quiet film', "it works , mostly", "dull", 'the " end']
    train = pd.DataFrame({"PhraseId": [1, 2, 3, 4], "SentenceId": 1, "Phrase": phrases, "Sentiment": [3, 2, 0, 1]})
    test = pd.DataFrame({"PhraseId": [5, 6], "SentenceId": 2, "Phrase": ['so "so', "fine"]})
    sample = pd.DataFrame({"PhraseId": [5, 6], "Sentiment": 2})
    folder = tmp_path / "movies"
    folder.mkdir()
    (folder / "train.tsv").write_text("\n".join(["\t".join(map(str, r)) for r in [train.columns, *train.values]]) + "\n")
    (folder / "test.tsv").write_text("\n".join(["\t".join(map(str, r)) for r in [test.columns, *test.values]]) + "\n")
    sample.to_csv(folder / "sampleSubmission.csv", index=False)
    cfg = _load(folder, tmp_path)
    assert (cfg.files.train, cfg.files.test, cfg.files.sample_submission) == ("train.tsv", "test.tsv", "sampleSubmission.csv")
    assert cfg.id_column == "PhraseId" and cfg.target_columns == ("Sentiment",) and cfg.task_type == "multiclass"
    assert cfg.read_train()["Phrase"].tolist() == phrases
    assert cfg.read_test_ids() == ["5", "6"]


def test_gzipped_csv_files_are_read(tmp_path):
    train = _xy().assign(id=range(N), y=[i % 2 for i in range(N)])
    test = _xy(4).assign(id=range(N, N + 4))
    sample = pd.DataFrame({"id": test["id"], "y": 0})
    folder = _folder(tmp_path, {"train.csv.gz": train, "test.csv.gz": test, "sample_submission.csv.gz": sample})
    cfg = _load(folder, tmp_path)
    assert (cfg.files.train, cfg.files.test, cfg.files.sample_submission) == (
        "train.csv.gz", "test.csv.gz", "sample_submission.csv.gz")
    assert cfg.read_train().shape == (N, 4) and cfg.read_test_ids() == [str(i) for i in range(N, N + 4)]
    assert read_csv(folder / "sample_submission.csv.gz", as_text=True)["y"].tolist() == ["0"] * 4


def test_tables_named_otherwise_are_found_by_their_role(tmp_path):
    """home-credit-default-risk: application_train.csv / application_test.csv beside other tables."""
    train = _xy().assign(SK_ID_CURR=range(N), TARGET=[i % 2 for i in range(N)])
    test = _xy(4).assign(SK_ID_CURR=range(N, N + 4))
    sample = pd.DataFrame({"SK_ID_CURR": test["SK_ID_CURR"], "TARGET": 0.5})
    folder = _folder(tmp_path, {"application_train.csv": train, "application_test.csv": test,
                                "bureau.csv": _xy(), "sample_submission.csv": sample})
    cfg = _load(folder, tmp_path)
    assert (cfg.files.train, cfg.files.test) == ("application_train.csv", "application_test.csv")
    assert cfg.target_columns == ("TARGET",)
    assert "| train / test | application_train.csv, application_test.csv | found in the data |" in cfg.describe()


def test_two_train_candidates_are_named_with_the_fix(tmp_path):
    train = _xy().assign(id=range(N), y=[i % 2 for i in range(N)])
    folder = _folder(tmp_path, {"train_essays.csv": train, "train_prompts.csv": _xy(), "test_essays.csv": _xy(4),
                                "sample_submission.csv": pd.DataFrame({"id": range(4), "y": 0})})
    with pytest.raises(CompetitionConfigError) as err:
        _load(folder, tmp_path)
    assert "train_essays.csv" in str(err.value) and "train_prompts.csv" in str(err.value)
    assert "[files] train" in str(err.value)
