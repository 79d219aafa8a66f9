"""Competition configs: shipped files, the zero-config path on real data, strict validation."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from _data_helpers import ALL, HOUSE, TITANIC, TWEETS, copy_competition, read_test, read_train, shared_dir

import lora_tasks
from lora_tasks.data.competition import (
    ALLOWED_KEYS,
    CompetitionConfigError,
    default_competitions_dir,
    list_competitions,
    load_competition,
)

SHIPPED = Path(lora_tasks.__file__).resolve().parents[1] / "competitions"

EXPECTED = {  # facts of the competitions (Kaggle pages and the files' headers)
    TITANIC: ("PassengerId", ("Survived",), "binary"),
    HOUSE: ("Id", ("SalePrice",), "regression"),
    TWEETS: ("id", ("target",), "binary"),
}


def test_competitions_folder_is_found_beside_the_package(monkeypatch):
    monkeypatch.delenv("KAGGLE_LORA_COMPETITIONS_DIR", raising=False)
    assert default_competitions_dir() == SHIPPED
    names = list_competitions()
    for stem in ("titanic", HOUSE, TWEETS, "demo"):
        assert names[stem] == SHIPPED / f"{stem}.toml"
    assert names["house-prices"] == SHIPPED / f"{HOUSE}.toml"


def test_a_wheel_ships_the_same_configs():
    """``lora_tasks/_competitions`` links to ``competitions/``; the package data globs take its
    files into the wheel (checked by hand: ``pip wheel .`` lists lora_tasks/_competitions/*.toml),
    where it is the fallback of :func:`default_competitions_dir`."""
    import tomllib

    packaged = Path(lora_tasks.__file__).parent / "_competitions"
    assert packaged.is_symlink() and packaged.resolve() == SHIPPED.resolve()
    assert sorted(p.name for p in packaged.glob("*.toml")) == sorted(p.name for p in SHIPPED.glob("*.toml"))
    with open(SHIPPED.parent / "pyproject.toml", "rb") as fh:
        data = tomllib.load(fh)["tool"]["setuptools"]["package-data"]["lora_tasks"]
    assert "**/*.toml" in data


@pytest.mark.parametrize("slug", ALL)
def test_shipped_config_matches_the_data(slug):
    cfg = load_competition(slug, shared_dir())
    id_col, targets, task = EXPECTED[slug]
    assert (cfg.id_column, cfg.target_columns, cfg.task_type) == (id_col, targets, task)
    assert cfg.config_path == SHIPPED / f"{slug}.toml"
    assert cfg.data_dir == shared_dir() / slug and cfg.train_path.is_file() and cfg.sample_submission_path.is_file()
    sample = cfg.read_sample_submission()
    assert list(cfg.submission.columns) == list(sample.columns)
    assert cfg.inferred == ()  # the shipped files pin everything that matters


@pytest.mark.parametrize("slug", ALL)
def test_zero_config_infers_the_same_columns_and_task(slug, tmp_path):
    cfg = load_competition(slug, shared_dir(), competitions_dir=tmp_path)  # empty folder: no config
    id_col, targets, task = EXPECTED[slug]
    assert (cfg.id_column, cfg.target_columns, cfg.task_type) == (id_col, targets, task)
    assert cfg.config_path is None
    assert {"id_column", "target_columns", "task", "metric"} <= set(cfg.inferred)
    expected_metric = "rmse" if task == "regression" else "accuracy"  # label submissions
    assert cfg.metric == expected_metric
    assert cfg.submission.prediction == ("values" if task == "regression" else "labels")


def test_zero_config_finds_titanic_gender_submission(tmp_path):
    cfg = load_competition(TITANIC, shared_dir(), competitions_dir=tmp_path)
    assert cfg.files.sample_submission == "gender_submission.csv"
    assert cfg.classes == (0, 1)
    assert cfg.submission.dtype == "int"


def test_shipped_configs_refine_metric_and_transform():
    house = load_competition("house-prices", shared_dir())  # alias
    assert house.slug == HOUSE and house.metric == "rmsle" and house.submission.target_transform == "log1p"
    assert house.metric_spec.greater_is_better is False
    tweets = load_competition(TWEETS, shared_dir())
    assert tweets.metric == "f1" and tweets.text_columns == ("text",)


def test_data_dir_may_be_the_competition_folder_itself():
    a = load_competition(TWEETS, shared_dir())
    b = load_competition(TWEETS, shared_dir() / TWEETS)
    assert a.data_dir == b.data_dir == shared_dir() / TWEETS


def test_config_without_data_needs_id_target_and_task(tmp_path, monkeypatch):
    monkeypatch.delenv("KAGGLE_LORA_DATA_DIR", raising=False)
    monkeypatch.delenv("KAGGLE_LORA_COMPETITIONS_DIR", raising=False)
    cfg = load_competition("titanic")  # the shipped file is complete: works without data
    assert cfg.data_dir is None and cfg.id_column == "PassengerId"
    with pytest.raises(CompetitionConfigError, match="data_dir"):
        load_competition("some-unknown-competition", competitions_dir=tmp_path)
    (tmp_path / "partial.toml").write_text('metric = "f1"\n')
    with pytest.raises(CompetitionConfigError, match="id_column, target_columns, task"):
        load_competition("partial", competitions_dir=tmp_path)


def test_data_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLE_LORA_DATA_DIR", str(shared_dir()))
    cfg = load_competition(TWEETS, competitions_dir=tmp_path)
    assert cfg.data_dir == shared_dir() / TWEETS and cfg.task_type == "binary"


def test_competitions_dir_from_environment(tmp_path, monkeypatch):
    (tmp_path / "mine.toml").write_text(
        'slug = "titanic"\naliases = ["tt"]\nmetric = "roc_auc"\n[files]\nsample_submission = "gender_submission.csv"\n'
    )
    monkeypatch.setenv("KAGGLE_LORA_COMPETITIONS_DIR", str(tmp_path))
    cfg = load_competition("tt", shared_dir())
    assert cfg.slug == "titanic" and cfg.metric == "roc_auc" and cfg.id_column == "PassengerId"
    assert "id_column" in cfg.inferred and "metric" not in cfg.inferred


def test_overrides_win_over_file_and_data():
    cfg = load_competition(TITANIC, shared_dir(), overrides={"metric": "log_loss", "submission": {"prediction": "probabilities"}})
    assert cfg.metric == "log_loss" and cfg.submission.prediction == "probabilities"
    assert cfg.submission.columns == ("PassengerId", "Survived")  # the rest of [submission] is kept


def test_threshold_is_auto_unless_a_number_is_given(tmp_path):
    shipped = load_competition("nlp-getting-started", shared_dir() / "nlp-getting-started")
    assert shipped.submission.threshold == "auto" and shipped.metric == "f1"
    inferred = load_competition("bad", shared_dir() / TITANIC, competitions_dir=_write(tmp_path, 'metric = "f1"\n'))
    assert inferred.metric == "f1"
    assert inferred.submission.threshold == "auto", "without [submission] threshold the cut is tuned for F1"
    fixed = load_competition("bad", shared_dir() / TITANIC,
                             competitions_dir=_write(tmp_path, "[submission]\nthreshold = 0.4\n"))
    assert fixed.submission.threshold == 0.4


# ---------------------------------------------------------------------------- strict validation


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "bad.toml").write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    "text, fragments",
    [
        ('metrc = "f1"\n', ["unknown key `metrc`", "allowed keys", "metric"]),
        ('[submission]\nthreshhold = 0.4\n', ["`submission.threshhold`", "threshold"]),
        ('[serialization]\nmissing = "drop"\n', ["serialization.missing", "skip, say"]),
        ('task = "ranking"\n', ["`task`", "binary, multiclass"]),
        ('metric = "kappa"\n', ["Unknown metric 'kappa'", "rmsle"]),
        ('id_column = 3\n', ["`id_column` must be str"]),
        ('text_columns = "text"\n', ["`text_columns` must be a list of strings"]),
        ('schedule = "every monday"\n', ["cron"]),
        ('[submission]\nthreshold = true\n', ["submission.threshold"]),
        ('[submission]\nthreshold = "tuned"\n', ["submission.threshold = 'tuned'", '"auto"', "number in (0, 1)"]),
        ('[submission]\nthreshold = 1.5\n', ["submission.threshold = 1.5", "number in (0, 1)"]),
        ('[serialization]\nclean_text = "yes"\n', ["`serialization.clean_text` must be bool"]),
        ('slug = "x"\nslug = "y"\n', ["not valid TOML"]),
        ('[training]\nepoch = 3\n', ["unknown key `training.epoch`", "epochs", "adapter_sets"]),
        ('[training]\npreset = "huge"\n', ["`training.preset`: 'huge' is not a preset", "efficient, balanced"]),
        ('[training]\nepochs = 0\n', ["`training.epochs`: 0 epochs: give 1 or more"]),
        ('[training]\nlearning_rate = nan\n', ["`training.learning_rate`: nan is not a positive finite number; give e.g. 1e-4"]),
        ('[training]\nlearning_rate = -1e-3\n', ["`training.learning_rate`: -0.001 is not a positive finite"]),
        ('[training]\nn_folds = 1\n', ["`training.n_folds`: 1 fold(s): out-of-fold predictions need a held-out fold, "
                                       "so give 2 or more"]),
        ('[training]\nepochs = 2.5\n', ["`training.epochs` must be int"]),
        ('[training]\ntop_layers = "some"\n', ["`training.top_layers`: 'some': give a positive number of layers, or 'all'"]),
        ('[training]\ntop_layers = 0\n', ["`training.top_layers`: 0: give a positive number of layers, or 'all'"]),
        ('[training]\nadapter_sets = "expressive"\n', ["`training.adapter_sets` must be list"]),
        ('[training]\nadapter_sets = [2]\n', ["`training.adapter_sets` must be a list of strings"]),
    ],
)
def test_invalid_configs_name_the_problem(tmp_path, text, fragments):
    with pytest.raises(CompetitionConfigError) as err:
        load_competition("bad", shared_dir() / TITANIC, competitions_dir=_write(tmp_path, text))
    message = str(err.value)
    assert "bad.toml" in message
    for fragment in fragments:
        assert fragment in message


