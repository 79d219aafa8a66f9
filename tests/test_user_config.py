"""A user's own competition config and column choices, without touching the install.

Checked: ``./competitions/<slug>.toml`` where the user runs is found before the shipped recipes
and named in the plan; ``$KAGGLE_LORA_COMPETITIONS_DIR`` adds a folder without hiding the shipped
ones; ``--config PATH`` wins over both; ``--target`` / ``--id`` win over the file and inference;
an error inference cannot solve names the flag and the config line to write; and the sample
submission is checked against test.csv before anything is trained.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _user_competition import SLUG, write_competition

from lora_tasks.data.competition import CompetitionConfigError, load_competition
from lora_tasks.data.config_file import (
    ORIGIN_ENV,
    ORIGIN_OPTION,
    ORIGIN_SHIPPED,
    ORIGIN_WORKING_DIR,
    locate_config,
    shipped_competitions_dir,
)
from lora_tasks.data.csv_io import CsvEncodingWarning
from lora_tasks.data.sample_checks import SampleSubmissionError, check_sample_submission
from lora_tasks.data.source import CompetitionSource
from lora_tasks.kaggle import validate_submission
from lora_tasks.options import RunOptions
from lora_tasks.steps.prepare import prepare_data


@pytest.fixture
def in_tmp_cwd(tmp_path, monkeypatch) -> Path:
    """A fresh working directory with no ``competitions/`` and no competitions-dir variable."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("KAGGLE_LORA_COMPETITIONS_DIR", raising=False)
    return cwd


# ------------------------------------------------------------------------------ where a config is found


def test_a_config_in_the_working_directory_is_found_before_the_shipped_one(in_tmp_cwd, shared_datasets):
    shipped = locate_config("titanic")
    assert shipped is not None and shipped.origin == ORIGIN_SHIPPED
    (in_tmp_cwd / "competitions").mkdir()
    mine = in_tmp_cwd / "competitions" / "titanic.toml"
    mine.write_text('metric = "f1"\n')
    found = locate_config("titanic")
    assert found is not None and (found.path, found.origin) == (mine.resolve(), ORIGIN_WORKING_DIR)
    cfg = load_competition("titanic", shared_datasets)
    assert cfg.metric == "f1" and cfg.config_path == mine.resolve()
    assert f"| config file | `{mine.resolve()}` | {ORIGIN_WORKING_DIR} |" in cfg.describe()
    # the shipped recipes stay available for every other name
    house = locate_config("house-prices")
    assert house is not None and house.origin == ORIGIN_SHIPPED


def test_the_competitions_dir_variable_adds_a_folder_and_hides_no_shipped_recipe(in_tmp_cwd, tmp_path, monkeypatch):
    extra = tmp_path / "team-configs"
    extra.mkdir()
    (extra / "their-comp.toml").write_text('metric = "f1"\n')
    monkeypatch.setenv("KAGGLE_LORA_COMPETITIONS_DIR", str(extra))
    theirs = locate_config("their-comp")
    assert theirs is not None and theirs.origin == ORIGIN_ENV
    titanic = locate_config("titanic")
    assert titanic is not None and titanic.origin == ORIGIN_SHIPPED
    assert titanic.path.parent == shipped_competitions_dir().resolve()


def test_config_option_wins_and_a_missing_file_is_named(in_tmp_cwd, tmp_path, shared_datasets):
    path = tmp_path / "elsewhere.toml"
    path.write_text('metric = "mcc"\n')
    source = RunOptions(competition="titanic", config=str(path)).competition_source()
    assert (source.config, source.origin) == (path.resolve(), ORIGIN_OPTION)
    cfg = load_competition("titanic", shared_datasets, source=source)
    assert cfg.metric == "mcc" and f"| config file | `{path.resolve()}` | --config |" in cfg.describe()
    with pytest.raises(CompetitionConfigError, match=r"--config .*nope.toml: no such file"):
        RunOptions(competition="titanic", config=str(tmp_path / "nope.toml")).competition_source()


