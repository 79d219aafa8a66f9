"""DataProfile on the real competitions: counts, missing rates, free text, tokens, targets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _data_helpers import HOUSE, TITANIC, TWEETS, copy_competition, read_test, read_train, shared_dir, tokenizer

from lora_tasks.data.competition import load_competition
from lora_tasks.data.profile import (
    LengthStats,
    detect_text_columns,
    infer_task_type,
    is_free_text,
    profile_competition,
    profile_frame,
)


@pytest.fixture(scope="module")
def titanic_profile():
    cfg = load_competition(TITANIC, shared_dir())
    return cfg, profile_competition(cfg, tokenizer=tokenizer(), token_sample=None)


def test_titanic_counts_roles_and_missing_rates(titanic_profile):
    _, p = titanic_profile
    frame = read_train(TITANIC)
    assert (p.n_rows, p.n_columns, p.n_test_rows) == (891, 12, 418)
    assert p.n_features == 10  # all but PassengerId and Survived
    assert p.column("PassengerId").role == "id" and p.column("Survived").role == "target"
    for col in ("Age", "Cabin", "Embarked"):
        assert p.column(col).missing_rate == pytest.approx(frame[col].isna().mean())
    assert p.column("Sex").n_unique == 2 and p.column("Sex").kind == "categorical"
    assert p.column("Fare").kind == "numeric"
    assert p.column("Name").unique_ratio == 1.0


def test_titanic_class_balance_is_549_to_342(titanic_profile):
    _, p = titanic_profile
    assert p.task_type == "binary"
    assert p.target.class_counts == {"0": 549, "1": 342}
    assert p.target.minority_share == pytest.approx(342 / 891)


def test_token_lengths_measure_the_serialized_rows(titanic_profile):
    cfg, p = titanic_profile
    frame = read_train(TITANIC)
    lengths = tokenizer().lengths(cfg.row_template(frame).render_frame(frame))
    t = p.token_lengths
    assert t.count == 891 and t.max == int(lengths.max())
    assert t.p95 == pytest.approx(np.percentile(lengths, 95)) and t.p99 == pytest.approx(np.percentile(lengths, 99))
    assert t.p50 <= t.p90 <= t.p95 <= t.p99 <= t.max


def test_token_sample_limits_rows_tokenized():
    cfg = load_competition(TWEETS, shared_dir())
    p = profile_competition(cfg, tokenizer=tokenizer(), token_sample=300)
    assert p.token_lengths.count == 300 and p.n_rows == 7613
    again = profile_competition(cfg, tokenizer=tokenizer(), token_sample=300)
    assert again.token_lengths == p.token_lengths  # seeded sample


def test_free_text_detection_follows_autogluon():
    tweets = read_train(TWEETS)
    assert detect_text_columns(tweets, exclude=["id", "target"]) == ["text"]
    assert not is_free_text(tweets["keyword"])  # one word, few distinct values
    titanic = read_train(TITANIC)
    assert is_free_text(titanic["Name"])  # all distinct and 4 words on average: text by the heuristic
    assert not is_free_text(titanic["Ticket"]) and not is_free_text(titanic["Fare"])
    house = read_train(HOUSE)
    assert detect_text_columns(house) == []


def test_zero_config_tweets_profile_detects_text(tmp_path):
    cfg = load_competition(TWEETS, shared_dir(), competitions_dir=tmp_path)
    p = profile_competition(cfg)
    assert cfg.text_columns is None and p.text_columns == ("text",)
    assert p.column("text").kind == "text" and p.column("text").mean_words > 3
    assert p.target.class_counts == {"0": 4342, "1": 3271}


def test_house_prices_target_distribution():
    cfg = load_competition(HOUSE, shared_dir())
    p = profile_competition(cfg)
    price = read_train(HOUSE)["SalePrice"]
    assert p.task_type == "regression" and p.target.class_counts == {}
    assert p.target.stats["min"] == price.min() and p.target.stats["max"] == price.max()
    assert p.target.stats["median"] == pytest.approx(price.median())
    assert p.target.stats["skew"] == pytest.approx(price.skew()) and p.target.stats["skew"] > 1
    assert p.target.minority_share is None
    assert p.column("PoolQC").missing_rate > 0.99


def test_markdown_lists_summary_and_every_column(titanic_profile):
    _, p = titanic_profile
    md = p.to_markdown()
    assert "| rows (train) | 891 |" in md and "0: 549, 1: 342" in md and "p99" in md
    for c in p.columns:
        assert f"| {c.name} |" in md
    assert md.count("\n| ") >= 12 + 6  # one line per column plus the summary rows


@pytest.mark.parametrize(
    "values, expected",
    [
        (pd.Series(["male", "female", "male"]), "binary"),
        (pd.Series([0, 1, 1, 0, None]), "binary"),
        (pd.Series([1, 2, 3, 2, 1]), "multiclass"),
        (pd.Series(["a", "b", "c"]), "multiclass"),
        (pd.Series([0.5, 1.25, 3.0]), "regression"),
        (pd.Series(range(100)), "regression"),  # integers, but too many distinct values for classes
        (pd.DataFrame({"a": [0, 1], "b": [1, 0]}), "multilabel"),
        (pd.DataFrame({"a": [0.1, 1.5], "b": [2.2, 0.3]}), "multitarget_regression"),
        (pd.DataFrame({"a": [1, 5, 3], "b": [2, 3, 4]}), "multitarget_regression"),  # ordinal scores
    ],
)
def test_infer_task_type(values, expected):
    assert infer_task_type(values) == expected


def test_infer_task_type_errors():
    with pytest.raises(ValueError, match="mix task types"):
        infer_task_type(pd.DataFrame({"a": [0, 1], "b": [0.5, 2.5]}))
    with pytest.raises(ValueError, match="no values"):
        infer_task_type(pd.Series([None, None], name="y", dtype=float))


def test_profile_frame_checks_columns():
    with pytest.raises(KeyError, match="Survival"):
        profile_frame(read_train(TITANIC), target_columns=["Survival"])


def test_length_stats_need_rows():
    with pytest.raises(ValueError, match="no rows"):
        LengthStats.from_lengths([])


def test_train_only_columns_are_excluded_from_the_features(tmp_path):
    frame = read_train(TITANIC).assign(Boat=lambda d: d["Survived"] * 3)
    test = read_test(TITANIC)
    sample = pd.DataFrame({"PassengerId": test["PassengerId"], "Survived": 0})
    folder = copy_competition("boat", tmp_path, train_frame=frame, test=test, sample=sample)
    cfg = load_competition("boat", folder, competitions_dir=tmp_path / "none")
    p = profile_competition(cfg, tokenizer=tokenizer(), token_sample=100)
    assert p.column("Boat").role == "excluded" and p.n_features == 10
    assert "| excluded: Boat | only in train.csv: not available at prediction time |" in p.to_markdown()
    assert "10 features" in p.to_markdown()
