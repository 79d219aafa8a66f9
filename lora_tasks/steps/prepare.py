"""Step 2: the competition's CSVs -> :class:`Prepared` (rows as text, labels, ids, format).

Labels: classification targets become class indices (``classes`` keeps the original values, in
sorted order, so a submission writes them back); multi-label targets become an (n, k) 0/1
matrix, one column per label; regression targets stay raw, (n,) or (n, k) for several targets
(the target transform is applied by training, chosen by the plan). Train-only columns (and a
config's ``drop_columns``) never reach the rows as text: the spec lists them with the reason.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lora_tasks.data.competition import ExcludedColumn, SubmissionFormat
from lora_tasks.data.config_file import fix_text
from lora_tasks.data.sample_checks import check_sample_submission
from lora_tasks.data.source import CompetitionSource
from lora_tasks.steps.spec import competition_spec
from lora_tasks.steps.store import (
    PIPELINE_VERSION,
    PipelineError,
    load_record,
    save_json,
)
from lora_tasks.task import Task


@dataclass(frozen=True)
class Prepared:
    """What every later step knows about the competition, saved as ``prepared-*.json``.

    ``classes``: the original class values (index = label), None for regression.
    ``train_rows``: positions in train.csv (the scikit-learn members read the same rows).
    ``template``: the row template's fingerprint (keys the token cache).
    ``y``: one label per row, or one list of k per row for several targets (multilabel,
    multi-target regression). ``test_ids``: test.csv's ids as written, in its order.
    ``excluded``: train.csv columns kept out of the features, with why; ``metric_source``: where
    the metric came from (config, kaggle metadata, inferred), ``kaggle_metric`` Kaggle's name.
    """

    slug: str
    task: Task
    head_type: str
    num_labels: int
    metric: str
    classes: list[Any] | None
    id_column: str
    target_columns: list[str]
    submission: SubmissionFormat
    sample_submission: str
    template: str
    n_train_rows_total: int
    train_rows: list[int]
    train_texts: list[str]
    y: list[Any]
    test_texts: list[str]
    test_ids: list[str] = field(default_factory=list)
    excluded: list[ExcludedColumn] = field(default_factory=list)
    metric_source: str = "inferred"
    kaggle_metric: str | None = None

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write ``out_dir/prepared-<sha16>.json`` (content-addressed)."""
        return save_json({"version": PIPELINE_VERSION, **asdict(self)}, out_dir, "prepared")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Prepared:
        data = load_record(path, "prepare")
        names = {f.name for f in fields(cls)}
        missing, extra = sorted(names - set(data)), sorted(set(data) - names)
        if missing or extra:
            raise PipelineError(f"{path} is not a prepared record of this version (missing {missing}, unknown "
                                f"{extra}); run the prepare step again.")
        data["submission"] = SubmissionFormat.from_dict(data["submission"])
        data["task"] = Task.parse(data["task"])
        data["excluded"] = [ExcludedColumn(**e) for e in data["excluded"]]
        return cls(**data)

    @property
    def value_columns(self) -> list[str]:
        """The submission's columns besides the id (one, or one per class, label or target)."""
        return list(self.submission.value_columns) or list(self.target_columns)

    @property
    def multi_output(self) -> bool:
        """Several target columns, predicted together as an (n, k) array."""
        return self.task.multi_output


def subset_rows(frame: pd.DataFrame, max_rows: int | None, seed: int) -> pd.DataFrame:
    """A seeded sample of ``max_rows`` rows in their original order (all rows when None)."""
    if max_rows is None or len(frame) <= max_rows:
        return frame
    return frame.sample(n=int(max_rows), random_state=seed).sort_index()


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _class_indices(targets: pd.DataFrame, classes: list[Any], task: Task) -> list[Any]:
    """Class values -> indices into ``classes``: one per row, or one per label column (multilabel)."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({v for c in targets.columns for v in targets[c].unique().tolist()} - set(index), key=str)
    if unknown:
        raise PipelineError(f"Target values {unknown[:5]} are not among the classes {classes[:10]}.")
    if task is Task.MULTILABEL:
        if len(classes) != 2:
            raise PipelineError(
                f"Multi-label targets {list(targets.columns)} take the values {classes[:10]}; each label column must "
                "hold two values (0/1). Set `task` and `target_columns` in competitions/<slug>.toml."
            )
        return [[int(index[v]) for v in row] for row in targets.itertuples(index=False, name=None)]
    return [int(index[v]) for v in targets.iloc[:, 0].tolist()]


def prepare_data(
    competition: str | CompetitionSource,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    max_train_rows: int | None = None,
    seed: int = 0,
) -> Path:
    """Read the competition's CSVs and write ``prepared-*.json`` (a :class:`Prepared`).

    ``max_train_rows`` keeps a seeded sample of the training rows (tests, quick looks).
    """
    config = competition_spec(competition, data_dir)
    check_sample_submission(config)  # a sample no submission can match stops the run here, before training
    task = Task.parse(config.task_type)
    targets = list(config.target_columns)
    if len(targets) > 1 and not task.multi_output:
        raise PipelineError(f"{config.slug} has targets {targets} but a {task} task. "
                            + fix_text(config.slug, 'task = "multilabel"') + " (or `task = \"multitarget_regression\"`; "
                            f"or pass `--target {targets[0]}` for one column).")
    full = config.read_train()
    train = subset_rows(full, max_train_rows, seed)
    train = train[train[targets].notna().all(axis=1)]
    test = config.read_test()
    template = config.row_template(train)
    classes: list[Any] | None = None
    if task.is_classification:
        classes = list(config.classes or sorted({v for c in targets for v in train[c].unique().tolist()}))
        y = _class_indices(train[targets], classes, task)
    else:
        values = train[targets].astype(float).to_numpy()
        y = values.tolist() if task.multi_output else values[:, 0].tolist()
    if task is Task.MULTICLASS:
        num_labels = len(classes or ())
    else:
        num_labels = len(targets) if task.multi_output else 1
    prepared = Prepared(
        slug=config.slug,
        task=task,
        head_type=task.head_type,
        num_labels=num_labels,
        metric=config.metric,
        classes=[_plain(c) for c in classes] if classes is not None else None,
        id_column=config.id_column,
        target_columns=targets,
        submission=config.submission,
        sample_submission=str(config.sample_submission_path),
        template=template.fingerprint(),
        n_train_rows_total=len(full) if max_train_rows else len(train),
        train_rows=[int(i) for i in train.index],
        train_texts=template.render_frame(train),
        y=y,
        test_texts=template.render_frame(test),
        test_ids=config.read_test_ids(),
        excluded=list(config.excluded),
        metric_source=config.metric_source,
        kaggle_metric=config.kaggle_metric,
    )
    return prepared.save(out_dir)
