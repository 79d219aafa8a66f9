"""Loading Hugging Face checkpoints into our MLX modules: the one place HF names map to ours.

Handles ``model.safetensors`` and, where that is all a checkpoint has, ``pytorch_model.bin``
(read without torch: a zip of pickled storages that we rebuild into numpy arrays).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from lora_tasks.torch_bin import WeightLoadError, load_torch_bin

# Checkpoint entries that are not parameters of an encoder: pre-training heads (BERT's cls., RoBERTa's
# lm_head., DistilBERT's vocab_*, ELECTRA's discriminator/generator heads), a fine-tune's classifier
# (the task head is built fresh), buffers.
_IGNORED_PREFIXES = ("cls.", "lm_head.", "head.", "decoder.", "classifier.", "pre_classifier.", "vocab_transform.",
                     "vocab_layer_norm.", "vocab_projector.", "discriminator_predictions.", "generator_predictions.",
                     "generator_lm_head.")
_IGNORED_SUFFIXES = ("position_ids", "token_type_ids_buffer")


def hf_to_ours(name: str, prefix: str = "bert.") -> str:
    """Map one Hugging Face parameter name to our module path.

    BERT checkpoints come with or without a ``bert.`` prefix, and old ones name LayerNorm
    parameters ``gamma``/``beta``.
    """
    for p in (prefix, "model."):
        if p and name.startswith(p):
            name = name[len(p):]
    if name.endswith(".gamma"):
        name = name[: -len("gamma")] + "weight"
    elif name.endswith(".beta"):
        name = name[: -len("beta")] + "bias"
    return name


def _ignored(name: str) -> bool:
    return name.startswith(_IGNORED_PREFIXES) or name.endswith(_IGNORED_SUFFIXES)


def read_checkpoint(path: Path) -> dict[str, mx.array]:
    """All tensors of a safetensors or PyTorch checkpoint file, as MLX arrays."""
    if not path.is_file():
        raise WeightLoadError(f"Weights file {path} does not exist.")
    try:
        if path.suffix == ".safetensors":
            return dict(mx.load(str(path)))
        return {k: mx.array(v) for k, v in load_torch_bin(path).items()}
    except WeightLoadError:
        raise
    except Exception as exc:
        raise WeightLoadError(f"Cannot read weights file {path}: {exc}. Is it complete?") from exc


def load_weights(
    model: nn.Module,
    path: Path,
    name_map: Callable[[str], str] = hf_to_ours,
    dtype: mx.Dtype = mx.float32,
) -> None:
    """Load a checkpoint into ``model``; raise one error listing every missing, unexpected or
    mis-shaped key (with the file) instead of failing on the first."""
    raw = read_checkpoint(path)
    ours = dict(tree_flatten(model.parameters()))
    loaded: dict[str, mx.array] = {}
    unexpected: list[str] = []
    for name, value in raw.items():
        key = name_map(name)
        if key in ours:
            loaded[key] = value
        elif not _ignored(key) and not _ignored(name):
            unexpected.append(name)
    missing = sorted(set(ours) - set(loaded))
    wrong = [
        f"{k}: file has {tuple(v.shape)}, model expects {tuple(ours[k].shape)}"
        for k, v in loaded.items()
        if tuple(v.shape) != tuple(ours[k].shape)
    ]
    problems = []
    if wrong:
        problems.append("shape mismatches:\n    " + "\n    ".join(sorted(wrong)))
    if missing:
        problems.append("missing from the file:\n    " + "\n    ".join(missing))
    if unexpected:
        problems.append("not in the model:\n    " + "\n    ".join(sorted(unexpected)))
    if problems:
        raise WeightLoadError(
            f"Weights in {path} do not fit the model built from its config.json:\n  "
            + "\n  ".join(problems)
            + "\nFix: use the config.json that was saved with these weights, or a checkpoint of the same architecture."
        )
    model.update(tree_unflatten([(k, v.astype(dtype)) for k, v in loaded.items()]))
    mx.eval(model.parameters())
