"""What can decide a task's result beyond its inputs: the package's files (Python, native C++
sources, shipped competition configs), the versions of the libraries, the competition config a
name resolves to, and the weights a model name resolves to. All of it is part of every cache
key, so an edited helper or TOML, a rebuilt kernel, an upgraded library or another checkpoint
in a ``--model`` folder never serves a result computed from the old one."""

from __future__ import annotations

import functools
from importlib import metadata
from pathlib import Path
from typing import Any

from lora_tasks.hashing import sha256_file, sha256_value

#: Distributions whose version can change a task's result.
RESULT_LIBRARIES = ("mlx", "numpy", "scikit-learn", "tokenizers", "safetensors", "pandas", "scipy", "lightgbm",
                    "catboost")
#: Package files that can change a result: the code, the native kernels' sources (built at run
#: time from these), and the competition configs a wheel ships.
SOURCE_SUFFIXES = (".py", ".cpp", ".h", ".inc", ".toml")


def package_files(root: Path) -> list[Path]:
    """Every file of the package with a :data:`SOURCE_SUFFIXES` suffix, sorted (``_competitions``
    is a link to the repo's ``competitions/`` in a checkout, which ``rglob`` does not follow)."""
    found = {p for p in root.rglob("*") if p.suffix in SOURCE_SUFFIXES and "__pycache__" not in p.parts and p.is_file()}
    shipped = root / "_competitions"
    if shipped.is_dir():
        found.update(p for p in shipped.glob("*.toml") if p.is_file())
    return sorted(found)


def package_source_hash(root: Path | None = None) -> str:
    """sha256 over the relative path and bytes of every :func:`package_files` file."""
    root = root or Path(__file__).resolve().parents[1]
    return sha256_value([(str(p.relative_to(root)), sha256_file(p)) for p in package_files(root)])


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


def competition_config(competition: Any) -> Any:
    """The competition config a name resolves to, as validated (``None``: no config file, the
    data decides everything). Read each time: the user edits these files between runs. A config
    that does not validate keys by its error (the task then fails with the same words)."""
    if not isinstance(competition, str):
        return None
    from lora_tasks.data.config_file import CompetitionConfigError, find_config_file, read_config_file

    try:
        path = find_config_file(competition)
        return None if path is None else read_config_file(path)
    except (CompetitionConfigError, OSError) as exc:
        return f"invalid: {exc}"


def model_weights(model: Any) -> str:
    """:func:`lora_tasks.hub.weights_fingerprint` of a model name or folder (``None``: the
    default model); a model that cannot be found keys by the reason (the task then says it)."""
    from lora_tasks.hub import ModelNotFoundError, weights_fingerprint

    try:
        return weights_fingerprint(model)
    except (ModelNotFoundError, OSError) as exc:
        return f"unresolved: {type(exc).__name__}: {exc}"
