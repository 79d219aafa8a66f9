"""Writing a shape's files: tables as the competition ships them (csv, tsv, gzipped, inside a
zip), through a unique temp name and a rename, so a reader never sees half a file."""

from __future__ import annotations

import csv
import gzip
import io
import os
import secrets
import zipfile
from pathlib import Path

import pandas as pd


def write_table(frame: pd.DataFrame, path: Path, *, zip_name: str | None = None) -> None:
    """Write ``frame`` as the file ``path`` names: tab-separated (no quoting) for ``.tsv``,
    gzipped for ``.gz``; inside the zip ``zip_name`` (beside ``path``) when given."""
    sep = "\t" if ".tsv" in path.name else ","
    text = frame.to_csv(index=False, sep=sep, float_format="%.10g", lineterminator="\n",
                        quoting=csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL)
    data = text.encode()
    if path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    if zip_name is not None:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
            bundle.writestr(zipfile.ZipInfo(path.name, date_time=(2020, 1, 1, 0, 0, 0)), data)
        data, path = buffer.getvalue(), path.with_name(zip_name)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(text: str, path: Path) -> None:
    """``text`` into ``path`` through a unique temp name and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
