"""One place for content hashes: of bytes, of a file, of a folder tree, of plain values.

Why one module: the file store names files by these hashes, the Prefect cache keys on them and
the submit step derives its run id from them; three hand-written variants drift apart.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20
_memo: dict[tuple[str, int, int], str] = {}
_memo_lock = threading.Lock()


def sha256_bytes(data: bytes) -> str:
    """sha256 hex digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, streamed (adapter and token files do not fit in memory twice)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_file_memo(path: str | os.PathLike) -> str:
    """:func:`sha256_file`, remembered by (path, size, mtime): a cache key computed for every
    task of a run reads each unchanged input once."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _memo_lock:
        hit = _memo.get(key)
    if hit is None:
        hit = sha256_file(path)
        with _memo_lock:
            _memo[key] = hit
    return hit


def sha256_tree(path: str | os.PathLike) -> str:
    """Content hash of a file, or of a folder (relative names and bytes of every file, sorted;
    hidden files such as download manifests skipped: they record dates, not content)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = item.relative_to(path)
        if any(part.startswith(".") for part in rel.parts):
            continue
        digest.update(str(rel).encode() + b"\0" + sha256_file(item).encode() + b"\0")
    return digest.hexdigest()


def sha256_value(*parts: Any) -> str:
    """sha256 of JSON-able values in canonical form (sorted keys; other objects by ``str``)."""
    return sha256_bytes(json.dumps(parts, sort_keys=True, default=str).encode())