def test_training_recipe_is_read_as_given(tmp_path):
    text = ('[training]\npreset = "balanced"\nepochs = 3\nlearning_rate = 2e-3\ntop_layers = "all"\n'
            'adapter_sets = ["expressive@all-mpnet-base-v2:epochs=2"]\n')
    cfg = load_competition("bad", shared_dir() / TITANIC, competitions_dir=_write(tmp_path, text))
    assert cfg.training == {"preset": "balanced", "epochs": 3, "learning_rate": 2e-3, "top_layers": "all",
                            "adapter_sets": ["expressive@all-mpnet-base-v2:epochs=2"]}
    assert load_competition("t", shared_dir() / TITANIC, competitions_dir=tmp_path / "none").training == {}


def test_allowed_keys_cover_every_shipped_file():
    for path in SHIPPED.glob("*.toml"):
        import tomllib

        assert set(tomllib.loads(path.read_text())) <= set(ALLOWED_KEYS), path


def test_metric_must_fit_the_task(tmp_path):
    (tmp_path / "t.toml").write_text('slug = "titanic"\nmetric = "rmse"\n[files]\nsample_submission = "gender_submission.csv"\n')
    with pytest.raises(CompetitionConfigError, match="does not apply to a binary task"):
        load_competition("t", shared_dir(), competitions_dir=tmp_path)


