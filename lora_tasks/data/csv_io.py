"""One CSV reader for the data layer: errors name the file, odd encodings still load.

Why one function: a raw pandas ``EmptyDataError`` or ``UnicodeDecodeError`` does not say which
of a competition's three files is at fault, and Kaggle data is not always UTF-8 (older
competitions ship latin-1). Every read in ``lora_tasks.data`` goes through :func:`read_csv`, so
each failure is reported the same way, with the path and the fix.

``as_text=True`` reads every cell as the string written in the file (no NaN for empty cells
either: they stay ""). The submission format needs that: ``True`` must not become ``1``,
``0013_01`` must keep its zeros, and ``1`` must not become ``1.0``.

Tab-separated files (``train.tsv``, ``.tsv.gz``) are read with a tab and no quoting (a TSV
cell may hold a lone ``"``, as movie-review phrases do); gzipped files are unpacked by pandas
as they are read (:mod:`.layout` says which files are tables).
"""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from .layout import separator

FALLBACK_ENCODING = "latin-1"


class CsvReadError(ValueError):
    """A CSV file cannot be read; the message names the file and what to do."""


class CsvEncodingWarning(UserWarning):
    """A CSV file was not UTF-8 and was read as latin-1."""


def read_csv(
    path: str | os.PathLike[str],
    *,
    nrows: int | None = None,
    usecols: Sequence[str] | None = None,
    dtype: Any = None,
    as_text: bool = False,
) -> pd.DataFrame:
    """Read ``path`` with pandas; an empty file or one with no header is a :class:`CsvReadError`
    naming it, and a file that is not UTF-8 is read again as latin-1 with a
    :class:`CsvEncodingWarning` naming it (latin-1 maps every byte, so the retry always
    decodes; a wrong guess shows as odd accents in text, never as lost rows)."""
    path = Path(path)
    kwargs: dict[str, Any] = {"nrows": nrows, "usecols": list(usecols) if usecols is not None else None}
    if separator(path) == "\t":
        kwargs.update(sep="\t", quoting=csv.QUOTE_NONE)
    if as_text:
        kwargs.update(dtype=str, keep_default_na=False)
    elif dtype is not None:
        kwargs["dtype"] = dtype
    try:
        return _read(path, kwargs, encoding="utf-8")
    except UnicodeDecodeError as exc:
        warnings.warn(
            f"{path} is not UTF-8 ({exc.reason} at byte {exc.start}); read it as {FALLBACK_ENCODING}. "
            "Re-save the file as UTF-8 if text looks wrong.",
            CsvEncodingWarning,
            stacklevel=2,
        )
        return _read(path, kwargs, encoding=FALLBACK_ENCODING)


def read_header(path: str | os.PathLike[str]) -> list[str]:
    """The column names of ``path`` (reads no rows)."""
    return [str(c) for c in read_csv(path, nrows=0).columns]


def count_rows(path: str | os.PathLike[str]) -> int:
    """The number of data rows of ``path`` (reads only its first column)."""
    first = read_header(path)[:1]
    return len(read_csv(path, usecols=first, as_text=True)) if first else 0


def _read(path: Path, kwargs: dict[str, Any], encoding: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path, encoding=encoding, **kwargs)
    except pd.errors.EmptyDataError:
        raise CsvReadError(
            f"{path} is empty (no header row); download the competition's files again "
            "(or delete the folder so the next run does)."
        ) from None
    except FileNotFoundError:
        raise CsvReadError(f"{path} does not exist; download the competition's files or fix [files].") from None
    except pd.errors.ParserError as exc:
        raise CsvReadError(f"{path} is not a well-formed CSV ({exc}); download it again or fix the file.") from None
    except ValueError as exc:
        if "Usecols" in str(exc) or "usecols" in str(exc):
            raise CsvReadError(f"{path}: {exc}") from None
        raise
