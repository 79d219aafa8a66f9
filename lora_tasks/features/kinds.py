"""The kinds of generated features as a table: what each fires on and what it adds, rendered
from the thresholds the code uses (docs/autoconfig.md holds the rendering; a test keeps the two
equal)."""

from __future__ import annotations

from lora_tasks.features.categories import HIGH_CARDINALITY, MIN_REPEATED_SHARE
from lora_tasks.features.dates import MIN_DATE_SHARE
from lora_tasks.features.names import MIN_NAME_SHARE, MIN_TITLE_SHARE
from lora_tasks.features.records import FeatureKind
from lora_tasks.features.text import MAX_NGRAMS, MIN_NGRAM_ROWS
from lora_tasks.features.useless import MAX_UNIQUE_SHARE

#: What each kind does and when it fires (docs/autoconfig.md renders this table; a test keeps the two equal).
KIND_RULES: dict[FeatureKind, tuple[str, str]] = {
    FeatureKind.CODE_PREFIX: ("a string column of short codes, half of them holding a number, some starting with letters",
                              "`<col>_prefix`: the letters before the first digit (`C85` -> `C`, `A/5 21171` -> `A`)"),
    FeatureKind.STRING_NUMBER: ("a string column of short values, half of them holding a number",
                                "`<col>_number`: the longest number in the value (`A/5 21171` -> 21171, `10+ years` -> 10)"),
    FeatureKind.CODE_COUNT: ("codes where 1%+ of the cells list several", "`<col>_codes`: how many (`C23 C25 C27` -> 3)"),
    FeatureKind.DATETIME_PART: (f"a string column (or the id) whose values parse as timestamps ({MIN_DATE_SHARE:.0%}+)",
                                "`<col>_time` (days since 1970) and each part that varies: year, month, day, weekday, "
                                "dayofyear, hour, minute; the raw string is dropped"),
    FeatureKind.DATETIME_CYCLIC: ("a periodic part fired (month, weekday, hour)", "`<col>_<part>_sin`, `_cos`"),
    FeatureKind.FREQUENCY: (f"a string column with more than {HIGH_CARDINALITY} distinct values",
                            "`<col>_frequency`: rows sharing the value, train and test counted together"),
    FeatureKind.TARGET_ENCODING: (f"the same, {MIN_REPEATED_SHARE:.0%}+ of rows sharing their value, one target column",
                                  "`<col>_target_mean`: fit inside each fold on its training rows (cross-fitted), "
                                  "applied to its held-out and the test rows; never before the folds"),
    FeatureKind.NAME_TITLE: (f"{MIN_NAME_SHARE:.0%}+ of a mostly distinct column look like people's names, {MIN_TITLE_SHARE:.0%}+ with a title",
                             "`<col>_title` (`Braund, Mr. Owen Harris` -> `Mr`)"),
    FeatureKind.NAME_FAMILY: ("name-like, some family names shared",
                              "`<col>_family` (before the comma, else the last word; target-encoded when it repeats) "
                              "and `<col>_family_size`"),
    FeatureKind.TEXT_STATS: ("a free-text column in a table the members read as a table",
                             "`<col>_chars`, `_words`, `_capital_share`, `_digit_share`, `_symbol_share`"),
    FeatureKind.TEXT_NGRAMS: ("the same", f"one count column per commonest word 1-2-gram ({MAX_NGRAMS} at most, in {MIN_NGRAM_ROWS}+ training rows)"),
    FeatureKind.DROP: (f"one value in every row; a string column {MAX_UNIQUE_SHARE:.0%}+ distinct (not free text); a row counter; a copy "
                       "of an earlier column; a timestamp replaced by its parts", "the column is left out, with the reason"),
}


def kinds_markdown() -> str:
    """The kinds as a markdown table (docs/autoconfig.md)."""
    lines = ["| kind | fires on | adds |", "|---|---|---|"]
    lines += [f"| `{kind.value}` | {when} | {then} |" for kind, (when, then) in KIND_RULES.items()]
    return "\n".join(lines)
