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

from .columns import RowNumberIds, TargetMatch
from .config_file import (
    ALLOWED_KEYS,
    COMPETITIONS_ENV,
    DEFAULT_SCHEDULE,
    MULTITARGET_REGRESSION,
    REGRESSION_TASKS,
    TASKS,
    TRAINING_SETTINGS,
    CompetitionConfigError,
    config_search_dirs,
    default_competitions_dir,
    find_config_file,
    list_competitions,
    locate_config,
    read_config_file,
    validate_config_dict,
)
from .csv_io import count_rows, read_csv
from .inference import DATA_ENV, CompetitionFiles, find_files, infer_from_data, resolve_data_dir
from .profile import (
    ExcludedColumn,
    detect_text_columns,
)
from .source import CompetitionSource
from .submission_format import (
    SubmissionFormat,
)
from .text import RowTemplate, SerializationOptions

#: Names other modules import from here (the config-file ones live in :mod:`.config_file`).
__all__ = [
    "ALLOWED_KEYS", "COMPETITIONS_ENV", "DATA_ENV", "DEFAULT_SCHEDULE", "MULTITARGET_REGRESSION", "REGRESSION_TASKS",
    "TASKS", "TRAINING_SETTINGS", "CompetitionConfig", "CompetitionConfigError", "CompetitionFiles", "ExcludedColumn",
    "RowNumberIds", "SubmissionFormat", "TargetMatch", "config_field_names", "default_competitions_dir", "find_config_file", "infer_from_data",
    "list_competitions", "load_competition", "metric_from_kaggle_name", "read_config_file", "validate_config_dict",
]
MetricSource = Literal["config", "kaggle metadata", "inferred"]

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
    config_origin: str | None = None
    set_by_options: tuple[str, ...] = ()
    inferred: tuple[str, ...] = field(default=())
    excluded: tuple[ExcludedColumn, ...] = ()
    metric_source: MetricSource = "inferred"
    kaggle_metric: str | None = None
    feature_columns: tuple[str, ...] | None = None
    target_matches: tuple[TargetMatch, ...] = ()
    row_number_ids: RowNumberIds | None = None
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
        if self.row_number_ids is not None:
            return self.row_number_ids.ids(count_rows(path))
        return read_csv(path, usecols=[self.id_column], as_text=True)[self.id_column].tolist()

    @property
    def excluded_columns(self) -> tuple[str, ...]:
        """Columns never shown to the model: id, targets, ``drop_columns`` and train-only columns."""
        return (self.id_column, *self.target_columns, *self.drop_columns, *(e.name for e in self.excluded))

    def describe(self) -> str:
        """What was inferred and from where, as markdown (``--plan`` shows it)."""
        flags = {"id_column": "--id", "target_columns": "--target"}

        def origin(key: str) -> str:
            if key in self.set_by_options:
                return f"run option ({flags.get(key, key)})"
            return "inferred from the data" if key in self.inferred else "config"

        config_row = (f"| config file | `{self.config_path}` | {self.config_origin} |" if self.config_path is not None
                      else "| config file | none | everything inferred from the data |")

        metric_from = self.metric_source + (f": {self.kaggle_metric!r}" if self.metric_source == "kaggle metadata" else "")
        lines = [
            f"### Competition: {self.slug}",
            "",
            "| what | value | from |",
            "|---|---|---|",
            config_row,
            f"| id column | `{self.id_column}` | {origin('id_column')} |",
            *([f"| id values | {self.row_number_ids.describe()} | inferred from the data |"] if self.row_number_ids else []),
            f"| target(s) | {', '.join(f'`{c}`' for c in self.target_columns)} | {origin('target_columns')} |",
            *(f"| sample column `{m.sample_column}` | predicts train's `{m.target}` | inferred: {m.rule} |"
              for m in self.target_matches if m.rule != "same name"),
            f"| task | {self.task_type} | {origin('task')} |",
            f"| metric | {self.metric} | {metric_from} |",
            f"| submission holds | {self.submission.prediction} | {origin('submission.prediction')} |",
            f"| sample submission | {self.files.sample_submission} | {'found in the data' if self.data_dir else 'config'} |",
        ]
        if (self.files.train, self.files.test) != (CompetitionFiles.train, CompetitionFiles.test):
            lines.append(f"| train / test | {self.files.train}, {self.files.test} | "
                         f"{'found in the data' if self.data_dir else 'config'} |")
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
    source: CompetitionSource | None = None,
) -> CompetitionConfig:
    """Resolve a competition: its config file (if any), refined onto what the data says.

    ``name_or_slug`` is a Kaggle slug, a config file stem or an alias (``house-prices``).
    ``data_dir`` is the competition's data folder or its parent; without it
    ``$KAGGLE_LORA_DATA_DIR`` is tried, and with no data a config file must set id, targets and
    task itself. ``overrides`` uses the config-file schema (e.g. ``{"metric": "f1"}``) and wins
    over both file and data. ``kaggle_metric``: the competition's ``evaluation_metric`` from
    Kaggle's listing, used when no config names a metric (an unknown name warns and falls back
    to the metric inferred from the task). ``source``: the config file and the columns a run
    chose (:class:`~lora_tasks.data.source.CompetitionSource`), used instead of a search by
    name; its ``--target`` / ``--id`` win over the file like ``overrides``. Without it the file
    is searched in ``competitions_dir`` only, or when that is None in ``./competitions/``,
    ``$KAGGLE_LORA_COMPETITIONS_DIR`` and the shipped recipes, in that order.
    """
    if source is not None:
        path, origin = source.config, source.origin
    else:
        found = locate_config(name_or_slug, Path(competitions_dir) if competitions_dir is not None else None)
        path, origin = (found.path, found.origin) if found is not None else (None, None)
    searched = ([str(competitions_dir)] if competitions_dir is not None
                else [str(folder) for folder, _ in config_search_dirs()])
    from_file = read_config_file(path) if path is not None else {}
    from_options = validate_config_dict(source.option_settings(), source="run options") if source is not None else {}
    extra = validate_config_dict(overrides, source="overrides") if overrides else {}
    given = _merge(_merge(from_file, from_options), extra)
    slug = given.get("slug", name_or_slug)
    from_kaggle = metric_from_kaggle_name(kaggle_metric) if kaggle_metric and "metric" not in given else None

    configured_files = dict(given.get("files", {}))
    folder = resolve_data_dir(data_dir, slug, configured_files.get("train"))
    inferred: dict[str, Any] = {}
    if folder is not None:
        files = find_files(folder, configured_files)
        inferred = infer_from_data(folder, files, known=given, metric_hint=given.get("metric") or from_kaggle, slug=slug)
    else:
        files = CompetitionFiles(**given.get("files", {}))
        needed = [k for k in ("id_column", "target_columns", "task") if k not in given]
        if needed:
            where = f"{path} does not set {', '.join(needed)}" if path else f"there is no config file for {name_or_slug!r} in {', '.join(searched)}"
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
        config_origin=origin,
        set_by_options=tuple(from_options),
        inferred=tuple(provenance),
        excluded=tuple(inferred.get("excluded", ())),
        metric_source=metric_source,
        kaggle_metric=kaggle_metric if metric_source == "kaggle metadata" else None,
        feature_columns=tuple(feature_columns) if feature_columns is not None else None,
        target_matches=tuple(inferred.get("target_matches", ())),
        row_number_ids=inferred.get("row_number_ids"),
        disable_features=tuple(merged.get("features", {}).get("disable", ())),
    )


def _check_consistency(source: Any, task: str, metric: str, submission: SubmissionFormat) -> None:
    spec = get_metric(metric)
    if task not in spec.tasks:
        raise CompetitionConfigError(
            f"{source}: metric {metric!r} does not apply to a {task} task (it fits {', '.join(spec.tasks)}). "
            f'Fix: write `metric = "{default_metric(task, submission.prediction)}"`, or `task = "{spec.tasks[0]}"` '
            "if the task is wrong, in the config file."
        )
    if submission.target_transform == "log1p" and task not in REGRESSION_TASKS:
        raise CompetitionConfigError(f"{source}: target_transform log1p needs a regression task, not {task}. Fix: "
                                     'write `target_transform = "none"` under [submission], or `task = "regression"`.')
    if task in REGRESSION_TASKS and submission.prediction != "values":
        raise CompetitionConfigError(f"{source}: a regression submission holds values, not {submission.prediction}. "
                                     'Fix: write `prediction = "values"` under [submission] in the config file.')


def config_field_names() -> list[str]:
    """Field names of :class:`CompetitionConfig` (for docs)."""
    return [f.name for f in fields(CompetitionConfig)]
