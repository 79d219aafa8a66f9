"""What a table looks like, measured once: the input to auto-configuration and to the run report.

Why a profile: choosing a LoRA preset, a sequence length or a fold count from the data needs a
few numbers (rows, free-text columns, token lengths of the serialized rows, class balance); a
frozen :class:`DataProfile` makes those choices reproducible and explainable, and its markdown
table shows a user what the pipeline saw.

The task-type and free-text heuristics also live here because the zero-config competition
loader uses them too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Protocol, Sequence

import numpy as np
import pandas as pd

from .text import RowTemplate, SerializationOptions

if TYPE_CHECKING:  # pragma: no cover
    from .tokenizer import Tokenizer


class CompetitionRoles(Protocol):
    """What :func:`profile_competition` reads of a competition: a
    :class:`~lora_tasks.data.competition.CompetitionConfig` (named by its shape, not imported:
    the competition module builds on this one)."""

    slug: str
    id_column: str
    target_columns: tuple[str, ...]
    text_columns: tuple[str, ...] | None
    drop_columns: tuple[str, ...]
    task_type: str
    serialization: SerializationOptions
    excluded: tuple[ExcludedColumn, ...]

    @property
    def test_path(self) -> Path | None: ...

    def read_train(self) -> pd.DataFrame: ...

    def read_test(self) -> pd.DataFrame: ...

#: Integer-valued targets with at most this many distinct values are classes, not quantities.
MAX_CLASSES_FOR_INTEGER_TARGET = 20
#: AutoGluon's free-text test: more than 1% unique values and at least 3 words per unique value.
TEXT_MIN_UNIQUE_RATIO = 0.01
TEXT_MIN_MEAN_WORDS = 3.0
_TEXT_SAMPLE = 5000


# ---------------------------------------------------------------------------------- heuristics


def infer_task_type(target: pd.Series | pd.DataFrame) -> str:
    """binary / multiclass / regression for one target column; for several: multilabel (all
    binary, e.g. toxic-comment's six 0/1 columns) or multitarget_regression (all numeric and none
    binary, e.g. six essay scores).

    A numeric target is a class label when all its values are integers and there are at most
    :data:`MAX_CLASSES_FOR_INTEGER_TARGET` of them (two: binary); any non-numeric target is a label.
    """
    if isinstance(target, pd.DataFrame):
        if target.shape[1] == 1:
            return infer_task_type(target.iloc[:, 0])
        kinds = {c: infer_task_type(target[c]) for c in target.columns}
        if all(k == "binary" for k in kinds.values()):
            return "multilabel"
        numeric = all(pd.api.types.is_numeric_dtype(target[c]) and not pd.api.types.is_bool_dtype(target[c]) for c in target.columns)
        if numeric and "binary" not in kinds.values():
            return "multitarget_regression"
        raise ValueError(
            f"Targets {kinds} mix task types; only several binary targets (multilabel) or several "
            "numeric, non-binary targets (multi-target regression) are supported. Set `task` and "
            "`target_columns` in the competition config."
        )
    values = target.dropna()
    if values.empty:
        raise ValueError(f"Target column {target.name!r} has no values in train.csv; check the target column name.")
    n_unique = values.nunique()
    if pd.api.types.is_bool_dtype(values):
        return "binary"
    if pd.api.types.is_numeric_dtype(values):
        as_float = values.astype(float)
        integral = bool(np.all(np.isfinite(as_float)) and np.all(as_float == np.round(as_float)))
        if integral and n_unique <= 2:
            return "binary"
        if integral and n_unique <= MAX_CLASSES_FOR_INTEGER_TARGET:
            return "multiclass"
        return "regression"
    return "binary" if n_unique <= 2 else "multiclass"


def _mean_words(values: pd.Series) -> float:
    uniques = pd.Series(values.dropna().astype(str).unique())
    if uniques.empty:
        return 0.0
    return float(uniques.str.split().str.len().mean())


def is_free_text(values: pd.Series) -> bool:
    """AutoGluon's heuristic for a free-text column: a string column whose values are varied
    (unique ratio above 1%) and long (3+ words per distinct value on average)."""
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return False
    values = values.dropna()
    if values.empty:
        return False
    if len(values) > _TEXT_SAMPLE:
        values = values.sample(n=_TEXT_SAMPLE, random_state=0)
    if values.nunique() / len(values) <= TEXT_MIN_UNIQUE_RATIO:
        return False
    return _mean_words(values) >= TEXT_MIN_MEAN_WORDS


def detect_text_columns(frame: pd.DataFrame, exclude: Iterable[str] = ()) -> list[str]:
    """Columns of ``frame`` that hold free text, in file order."""
    skip = set(exclude)
    return [c for c in frame.columns if c not in skip and is_free_text(frame[c])]


# ---------------------------------------------------------------------------------- profile

#: Why a train.csv column that test.csv lacks is never a feature.
TRAIN_ONLY_REASON = "only in train.csv: not available at prediction time"


@dataclass(frozen=True)
class ExcludedColumn:
    """A column of train.csv kept out of the features, and why (shown in the profile and plan)."""

    name: str
    reason: str



@dataclass(frozen=True)
class ColumnProfile:
    """One column: its role in the task and what kind of values it holds."""

    name: str
    dtype: str
    role: str  # id | target | feature | dropped | excluded
    kind: str  # numeric | categorical | text | boolean | constant | empty
    missing_rate: float
    n_unique: int
    unique_ratio: float
    mean_words: float


@dataclass(frozen=True)
class LengthStats:
    """Distribution of token counts (with special tokens, untruncated) of serialized rows."""

    count: int
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: int

    @classmethod
    def from_lengths(cls, lengths: Sequence[int] | np.ndarray) -> "LengthStats":
        arr = np.asarray(lengths, dtype=np.int64)
        if arr.size == 0:
            raise ValueError("No token lengths to summarize; the table has no rows.")
        p50, p90, p95, p99 = np.percentile(arr, [50, 90, 95, 99])
        return cls(int(arr.size), float(arr.mean()), float(p50), float(p90), float(p95), float(p99), int(arr.max()))


@dataclass(frozen=True)
class TargetProfile:
    """Class balance (classification) or the value distribution (regression)."""

    columns: tuple[str, ...]
    task_type: str
    class_counts: dict[str, int] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def minority_share(self) -> float | None:
        """Share of the rarest class (None for regression): the imbalance signal."""
        if not self.class_counts:
            return None
        counts = np.array(list(self.class_counts.values()), dtype=float)
        return float(counts.min() / counts.sum())


@dataclass(frozen=True)
class DataProfile:
    """Everything auto-configuration needs to know about a competition's training table."""

    name: str
    n_rows: int
    n_columns: int
    columns: tuple[ColumnProfile, ...]
    text_columns: tuple[str, ...]
    task_type: str | None
    target: TargetProfile | None
    token_lengths: LengthStats | None = None
    tokenizer: str = ""
    n_test_rows: int | None = None
    excluded: tuple[ExcludedColumn, ...] = ()

    def column(self, name: str) -> ColumnProfile:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"No column {name!r} in the profile of {self.name}; columns: {[c.name for c in self.columns]}")

    @property
    def n_features(self) -> int:
        return sum(c.role == "feature" for c in self.columns)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_markdown(self) -> str:
        """A summary table, then one row per column (for run reports and the README)."""
        lines = [f"### Data profile: {self.name}", "", "| property | value |", "|---|---|"]
        lines.append(f"| rows (train) | {self.n_rows} |")
        if self.n_test_rows is not None:
            lines.append(f"| rows (test) | {self.n_test_rows} |")
        lines.append(f"| columns | {self.n_columns} ({self.n_features} features) |")
        lines.append(f"| task type | {self.task_type or 'unknown'} |")
        lines.append(f"| free-text columns | {', '.join(self.text_columns) or 'none'} |")
        for e in self.excluded:
            lines.append(f"| excluded: {e.name} | {e.reason} |")
        if self.target is not None:
            if self.target.class_counts:
                balance = ", ".join(f"{k}: {v}" for k, v in self.target.class_counts.items())
                lines.append(f"| class balance ({', '.join(self.target.columns)}) | {balance} |")
            else:
                s = self.target.stats
                lines.append(
                    f"| target ({', '.join(self.target.columns)}) | min {s['min']:.4g}, median {s['median']:.4g}, "
                    f"mean {s['mean']:.4g}, max {s['max']:.4g}, skew {s['skew']:.3g} |"
                )
        if self.token_lengths is not None:
            t = self.token_lengths
            lines.append(
                f"| tokens per row ({t.count} rows) | mean {t.mean:.1f}, p50 {t.p50:.0f}, p95 {t.p95:.0f}, "
                f"p99 {t.p99:.0f}, max {t.max} |"
            )
        lines += ["", "| column | dtype | role | kind | missing | unique | unique ratio | words |", "|---|---|---|---|---|---|---|---|"]
        for c in self.columns:
            lines.append(
                f"| {c.name} | {c.dtype} | {c.role} | {c.kind} | {c.missing_rate:.1%} | {c.n_unique} | "
                f"{c.unique_ratio:.3f} | {c.mean_words:.1f} |"
            )
        return "\n".join(lines)


