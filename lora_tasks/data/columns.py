"""Which sample-submission column is the id, and which train.csv column each value column predicts.

Why rules beyond "same name": real competitions name the sample's columns their own way. The
sample of contradictory-my-dear-watson says ``id,prediction`` while train.csv's target is
``label``; digit-recognizer's says ``ImageId,Label`` against train's ``label``, and its test.csv
has no id at all: ``ImageId`` numbers test.csv's rows 1..N. Each rule is tried in a fixed
order and the one that matched is recorded (:class:`TargetMatch`, :class:`RowNumberIds`), so
``kaggle-lora plan`` can say how a column was found and a surprise can be pinned in the config.

Id: the first sample column that test.csv has (train.csv need not: rossmann's and quora's
train files have no such column); else a sample column test.csv lacks whose values are the
row numbers 1..N or 0..N-1 of test.csv, written from test.csv's row order.

Targets, per value column of the sample: the train.csv column of the same name; else the one
whose name differs only in case; else (one value column only) the one train.csv column, other
than the id, that test.csv lacks. One column per class (otto's ``Class_1..Class_9``) is matched
by :func:`lora_tasks.data.competition.infer_from_data` itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

MatchRule = Literal["same name", "same name in another case", "the one train column test lacks"]


@dataclass(frozen=True)
class TargetMatch:
    """A sample value column and the train.csv column it predicts, with the rule that paired them."""

    sample_column: str
    target: str
    rule: MatchRule

    def describe(self) -> str:
        return f"sample column `{self.sample_column}` predicts train's `{self.target}` ({self.rule})"


@dataclass(frozen=True)
class RowNumberIds:
    """The id column is not in test.csv: its values are test.csv's row numbers from ``start``."""

    column: str
    start: int

    def ids(self, n_rows: int) -> list[str]:
        """The ids of ``n_rows`` test rows, as the sample writes them."""
        return [str(self.start + i) for i in range(n_rows)]

    def describe(self) -> str:
        last = "N" if self.start == 1 else "N-1"
        return f"test.csv's row numbers {self.start}..{last}, in its order (test.csv has no `{self.column}`)"


def shared_id_column(sample_columns: Sequence[str], with_columns: Sequence[str]) -> str | None:
    """The first sample column that ``with_columns`` (test.csv's, else train.csv's) has."""
    return next((c for c in sample_columns if c in with_columns), None)


def row_number_ids(sample: dict[str, list[str]], test_columns: Sequence[str], n_test: int) -> RowNumberIds | None:
    """The sample column (in the sample's order) test.csv lacks whose cells are exactly 1..N or
    0..N-1 for N test rows, None when there is none. ``sample``: column -> cells as text."""
    for column, cells in sample.items():
        if column in test_columns or len(cells) != n_test or not n_test:
            continue
        for start in (1, 0):
            if cells == [str(start + i) for i in range(n_test)]:
                return RowNumberIds(column, start)
    return None


def match_targets(
    value_columns: Sequence[str], train_columns: Sequence[str], test_columns: Sequence[str] | None, id_column: str
) -> list[TargetMatch] | None:
    """The train.csv column of every value column, or None when one of them has none."""
    matches: list[TargetMatch] = []
    for column in value_columns:
        if column in train_columns:
            matches.append(TargetMatch(column, column, "same name"))
            continue
        folded = [c for c in train_columns if c.casefold() == column.casefold() and c != id_column]
        if len(folded) == 1:
            matches.append(TargetMatch(column, folded[0], "same name in another case"))
            continue
        only_train = train_only(train_columns, test_columns, id_column)
        if len(value_columns) == 1 and len(only_train) == 1:
            matches.append(TargetMatch(column, only_train[0], "the one train column test lacks"))
            continue
        return None
    if len({m.target for m in matches}) < len(matches):
        return None  # two sample columns for one train column: no rule can tell which is which
    return matches


def train_only(train_columns: Sequence[str], test_columns: Sequence[str] | None, id_column: str) -> list[str]:
    """train.csv's columns, other than the id, that test.csv lacks (none without a test.csv)."""
    if test_columns is None:
        return []
    return [c for c in train_columns if c != id_column and c not in test_columns]