def test_configured_column_missing_from_data_is_named(tmp_path):
    (tmp_path / "t.toml").write_text('slug = "titanic"\nid_column = "PassengerID"\n[files]\nsample_submission = "gender_submission.csv"\n')
    with pytest.raises(CompetitionConfigError, match="'PassengerID' is not in"):
        load_competition("t", shared_dir(), competitions_dir=tmp_path)


@pytest.mark.parametrize("key", ["text_columns", "drop_columns"])
def test_listed_columns_must_exist(tmp_path, key):
    (tmp_path / "t.toml").write_text(f'slug = "nlp-getting-started"\n{key} = ["tweet"]\n')
    with pytest.raises(CompetitionConfigError, match=f"`{key}` lists \\['tweet'\\]"):
        load_competition("t", shared_dir(), competitions_dir=tmp_path)


def test_data_layer_never_imports_mlx():
    """ARCHITECTURE.md: the data layer runs without MLX or the model package."""
    import subprocess
    import sys

    code = (
        "import sys; import lora_tasks.metrics, lora_tasks.data.competition, lora_tasks.data.profile, "
        "lora_tasks.data.autoconfig, lora_tasks.data.text, lora_tasks.data.token_cache, lora_tasks.data.batching; "
        "bad = [m for m in sys.modules if m.split('.')[0] == 'mlx' or m.startswith('lora_tasks.models')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_duplicate_alias_is_an_error(tmp_path):
    (tmp_path / "a.toml").write_text('aliases = ["x"]\n')
    (tmp_path / "b.toml").write_text('aliases = ["x"]\n')
    with pytest.raises(CompetitionConfigError, match="claimed by both"):
        list_competitions(tmp_path)


# ---------------------------------------------------------------------------- inference edge cases


def test_multiclass_target_inferred_from_values(tmp_path):
    frame = read_train(TITANIC)
    test = read_test(TITANIC).drop(columns=["Pclass"])
    sample = pd.DataFrame({"PassengerId": test["PassengerId"], "Pclass": 1})
    folder = copy_competition("pclass", tmp_path, train_frame=frame, test=test, sample=sample)
    cfg = load_competition("pclass", folder, competitions_dir=tmp_path / "none")
    assert cfg.task_type == "multiclass" and cfg.target_columns == ("Pclass",)
    assert cfg.classes == (1, 2, 3) and cfg.metric == "accuracy"


def test_one_column_per_class_submission(tmp_path):
    """Otto-style: the submission has a probability column per class value of the target."""
    frame = read_train(TITANIC).assign(Embarked=lambda d: d["Embarked"].fillna("S"))
    test = read_test(TITANIC).drop(columns=["Embarked"])
    sample = pd.DataFrame({"PassengerId": test["PassengerId"], "C": 1 / 3, "Q": 1 / 3, "S": 1 / 3})
    folder = copy_competition("port", tmp_path, train_frame=frame, test=test, sample=sample)
    cfg = load_competition("port", folder, competitions_dir=tmp_path / "none")
    assert cfg.target_columns == ("Embarked",) and cfg.task_type == "multiclass"
    assert cfg.submission.prediction == "probabilities" and cfg.submission.columns == ("PassengerId", "C", "Q", "S")
    assert cfg.metric == "log_loss"


def test_several_binary_targets_are_multilabel(tmp_path):
    frame = read_train(TITANIC).assign(Female=lambda d: (d["Sex"] == "female").astype(int)).drop(columns=["Sex"])
    test = read_test(TITANIC).drop(columns=["Sex"])
    sample = pd.DataFrame({"PassengerId": test["PassengerId"], "Survived": 0.5, "Female": 0.5})
    folder = copy_competition("multi", tmp_path, train_frame=frame, test=test, sample=sample)
    cfg = load_competition("multi", folder, competitions_dir=tmp_path / "none")
    assert cfg.task_type == "multilabel" and cfg.target_columns == ("Survived", "Female")
    assert cfg.submission.prediction == "probabilities" and cfg.metric == "roc_auc"


def test_target_not_in_train_is_a_clear_error(tmp_path):
    """No column of that name in any case, and two train columns test.csv lacks: nothing to pick."""
    test = read_test(TITANIC).drop(columns=["Fare"])
    sample = pd.DataFrame({"PassengerId": test["PassengerId"], "Survival": 0})
    folder = copy_competition("renamed", tmp_path, test=test, sample=sample, train_frame=read_train(TITANIC))
    with pytest.raises(CompetitionConfigError) as err:
        load_competition("renamed", folder, competitions_dir=tmp_path / "none")
    assert "Survival" in str(err.value) and "target_columns" in str(err.value)
    assert "['Survived', 'Fare']" in str(err.value), "names the train columns it could not choose between"


def test_missing_sample_submission_is_a_clear_error(tmp_path):
    folder = copy_competition("nosample", tmp_path)
    with pytest.raises(CompetitionConfigError, match="sample_submission.csv"):
        load_competition("nosample", folder, competitions_dir=tmp_path / "none")


def test_no_shared_id_column_is_a_clear_error(tmp_path):
    test = read_test(TITANIC).rename(columns={"PassengerId": "pid"})
    sample = pd.DataFrame({"row": test["pid"], "Survived": 0})
    folder = copy_competition("noid", tmp_path, test=test, sample=sample)
    with pytest.raises(CompetitionConfigError, match="write `id_column = "):
        load_competition("noid", folder, competitions_dir=tmp_path / "none")


def test_demo_config_matches_the_demo_competition(tmp_path):
    from lora_tasks.testing.demo import DEMO_ID_COLUMN, DEMO_TARGET_COLUMN, build_demo_competition

    folder = build_demo_competition(tmp_path)
    cfg = load_competition("demo", folder)
    zero = load_competition("demo", folder, competitions_dir=tmp_path / "none")
    for c in (cfg, zero):
        assert (c.id_column, c.target_columns, c.task_type) == (DEMO_ID_COLUMN, (DEMO_TARGET_COLUMN,), "binary")
        assert c.classes == (0, 1) and c.metric == "accuracy"
    assert cfg.schedule != zero.schedule  # the shipped file sets its own schedule


# ---------------------------------------------------------------------------- train-only columns, metric source


def _with_train_only_columns(tmp_path, name="extra"):
    """Titanic with two columns test.csv lacks (like bike-sharing's casual/registered)."""
    frame = read_train(TITANIC).assign(Boat=lambda d: d["Survived"] * 3, Body=lambda d: d["Age"].fillna(0) * 2)
    test = read_test(TITANIC)
    sample = pd.DataFrame({"PassengerId": test["PassengerId"], "Survived": 0})
    return copy_competition(name, tmp_path, train_frame=frame, test=test, sample=sample)


def test_train_only_columns_are_excluded_with_their_reason(tmp_path):
    folder = _with_train_only_columns(tmp_path)
    cfg = load_competition("extra", folder, competitions_dir=tmp_path / "none")
    assert [(e.name, e.reason) for e in cfg.excluded] == [
        ("Boat", "only in train.csv: not available at prediction time"),
        ("Body", "only in train.csv: not available at prediction time"),
    ]
    assert "Boat" in cfg.excluded_columns and "Boat" not in cfg.feature_columns
    train, test = cfg.read_train(), cfg.read_test()
    template = cfg.row_template(train)
    assert "Boat" not in template.columns and "Body" not in template.columns
    assert len(template.render_frame(test)) == len(test)  # used to be a KeyError
    described = cfg.describe()
    assert "| excluded: `Boat` | only in train.csv: not available at prediction time |" in described


def test_drop_columns_still_works_next_to_train_only_columns(tmp_path):
    folder = _with_train_only_columns(tmp_path)
    (tmp_path / "cfgs").mkdir()
    (tmp_path / "cfgs" / "extra.toml").write_text('drop_columns = ["Body", "Ticket"]\n')
    cfg = load_competition("extra", folder, competitions_dir=tmp_path / "cfgs")
    assert [e.name for e in cfg.excluded] == ["Boat"], "a dropped column is not listed twice"
    assert {"Body", "Ticket", "Boat"} <= set(cfg.excluded_columns)
    assert "Ticket" not in cfg.row_template(cfg.read_train()).columns
    assert "| dropped | Body, Ticket | config (drop_columns) |" in cfg.describe()


def test_metric_source_is_recorded(tmp_path):
    shipped = load_competition(TITANIC, shared_dir(), kaggle_metric="Area Under Receiver Operating Characteristic Curve")
    assert shipped.metric == "accuracy" and shipped.metric_source == "config", "a config's metric wins over Kaggle's"
    folder = copy_competition("t", tmp_path, sample=pd.read_csv(shared_dir() / TITANIC / "gender_submission.csv"),
                              sample_name="gender_submission.csv")
    inferred = load_competition("t", folder, competitions_dir=tmp_path / "none")
    assert inferred.metric == "accuracy" and inferred.metric_source == "inferred"
    kaggle = load_competition("t", folder, competitions_dir=tmp_path / "none", kaggle_metric="Categorization Accuracy")
    assert kaggle.metric_source == "kaggle metadata" and "kaggle metadata: 'Categorization Accuracy'" in kaggle.describe()
    auc = load_competition("t", folder, competitions_dir=tmp_path / "none",
                           kaggle_metric="Area Under Receiver Operating Characteristic Curve")
    assert auc.metric == "roc_auc" and auc.submission.prediction == "probabilities", "the metric decides what is written"


def test_files_in_one_sub_folder_are_found(tmp_path):
    copy_competition("data", tmp_path / "nested", sample=pd.read_csv(shared_dir() / TITANIC / "gender_submission.csv"),
                     sample_name="sampleSubmission.csv")
    cfg = load_competition("nested", tmp_path, competitions_dir=tmp_path / "none")
    assert cfg.data_dir == tmp_path / "nested" / "data" and cfg.files.sample_submission == "sampleSubmission.csv"
    assert cfg.id_column == "PassengerId"


def test_several_float_targets_are_multitarget_regression(tmp_path):
    frame = read_train(TITANIC)
    test = read_test(TITANIC).drop(columns=["Age", "Fare"])
    sample = pd.DataFrame({"PassengerId": test["PassengerId"], "Age": 30.0, "Fare": 10.0})
    folder = copy_competition("two", tmp_path, train_frame=frame, test=test, sample=sample)
    cfg = load_competition("two", folder, competitions_dir=tmp_path / "none")
    assert cfg.task_type == "multitarget_regression" and cfg.target_columns == ("Age", "Fare")
    assert cfg.submission.prediction == "values" and cfg.metric == "mcrmse"