def _column_kind(values: pd.Series, is_text: bool) -> str:
    present = values.dropna()
    if present.empty:
        return "empty"
    if present.nunique() == 1:
        return "constant"
    if pd.api.types.is_bool_dtype(values):
        return "boolean"
    if is_text:
        return "text"
    if pd.api.types.is_numeric_dtype(values):
        return "numeric"
    return "categorical"


def _target_profile(frame: pd.DataFrame, columns: Sequence[str], task_type: str) -> TargetProfile:
    if task_type in ("binary", "multiclass"):
        counts = frame[columns[0]].value_counts(dropna=True).sort_index()
        return TargetProfile(tuple(columns), task_type, class_counts={str(k): int(v) for k, v in counts.items()})
    if task_type == "multilabel":
        positives = {c: int((frame[c] == frame[c].max()).sum()) for c in columns}
        return TargetProfile(tuple(columns), task_type, class_counts=positives)
    values = frame[list(columns)].to_numpy(dtype=float).ravel()
    values = values[np.isfinite(values)]
    series = pd.Series(values)
    stats = {
        "min": float(values.min()),
        "max": float(values.max()),
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "std": float(values.std()),
        "skew": float(series.skew()),
    }
    return TargetProfile(tuple(columns), task_type, stats=stats)


def profile_frame(
    frame: pd.DataFrame,
    *,
    name: str = "table",
    id_column: str | None = None,
    target_columns: Sequence[str] = (),
    text_columns: Sequence[str] | None = None,
    drop_columns: Sequence[str] = (),
    task_type: str | None = None,
    tokenizer: "Tokenizer | None" = None,
    serialization: SerializationOptions | None = None,
    token_sample: int | None = 2000,
    seed: int = 0,
    n_test_rows: int | None = None,
    excluded: Sequence[ExcludedColumn] = (),
) -> DataProfile:
    """Profile a training table.

    ``text_columns=None`` detects free text with :func:`is_free_text`. With a ``tokenizer`` the
    rows are serialized as the model will see them (:mod:`lora_tasks.data.text`) and their token
    lengths measured on a seeded sample of ``token_sample`` rows (``None``: all rows), which
    keeps profiling fast on big tables while p95/p99 stay representative. ``excluded``: columns
    kept out of the features with their reason (train-only columns); they are neither features
    nor serialized.
    """
    targets = [c for c in target_columns]
    excluded_names = [e.name for e in excluded]
    missing = [c for c in [id_column, *targets, *drop_columns, *excluded_names] if c is not None and c not in frame.columns]
    if missing:
        raise KeyError(f"Columns {missing} are not in the table {name} (columns: {list(frame.columns)}).")
    excluded_set = {c for c in [id_column, *targets, *drop_columns, *excluded_names] if c is not None}
    if text_columns is None:
        text_columns = detect_text_columns(frame, exclude=excluded_set)
    text_set = set(text_columns)

    n = len(frame)
    cols: list[ColumnProfile] = []
    for c in frame.columns:
        values = frame[c]
        n_unique = int(values.nunique(dropna=True))
        is_obj = not pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
        role = (
            "id" if c == id_column else "target" if c in targets else "dropped" if c in drop_columns
            else "excluded" if c in excluded_names else "feature"
        )
        cols.append(
            ColumnProfile(
                name=str(c),
                dtype=str(values.dtype),
                role=role,
                kind=_column_kind(values, c in text_set),
                missing_rate=float(values.isna().mean()) if n else 0.0,
                n_unique=n_unique,
                unique_ratio=n_unique / n if n else 0.0,
                mean_words=_mean_words(values) if is_obj else 0.0,
            )
        )

    target = None
    if targets:
        task_type = task_type or infer_task_type(frame[targets] if len(targets) > 1 else frame[targets[0]])
        target = _target_profile(frame, targets, task_type)

    lengths = None
    if tokenizer is not None and n:
        sample = frame
        if token_sample is not None and n > token_sample:
            sample = frame.sample(n=token_sample, random_state=seed)
        template = RowTemplate.for_frame(frame, text_columns=list(text_columns), exclude=excluded_set, options=serialization)
        lengths = LengthStats.from_lengths(tokenizer.lengths(template.render_frame(sample)))

    return DataProfile(
        name=name,
        n_rows=n,
        n_columns=frame.shape[1],
        columns=tuple(cols),
        text_columns=tuple(text_columns),
        task_type=task_type,
        target=target,
        token_lengths=lengths,
        tokenizer=getattr(tokenizer, "source", "") if tokenizer is not None else "",
        n_test_rows=n_test_rows,
        excluded=tuple(excluded),
    )


def profile_competition(
    config: CompetitionRoles,
    *,
    tokenizer: "Tokenizer | None" = None,
    token_sample: int | None = 2000,
    seed: int = 0,
    train: pd.DataFrame | None = None,
) -> DataProfile:
    """Profile a competition's train.csv with the roles and serialization of its config."""
    frame = train if train is not None else config.read_train()
    n_test = None
    if config.test_path is not None and config.test_path.is_file():
        n_test = len(config.read_test())
    return profile_frame(
        frame,
        name=config.slug,
        # a row-number id (digit-recognizer's ImageId) is in neither train.csv nor test.csv
        id_column=config.id_column if config.id_column in frame.columns else None,
        target_columns=config.target_columns,
        text_columns=config.text_columns,
        drop_columns=config.drop_columns,
        task_type=config.task_type,
        tokenizer=tokenizer,
        serialization=config.serialization,
        token_sample=token_sample,
        seed=seed,
        n_test_rows=n_test,
        excluded=config.excluded,
    )