def test_no_config_anywhere_says_so_in_the_plan_table(in_tmp_cwd, tmp_path):
    folder = write_competition(tmp_path / "data" / SLUG)
    cfg = load_competition(SLUG, folder, source=CompetitionSource.resolve(SLUG, target="label"))
    assert cfg.config_path is None
    assert "| config file | none | everything inferred from the data |" in cfg.describe()


# ------------------------------------------------------------------------------ --target / --id


def test_target_option_solves_what_inference_cannot(in_tmp_cwd, tmp_path):
    folder = write_competition(tmp_path / "data" / SLUG)
    with pytest.raises(CompetitionConfigError) as info:
        load_competition(SLUG, folder)
    text = str(info.value)
    assert "Cannot find the target" in text
    assert f'Fix: pass `--target label` or write `target_columns = ["label"]` in competitions/{SLUG}.toml' in text
    assert "['label', 'agreement']" in text  # the candidates: train.csv columns test.csv lacks

    cfg = load_competition(SLUG, folder, source=CompetitionSource.resolve(SLUG, target="label"))
    assert cfg.target_columns == ("label",) and cfg.task_type == "binary"
    assert cfg.submission.value_columns == ("prediction",)  # the sample's own column name is kept
    assert [e.name for e in cfg.excluded] == ["agreement"]
    assert "| target(s) | `label` | run option (--target) |" in cfg.describe()
    # the same fix written in the user's config file works too, and the plan names the file
    (in_tmp_cwd / "competitions").mkdir()
    (in_tmp_cwd / "competitions" / f"{SLUG}.toml").write_text('target_columns = ["label"]\n')
    from_file = load_competition(SLUG, folder)
    assert from_file.target_columns == ("label",) and from_file.config_origin == ORIGIN_WORKING_DIR


def test_id_option_and_its_fix_text(in_tmp_cwd, tmp_path):
    folder = write_competition(tmp_path / "data" / SLUG)
    sample = pd.read_csv(folder / "sample_submission.csv").rename(columns={"id": "row"})
    sample.to_csv(folder / "sample_submission.csv", index=False)  # shares no column with train.csv
    with pytest.raises(CompetitionConfigError, match="the id column is unknown") as info:
        load_competition(SLUG, folder, source=CompetitionSource.resolve(SLUG, target="label"))
    assert f'Fix: pass `--id row` or write `id_column = "row"` in competitions/{SLUG}.toml' in str(info.value)
    with pytest.raises(CompetitionConfigError, match="Id column 'nope' is not in") as info:
        load_competition(SLUG, write_competition(tmp_path / "data2" / SLUG),
                         source=CompetitionSource.resolve(SLUG, target="label", id_column="nope"))
    assert f'Fix: pass `--id id` or write `id_column = "id"` in competitions/{SLUG}.toml' in str(info.value)
    cfg = load_competition(SLUG, tmp_path / "data2" / SLUG,
                           source=CompetitionSource.resolve(SLUG, target="label", id_column="id"))
    assert "| id column | `id` | run option (--id) |" in cfg.describe()


def test_a_wrong_target_option_names_the_columns_to_choose_from(in_tmp_cwd, tmp_path):
    folder = write_competition(tmp_path / "data" / SLUG)
    with pytest.raises(CompetitionConfigError, match=r"Target column\(s\) \['labell'\] are not in") as info:
        load_competition(SLUG, folder, source=CompetitionSource.resolve(SLUG, target="labell"))
    assert "Fix: pass `--target label`" in str(info.value)


