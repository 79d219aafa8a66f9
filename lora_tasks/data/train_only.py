"""A competition read from its train.csv alone: no sample submission and no test file.

Why: ``create_kaggle_lora_model(data_path="data/train.csv")`` promises to analyze the data it
is given, and a user often has just the training table. Without a sample submission the id and
target columns are guessed from train.csv and the task the caller names; each guess is said in
the result's reasons, with the way to set it instead (a competition config).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd

from lora_tasks.task import Task

from .competition import CompetitionConfig, CompetitionConfigError, find_config_file, load_competition
from .csv_io import read_csv

#: Column names that mean "the label" in most Kaggle tables, lower-cased.
TARGET_NAMES = ("target", "label", "labels", "y", "class", "outcome")
ROW_ID = "row_number"  # the id of a table without one
_FIX = "set `id_column` / `target_columns` in competitions/<name>.toml to choose"


def _is_id(name: str, values: pd.Series) -> bool:
    return (name.lower() == "id" or name.lower().endswith("id")) and values.is_unique


def _fits(task: Task, values: pd.Series) -> bool:
    present = values.dropna()
    if present.empty:
        return False
    if task is Task.REGRESSION:
        return pd.api.types.is_numeric_dtype(present) and present.nunique() > 20
    if task is Task.BINARY:
        return present.nunique() == 2
    return 2 <= present.nunique() <= max(2, min(100, len(present) // 5))


def guess_roles(frame: pd.DataFrame, task: Task) -> tuple[str | None, str, list[str]]:
    """``(id column or None, target column, reasons)`` of a training table, for ``task``.

    The id: the first column named ``id`` or ``...id`` whose values are unique. The target: a column
    named like a label (:data:`TARGET_NAMES`), else the last column that fits the task (binary: a
    0/1 column first, then any two-valued one; regression: numeric with many values)."""
    columns = [str(c) for c in frame.columns]
    id_col = next((c for c in columns if _is_id(c, frame[c])), None)
    candidates = [c for c in columns if c != id_col]
    named = [c for c in candidates if c.lower() in TARGET_NAMES and _fits(task, frame[c])]
    fitting = [c for c in reversed(candidates) if _fits(task, frame[c])]
    if task is Task.BINARY:
        zero_one = [c for c in fitting if set(frame[c].dropna().unique().tolist()) <= {0, 1}]
        fitting = zero_one + [c for c in fitting if c not in zero_one]
    if named:
        target, why = named[0], "its name says label"
    elif fitting:
        target, why = fitting[0], f"the last column that fits a {task.value} task"
    else:
        raise CompetitionConfigError(
            f"No column of train.csv ({columns}) fits a {task.value} task as its target; {_FIX} it, or give "
            "the folder with the sample submission.")
    reasons = [f"target: {target!r} ({why}; no sample submission names it; {_FIX} another)"]
    reasons.append(f"id: {id_col!r} (unique values, named like an id)" if id_col else "id: none found (rows are numbered)")
    return id_col, target, reasons


def has_sample_submission(folder: Path) -> bool:
    """Whether ``folder`` holds a file that can be the sample submission."""
    return any(p.suffix.lower() == ".csv" and "submission" in p.name.lower() for p in folder.iterdir())


def load_train_only(train_path: Path, task: Task, name: str) -> tuple[CompetitionConfig, pd.DataFrame, list[str]]:
    """The competition ``name`` of one training table: its config file's roles if it has one,
    else guessed (:func:`guess_roles`). Returns the config, the table to profile and the reasons
    for the guesses."""
    frame = read_csv(train_path)
    if find_config_file(name) is not None:
        config = load_competition(name)
        id_col, target, reasons = config.id_column, config.target_column, [f"roles: from {config.config_path}"]
    else:
        id_col, target, reasons = guess_roles(frame, task)
    if id_col is None:  # the profile needs an id column: the row number stands in
        id_col = ROW_ID
        frame = frame.assign(**{ROW_ID: range(len(frame))})
    given = {"id_column": id_col, "target_columns": [target], "task": task.value}
    config = load_competition(name, data_dir=None, overrides=given)
    classes = None
    if task in (Task.BINARY, Task.MULTICLASS):
        classes = tuple(sorted(frame[target].dropna().unique().tolist()))
    files = replace(config.files, train=train_path.name)
    return replace(config, data_dir=train_path.parent, files=files, classes=classes), frame, reasons
