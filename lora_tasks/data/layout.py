"""Which files of a competition folder are train, test and the sample submission.

Why not just ``train.csv``: real competitions ship ``train.tsv`` (sentiment-analysis-on-movie-
reviews), ``train.csv.gz``, ``application_train.csv`` (home-credit-default-risk) or
``sampleSubmission.csv``. A table is a ``.csv`` or ``.tsv`` file, optionally gzipped; pandas reads
each of them given the separator (:func:`separator`). The rules, in order, for each role:

- train: ``train`` + a table suffix, else the one table whose name contains "train";
- test: ``test`` + a table suffix, else the one other table whose name contains "test";
- sample submission: ``sample_submission.csv``, else the one table whose name contains
  "submission", else the one whose name starts with "sample".

Two candidates are an error that lists them and names the ``[files]`` key that picks one:
guessing between ``train_essays.csv`` and ``train_prompts.csv`` would train on the wrong table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from .config_file import CompetitionConfigError

#: File endings read as tables (csv or tab-separated, plain or gzipped), longest first.
TABLE_SUFFIXES: tuple[str, ...] = (".csv.gz", ".tsv.gz", ".csv", ".tsv")
#: Files that sit in a data folder but are never a competition table.
_NOT_TABLES = frozenset({"solution.csv"})
Role = Literal["train", "test"]


def table_suffix(name: str) -> str | None:
    """The table ending of ``name`` (``.csv.gz``, ``.tsv``, ...), None for other files."""
    lower = name.lower()
    return next((s for s in TABLE_SUFFIXES if lower.endswith(s)), None)


def separator(path: str | Path) -> str:
    """``\\t`` for ``.tsv`` / ``.tsv.gz`` files, ``,`` otherwise."""
    suffix = table_suffix(Path(path).name)
    return "\t" if suffix is not None and suffix.startswith(".tsv") else ","


def _tables(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(
        p.name for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and table_suffix(p.name) and p.name not in _NOT_TABLES
    )


def find_table(folder: Path, role: Role, *, exclude: tuple[str, ...] = ()) -> str | None:
    """The ``role`` table's file name in ``folder``, None when there is none; two candidates
    are a :class:`CompetitionConfigError` naming them."""
    tables = [t for t in _tables(folder) if t not in exclude and not _is_sample_name(t)]
    exact = [t for t in tables if t.lower()[: -len(table_suffix(t) or "")] == role]
    if exact:
        return _prefer_plain(exact)
    found = [t for t in tables if role in t.lower()]
    if len(found) > 1:
        raise CompetitionConfigError(
            f"Cannot tell the {role} table in {folder}: {found} all look like it. Set `[files] {role} = "
            f'"{found[0]}"` in competitions/<slug>.toml (or rename the others).'
        )
    return found[0] if found else None


def _prefer_plain(names: list[str]) -> str:
    """``train.csv`` over ``train.csv.gz`` when both exist (the same table, one unpacked)."""
    return min(names, key=lambda n: (len(table_suffix(n) or ""), n))


def _is_sample_name(name: str) -> bool:
    lower = name.lower()
    return "submission" in lower or lower.startswith("sample")


def find_sample_submission(folder: Path, *, exclude: tuple[str, ...] = ()) -> str:
    """``sample_submission.csv``, else the one table whose name mentions "submission" in any
    case (``gender_submission.csv``, ``sampleSubmission.csv``, ``sample_submission.csv.gz``),
    else the one whose name starts with "sample" (``sampleEntry.csv``)."""
    if (folder / "sample_submission.csv").is_file():
        return "sample_submission.csv"
    tables = [t for t in _tables(folder) if t not in exclude]
    for rule in (lambda n: "submission" in n.lower(), lambda n: n.lower().startswith("sample")):
        found = [t for t in tables if rule(t)]
        if len(found) == 1:
            return found[0]
        if found:
            break
    raise CompetitionConfigError(
        f"Cannot tell the sample submission in {folder}: expected sample_submission.csv or exactly one "
        f"*submission* table, found {found or 'none'}. Set [files] sample_submission in the competition config."
    )
