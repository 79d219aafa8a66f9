"""The submission format read off the sample submission and train.csv, and written back exactly."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest

from lora_tasks.data.competition import CompetitionConfigError, load_competition
from lora_tasks.data.csv_io import CsvEncodingWarning, CsvReadError, read_csv
from lora_tasks.data.submission_format import (
    SubmissionFormat,
    SubmissionRenderError,
    class_spellings,
    label_key,
    write_csv,
)


def _competition(tmp_path, train: pd.DataFrame, test: pd.DataFrame, sample: pd.DataFrame, name: str = "c"):
    folder = tmp_path / name
    folder.mkdir()
    train.to_csv(folder / "train.csv", index=False)
    test.to_csv(folder / "test.csv", index=False)
    sample.to_csv(folder / "sample_submission.csv", index=False)
    return load_competition(name, folder, competitions_dir=tmp_path / "no-configs")


def _tables(target: str, values, placeholder, ids=None):
    n = len(values)
    ids = list(range(1, n + 1)) if ids is None else ids
    x = np.linspace(0, 1, n)
    train = pd.DataFrame({"id": ids, "x": x, target: values})
    test = pd.DataFrame({"id": ids[:4], "x": x[:4]})
    sample = pd.DataFrame({"id": ids[:4], target: [placeholder] * 4})
    return train, test, sample


def test_bool_labels_round_trip_as_true_false(tmp_path):
    cfg = _competition(tmp_path, *_tables("Transported", [True, False] * 10, False))
    fmt = cfg.submission
    assert cfg.task_type == "binary" and cfg.classes == (False, True)
    assert fmt.dtype == "bool" and fmt.classes == ("False", "True") and fmt.prediction == "labels"
    frame = fmt.render(cfg.read_test_ids(), np.array([1, 0, 1, 1]), cfg.classes)
    text = write_csv(frame, tmp_path / "out.csv").read_text()
    assert text == "id,Transported\n1,True\n2,False\n3,True\n4,True\n"
    assert fmt.allowed_values() == {"Transported": {"True", "False"}}


def test_string_labels_stay_strings(tmp_path):
    cfg = _competition(tmp_path, *_tables("answer", ["yes", "no", "no"] * 6, "no"))
    assert cfg.submission.classes == ("no", "yes") and cfg.submission.dtype == "str"
    frame = cfg.submission.render(["1", "2", "3", "4"], np.array([1, 0, 0, 1]), cfg.classes)
    assert frame["answer"].tolist() == ["yes", "no", "no", "yes"]


def test_int_labels_are_written_without_decimal_part(tmp_path):
    """A target with a missing value is a float column (1.0); the sample writes whole numbers."""
    train, test, sample = _tables("label", [1, 0, 2, None] * 5, 0)
    train.to_csv(tmp_path / "probe.csv", index=False)
    assert "1.0" in (tmp_path / "probe.csv").read_text()  # pandas wrote the float column as 1.0
    cfg = _competition(tmp_path, train, test, sample)
    assert cfg.task_type == "multiclass" and cfg.submission.classes == ("0", "1", "2")
    assert cfg.submission.dtype == "int"
    frame = cfg.submission.render(cfg.read_test_ids(), np.array([2, 0, 1, 1]), cfg.classes)
    assert write_csv(frame, tmp_path / "o.csv").read_text() == "id,label\n1,2\n2,0\n3,1\n4,1\n"


def test_probability_columns_keep_the_sample_order(tmp_path):
    train, test, _ = _tables("level", ["low", "mid", "high"] * 6, "")
    sample = pd.DataFrame({"id": test["id"], "mid": 1 / 3, "high": 1 / 3, "low": 1 / 3})
    cfg = _competition(tmp_path, train, test, sample)
    fmt = cfg.submission
    assert cfg.classes == ("high", "low", "mid") and fmt.prediction == "probabilities"
    assert fmt.probability_columns == ("mid", "high", "low") and fmt.rows_sum_to_one
    probs = np.array([[0.7, 0.2, 0.1]] * 4)  # columns in class order: high, low, mid
    frame = fmt.render(cfg.read_test_ids(), probs, cfg.classes)
    assert list(frame.columns) == ["id", "mid", "high", "low"]
    assert frame.iloc[0].tolist() == ["1", 0.1, 0.7, 0.2]
    assert fmt.allowed_values() == {}


def test_ids_keep_leading_zeros_and_their_order(tmp_path):
    ids = ["0013_01", "0018_01", "0002_02", "0009_01"] * 4
    ids = [f"{i}{k}" if k else i for k, i in enumerate(ids)]
    train, test, sample = _tables("Transported", [True, False] * 8, False, ids=ids)
    test = test.assign(id=["0013_01", "0007", "0002_02", "0100"])
    sample = sample.assign(id=test["id"])
    cfg = _competition(tmp_path, train, test, sample)
    assert cfg.read_test_ids() == ["0013_01", "0007", "0002_02", "0100"]
    frame = cfg.submission.render(cfg.read_test_ids(), np.array([0, 1, 0, 1]), cfg.classes)
    lines = write_csv(frame, tmp_path / "o.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == ["0013_01", "0007", "0002_02", "0100"]


def test_floats_keep_ten_significant_digits(tmp_path):
    fmt = SubmissionFormat(columns=("id", "p"), prediction="probabilities", dtype="float", id_column="id")
    text = write_csv(fmt.render(["a", "b"], np.array([0.123456789012, 1e-7])), tmp_path / "o.csv").read_text()
    assert text == "id,p\na,0.123456789\nb,1e-07\n"


def test_nan_and_bad_indices_are_refused():
    fmt = SubmissionFormat(columns=("id", "y"), prediction="values", dtype="float", id_column="id")
    with pytest.raises(SubmissionRenderError, match=r"Column y: 1 of 3 predictions are NaN"):
        fmt.render(["1", "2", "3"], np.array([1.0, np.nan, 2.0]))
    labels = SubmissionFormat(columns=("id", "y"), prediction="labels", dtype="bool", id_column="id", classes=("False", "True"))
    with pytest.raises(SubmissionRenderError, match="outside 0..1"):
        labels.render(["1", "2"], np.array([0, 2]), (False, True))
    with pytest.raises(SubmissionRenderError, match="2 ids but 3 rows"):
        labels.render(["1", "2"], np.array([0, 1, 1]), (False, True))
    with pytest.raises(SubmissionRenderError, match="not one of the competition's classes"):
        labels.spell("maybe")


def test_label_keys_join_typed_values_and_spellings():
    assert label_key(True) == label_key("True") == label_key("true") == "true"
    assert label_key(1) == label_key(1.0) == label_key("1") == label_key("1.0") == "1"
    assert label_key(np.int64(3)) == "3" and label_key(" yes ") == "yes"
    assert class_spellings((0, 1), ["0.0", "1.0"], ["0"]) == ("0", "1")
    assert class_spellings((0, 1), ["0.0", "1.0"]) == ("0.0", "1.0"), "train's spelling when the sample says nothing"


def test_write_csv_leaves_no_temp_file(tmp_path):
    fmt = SubmissionFormat(columns=("id", "y"), prediction="values", dtype="float", id_column="id")
    write_csv(fmt.render(["1"], np.array([2.5])), tmp_path / "s.csv")
    assert [p.name for p in tmp_path.iterdir()] == ["s.csv"]


# ------------------------------------------------------------------------------ CSV errors


def test_empty_csv_names_the_file(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("")
    with pytest.raises(CsvReadError, match=str(path)):
        read_csv(path)


def test_empty_test_csv_in_a_competition_names_it(tmp_path):
    train, test, sample = _tables("y", [0, 1] * 5, 0)
    folder = tmp_path / "c"
    folder.mkdir()
    train.to_csv(folder / "train.csv", index=False)
    sample.to_csv(folder / "sample_submission.csv", index=False)
    (folder / "test.csv").write_text("")
    with pytest.raises(CsvReadError, match=r"test\.csv is empty"):
        load_competition("c", folder, competitions_dir=tmp_path / "none")


def test_non_utf8_csv_is_read_as_latin1_with_a_warning(tmp_path):
    path = tmp_path / "test.csv"
    path.write_bytes("id,name\n1,Café\n2,Zoë\n".encode("latin-1"))
    with pytest.warns(CsvEncodingWarning, match=str(path)):
        frame = read_csv(path)
    assert frame["name"].tolist() == ["Café", "Zoë"]


def test_text_mode_keeps_every_spelling(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("id,y,z\n007,True,1\n0013_01,False,\n")
    frame = read_csv(path, as_text=True)
    assert frame.to_dict("list") == {"id": ["007", "0013_01"], "y": ["True", "False"], "z": ["1", ""]}


def test_binary_probabilities_given_as_two_columns_use_class_one():
    fmt = SubmissionFormat(columns=("id", "target"), prediction="probabilities", dtype="float", id_column="id",
                           classes=("0", "1"))
    frame = fmt.render(["a", "b"], np.array([[0.8, 0.2], [0.4, 0.6]]), (0, 1))
    assert frame["target"].tolist() == [0.2, 0.6]


def test_a_parent_folder_never_yields_another_competitions_files(tmp_path):
    train, test, sample = _tables("y", [0, 1] * 5, 0)
    folder = tmp_path / "other" / "data"
    folder.mkdir(parents=True)
    train.to_csv(folder / "train.csv", index=False)
    with pytest.raises(CompetitionConfigError, match="No train.csv"):
        load_competition("mine", tmp_path, competitions_dir=tmp_path / "none")
    (tmp_path / "mine").mkdir()
    with pytest.raises(CompetitionConfigError, match="No train.csv"):
        load_competition("mine", tmp_path, competitions_dir=tmp_path / "none")


def test_render_predictions_cuts_probabilities_into_spelled_labels(tmp_path):
    cfg = _competition(tmp_path, *_tables("Transported", [True, False] * 10, False))
    frame = cfg.submission.render_predictions(cfg.read_test_ids(), np.array([0.9, 0.2, 0.55, 0.4]), cfg.classes, 0.5)
    assert frame["Transported"].tolist() == ["True", "False", "True", "False"]
    with pytest.raises(SubmissionRenderError, match="NaN"):
        cfg.submission.render_predictions(cfg.read_test_ids(), np.array([0.9, np.nan, 0.5, 0.4]), cfg.classes)


def test_format_survives_a_json_round_trip(tmp_path):
    cfg = _competition(tmp_path, *_tables("answer", ["yes", "no"] * 6, "no"))
    again = SubmissionFormat.from_dict(json.loads(json.dumps(asdict(cfg.submission))))
    assert again == cfg.submission


def test_a_hand_built_format_without_spellings_still_writes_plain_labels():
    fmt = SubmissionFormat(columns=("Id", "y"), prediction="labels", dtype="int", id_column="Id")
    assert fmt.render([1, 2], np.array([1.0, 0.0]))["y"].tolist() == ["1", "0"]
    assert fmt.render([1, 2], np.array([True, False]))["y"].tolist() == ["True", "False"]
