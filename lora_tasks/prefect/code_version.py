"""What code can run inside a task: every ``lora_tasks`` source file and the versions of the
libraries that decide a result. Part of every cache key, so an edited helper or an upgraded
library never serves a result computed by the old code."""

from __future__ import annotations

import functools
from importlib import metadata
from pathlib import Path

from lora_tasks.hashing import sha256_file, sha256_value

#: Distributions whose version can change a task's result.
RESULT_LIBRARIES = ("mlx", "numpy", "scikit-learn", "tokenizers", "safetensors")


def package_source_hash(root: Path | None = None) -> str:
    """sha256 over the relative path and bytes of every ``.py`` file of the package (sorted)."""
    root = root or Path(__file__).resolve().parents[1]
    files = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    return sha256_value([(str(p.relative_to(root)), sha256_file(p)) for p in files])


def library_versions() -> dict[str, str | None]:
    """``{distribution: version}`` of :data:`RESULT_LIBRARIES` (None: not installed)."""
    out: dict[str, str | None] = {}
    for name in RESULT_LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The package source hash and the library versions, hashed once per process."""
    return sha256_value(package_source_hash(), library_versions())
