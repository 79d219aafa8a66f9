"""Step 2: the competition's CSVs -> :class:`Prepared` (rows as text, labels, ids, format).

Labels: classification targets become class indices (``classes`` keeps the original values, in
sorted order, so a submission writes them back); regression targets stay raw (the target
transform is applied by training, chosen by the plan).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lora_tasks.data.competition import SubmissionFormat, load_competition
from lora_tasks.factory import head_type_for
from lora_tasks.steps.store import (
    PIPELINE_VERSION,
    PipelineError,
    load_record,
    save_json,
)


@dataclass(frozen=True)
class Prepared:
    """What every later step knows about the competition, saved as ``prepared-*.json``.

    ``classes``: the original class values (index = label), None for regression.
    ``train_rows``: positions in train.csv (the scikit-learn members read the same rows).
    ``template``: the row template's fingerprint (keys the token cache).
    """

    slug: str
    task_type: str
    head_type: str
    num_labels: int
    metric: str
    classes: list[Any] | None
    id_column: str
    target_column: str
    submission: SubmissionFormat
    sample_submission: str
    template: str
    n_train_rows_total: int
    train_rows: list[int]
    train_texts: list[str]
    y: list[Any]
    test_texts: list[str]
    test_ids: list[Any] = field(default_factory=list)

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
        fmt = data["submission"]
        data["submission"] = SubmissionFormat(**{**fmt, "columns": tuple(fmt["columns"])})
        return cls(**data)

    @property
    def value_columns(self) -> list[str]:
        """The submission's columns besides the id (one, or one per class)."""
        columns = list(self.submission.columns) or [self.id_column, self.target_column]
        return [c for c in columns if c != self.id_column]


def subset_rows(frame: pd.DataFrame, max_rows: int | None, seed: int) -> pd.DataFrame:
    """A seeded sample of ``max_rows`` rows in their original order (all rows when None)."""
    if max_rows is None or len(frame) <= max_rows:
        return frame
    return frame.sample(n=int(max_rows), random_state=seed).sort_index()


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def prepare_data(
    competition: str,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    max_train_rows: int | None = None,
    seed: int = 0,
) -> Path:
    """Read the competition's CSVs and write ``prepared-*.json`` (a :class:`Prepared`).

    ``max_train_rows`` keeps a seeded sample of the training rows (tests, quick looks).
    """
    config = load_competition(competition, data_dir=data_dir)
    if config.task_type == "multilabel" or len(config.target_columns) != 1:
        raise PipelineError(
            f"{config.slug} has targets {list(config.target_columns)} ({config.task_type}); the pipeline "
            "handles one target (binary, multiclass or regression). Set `target_columns` to one column."
        )
    target = config.target_column
    train = subset_rows(config.read_train(), max_train_rows, seed)
    train = train[train[target].notna()]
    test = config.read_test()
    template = config.row_template(train)
    y_raw = train[target]
    if config.task_type in ("binary", "multiclass"):
        classes = list(config.classes or sorted(y_raw.unique().tolist()))
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted(set(y_raw.unique().tolist()) - set(index), key=str)
        if unknown:
            raise PipelineError(f"Target values {unknown[:5]} are not among the classes {classes[:10]}.")
        y: list[Any] = [int(index[v]) for v in y_raw.tolist()]
    else:
        classes = None
        y = [float(v) for v in y_raw.astype(float).tolist()]
    prepared = Prepared(
        slug=config.slug,
        task_type=config.task_type,
        head_type=head_type_for(config.task_type),
        num_labels=len(classes) if config.task_type == "multiclass" else 1,
        metric=config.metric,
        classes=[_plain(c) for c in classes] if classes is not None else None,
        id_column=config.id_column,
        target_column=target,
        submission=config.submission,
        sample_submission=str(config.sample_submission_path),
        template=template.fingerprint(),
        n_train_rows_total=int(len(config.read_train())) if max_train_rows else int(len(train)),
        train_rows=[int(i) for i in train.index],
        train_texts=template.render_frame(train),
        y=y,
        test_texts=template.render_frame(test),
        test_ids=[_plain(v) for v in test[config.id_column].tolist()],
    )
    return prepared.save(out_dir)
