"""Output manifests: the size and sha256 of every file a cached task result points at.

Why: a cached record only stores the result object (paths inside it), so a file deleted, truncated
or edited after the run was served as if intact, and the failure showed up a step later (delete
``train.csv`` from a cached download and prepare failed). A manifest is written when a task
completes (:func:`record_outputs`, an ``on_completion`` hook) and checked before a cached result is
reused (:func:`manifest_problem`); any difference means the task runs again, with a log line saying
which file and how it differs.

Manifests live beside the result records, in ``<results>/manifests/<id>.json``, named by the hash
of the result's sorted paths: the same outputs always have the same manifest, whichever task run
or cache key produced them. Folders list every non-hidden file below them (hidden ones, such as
the download's date record, are bookkeeping, not content).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from lora_tasks.hashing import sha256_file_memo, sha256_value

MANIFEST_FOLDER = "manifests"


def output_paths(result: Any) -> list[Path]:
    """Every ``Path`` inside a task result (dataclasses, lists, tuples and dicts are walked)."""
    if isinstance(result, Path):
        return [result]
    if is_dataclass(result) and not isinstance(result, type):
        return [p for f in fields(result) for p in output_paths(getattr(result, f.name))]
    if isinstance(result, dict):
        return [p for v in result.values() for p in output_paths(v)]
    if isinstance(result, (list, tuple)):
        return [p for v in result for p in output_paths(v)]
    return []


def _files(path: Path) -> list[Path]:
    """The files that make up ``path``: itself, or a folder's non-hidden files (sorted)."""
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*")
                      if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    return []


def build_manifest(result: Any) -> dict[str, list[int | str]]:
    """``{file: [size, sha256]}`` of every file the result points at (folders: each file inside)."""
    out: dict[str, list[int | str]] = {}
    for path in output_paths(result):
        for item in _files(path):
            out[str(item)] = [item.stat().st_size, sha256_file_memo(item)]
    return out


def manifest_path(results: Path, result: Any) -> Path | None:
    """Where the manifest of ``result`` lives under the result store ``results`` (None: no paths)."""
    paths = sorted({str(p) for p in output_paths(result)})
    if not paths:
        return None
    return Path(results) / MANIFEST_FOLDER / f"{sha256_value(paths)[:32]}.json"


def record_outputs(results: Path, result: Any) -> Path | None:
    """Write the manifest of ``result`` (atomically: unique temp name, then rename)."""
    target = manifest_path(results, result)
    if target is None:
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_text(json.dumps(build_manifest(result), indent=1, sort_keys=True))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


#: A result record this young whose manifest is not there yet belongs to a run that is about to
#: write it (the manifest follows the record, in the task's completion hook).
MANIFEST_GRACE_S = 120.0


def manifest_problem(results: Path, result: Any, record: Path | None = None) -> str | None:
    """Why the files of a cached ``result`` cannot be trusted, or None when they match their manifest.

    ``record``: the result record's file. Another run in the same work dir persists its record
    and then writes the manifest; a run that reads the record in between found "no readable
    manifest" and computed the task again. A record younger than :data:`MANIFEST_GRACE_S` whose
    output files all exist is trusted without its manifest."""
    target = manifest_path(results, result)
    if target is None:
        return None
    try:
        recorded: dict[str, list] = json.loads(target.read_text())
    except (OSError, ValueError):
        if record is not None and _younger_than(record, MANIFEST_GRACE_S) and all(
                p.exists() for p in output_paths(result)):
            return None
        return f"no readable manifest of its output files ({target})"
    for path in output_paths(result):
        if not path.exists():
            return f"{path} is missing"
        if path.is_dir() and not any(k == str(path) or k.startswith(str(path) + os.sep) for k in recorded):
            return f"{path} has no recorded files"
    current = build_manifest(result)
    for name, (size, digest) in recorded.items():
        if name not in current:
            return f"{name} is missing"
        now_size, now_digest = current[name]
        if now_size != size:
            return f"{name} changed (size {size} -> {now_size} bytes)"
        if now_digest != digest:
            return f"{name} changed (sha256 differs from the recorded one)"
    extra = sorted(set(current) - set(recorded))
    if extra:
        return f"{extra[0]} was added after the result was recorded ({len(extra)} new file(s))"
    return None


def _younger_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime < seconds
    except OSError:
        return False


__all__ = ["MANIFEST_FOLDER", "MANIFEST_GRACE_S", "build_manifest", "manifest_path", "manifest_problem", "output_paths",
           "record_outputs"]