def test_run_options_carry_the_new_fields_and_offline_submits_nothing():
    options = RunOptions(competition="c", target="a,b", id_column="key", config="x.toml", offline=True)
    assert (options.target, options.id_column, options.config, options.offline, options.submit) == (
        "a,b", "key", "x.toml", True, False)
    assert RunOptions(competition="c").submit is True
    with pytest.raises(ValueError, match="never calls Kaggle, so it cannot submit"):
        RunOptions(competition="c", offline=True, submit=True)
    with pytest.raises(ValueError, match="not an empty text"):
        RunOptions(competition="c", target=" ")
    from lora_tasks.cli import build_run_parser, options_from_args

    parser = build_run_parser()
    parsed = options_from_args(parser.parse_args(["--competition", "c", "--target", "label", "--id", "row_id",
                                                  "--config", "my.toml", "--offline"]), parser)
    assert (parsed.target, parsed.id_column, parsed.config, parsed.offline, parsed.submit) == (
        "label", "row_id", "my.toml", True, False)
    assert CompetitionSource.resolve("c", target="a, b").target_columns == ("a", "b")


# ------------------------------------------------------------------------------ early sample checks


def _prepare(folder: Path, tmp_path: Path) -> Path:
    return prepare_data(CompetitionSource.resolve(SLUG, target="label"), folder, tmp_path / "artifacts")


def test_duplicate_sample_ids_stop_before_training(in_tmp_cwd, tmp_path):
    folder = write_competition(tmp_path / "data" / SLUG)
    sample = pd.read_csv(folder / "sample_submission.csv")
    sample.loc[1, "id"] = sample.loc[0, "id"]
    sample.to_csv(folder / "sample_submission.csv", index=False)
    with pytest.raises(SampleSubmissionError, match="repeated values in its id column `id`") as info:
        _prepare(folder, tmp_path)
    assert "Nothing was trained" in str(info.value) and f"delete {folder}" in str(info.value)
    assert not (tmp_path / "artifacts").exists() or not list((tmp_path / "artifacts").glob("prepared-*"))


def test_sample_ids_that_test_csv_lacks_stop_before_training(in_tmp_cwd, tmp_path):
    folder = write_competition(tmp_path / "data" / SLUG)
    sample = pd.read_csv(folder / "sample_submission.csv")
    sample.loc[0, "id"] = 99999
    sample.to_csv(folder / "sample_submission.csv", index=False)
    with pytest.raises(SampleSubmissionError) as info:
        _prepare(folder, tmp_path)
    text = str(info.value)
    assert "1 of its 40 ids are not in test.csv (e.g. '99999')" in text
    assert "1 of test.csv's 40 ids are not in it (e.g. '121')" in text and "could never pass" in text


def _written(folder: Path, tmp_path: Path, predict) -> tuple[Path, Path]:
    """prepare, a real (tiny) plan, test predictions from ``predict(test ids)``, the submission
    file and the validator's verdict: the steps a run takes after training."""
    from lora_tasks.steps.plan import plan_training
    from lora_tasks.steps.prepare import Prepared
    from lora_tasks.steps.submit import validate, write_submission

    source = CompetitionSource.resolve(SLUG, target="label")
    prepared_path = _prepare(folder, tmp_path)
    plan = plan_training(source, folder, tmp_path / "artifacts", tiny=True)
    preds = tmp_path / "test-preds.npy"
    np.save(preds, np.asarray(predict(Prepared.load(prepared_path).test_ids), dtype=np.float32))
    out = write_submission(prepared_path, plan, preds, tmp_path / "artifacts")
    validate(out, prepared_path)  # raises when the file does not match the sample
    return prepared_path, out


def test_a_sample_in_another_order_gets_a_file_in_the_samples_order(in_tmp_cwd, tmp_path):
    """test.csv and the sample list the same ids in different orders: the file follows the
    sample (what the validator checks), each id keeping its own prediction."""
    from lora_tasks.steps.prepare import Prepared

    folder = write_competition(tmp_path / "data" / SLUG)
    sample = pd.read_csv(folder / "sample_submission.csv").iloc[::-1]
    sample.to_csv(folder / "sample_submission.csv", index=False)
    prepared_path, out = _written(folder, tmp_path, lambda ids: [0.9 if int(i) % 2 else 0.1 for i in ids])
    assert Prepared.load(prepared_path).test_ids == [str(i) for i in range(121, 161)]  # test.csv's order
    frame = pd.read_csv(out)
    assert frame["id"].tolist() == sample["id"].tolist()
    assert all((i % 2 == 1) == (v == 1) for i, v in zip(frame["id"], frame["prediction"], strict=True))


