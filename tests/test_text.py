"""Rows as text on the three real competitions: names, numbers, missing values, free text."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from lora_tasks.data.competition import load_competition
from lora_tasks.data.text import (
    RowTemplate,
    SerializationOptions,
    format_number,
    format_value,
    readable_name,
    rows_to_text,
)

from _data_helpers import ALL, HOUSE, TITANIC, TWEETS, read_test, read_train, shared_dir


@pytest.mark.parametrize(
    "column, expected",
    [
        ("LotFrontage", "Lot frontage"),
        ("MSSubClass", "MS sub class"),
        ("1stFlrSF", "1st flr SF"),
        ("3SsnPorch", "3 ssn porch"),
        ("Exterior1st", "Exterior 1st"),
        ("PassengerId", "Passenger id"),
        ("mean_radius", "Mean radius"),
        ("worst concave points", "Worst concave points"),
        ("keyword", "Keyword"),
        ("HeatingQC", "Heating QC"),
    ],
)
def test_readable_names(column, expected):
    assert readable_name(column) == expected


@pytest.mark.parametrize(
    "value, expected",
    [
        (22.0, "22"),
        (7.25, "7.25"),
        (71.2833, "71.28"),
        (512.3292, "512.3"),
        (0.000123456, "0.0001235"),
        (123456.7, "123457"),
        (208500, "208500"),
        (-0.5, "-0.5"),
        (0.0, "0"),
        (-0.0, "0"),
    ],
)
def test_number_formatting(value, expected):
    assert format_number(value) == expected


def test_scientific_notation_only_for_extreme_values():
    assert "e" not in format_number(1234567890123.5)
    assert "e" in format_number(1e20) and "e" in format_number(1.5e-9)
    assert format_value(np.int64(5)) == "5" and format_value(True) == "yes"
    assert format_value("  two\nlines  ") == "two lines"


def _template(slug: str, **options) -> tuple[RowTemplate, pd.DataFrame]:
    cfg = load_competition(slug, shared_dir())
    if options:
        from dataclasses import replace

        cfg = replace(cfg, serialization=replace(cfg.serialization, **options))
    frame = read_train(slug)
    return cfg.row_template(frame), frame


def test_titanic_first_row_reads_as_sentences():
    template, frame = _template(TITANIC)
    text = template.render_frame(frame.head(1))[0]
    row = frame.iloc[0]
    assert text.startswith("Ticket class is 3. Name is Braund, Mr. Owen Harris. Sex is male. Age is 22.")
    assert f"Fare is {row['Fare']:g}." in text  # 7.25, no trailing zeros
    assert "Passenger id" not in text and "Survived" not in text  # id and target never shown
    assert "Cabin" not in text  # missing, left out by default
    assert "Siblings or spouses aboard is 1." in text  # rename from titanic.toml


def test_missing_values_said_when_asked():
    template, frame = _template(TITANIC, missing="say", missing_text="unknown")
    texts = template.render_frame(frame.head(10))
    for text, cabin in zip(texts, frame.head(10)["Cabin"]):
        assert ("Cabin is unknown." in text) == pd.isna(cabin)


def test_sentence_count_matches_present_values_on_house_prices():
    template, frame = _template(HOUSE)
    texts = template.render_frame(frame.head(50))
    features = frame.head(50).drop(columns=["Id", "SalePrice"])
    present = features.notna().sum(axis=1).to_numpy()
    assert [t.count(" is ") for t in texts] == list(present)
    assert "Lot frontage is 65." in texts[0] and "1st flr SF is 856." in texts[0]


def test_tweet_text_first_then_keyword():
    template, frame = _template(TWEETS)
    with_kw = frame[frame["keyword"].notna() & frame["location"].notna()].head(20)
    for text, (_, row) in zip(template.render_frame(with_kw), with_kw.iterrows()):
        tweet = " ".join(str(row["text"]).split())
        assert text.startswith(tweet)
        assert f"Keyword is {row['keyword']}." in text
        assert text.index("Keyword is") < text.index("Location is")


@pytest.mark.parametrize("slug", ALL)
def test_whole_datasets_serialize_cleanly_and_deterministically(slug):
    template, frame = _template(slug)
    texts = template.render_frame(frame)
    assert len(texts) == len(frame) and all(texts)
    joined = "\n".join(texts)
    assert "\n" not in "".join(texts)  # tweets with newlines are flattened
    assert not re.search(r" is (nan|NaN|None|<NA>|NaT)\.", joined)  # missing values left out
    assert not re.search(r" is -?\d+\.0\.", joined)  # no "Age is 22.0." for integer-valued floats
    assert not re.search(r" is -?[\d.]+e[+-]\d", joined)  # no scientific notation
    # a row's text depends only on the row: shuffled rows give the same per-row text
    shuffled = frame.sample(frac=1.0, random_state=1)
    again = dict(zip(shuffled.index, template.render_frame(shuffled)))
    assert all(again[i] == texts[k] for k, i in enumerate(frame.index))


@pytest.mark.parametrize("slug", ALL)
def test_test_table_uses_the_train_template(slug):
    template, _ = _template(slug)
    texts = template.render_frame(read_test(slug).head(20))
    assert len(texts) == 20 and all(texts)


def test_missing_test_column_is_an_error_that_names_it():
    template, _ = _template(TITANIC)
    with pytest.raises(KeyError, match="Fare"):
        template.render_frame(read_test(TITANIC).drop(columns=["Fare"]))


def test_options_change_text_and_fingerprint():
    frame = read_train(TWEETS).head(5)
    base = RowTemplate.for_frame(frame, text_columns=["text"], exclude=["id", "target"])
    labelled = RowTemplate.for_frame(
        frame, text_columns=["text"], exclude=["id", "target"], options=SerializationOptions(label_text=True)
    )
    file_order = RowTemplate.for_frame(
        frame, text_columns=["text"], exclude=["id", "target"], options=SerializationOptions(text_first=False)
    )
    assert base.columns[0] == "text" and file_order.columns == ("keyword", "location", "text")
    assert labelled.render_frame(frame)[0].startswith("Text: ")
    assert len({base.fingerprint(), labelled.fingerprint(), file_order.fingerprint()}) == 3
    assert base.fingerprint() == RowTemplate.for_frame(frame, text_columns=["text"], exclude=["id", "target"]).fingerprint()


def test_float_digits_option():
    frame = read_train(TITANIC).head(2)[["Fare"]]  # 7.25, 71.2833
    assert rows_to_text(frame, options=SerializationOptions(float_digits=2)) == ["Fare is 7.2.", "Fare is 71."]
    with pytest.raises(ValueError, match="float_digits"):
        SerializationOptions(float_digits=0)


def test_unknown_text_column_is_an_error():
    with pytest.raises(KeyError, match="tweet"):
        rows_to_text(read_train(TWEETS).head(2), text_columns=["tweet"])
