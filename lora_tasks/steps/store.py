"""The content-addressed file store every step writes to: ``<kind>-<sha16>.<ext>``.

Why files named by the hash of their bytes: large things (texts, tokens, adapters, predictions)
travel between steps, processes and machines as paths; such a name can never point at stale
content, and two runs that produce the same bytes share one file. Every file is written to a
unique temp name first and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from lora_tasks.diskspace import writing
from lora_tasks.hashing import sha256_file

PIPELINE_VERSION = 2  # bump when a step's output format changes (2: Prepared with Task, target_columns, excluded)


class PipelineError(RuntimeError):
    """A step cannot run with what it was given; the message names the fix."""


def temp_path(out_dir: Path, suffix: str) -> Path:
    """A fresh temp name in ``out_dir`` (pid + random suffix: parallel writers never collide)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir / f".tmp-{os.getpid()}-{secrets.token_hex(6)}{suffix}"


def store_file(tmp: Path, out_dir: Path, kind: str, suffix: str) -> Path:
    """Rename a finished temp file to ``out_dir/<kind>-<sha16><suffix>`` (atomic)."""
    final = Path(out_dir) / f"{kind}-{sha256_file(tmp)[:16]}{suffix}"
    os.replace(tmp, final)
    return final


def json_default(obj: Any) -> Any:
    """JSON for the NumPy scalars, paths and tuples that step records hold."""
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def _final_name(out_dir: str | os.PathLike, kind: str, suffix: str) -> Path:
    """How a file being written is named in an error (its content hash is not known yet)."""
    return Path(out_dir) / f"{kind}-<content hash>{suffix}"


def save_json(payload: Mapping[str, Any], out_dir: str | os.PathLike, kind: str) -> Path:
    """Write canonical JSON (sorted keys, so equal content gives an equal hash) by content hash."""
    tmp = temp_path(Path(out_dir), ".json")
    try:
        with writing(_final_name(out_dir, kind, ".json"), partial=tmp):
            tmp.write_text(json.dumps(payload, sort_keys=True, indent=1, default=json_default))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return store_file(tmp, Path(out_dir), kind, ".json")


def save_array(array: np.ndarray, out_dir: str | os.PathLike, kind: str) -> Path:
    """Write a ``.npy`` named by the hash of its bytes."""
    tmp = temp_path(Path(out_dir), ".npy")
    try:
        with writing(_final_name(out_dir, kind, ".npy"), int(array.nbytes), partial=tmp), open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return store_file(tmp, Path(out_dir), kind, ".npy")


def save_csv(frame: Any, out_dir: str | os.PathLike, kind: str) -> Path:
    """Write a pandas frame as ``.csv`` (``\\n`` line ends, 8 significant digits) by content hash."""
    tmp = temp_path(Path(out_dir), ".csv")
    try:
        with writing(_final_name(out_dir, kind, ".csv"), partial=tmp):
            frame.to_csv(tmp, index=False, lineterminator="\n", float_format="%.8g")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return store_file(tmp, Path(out_dir), kind, ".csv")


def load_json(path: str | os.PathLike) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def load_record(path: str | os.PathLike, kind: str) -> dict[str, Any]:
    """A step record's JSON, checked for its format version (an old file names the fix)."""
    data = load_json(path)
    version = data.pop("version", None)
    if version != PIPELINE_VERSION:
        raise PipelineError(f"{path} is a {kind} record of format {version}, this library reads "
                            f"{PIPELINE_VERSION}; run the {kind} step again (delete the file or rerun).")
    return data