def test_a_latin1_sample_submission_validates_like_the_data_layer_reads_it(tmp_path):
    """The data layer reads a latin-1 sample with a warning; the validator used to read UTF-8 only,
    so such a run trained and then could not submit."""
    ids = ["José", "Zoë", "Ærø"]
    sample = tmp_path / "sample_submission.csv"
    sample.write_bytes(("name,score\n" + "".join(f"{i},0\n" for i in ids)).encode("latin-1"))
    sub = tmp_path / "submission.csv"
    sub.write_text("name,score\n" + "".join(f"{i},1\n" for i in ids), encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CsvEncodingWarning)
        check = validate_submission(sub, sample, id_column="name")
    assert check.rows == 3


def test_a_latin1_competition_runs_its_checks_and_validates(in_tmp_cwd, tmp_path):
    """End to end over the steps: latin-1 ids in test.csv and the sample pass the early checks,
    and the written file passes the validator (which refused to read the sample before)."""
    folder = write_competition(tmp_path / "data" / SLUG)
    for name in ("test.csv", "sample_submission.csv"):
        frame = pd.read_csv(folder / name)
        frame["id"] = [f"Zoë-{i}" for i in frame["id"]]
        frame.to_csv(folder / name, index=False, encoding="latin-1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CsvEncodingWarning)
        _, out = _written(folder, tmp_path, lambda ids: [0.7] * len(ids))
    assert pd.read_csv(out)["id"].tolist()[:2] == ["Zoë-121", "Zoë-122"]


def test_check_passes_the_shipped_competitions(shared_datasets):
    for slug in ("titanic", "nlp-getting-started", "house-prices-advanced-regression-techniques"):
        check_sample_submission(load_competition(slug, shared_datasets))


def test_serve_deploys_the_users_configs_beside_the_shipped_ones(in_tmp_cwd):
    """``kaggle-lora serve`` in a folder with ``competitions/mine.toml``: a deployment for it, whose
    parameters name the file (a run reads it whatever its working directory), beside the shipped
    recipes; the form of every deployment has the new options."""
    from lora_tasks.prefect.serve import build_deployments

    (in_tmp_cwd / "competitions").mkdir()
    mine = in_tmp_cwd / "competitions" / "mine.toml"
    mine.write_text('target_columns = ["label"]\nschedule = "0 5 * * *"\n')
    deployments = {d.name: d for d in build_deployments()}
    assert {"mine", "titanic", "demo"} <= set(deployments)
    assert deployments["mine"].parameters["options"] == {"competition": "mine", "config": str(mine.resolve())}
    assert "config" not in deployments["titanic"].parameters["options"]  # found by name, wherever it runs
    form = deployments["mine"]._parameter_openapi_schema.definitions["RunOptions"]["properties"]
    assert {"config", "target", "id_column", "offline"} <= set(form)


def test_a_config_that_contradicts_the_data_names_the_line_to_write(in_tmp_cwd, tmp_path):
    folder = write_competition(tmp_path / "data" / SLUG)
    (in_tmp_cwd / "competitions").mkdir()
    (in_tmp_cwd / "competitions" / f"{SLUG}.toml").write_text('target_columns = ["label"]\nmetric = "rmse"\n')
    with pytest.raises(CompetitionConfigError, match="does not apply to a binary task") as info:
        load_competition(SLUG, folder)
    assert 'Fix: write `metric = "accuracy"`, or `task = "regression"`' in str(info.value)


def test_cli_run_with_a_missing_config_fails_before_prefect_starts(in_tmp_cwd, capsys):
    from lora_tasks.cli import run_main

    assert run_main(["--competition", "titanic", "--config", "missing.toml"]) == 1
    err = capsys.readouterr().err
    assert "--config missing.toml: no such file" in err and "Timed out" not in err
