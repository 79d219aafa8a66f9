"""Checks of the sample submission against test.csv, made before any training.

Why before: the finished submission is written from test.csv's ids and then validated against
the sample submission (:func:`lora_tasks.kaggle.validate_submission`). When the two files
disagree (duplicate ids in the sample, ids that test.csv does not have), no file can ever pass
that check, and finding out after a full training run wastes it. These checks read both files
the way the validator does (:func:`lora_tasks.data.csv_io.read_csv`, text as written, latin-1
when not UTF-8), so what passes here passes there.

The order of the ids is not checked here: the submission is written in the sample's order when
test.csv lists the same ids in another one (:func:`sample_order`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from .config_file import CompetitionConfigError, fix_text
from .csv_io import read_csv

if TYPE_CHECKING:
    from .competition import CompetitionConfig

#: How many example ids a message shows.
EXAMPLES = 5


class SampleSubmissionError(CompetitionConfigError):
    """The sample submission and test.csv disagree so that no submission could pass; the message
    says what is wrong and how to fix it."""


def _examples(values: list[str]) -> str:
    shown = ", ".join(repr(v) for v in values[:EXAMPLES])
    return f"{shown}{', ...' if len(values) > EXAMPLES else ''}"


def _refetch(folder: Path | None) -> str:
    where = f"delete {folder} and run again" if folder is not None else "download the competition again"
    return f"if the files are damaged or from different versions of the competition, {where} (a fresh download)"


def _other_id_columns(sample: pd.DataFrame, test_columns: list[str], id_column: str) -> list[str]:
    """Sample columns that could be the id instead: in test.csv too, with unique values."""
    return [c for c in sample.columns if c != id_column and c in test_columns and sample[c].is_unique]


def check_sample_submission(config: CompetitionConfig) -> None:
    """Raise :class:`SampleSubmissionError` when the sample submission's id column has duplicates,
    or holds other ids than test.csv (as a set). Reads the sample and test.csv's header and id
    column only."""
    sample_path, test_path = config.sample_submission_path, config.test_path
    if sample_path is None or test_path is None or not test_path.is_file():
        return  # no data folder, or no test.csv: nothing to compare (reading the data says so)
    sample = read_csv(sample_path, as_text=True)
    id_column, slug = config.id_column, config.slug
    if id_column not in sample.columns:
        return  # the competition spec already refuses this, naming the fix
    test_columns = [str(c) for c in read_csv(test_path, nrows=0).columns]
    others = _other_id_columns(sample, test_columns, id_column)
    other_fix = (fix_text(slug, f'id_column = "{others[0]}"', f"--id {others[0]}") + " " if others else "")
    ids = sample[id_column]
    duplicated = ids[ids.duplicated()].unique().tolist()
    if duplicated:
        raise SampleSubmissionError(
            f"{sample_path.name} has {int(ids.duplicated().sum())} repeated values in its id column `{id_column}` "
            f"(e.g. {_examples(duplicated)}; {ids.nunique()} distinct in {len(ids)} rows). A submission holds one row "
            "per test id and is checked against this file, so none could pass. "
            + (f"If `{others[0]}` is the id: {other_fix}" if others else "")
            + f"Otherwise {_refetch(config.data_dir)}. Nothing was trained.")
    test_ids = config.read_test_ids()
    in_sample, in_test = set(ids), set(test_ids)
    if in_sample == in_test:
        return
    extra = sorted(in_sample - in_test)
    absent = sorted(in_test - in_sample)
    raise SampleSubmissionError(
        f"The ids of {sample_path.name} do not match test.csv's `{id_column}` column: "
        + (f"{len(extra)} of its {len(ids)} ids are not in test.csv (e.g. {_examples(extra)})" if extra else "")
        + ("; " if extra and absent else "")
        + (f"{len(absent)} of test.csv's {len(test_ids)} ids are not in it (e.g. {_examples(absent)})"
           if absent else "")
        + ". The submission is written from test.csv's ids and checked against the sample, so it could never pass. "
        + (f"If `{others[0]}` is the id: {other_fix}" if others else "")
        + f"Otherwise {_refetch(config.data_dir)}. Nothing was trained.")


def sample_order(sample_ids: list[str], ids: list[str]) -> list[int] | None:
    """The positions that put ``ids`` (test.csv's, as the submission is rendered) in the sample's
    order, or None when they are in that order already. The ids must be the same set, each once
    (:func:`check_sample_submission` made sure of it before training)."""
    if list(sample_ids) == list(ids):
        return None
    position = {value: i for i, value in enumerate(ids)}
    if len(position) != len(ids) or set(position) != set(sample_ids) or len(sample_ids) != len(ids):
        return None  # not a reordering: leave the file as written; the validator names the difference
    return [position[value] for value in sample_ids]
