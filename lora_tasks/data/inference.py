"""Reading a competition from its data: where the files are, and what a config does not say.

Why a module of its own: inference is most of what makes a competition with no config file
work (the id, the targets, the task, what the submission holds, each with the rule that found
it), while :mod:`.competition` joins what is inferred with the config and checks the whole.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from lora_tasks.metrics import get_metric

from .columns import match_targets, row_number_ids, shared_id_column, train_only
from .config_file import REGRESSION_TASKS, TASKS, CompetitionConfigError, fix_text, toml_list
from .csv_io import count_rows, read_csv, read_header
from .layout import find_sample_submission, find_table
from .profile import TRAIN_ONLY_REASON, ExcludedColumn, infer_task_type
from .submission_format import infer_submission_format

DATA_ENV = "KAGGLE_LORA_DATA_DIR"


@dataclass(frozen=True)
class CompetitionFiles:
    """File names inside the data folder (Kaggle's defaults; Titanic names its sample differently)."""

    train: str = "train.csv"
    test: str = "test.csv"
    sample_submission: str = "sample_submission.csv"



# ------------------------------------------------------------------------------ finding files


def resolve_data_dir(data_dir: str | os.PathLike | None, slug: str, train_name: str | None) -> Path | None:
    """``data_dir`` may be the competition folder itself or its parent (``<parent>/<slug>``, as
    the Kaggle download lays it out); without it ``$KAGGLE_LORA_DATA_DIR`` is tried. Some
    competitions' zips hold their files in one sub-folder (``<slug>/data/train.csv``): a single
    sub-folder holding the train file is used then. ``train_name``: the config's ``[files]
    train``, None to find the train table by :func:`.layout.find_table`'s rules."""
    explicit = data_dir is not None
    base = Path(data_dir).expanduser() if explicit else (Path(os.environ[DATA_ENV]) if os.environ.get(DATA_ENV) else None)
    if base is None:
        return None
    for candidate in (base, base / slug):
        if _has_train(candidate, train_name):
            return candidate
    # base/* only when base is the competition's own folder: in a parent of several
    # competitions, the one sub-folder with a train file may be another competition's
    for candidate in (base / slug, *((base,) if base.name == slug else ())):
        nested = _single_subfolder_with(candidate, train_name)
        if nested is not None:
            return nested
    if explicit:
        raise CompetitionConfigError(
            f"No {train_name or 'train.csv (nor train.tsv, train.csv.gz, *train*.csv)'} in {base} or {base / slug} "
            "(or one sub-folder of them); pass the folder that holds the competition's files (train.csv, test.csv, "
            "sample_submission.csv)."
        )
    return None


def _has_train(folder: Path, train_name: str | None) -> bool:
    if train_name is not None:
        return (folder / train_name).is_file()
    try:
        return find_table(folder, "train") is not None
    except CompetitionConfigError:
        return True  # two train candidates: this is the folder, and reading it names them


def _single_subfolder_with(folder: Path, train_name: str | None) -> Path | None:
    if not folder.is_dir():
        return None
    found = sorted(
        p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__")) and _has_train(p, train_name)
    )
    return found[0] if len(found) == 1 else None


def _id_guess(sample_cols: list[str], test_cols: list[str] | None) -> str:
    """The sample column most likely meant as the id, for an error's fix text."""
    return next((c for c in sample_cols if test_cols is not None and c in test_cols), sample_cols[0])


def find_files(folder: Path, configured: Mapping[str, str]) -> CompetitionFiles:
    """The three files: the config's ``[files]`` where given, else found by :mod:`.layout`."""
    train = configured.get("train") or find_table(folder, "train") or "train.csv"
    test = configured.get("test") or find_table(folder, "test", exclude=(train,)) or "test.csv"
    sample = configured.get("sample_submission")
    if sample:
        if not (folder / sample).is_file():
            raise CompetitionConfigError(
                f"Sample submission {folder / sample} (from [files]) does not exist; fix [files].sample_submission."
            )
    else:
        sample = find_sample_submission(folder, exclude=(train, test))
    return CompetitionFiles(train=train, test=test, sample_submission=sample)


# ------------------------------------------------------------------------------ inference


def _looks_fractional(cells: list[str]) -> bool:
    """Whether a sample column written as text holds non-whole numbers (0.5: probabilities)."""
    fractional = False
    for cell in cells:
        if not cell.strip():
            continue
        try:
            number = float(cell)
        except ValueError:
            return False
        fractional = fractional or not float(number).is_integer()
    return fractional


def _infer_prediction(task: str, class_columns: list[str] | None, sample_first: list[str], metric_hint: str | None) -> str:
    """labels / probabilities / values: the metric decides when known (Kaggle's or the config's),
    else the sample's values do (0.5 means probabilities)."""
    if class_columns is not None:
        return "probabilities"
    if task in REGRESSION_TASKS:
        return "values"
    if metric_hint is not None:
        spec = get_metric(metric_hint)
        if task in spec.tasks and spec.needs != "values":
            return spec.needs
    if task == "multilabel":
        return "probabilities"
    return "probabilities" if _looks_fractional(sample_first) and task != "multiclass" else "labels"


def infer_from_data(
    folder: Path, files: CompetitionFiles, known: Mapping[str, Any] | None = None, *, metric_hint: str | None = None,
    slug: str | None = None,
) -> dict[str, Any]:
    """Fill id, targets, task, classes, excluded columns and submission format from ``folder``.

    ``known`` holds values already fixed by the config file; they are used as given (and
    checked against the files) rather than inferred. ``metric_hint``: the metric if already
    known (config or Kaggle), which decides what the submission holds. ``slug`` names the config
    file an error's fix points at (default: the folder's name).
    """
    known = dict(known or {})
    slug = slug or folder.name
    train_path, test_path, sample_path = folder / files.train, folder / files.test, folder / files.sample_submission
    for path, what in ((train_path, "train"), (sample_path, "sample submission")):
        if not path.is_file():
            raise CompetitionConfigError(f"No {what} file at {path}; download the data or fix [files] in the config.")
    train_cols = read_header(train_path)
    test_cols = read_header(test_path) if test_path.is_file() else None
    sample = read_csv(sample_path, as_text=True)
    sample_cols = [str(c) for c in sample.columns]
    n_test = count_rows(test_path) if test_cols is not None else None
    out: dict[str, Any] = {}

    id_col = known.get("id_column")
    if id_col is None:
        id_col = shared_id_column(sample_cols, test_cols if test_cols is not None else train_cols)
    if test_cols is not None and n_test is not None and (id_col is None or id_col not in test_cols):
        candidates = {c: sample[c].tolist() for c in sample_cols if id_col is None or c == id_col}
        numbered = row_number_ids(candidates, test_cols, n_test)
        if numbered is not None:
            id_col, out["row_number_ids"] = numbered.column, numbered
    if id_col is None:
        raise CompetitionConfigError(
            f"{sample_path.name} columns {sample_cols} share no column with {files.test if test_cols else files.train}, "
            "and none of them numbers test.csv's rows (1..N or 0..N-1), so the id column is unknown. "
            + fix_text(slug, f'id_column = "{_id_guess(sample_cols, test_cols)}"', f"--id {_id_guess(sample_cols, test_cols)}")
        )
    if "id_column" not in known:
        out["id_column"] = id_col
    holders = [(sample_cols, sample_path.name)]
    if "row_number_ids" not in out:
        holders.append((test_cols, files.test) if test_cols is not None else (train_cols, files.train))
    for cols, name in holders:
        if id_col not in cols:
            both = [c for c in sample_cols if c in cols]
            guess = both[0] if both else "<column>"
            raise CompetitionConfigError(
                f"Id column {id_col!r} is not in {folder / name} (columns: {cols}); the id must be a column of "
                f"{name} and {sample_path.name} ({both or 'they share none'}). "
                + fix_text(slug, f'id_column = "{guess}"', f"--id {guess}"))
    if n_test is not None and n_test != len(sample):
        raise CompetitionConfigError(
            f"{sample_path.name} has {len(sample)} rows but {files.test} has {n_test}; a submission needs one row per "
            f"test row, in {files.test}'s order. Check that both files are the competition's own (download again), "
            "or set [files] test / sample_submission to the right pair."
        )

    targets = known.get("target_columns")
    class_columns: list[str] | None = None
    if targets is None:
        rest = [c for c in sample_cols if c != id_col]
        matches = match_targets(rest, train_cols, test_cols, id_col) if rest else None
        if matches is not None:
            targets = [m.target for m in matches]
            out["target_matches"] = matches
        else:
            # one column per class in the submission (e.g. otto's Class_1..Class_9): the target is
            # the train column that test lacks whose values are exactly those column names
            only_train = train_only(train_cols, test_cols, id_col)
            if rest and only_train:
                values = read_csv(train_path, usecols=only_train, as_text=True)
                found = [c for c in only_train if set(values[c]) - {""} == set(rest)]
                if len(found) == 1:
                    targets, class_columns = found, rest
            if targets is None:
                raise CompetitionConfigError(
                    f"Cannot find the target: {sample_path.name} columns {rest} are not all in {files.train} "
                    f"(columns: {train_cols}), in another case either, and {files.train} has "
                    f"{len(only_train)} columns {files.test} lacks ({only_train[:8]}), not one. "
                    + _target_fix(slug, train_cols, test_cols, id_col, rest)
                )
        out["target_columns"] = targets
    missing = [c for c in targets if c not in train_cols]
    if missing:
        raise CompetitionConfigError(f"Target column(s) {missing} are not in {train_path} (columns: {train_cols}). "
                                     + _target_fix(slug, train_cols, test_cols, id_col, []))

    for key in ("text_columns", "drop_columns"):
        unknown = [c for c in known.get(key, []) if c not in train_cols]
        if unknown:
            raise CompetitionConfigError(
                f"`{key}` lists {unknown}, which {train_path} does not have (columns: {train_cols}); fix `{key}`."
            )

    # a train column test.csv lacks can never be a feature: the model would not have it at prediction time
    drop = set(known.get("drop_columns", []))
    if test_cols is not None:
        excluded = [ExcludedColumn(c, TRAIN_ONLY_REASON) for c in train_cols
                    if c not in test_cols and c != id_col and c not in targets and c not in drop]
        out["excluded"] = excluded
        skip = {id_col, *targets, *drop, *(e.name for e in excluded)}
        out["feature_columns"] = [c for c in train_cols if c not in skip]

    target_frame = read_csv(train_path, usecols=list(targets))
    task = known.get("task")
    if task is None:
        try:
            task = infer_task_type(target_frame if len(targets) > 1 else target_frame[targets[0]])
        except ValueError as exc:
            raise CompetitionConfigError(
                f"{train_path}: {exc} " + fix_text(slug, f'task = "<{" | ".join(TASKS)}>"')) from None
        out["task"] = task
    classes: tuple[Any, ...] | None = None
    if task in ("binary", "multiclass"):
        classes = tuple(sorted(target_frame[targets[0]].dropna().unique().tolist()))
    elif task == "multilabel":
        classes = tuple(sorted({v for c in targets for v in target_frame[c].dropna().unique().tolist()}))
    if classes is not None:
        out["classes"] = classes

    given_sub = dict(known.get("submission", {}))
    value_cols = [c for c in sample_cols if c != id_col]
    prediction = given_sub.get("prediction") or _infer_prediction(
        task, class_columns, sample[value_cols[0]].tolist() if value_cols else [], metric_hint
    )
    raw_targets = read_csv(train_path, usecols=list(targets), as_text=True) if classes is not None else None
    fmt = infer_submission_format(
        sample, id_column=id_col, prediction=prediction, classes=classes, raw_targets=raw_targets,
        given={k: v for k, v in given_sub.items() if k in ("columns", "dtype")},
    )
    out["submission"] = {"columns": list(fmt.columns), "prediction": prediction, "dtype": fmt.dtype, "classes": list(fmt.classes)}
    return out


def _target_fix(slug: str, train_cols: list[str], test_cols: list[str] | None, id_col: str, sample_values: list[str]) -> str:
    """The fix when the target cannot be found: ``--target`` with the likeliest train.csv column
    (one test.csv lacks), listing the candidates."""
    only_train = [c for c in train_cols if c != id_col and (test_cols is None or c not in test_cols)]
    guess = only_train[0] if only_train else "<column>"
    line = f"target_columns = {toml_list([guess])}"
    text = fix_text(slug, line, f"--target {guess}")
    if len(only_train) > 1:
        text += f" Columns of train.csv that test.csv lacks: {only_train}."
    if sample_values:
        text += f" The submission keeps the sample's value column(s) {sample_values}."
    return text
