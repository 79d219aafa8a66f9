"""What a competition is: files, id and target columns, task, metric, submission format.

Why inference first: most Kaggle competitions follow one shape (train.csv, test.csv and a
sample submission whose columns are the id and the target), so a competition with no config
file is read from its data: the id is the sample-submission column that test.csv shares, the
targets are its other columns, the task type comes from the target's values and the metric
from the task. A ``competitions/<slug>.toml`` file only refines that (metric, target
transform, text columns, ...); its format and strict schema live in :mod:`.config_file`.

What the data also decides: a train.csv column that test.csv lacks (bike-sharing's
``casual``/``registered``) is never a feature, since test rows do not have it, and the spec
records it with the reason; the submission format keeps the sample's columns and the exact
spelling of train.csv's labels (:mod:`.submission_format`); the metric comes from the config,
else from Kaggle's ``evaluation_metric``, else from the task, and the spec says which.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, Mapping

import pandas as pd

from lora_tasks.metrics import Metric, default_metric, get_metric, metric_from_kaggle

from .config_file import (
    ALLOWED_KEYS,
    COMPETITIONS_ENV,
    DEFAULT_SCHEDULE,
    MULTITARGET_REGRESSION,
    REGRESSION_TASKS,
    TASKS,
    TRAINING_SETTINGS,
    CompetitionConfigError,
    default_competitions_dir,
    find_config_file,
    list_competitions,
    read_config_file,
    validate_config_dict,
)
from .csv_io import read_csv, read_header
from .profile import (
    TRAIN_ONLY_REASON,
    ExcludedColumn,
    detect_text_columns,
    infer_task_type,
)
from .submission_format import (
    SubmissionFormat,
    infer_submission_format,
)
from .text import RowTemplate, SerializationOptions

#: Names other modules import from here (the config-file ones live in :mod:`.config_file`).
__all__ = [
    "ALLOWED_KEYS", "COMPETITIONS_ENV", "DATA_ENV", "DEFAULT_SCHEDULE", "MULTITARGET_REGRESSION", "REGRESSION_TASKS",
    "TASKS", "TRAINING_SETTINGS", "CompetitionConfig", "CompetitionConfigError", "CompetitionFiles", "ExcludedColumn",
    "SubmissionFormat", "config_field_names", "default_competitions_dir", "find_config_file", "infer_from_data",
    "list_competitions", "load_competition", "metric_from_kaggle_name", "read_config_file", "validate_config_dict",
]
DATA_ENV = "KAGGLE_LORA_DATA_DIR"
MetricSource = Literal["config", "kaggle metadata", "inferred"]

@dataclass(frozen=True)
class CompetitionFiles:
    """File names inside the data folder (Kaggle's defaults; Titanic names its sample differently)."""

    train: str = "train.csv"
    test: str = "test.csv"
    sample_submission: str = "sample_submission.csv"


@dataclass(frozen=True)
class CompetitionConfig:
    """A competition, resolved: every field set, from the config file or inferred from the data.

    ``inferred`` names the fields that came from the data rather than the file (shown in reports
    so a surprising choice can be pinned in ``competitions/<slug>.toml``). ``excluded`` lists the
    train.csv columns kept out of the features and why (train-only columns); ``metric_source``
    says where the metric came from (``kaggle_metric``: Kaggle's own name for it, if given).
    """

    slug: str
    task_type: str
    id_column: str
    target_columns: tuple[str, ...]
    metric: str
    submission: SubmissionFormat
    title: str = ""
    aliases: tuple[str, ...] = ()
    text_columns: tuple[str, ...] | None = None
    drop_columns: tuple[str, ...] = ()
    serialization: SerializationOptions = SerializationOptions()
    schedule: str = DEFAULT_SCHEDULE
    files: CompetitionFiles = CompetitionFiles()
    classes: tuple[Any, ...] | None = None
    training: Mapping[str, Any] = field(default_factory=dict)
    data_dir: Path | None = None
    config_path: Path | None = None
    inferred: tuple[str, ...] = field(default=())
    excluded: tuple[ExcludedColumn, ...] = ()
    metric_source: MetricSource = "inferred"
    kaggle_metric: str | None = None
    feature_columns: tuple[str, ...] | None = None
    #: ``[features] disable``: generated features (names or kinds, or "all") the members go without
    disable_features: tuple[str, ...] = ()

    @property
    def target_column(self) -> str:
        """The single target (most competitions); an error for multi-target ones."""
        if len(self.target_columns) != 1:
            raise ValueError(f"{self.slug} has targets {list(self.target_columns)}; use target_columns.")
        return self.target_columns[0]

    @property
    def metric_spec(self) -> Metric:
        return get_metric(self.metric)

    def _path(self, name: str) -> Path | None:
        return None if self.data_dir is None else self.data_dir / name

    @property
    def train_path(self) -> Path | None:
        return self._path(self.files.train)

    @property
    def test_path(self) -> Path | None:
        return self._path(self.files.test)

    @property
    def sample_submission_path(self) -> Path | None:
        return self._path(self.files.sample_submission)

    def _read(self, path: Path | None, what: str) -> pd.DataFrame:
        if path is None:
            raise CompetitionConfigError(
                f"Competition {self.slug} has no data folder; pass data_dir to load_competition "
                f"(the folder holding {self.files.train}) or download the data first."
            )
        if not path.is_file():
            raise CompetitionConfigError(f"{what} of {self.slug} not found at {path}; download the data or fix [files].")
        return read_csv(path)

    def read_train(self) -> pd.DataFrame:
        return self._read(self.train_path, "train file")

    def read_test(self) -> pd.DataFrame:
        return self._read(self.test_path, "test file")

    def read_sample_submission(self) -> pd.DataFrame:
        return self._read(self.sample_submission_path, "sample submission")

    def read_test_ids(self) -> list[str]:
        """test.csv's ids as written (``0013_01``, leading zeros kept), in test.csv's order:
        what the submission's id column must hold."""
        path = self.test_path
        if path is None or not path.is_file():
            self._read(path, "test file")  # raises the error that names the fix
        return read_csv(path, usecols=[self.id_column], as_text=True)[self.id_column].tolist()

    @property
    def excluded_columns(self) -> tuple[str, ...]:
        """Columns never shown to the model: id, targets, ``drop_columns`` and train-only columns."""
        return (self.id_column, *self.target_columns, *self.drop_columns, *(e.name for e in self.excluded))

    def describe(self) -> str:
        """What was inferred and from where, as markdown (``--plan`` shows it)."""
        def origin(key: str) -> str:
            return "inferred from the data" if key in self.inferred else "config"

        metric_from = self.metric_source + (f": {self.kaggle_metric!r}" if self.metric_source == "kaggle metadata" else "")
        lines = [
            f"### Competition: {self.slug}",
            "",
            "| what | value | from |",
            "|---|---|---|",
            f"| id column | `{self.id_column}` | {origin('id_column')} |",
            f"| target(s) | {', '.join(f'`{c}`' for c in self.target_columns)} | {origin('target_columns')} |",
            f"| task | {self.task_type} | {origin('task')} |",
            f"| metric | {self.metric} | {metric_from} |",
            f"| submission holds | {self.submission.prediction} | {origin('submission.prediction')} |",
            f"| sample submission | {self.files.sample_submission} | {'found in the data' if self.data_dir else 'config'} |",
        ]
        if self.drop_columns:
            lines.append(f"| dropped | {', '.join(self.drop_columns)} | config (drop_columns) |")
        for e in self.excluded:
            lines.append(f"| excluded: `{e.name}` | {e.reason} | inferred from the data |")
        lines += ["", "Submission format:", self.submission.describe()]
        return "\n".join(lines)

    def row_template(self, frame: pd.DataFrame) -> RowTemplate:
        """The rows-as-text template for this competition's tables (train and test share it)."""
        text_cols = self.text_columns
        if text_cols is None:
            text_cols = tuple(detect_text_columns(frame, exclude=self.excluded_columns))
        return RowTemplate.for_frame(frame, text_columns=text_cols, exclude=self.excluded_columns, options=self.serialization)


# ------------------------------------------------------------------------------ finding files


def _resolve_data_dir(data_dir: str | os.PathLike | None, slug: str, train_name: str) -> Path | None:
    """``data_dir`` may be the competition folder itself or its parent (``<parent>/<slug>``, as
    the Kaggle download lays it out); without it ``$KAGGLE_LORA_DATA_DIR`` is tried. Some
    competitions' zips hold their files in one sub-folder (``<slug>/data/train.csv``): a single
    sub-folder holding the train file is used then."""
    explicit = data_dir is not None
    base = Path(data_dir).expanduser() if explicit else (Path(os.environ[DATA_ENV]) if os.environ.get(DATA_ENV) else None)
    if base is None:
        return None
    for candidate in (base, base / slug):
        if (candidate / train_name).is_file():
            return candidate
    # base/* only when base is the competition's own folder: in a parent of several
    # competitions, the one sub-folder with a train file may be another competition's
    for candidate in (base / slug, *((base,) if base.name == slug else ())):
        nested = _single_subfolder_with(candidate, train_name)
        if nested is not None:
            return nested
    if explicit:
        raise CompetitionConfigError(
            f"No {train_name} in {base} or {base / slug} (or one sub-folder of them); pass the folder that holds "
            "the competition's files (train.csv, test.csv, sample_submission.csv)."
        )
    return None


def _single_subfolder_with(folder: Path, train_name: str) -> Path | None:
    if not folder.is_dir():
        return None
    found = sorted(
        p.parent for p in folder.glob(f"*/{train_name}") if p.is_file() and not p.parent.name.startswith((".", "__"))
    )
    return found[0] if len(found) == 1 else None


def _find_sample_submission(folder: Path, configured: str | None, files: CompetitionFiles) -> str:
    """``sample_submission.csv``, else the one CSV whose name mentions "submission" in any case
    (``gender_submission.csv``, ``sampleSubmission.csv``)."""
    if configured:
        if not (folder / configured).is_file():
            raise CompetitionConfigError(f"Sample submission {folder / configured} (from [files]) does not exist; fix [files].sample_submission.")
        return configured
    if (folder / "sample_submission.csv").is_file():
        return "sample_submission.csv"
    others = {files.train, files.test, "solution.csv"}
    found = sorted(
        p.name for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() == ".csv" and "submission" in p.name.lower() and p.name not in others
    )
    if len(found) == 1:
        return found[0]
    raise CompetitionConfigError(
        f"Cannot tell the sample submission in {folder}: expected sample_submission.csv or exactly one "
        f"*submission*.csv, found {found or 'none'}. Set [files] sample_submission in the competition config."
    )


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
    folder: Path, files: CompetitionFiles, known: Mapping[str, Any] | None = None, *, metric_hint: str | None = None
) -> dict[str, Any]:
    """Fill id, targets, task, classes, excluded columns and submission format from ``folder``.

    ``known`` holds values already fixed by the config file; they are used as given (and
    checked against the files) rather than inferred. ``metric_hint``: the metric if already
    known (config or Kaggle), which decides what the submission holds.
    """
    known = dict(known or {})
    train_path, test_path, sample_path = folder / files.train, folder / files.test, folder / files.sample_submission
    for path, what in ((train_path, "train"), (sample_path, "sample submission")):
        if not path.is_file():
            raise CompetitionConfigError(f"No {what} file at {path}; download the data or fix [files] in the config.")
    train_cols = read_header(train_path)
    test_cols = read_header(test_path) if test_path.is_file() else None
    sample = read_csv(sample_path, as_text=True)
    sample_cols = [str(c) for c in sample.columns]
    out: dict[str, Any] = {}

    id_col = known.get("id_column")
    if id_col is None:
        shared = [c for c in sample_cols if c in train_cols and (test_cols is None or c in test_cols)]
        if not shared:
            raise CompetitionConfigError(
                f"{sample_path.name} columns {sample_cols} share no column with {files.train}"
                f"{'/' + files.test if test_cols else ''}, so the id column is unknown; set `id_column` in the config."
            )
        id_col = shared[0]
        out["id_column"] = id_col
    for cols, name in ((train_cols, files.train), (sample_cols, sample_path.name)):
        if id_col not in cols:
            raise CompetitionConfigError(f"Id column {id_col!r} is not in {folder / name} (columns: {cols}); fix `id_column`.")

    targets = known.get("target_columns")
    class_columns: list[str] | None = None
    if targets is None:
        rest = [c for c in sample_cols if c != id_col]
        if rest and all(c in train_cols for c in rest):
            targets = rest
        else:
            # one column per class in the submission (e.g. otto's Class_1..Class_9): the target is
            # the train column that test lacks whose values are exactly those column names
            only_train = [c for c in train_cols if c != id_col and test_cols is not None and c not in test_cols]
            if rest and only_train:
                values = read_csv(train_path, usecols=only_train, as_text=True)
                matches = [c for c in only_train if set(values[c]) - {""} == set(rest)]
                if len(matches) == 1:
                    targets, class_columns = matches, rest
            if targets is None:
                raise CompetitionConfigError(
                    f"Cannot find the target: {sample_path.name} columns {rest} are not all in {files.train} "
                    f"(columns: {train_cols}). Set `target_columns` in competitions/<slug>.toml."
                )
        out["target_columns"] = targets
    missing = [c for c in targets if c not in train_cols]
    if missing:
        raise CompetitionConfigError(f"Target column(s) {missing} are not in {train_path} (columns: {train_cols}); fix `target_columns`.")

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
            raise CompetitionConfigError(f"{train_path}: {exc}") from None
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


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def metric_from_kaggle_name(name: str) -> str | None:
    """Our metric for Kaggle's ``evaluation_metric`` string, or None when we have no such metric
    (:func:`lora_tasks.metrics.metric_from_kaggle` warns once naming it): the caller then falls
    back to inference."""
    found = metric_from_kaggle(name)
    return get_metric(found).name if found is not None else None


