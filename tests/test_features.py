"""The features step (lora_tasks.features): each pattern fires on a small frame with the reason
it records, on the layouts of several competitions, and does not fire where it should not."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lora_tasks.features import FeatureKind, FeaturePlan, build_features, find_features


def _find(frame: pd.DataFrame, **kw) -> FeaturePlan:
    return find_features(frame, columns=list(frame.columns), **kw)


def _record(plan: FeaturePlan, name: str):
    found = {f.name: f for f in plan.features}
    assert name in found, f"{name} did not fire; fired: {sorted(found)}"
    return found[name]


def _fired(plan: FeaturePlan) -> set[str]:
    return {f.name for f in plan.features}


# ---- structured strings: prefix, number, several codes ----------------------------------------------

def _cabins(n: int = 60) -> pd.Series:
    decks = "ABCDEFG"
    values = [f"{decks[i % 7]}{10 + i}" for i in range(n)]
    values[3] = "C23 C25 C27"
    values[5] = None
    return pd.Series(values, dtype=object)


def test_a_titanic_cabin_splits_into_deck_number_and_count():
    frame = pd.DataFrame({"Cabin": _cabins(), "Age": np.arange(60.0)})
    plan = _find(frame)
    prefix, number, codes = (_record(plan, f"Cabin_{p}") for p in ("prefix", "number", "codes"))
    assert (prefix.kind, number.kind, codes.kind) == (FeatureKind.CODE_PREFIX, FeatureKind.STRING_NUMBER,
                                                       FeatureKind.CODE_COUNT)
    assert "start with letters before a number, 7 groups" in prefix.reason and "'A10' -> 'A'" in prefix.reason
    assert "hold a number" in number.reason and "'A10' -> 10" in number.reason
    assert "list several codes" in codes.reason and "'C23 C25 C27' -> 3" in codes.reason
    built = build_features(plan, frame).train
    assert built.loc[0, "Cabin_prefix"] == "A" and built.loc[0, "Cabin_number"] == 10
    assert built.loc[3, "Cabin_codes"] == 3 and built.loc[3, "Cabin_prefix"] == "C"
    assert pd.isna(built.loc[5, "Cabin_number"]) and pd.isna(built.loc[5, "Cabin_prefix"])


def test_a_ticket_with_a_series_and_a_number():
    tickets = pd.Series(["A/5 21171", "PC 17599", "STON/O2. 3101282", "113803", "373450", "PC 17601",
                         "A/5 21172", "113804", "W./C. 6608", "330877"] * 4)
    plan = _find(pd.DataFrame({"Ticket": tickets}))
    built = build_features(plan, pd.DataFrame({"Ticket": tickets})).train
    assert list(built["Ticket_number"][:4]) == [21171, 17599, 3101282, 113803]
    assert list(built["Ticket_prefix"][:3]) == ["A", "PC", "STONO"] and pd.isna(built["Ticket_prefix"][3])
    assert "e.g. 'A/5 21171' -> 'A'" in _record(plan, "Ticket_prefix").reason


def test_codes_of_another_layout_split_too():
    """Spaceship-Titanic-like "deck/num/side" cabins and product codes of another competition."""
    cabins = pd.Series([f"{'BFG'[i % 3]}/{i}/{'PS'[i % 2]}" for i in range(50)])
    products = pd.Series([f"{['SKU', 'KX', 'LOT'][i % 3]}-{1000 + i}" for i in range(50)])
    plan = _find(pd.DataFrame({"Cabin": cabins, "product_code": products}))
    built = build_features(plan, pd.DataFrame({"Cabin": cabins, "product_code": products})).train
    assert set(built["Cabin_prefix"]) == {"B", "F", "G"} and built.loc[7, "Cabin_number"] == 7
    assert set(built["product_code_prefix"]) == {"SKU", "KX", "LOT"} and built.loc[1, "product_code_number"] == 1001


def test_numbers_inside_strings():
    """Lending-club-like "10+ years" / "36 months" and money written as text."""
    frame = pd.DataFrame({
        "emp_length": ["10+ years", "< 1 year", "3 years", "n/a", "2 years"] * 8,
        "term": [" 36 months", " 60 months"] * 20,
        "price": ["$1,200.50", "$950", "$12,000", "$80.25"] * 10,
    })
    plan = _find(frame)
    built = build_features(plan, frame).train
    assert list(built["emp_length_number"][:5].fillna(-1)) == [10, 1, 3, -1, 2]
    assert set(built["term_number"]) == {36, 60}
    assert list(built["price_number"][:4]) == [1200.5, 950, 12000, 80.25]
    assert "80% of its values hold a number (e.g. '10+ years' -> 10)" == _record(plan, "emp_length_number").reason
    assert "emp_length_prefix" not in _fired(plan), "a value starting with a letter is not a code series here"


def test_plain_categories_and_numbers_get_no_string_features():
    frame = pd.DataFrame({"Sex": ["male", "female"] * 20, "Embarked": ["S", "C", "Q", "S"] * 10,
                          "Fare": np.linspace(5, 80, 40)})
    assert _fired(_find(frame)) == set()


# ---- dates and times -----------------------------------------------------------------------------

def test_a_bike_sharing_datetime_becomes_parts_and_cycles():
    stamps = pd.date_range("2011-01-01", periods=24 * 40, freq="h").strftime("%Y-%m-%d %H:%M:%S")
    frame = pd.DataFrame({"datetime": stamps, "temp": np.arange(len(stamps)) % 30})
    plan = _find(frame)
    fired = _fired(plan)
    assert {"datetime_hour", "datetime_hour_sin", "datetime_hour_cos", "datetime_weekday", "datetime_month",
            "datetime_day", "datetime_time"} <= fired
    assert "datetime_year" not in fired, "one year only: a constant part does not fire"
    assert "datetime_minute" not in fired
    hour = _record(plan, "datetime_hour")
    assert hour.kind is FeatureKind.DATETIME_PART and "timestamps (100% parse" in hour.reason and "24 values" in hour.reason
    assert _record(plan, "datetime_hour_sin").kind is FeatureKind.DATETIME_CYCLIC
    assert "an identifier" in _record(plan, "datetime").reason or "timestamp" in _record(plan, "datetime").reason
    built = build_features(plan, frame).train
    assert "datetime" not in built.columns, "the raw string is replaced by its parts"
    row = built.iloc[24 * 2 + 18]  # 2011-01-03 18:00, a Monday
    assert (row["datetime_hour"], row["datetime_weekday"], row["datetime_day"]) == (18, 0, 3)
    assert row["datetime_hour_sin"] == pytest.approx(np.sin(2 * np.pi * 18 / 24))
    assert np.allclose(built["datetime_hour_sin"] ** 2 + built["datetime_hour_cos"] ** 2, 1)


def test_a_date_column_of_another_layout_and_an_id_of_timestamps():
    """Rossmann-like day dates named "Date" (no time: no hour), and an id column that holds
    timestamps (bike sharing's layout): the id itself is never a feature, its parts are."""
    days = pd.date_range("2014-01-01", periods=400, freq="D")
    frame = pd.DataFrame({"Date": days.strftime("%d/%m/%Y"), "Store": np.arange(400) % 7})
    plan = _find(frame)
    assert {"Date_weekday", "Date_month", "Date_year", "Date_weekday_sin"} <= _fired(plan)
    assert "Date_hour" not in _fired(plan)
    assert build_features(plan, frame).train["Date_month"].tolist()[31] == 2

    ids = pd.DataFrame({"when": pd.date_range("2020-03-01", periods=100, freq="3h").astype(str),
                        "x": np.arange(100.0)})
    plan = find_features(ids, columns=["x"], id_column="when")
    assert "the id column holds timestamps" in _record(plan, "when_hour").reason
    assert "when" not in plan.inputs and "when" not in build_features(plan, ids).train.columns


def test_numbers_and_codes_are_not_dates():
    frame = pd.DataFrame({"zip": ["02134", "10001", "94105"] * 20, "code": ["A1", "B2", "C3"] * 20})
    assert not {f for f in _fired(_find(frame)) if "_hour" in f or "_month" in f or f.endswith("_time")}


# ---- names -----------------------------------------------------------------------------------------

def test_a_titanic_name_gives_title_and_family():
    names = pd.Series(["Braund, Mr. Owen Harris", "Cumings, Mrs. John Bradley (Florence Briggs Thayer)",
                       "Heikkinen, Miss. Laina", "Braund, Master. Lewis", "Allen, Mr. William Henry",
                       "Moran, Mr. James", "Palsson, Master. Gosta Leonard", "Johnson, Mrs. Oscar W",
                       "Nasser, Mrs. Nicholas (Adele Achem)", "Uruchurtu, Don. Manuel E"])
    frame = pd.DataFrame({"Name": names})
    plan = _find(frame)
    title, family, size = (_record(plan, n) for n in ("Name_title", "Name_family", "Name_family_size"))
    assert title.kind is FeatureKind.NAME_TITLE and "hold a title (Mr, Mrs, Master" in title.reason
    assert family.kind is FeatureKind.NAME_FAMILY and "shared by 20% of rows (e.g. 'braund')" in family.reason
    built = build_features(plan, frame, pd.DataFrame({"Name": ["Braund, Mrs. Anna"]}))
    assert built.train["Name_title"].tolist()[:4] == ["Mr", "Mrs", "Miss", "Master"]
    assert built.train["Name_title"][9] == "Don"
    assert built.train["Name_family_size"][0] == 3, "two in train, one in test share 'braund'"
    assert built.test["Name_family"][0] == "braund"
    drop = _record(plan, "Name")
    assert drop.kind is FeatureKind.DROP and "an identifier" in drop.reason and "kept as Name_title" in drop.reason


def test_names_of_another_layout_without_commas():
    """"Dr. Jane Smith" / "John Smith": titles without the Titanic comma, family = last word."""
    first = ["John", "Mary", "Ahmed", "Li", "Sofia", "Peter", "Anna", "Carlos"]
    last = ["Smith", "Jones", "Khan", "Wei", "Rossi", "Garcia"]
    titles = ["Mr", "Mrs", "Dr", "Ms", "Prof", "Miss"]
    names = [f"{titles[(i + j) % 6]}. {f} {la}" if (i + j) % 2 else f"{f} {la}"
             for i, f in enumerate(first) for j, la in enumerate(last)]
    frame = pd.DataFrame({"customer": names})
    plan = _find(frame)
    built = build_features(plan, frame).train
    assert built["customer_family"].tolist()[:3] == ["smith", "jones", "khan"]
    assert built["customer_title"][1] == "Mrs" and pd.isna(built["customer_title"][0])
    assert built["customer_family_size"][0] == 8, "eight first names share each family name"


def test_a_category_of_words_is_not_a_name():
    frame = pd.DataFrame({"Neighborhood": ["North Ames", "College Creek", "Old Town", "Edwards"] * 15})
    assert not [f for f in _fired(_find(frame)) if "title" in f or "family" in f]


# ---- high-cardinality categoricals ----------------------------------------------------------------

def test_a_high_cardinality_category_gets_its_frequency_and_a_fold_target_encoding():
    values = [f"T{i // 3}" for i in range(60)] + [f"T{i // 2}" for i in range(60, 90)]  # 35 values of 2-3 rows
    frame = pd.DataFrame({"group": values, "low": ["a", "b"] * 45})
    plan = _find(frame, task="binary")
    freq, te = _record(plan, "group_frequency"), _record(plan, "group_target_mean")
    assert freq.kind is FeatureKind.FREQUENCY and "35 distinct values (high cardinality)" in freq.reason
    assert te.kind is FeatureKind.TARGET_ENCODING and "fit inside each fold on its training rows only" in te.reason
    assert plan.target_encoded == ("group",)
    assert "low_frequency" not in _fired(plan), "a low-cardinality category gets no count"
    built = build_features(plan, frame, pd.DataFrame({"group": ["T0", "new"], "low": ["a", "b"]}))
    assert built.train["group_frequency"][0] == 4, "train and test rows are counted together"
    assert built.test["group_frequency"].tolist() == [4, 1]
    assert "group_target_mean" not in built.train.columns, "never computed outside the folds"
    assert built.target_encoded == ("group",)


def test_no_target_encoding_of_a_multi_output_target():
    frame = pd.DataFrame({"group": [f"T{i // 3}" for i in range(60)] + [f"T{i // 2}" for i in range(60, 90)]})
    plan = _find(frame, task="multilabel")
    assert "group_target_mean" not in _fired(plan) and "group_frequency" in _fired(plan)
    assert any("several columns" in n for n in plan.notes)


# ---- free text in a table ------------------------------------------------------------------------

def test_free_text_in_a_table_gives_statistics_and_ngram_counts():
    rng = np.random.default_rng(0)
    words = ["great", "value", "broken", "screen", "fast", "delivery", "NEVER", "again", "5", "stars"]
    texts = [" ".join(rng.choice(words, size=rng.integers(3, 12))) + "!" * (i % 3) for i in range(80)]
    frame = pd.DataFrame({"review": texts, "price": rng.normal(size=80)})
    plan = _find(frame, text_columns=["review"])
    assert {"review_chars", "review_words", "review_capital_share", "review_digit_share", "review_symbol_share"} <= _fired(plan)
    ngrams = _record(plan, "review_ngrams")
    assert ngrams.kind is FeatureKind.TEXT_NGRAMS and "commonest word n-grams" in ngrams.reason
    assert "free text: its words" in _record(plan, "review_words").reason
    built = build_features(plan, frame).train
    assert built["review_words"][0] == len(texts[0].split())
    assert "review__great" in built.columns and built["review__great"][0] == texts[0].lower().split().count("great")
    assert "review" in built.columns, "free text is kept (the members decide what to do with it)"


# ---- useless columns ----------------------------------------------------------------------------

def test_constant_identifier_copy_and_row_counter_columns_are_dropped_with_reasons():
    n = 50
    frame = pd.DataFrame({
        "const": ["x"] * n, "uid": [f"u{i:04d}-z" for i in range(n)], "row": np.arange(1, n + 1),
        "a": np.arange(n) % 7, "a_copy": np.arange(n) % 7, "b": np.linspace(0, 1, n)})
    plan = _find(frame)
    reasons = {f.name: f.reason for f in plan.features if f.kind is FeatureKind.DROP}
    assert set(reasons) == {"const", "uid", "row", "a_copy"}
    assert "one value in every training row" in reasons["const"]
    assert "50 distinct values in 50 rows: an identifier" in reasons["uid"]
    assert "counts rows in file order" in reasons["row"]
    assert "a copy of `a`" in reasons["a_copy"]
    assert list(build_features(plan, frame).train.columns[:2]) == ["a", "b"]


# ---- switching features off ----------------------------------------------------------------------

def test_a_config_disables_features_by_name_kind_or_all():
    frame = pd.DataFrame({"Cabin": _cabins(), "Age": np.arange(60.0)})
    plan = _find(frame, disable=["Cabin_prefix", "code_count"])
    assert "Cabin_prefix" not in _fired(plan) and "Cabin_codes" not in _fired(plan) and "Cabin_number" in _fired(plan)
    assert {f.name for f in plan.disabled} == {"Cabin_prefix", "Cabin_codes"}
    assert "~~`Cabin_prefix`~~" in plan.to_markdown() and "off: [features] disable" in plan.to_markdown()
    assert "Cabin_prefix" not in build_features(plan, frame).train.columns
    off = _find(frame, disable=["all"])
    assert off.features == () and build_features(off, frame).train.columns.tolist() == ["Cabin", "Age"]


def test_a_misspelt_disable_entry_is_an_error_that_lists_what_exists():
    frame = pd.DataFrame({"Cabin": _cabins()})
    with pytest.raises(ValueError, match=r"Cabin_prefx.*Features found: .*Cabin_prefix.*Kinds: code_prefix"):
        _find(frame, disable=["Cabin_prefx"])


def test_the_plan_markdown_lists_every_feature_with_its_reason():
    frame = pd.DataFrame({"Cabin": _cabins()})
    plan = _find(frame)
    text = plan.to_markdown()
    for f in plan.features:
        assert f"| `{f.name}` | {f.kind.value} | Cabin | " in text
    assert FeaturePlan.from_dict(__import__("dataclasses").asdict(plan)) == plan


def test_the_steps_never_read_the_target():
    """find_features and build_features read only the feature columns and the id: changing the
    target changes nothing they produce."""
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"Cabin": _cabins(), "group": [f"g{i % 20}" for i in range(60)],
                          "y": rng.integers(0, 2, 60)})
    columns = ["Cabin", "group"]
    plan = find_features(frame, columns=columns, task="binary")
    other = frame.assign(y=1 - frame["y"])
    assert find_features(other, columns=columns, task="binary") == plan
    pd.testing.assert_frame_equal(build_features(plan, frame).train, build_features(plan, other).train)
    assert "y" not in build_features(plan, frame).train.columns


