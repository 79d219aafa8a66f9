"""Rows as text on the three real competitions: names, numbers, missing values, free text."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from _data_helpers import ALL, HOUSE, TITANIC, TWEETS, read_test, read_train, shared_dir

from lora_tasks.data.competition import load_competition
from lora_tasks.data.text import (
    RowTemplate,
    SerializationOptions,
    clean_text,
    format_number,
    format_value,
    readable_name,
    rows_to_text,
)


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
    for text, cabin in zip(texts, frame.head(10)["Cabin"], strict=True):
        assert ("Cabin is unknown." in text) == pd.isna(cabin)


def test_sentence_count_matches_present_values_on_house_prices():
    template, frame = _template(HOUSE, omit_common=None)
    texts = template.render_frame(frame.head(50))
    features = frame.head(50).drop(columns=["Id", "SalePrice"])
    present = features.notna().sum(axis=1).to_numpy()
    assert [t.count(" is ") for t in texts] == list(present)
    assert "Lot frontage is 65." in texts[0] and "1st flr SF is 856." in texts[0]


def test_common_values_are_left_out_and_learned_from_train():
    """house-prices' config says ``omit_common = 0.8``: a value that 80% of the training rows
    hold is left out like a missing one; rarer values of the same column are still said."""
    template, frame = _template(HOUSE)
    assert template.common_values["Street"] == "Pave" and template.common_values["Utilities"] == "AllPub"
    assert "Neighborhood" not in template.common_values and "SalePrice" not in template.common_values
    for column, value in template.common_values.items():
        assert (frame[column] == value).mean() >= 0.8, column
    texts = template.render_frame(frame)
    gravel = frame.index[frame["Street"] == "Grvl"][0]
    assert "Street is Grvl." in texts[gravel] and not any("Street is Pave" in t for t in texts)
    features = frame.drop(columns=["Id", "SalePrice"])
    common = np.zeros(len(frame), dtype=int)
    for column, value in template.common_values.items():
        common += (features[column] == value).to_numpy()
    assert [t.count(" is ") for t in texts] == list(features.notna().sum(axis=1).to_numpy() - common)
    # the test table is rendered with the values learned from train, not its own
    test = read_test(HOUSE)
    test_texts = template.render_frame(test.head(30))
    assert all("Street is Pave" not in t for t in test_texts)
    plain, _ = _template(HOUSE, omit_common=None)
    assert plain.common_values == {} and plain.fingerprint() != template.fingerprint()
    assert np.mean([len(t) for t in texts]) < 0.75 * np.mean([len(t) for t in plain.render_frame(frame)])


def test_omit_common_must_be_a_share_of_rows():
    with pytest.raises(ValueError, match="omit_common is 0.3; use a share of rows in 0.5..1"):
        SerializationOptions(omit_common=0.3)


def test_tweet_text_first_then_keyword():
    template, frame = _template(TWEETS)
    with_kw = frame[frame["keyword"].notna() & frame["location"].notna()].head(20)
    for text, (_, row) in zip(template.render_frame(with_kw), with_kw.iterrows(), strict=True):
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
    again = dict(zip(shuffled.index, template.render_frame(shuffled), strict=True))
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


def test_clean_text_unescapes_entities_and_cuts_urls_to_their_host():
    assert clean_text("Fire &amp; smoke &gt; 3 http://t.co/lHYXEOHY6C now") == "Fire & smoke > 3 t.co now"
    assert clean_text("see https://www.BBC.co.uk/news/a?b=1, or www.foo.org/x") == "see bbc.co.uk or foo.org"
    assert clean_text("no links: a.b/c and http") == "no links: a.b/c and http"
    frame = pd.DataFrame({"id": [1], "text": ["Flood &amp; rain  http://t.co/XyZ123abc"], "keyword": ["flood http://x.y/z"]})
    plain = RowTemplate.for_frame(frame, text_columns=["text"], exclude=["id"])
    cleaned = RowTemplate.for_frame(frame, text_columns=["text"], exclude=["id"],
                                    options=SerializationOptions(clean_text=True))
    assert plain.render_frame(frame) == ["Flood &amp; rain http://t.co/XyZ123abc. Keyword is flood http://x.y/z."]
    assert cleaned.render_frame(frame) == ["Flood & rain t.co. Keyword is flood http://x.y/z."], "only free text is cleaned"
    assert plain.fingerprint() != cleaned.fingerprint()
    tweets = read_train(TWEETS)["text"]
    urls = tweets[tweets.str.contains("http://t.co/")].head(200)
    assert all("://" not in clean_text(t) for t in urls)


def test_float_digits_option():
    frame = read_train(TITANIC).head(2)[["Fare"]]  # 7.25, 71.2833
    assert rows_to_text(frame, options=SerializationOptions(float_digits=2)) == ["Fare is 7.2.", "Fare is 71."]
    with pytest.raises(ValueError, match="float_digits"):
        SerializationOptions(float_digits=0)


def test_unknown_text_column_is_an_error():
    with pytest.raises(KeyError, match="tweet"):
        rows_to_text(read_train(TWEETS).head(2), text_columns=["tweet"])


def test_a_column_the_other_table_lacks_is_a_clear_error():
    train = pd.DataFrame({"a": [1, 2], "casual": [3, 4]})
    template = RowTemplate.for_frame(train)
    with pytest.raises(KeyError, match=r"\['casual'\].*excluded_columns"):
        template.render_frame(pd.DataFrame({"a": [5]}))
    assert RowTemplate.for_frame(train, exclude=["casual"]).render_frame(pd.DataFrame({"a": [5]})) == ["A is 5."]