def load_competition(
    name_or_slug: str,
    data_dir: str | os.PathLike | None = None,
    competitions_dir: str | os.PathLike | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    kaggle_metric: str | None = None,
) -> CompetitionConfig:
    """Resolve a competition: its config file (if any), refined onto what the data says.

    ``name_or_slug`` is a Kaggle slug, a config file stem or an alias (``house-prices``).
    ``data_dir`` is the competition's data folder or its parent; without it
    ``$KAGGLE_LORA_DATA_DIR`` is tried, and with no data a config file must set id, targets and
    task itself. ``overrides`` uses the config-file schema (e.g. ``{"metric": "f1"}``) and wins
    over both file and data. ``kaggle_metric``: the competition's ``evaluation_metric`` from
    Kaggle's listing, used when no config names a metric (an unknown name warns and falls back
    to the metric inferred from the task).
    """
    directory = Path(competitions_dir) if competitions_dir is not None else default_competitions_dir()
    path = find_config_file(name_or_slug, directory)
    from_file = read_config_file(path) if path is not None else {}
    extra = validate_config_dict(overrides, source="overrides") if overrides else {}
    given = _merge(from_file, extra)
    slug = given.get("slug", name_or_slug)
    from_kaggle = metric_from_kaggle_name(kaggle_metric) if kaggle_metric and "metric" not in given else None

    files = CompetitionFiles(**{k: v for k, v in given.get("files", {}).items() if k != "sample_submission"})
    folder = _resolve_data_dir(data_dir, slug, files.train)
    inferred: dict[str, Any] = {}
    if folder is not None:
        files = replace(files, sample_submission=_find_sample_submission(folder, given.get("files", {}).get("sample_submission"), files))
        inferred = infer_from_data(folder, files, known=given, metric_hint=given.get("metric") or from_kaggle)
    else:
        files = CompetitionFiles(**given.get("files", {}))
        needed = [k for k in ("id_column", "target_columns", "task") if k not in given]
        if needed:
            where = f"{path} does not set {', '.join(needed)}" if path else f"there is no config file for {name_or_slug!r} in {directory}"
            raise CompetitionConfigError(
                f"Cannot resolve competition {name_or_slug!r}: {where} and no data folder was given. Pass "
                f"data_dir (the folder with train.csv and the sample submission; ${DATA_ENV} also works) so "
                "they can be inferred, or set them in the config."
            )
    merged = _merge(inferred, given)
    task = merged["task"]

    sub = dict(merged.get("submission", {}))
    sub.setdefault("prediction", "values" if task in REGRESSION_TASKS else "labels")
    sub.setdefault("dtype", "float" if task in REGRESSION_TASKS or sub["prediction"] == "probabilities" else "int")
    sub.setdefault("columns", [merged["id_column"], *merged["target_columns"]])
    submission = SubmissionFormat(
        columns=tuple(sub["columns"]),
        dtype=sub["dtype"],
        prediction=sub["prediction"],
        threshold=sub.get("threshold", "auto"),
        target_transform=sub.get("target_transform", "none"),
        id_column=merged["id_column"],
        classes=tuple(sub.get("classes", ())),
    )
    metric_source: MetricSource
    if given.get("metric"):
        metric, metric_source = given["metric"], "config"
    elif from_kaggle is not None and task in get_metric(from_kaggle).tasks:
        metric, metric_source = from_kaggle, "kaggle metadata"
    else:
        if from_kaggle is not None:
            warnings.warn(
                f"Kaggle's evaluation metric {kaggle_metric!r} ({from_kaggle}) does not fit the inferred "
                f"{task} task; using the task's default metric. Set `task` or `metric` in the config.",
                UserWarning,
                stacklevel=2,
            )
        metric, metric_source = default_metric(task, submission.prediction), "inferred"
    if metric == "rmsle" and "target_transform" not in given.get("submission", {}):
        # RMSLE is RMSE on log1p values: train there, as a config would say for house prices
        submission = replace(submission, target_transform="log1p")
        inferred.setdefault("submission", {})["target_transform"] = "log1p"
    _check_consistency(path or name_or_slug, task, metric, submission)

    provenance = [k for k in ("id_column", "target_columns", "task") if k in inferred and k not in given]
    if "metric" not in given:
        provenance.append("metric")
    provenance += [f"submission.{k}" for k in inferred.get("submission", {}) if k not in given.get("submission", {}) and k != "classes"]
    text_columns = merged.get("text_columns")
    feature_columns = inferred.get("feature_columns")
    return CompetitionConfig(
        slug=slug,
        task_type=task,
        id_column=merged["id_column"],
        target_columns=tuple(merged["target_columns"]),
        metric=metric,
        submission=submission,
        title=merged.get("title", ""),
        aliases=tuple(merged.get("aliases", ())),
        text_columns=tuple(text_columns) if text_columns is not None else None,
        drop_columns=tuple(merged.get("drop_columns", ())),
        serialization=SerializationOptions(**merged.get("serialization", {})),
        schedule=merged.get("schedule", DEFAULT_SCHEDULE),
        files=files,
        classes=merged.get("classes"),
        training=dict(merged.get("training", {})),
        data_dir=folder,
        config_path=path,
        inferred=tuple(provenance),
        excluded=tuple(inferred.get("excluded", ())),
        metric_source=metric_source,
        kaggle_metric=kaggle_metric if metric_source == "kaggle metadata" else None,
        feature_columns=tuple(feature_columns) if feature_columns is not None else None,
        disable_features=tuple(merged.get("features", {}).get("disable", ())),
    )


def _check_consistency(source: Any, task: str, metric: str, submission: SubmissionFormat) -> None:
    spec = get_metric(metric)
    if task not in spec.tasks:
        raise CompetitionConfigError(
            f"{source}: metric {metric!r} does not apply to a {task} task (it fits {', '.join(spec.tasks)}); "
            "fix `metric` or `task`."
        )
    if submission.target_transform == "log1p" and task not in REGRESSION_TASKS:
        raise CompetitionConfigError(f"{source}: target_transform log1p needs a regression task, not {task}.")
    if task in REGRESSION_TASKS and submission.prediction != "values":
        raise CompetitionConfigError(f"{source}: a regression submission holds values, not {submission.prediction}.")


def config_field_names() -> list[str]:
    """Field names of :class:`CompetitionConfig` (for docs)."""
    return [f.name for f in fields(CompetitionConfig)]