def test_disabling_a_generated_column_takes_its_target_encoding_with_it():
    names = [f"{last}, {t}. {first}" for last in ("Smith", "Jones", "Brown", "Khan", "Wei", "Rossi", "Lee", "Diaz",
                                                   "Kim", "Cruz", "Park", "Ruiz", "Chen", "Ford", "Hill", "Reed", "Cole")
             for t, first in (("Mr", "John"), ("Mrs", "Mary"), ("Miss", "Ann"))]
    frame = pd.DataFrame({"Name": names})
    assert "Name_family_target_mean" in _fired(_find(frame, task="binary"))
    plan = _find(frame, task="binary", disable=["name_family"])
    assert "Name_family_target_mean" not in _fired(plan)
    assert "Name_family_target_mean" in {f.name for f in plan.disabled}
    assert build_features(plan, frame).target_encoded == ()


def test_the_members_column_count_for_the_budget():
    """The budget prices the members by their columns: inputs + built features + encodings - drops."""
    frame = pd.DataFrame({"Cabin": _cabins(), "Age": np.arange(60.0), "const": 1})
    plan = _find(frame)
    assert plan.dropped == ("Cabin", "const"), "every cabin differs: its parts replace it"
    assert plan.member_columns(3) == 3 + 3 - 2  # prefix, number, codes
    assert plan.member_columns(3) == build_features(plan, frame).train.shape[1]
