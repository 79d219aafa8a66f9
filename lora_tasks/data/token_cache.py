"""Tokenize once: token arrays cached on disk as ``.npz`` files named by a content hash.

Why: every fold, adapter and re-run of a competition tokenizes the same rows; with a cache
keyed by what determines the output (the texts, the tokenizer's vocabulary and rules, the
maximum length and the row template) a second run loads arrays instead. Any change to one of
those gives a new key, so a stale file is never read. Files are written to a temp name and
renamed, so a crash never leaves a half file under a valid name, and parallel writers of the
same key both end with a complete file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from lora_tasks.diskspace import writing

from .tokenizer import Encoded, Tokenizer

CACHE_VERSION = 1  # bump when the file layout changes
_ARRAYS = ("input_ids", "attention_mask", "token_type_ids", "lengths")


@dataclass(frozen=True)
class CachedTokens:
    """Token arrays (padded to the longest row, at most ``max_len``) plus each row's real length."""

    encoded: Encoded
    lengths: np.ndarray
    key: str
    path: Path
    from_cache: bool

    def __len__(self) -> int:
        return len(self.lengths)


_fingerprint_hashes: dict[int, tuple[Tokenizer, str]] = {}


def tokenizer_hash(tokenizer: Tokenizer) -> str:
    """sha256 of the tokenizer's fingerprint (memoized per tokenizer object: the JSON is large)."""
    hit = _fingerprint_hashes.get(id(tokenizer))
    if hit is not None and hit[0] is tokenizer:
        return hit[1]
    digest = hashlib.sha256(tokenizer.fingerprint().encode()).hexdigest()
    _fingerprint_hashes[id(tokenizer)] = (tokenizer, digest)
    return digest


def cache_key(
    texts: Sequence[str],
    tokenizer: Tokenizer,
    max_len: int,
    template: str = "",
    text_pairs: Sequence[str] | None = None,
) -> str:
    """Content hash of everything that determines the token arrays.

    Each text is length-prefixed so that ``["ab", "c"]`` and ``["a", "bc"]`` hash differently.
    """
    h = hashlib.sha256()
    h.update(f"token-cache v{CACHE_VERSION}\0{tokenizer_hash(tokenizer)}\0{int(max_len)}\0{template}\0".encode())
    for group in (texts, text_pairs):
        if group is None:
            h.update(b"\0none\0")
            continue
        h.update(f"\0{len(group)}\0".encode())
        for t in group:
            b = str(t).encode("utf-8")
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
    return h.hexdigest()[:32]


def _save_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with writing(path, sum(int(a.nbytes) for a in arrays.values()), partial=tmp), os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of a cache file, or None if it is missing or unreadable (then re-tokenize)."""
    try:
        with np.load(path) as data:
            arrays = {k: data[k] for k in _ARRAYS}
    except (FileNotFoundError, OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError):
        return None
    return arrays


def tokenize_cached(
    texts: Sequence[str],
    tokenizer: Tokenizer,
    *,
    max_len: int,
    cache_dir: str | os.PathLike,
    template: str = "",
    text_pairs: Sequence[str] | None = None,
) -> CachedTokens:
    """Token arrays of ``texts`` (truncated to ``max_len``), loaded from ``cache_dir`` when present.

    ``template`` must identify how the texts were made (e.g. :meth:`RowTemplate.fingerprint`);
    the texts themselves are hashed too, so it matters only when equal texts should still be
    kept apart. Arrays are padded to the longest row; batching trims them per batch.
    """
    texts = list(texts)
    key = cache_key(texts, tokenizer, max_len, template, text_pairs)
    path = Path(cache_dir) / f"tokens-{key}.npz"
    arrays = _load(path)
    from_cache = arrays is not None and len(arrays["lengths"]) == len(texts)
    if not from_cache:
        enc = tokenizer(texts, text_pairs, max_length=max_len, padding="longest", truncation=True)
        lengths = enc.attention_mask.sum(axis=1).astype(np.int32) if len(enc) else np.zeros(0, np.int32)
        arrays = {
            "input_ids": enc.input_ids,
            "attention_mask": enc.attention_mask,
            "token_type_ids": enc.token_type_ids,
            "lengths": lengths,
        }
        _save_atomic(path, arrays)
    encoded = Encoded(arrays["input_ids"], arrays["attention_mask"], arrays["token_type_ids"])
    return CachedTokens(encoded=encoded, lengths=arrays["lengths"], key=key, path=path, from_cache=from_cache)
