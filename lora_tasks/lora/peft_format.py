"""Adapters in Hugging Face PEFT's format: ``adapter_model.safetensors`` + ``adapter_config.json``.

Keys are relative to the BERT encoder, as PEFT writes them for a ``BertModel``:
``base_model.model.encoder.layer.0.attention.self.query.lora_A.weight`` (A: (r, in), B: (out, r)),
and ``...query.lora_magnitude_vector`` (out,) for DoRA. Import also accepts the
``base_model.model.bert.encoder...`` keys PEFT writes for ``BertFor*`` models, so an adapter maps
onto the encoder wherever it sits in our model (``BertModel`` or ``BertWithHead.bert``).

MPNet and DistilBERT checkpoints name their layers differently (``attention.attn.q``,
``transformer.layer.N.attention.q_lin``); their encoders list the renames
(``checkpoint_renames``) and :class:`PeftNames` writes and reads PEFT's names for them.

PEFT has no slot for our task head on a ``BertModel``; a trained head is written next to the
adapter as ``head.safetensors`` (our key names) and read back by :func:`import_peft`.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from lora_tasks.lora.adapter import HEAD_ATTR, AdapterLoadError, LoRAAdapter
from lora_tasks.lora.config import MODERNBERT_TARGETS, TARGETS, LoRAConfig, target_of_path
from lora_tasks.lora.layers import SlicedLoRALinear

ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_BIN = "adapter_model.bin"
CONFIG_FILE = "adapter_config.json"
HEAD_FILE = "head.safetensors"
PEFT_PREFIX = "base_model.model."

# PEFT matches each target_modules entry as a suffix of module names; these are unambiguous
# except "output.dense", which also ends "attention.output.dense" (handled in PeftNames.targets).
_PEFT_TARGET_NAME = {
    "query": "query",
    "key": "key",
    "value": "value",
    "attention_output": "attention.output.dense",
    "intermediate": "intermediate.dense",
    "output": "output.dense",
}
_SUFFIXES = {
    ".lora_A.weight": "lora_a",
    ".lora_B.weight": "lora_b",
    ".lora_magnitude_vector": "magnitude",
    ".lora_magnitude_vector.weight": "magnitude",
}


_STACK_RE = re.compile(r"(?:^|\.)((?:encoder\.layer|layers)\.\d+\..+)$")


def _encoder_relative(path: str) -> str:
    """``bert.encoder.layer.0...`` -> ``encoder.layer.0...`` (PEFT's names for a BertModel);
    ModernBERT's ``model.layers.0.attn.Wqkv`` -> ``layers.0.attn.Wqkv`` (a ModernBertModel's)."""
    m = _STACK_RE.search(path)
    if m is None:
        raise ValueError(f"{path!r} is not inside an encoder's layer stack; PEFT export covers its layers only.")
    return m.group(1)


def _peft_arrays(layer: nn.Module) -> tuple[dict[str, mx.array], int, float]:
    """A layer's tensors as PEFT holds them, with the rank and alpha PEFT must use for them.

    PEFT adapts whole modules: the slices of ModernBERT's fused ``Wqkv`` (one rank-r pair per
    adapted q/k/v block) are exactly one LoRA of rank ``r * k`` on it, A stacked and B placed
    block-wise, with alpha scaled so ``alpha / r`` (rsLoRA: ``alpha / sqrt(r)``) is unchanged."""
    if not isinstance(layer, SlicedLoRALinear):
        return layer.adapter_parameters(), layer.r, layer.alpha
    names, r = layer.slice_names, layer.r
    out_dims, _ = layer._dims
    a = mx.concatenate([layer[f"lora_a_{n}"] for n in names], axis=0)
    blocks = []
    for n in names:
        start, stop = layer._slices[n]
        b = layer[f"lora_b_{n}"]
        blocks.append(mx.concatenate([mx.zeros((start, r), b.dtype), b, mx.zeros((out_dims - stop, r), b.dtype)]))
    k = len(names)
    alpha = layer.alpha * (math.sqrt(k) if layer.use_rslora else k)
    return {"lora_a": a, "lora_b": mx.concatenate(blocks, axis=1)}, r * k, alpha


class PeftNames:
    """Our module paths <-> the names PEFT uses on the transformers model of that architecture.

    Our encoders keep BERT's module names whatever the checkpoint calls its layers (MPNet's
    ``attention.attn.q``, DistilBERT's ``transformer.layer.N.attention.q_lin``); the encoder
    class's ``checkpoint_renames`` (theirs, ours) pairs say how they differ. BERT, RoBERTa and
    ELECTRA have none: PEFT's names are ours."""

    def __init__(self, renames: tuple[tuple[str, str], ...] = (), modernbert: bool = False) -> None:
        self.renames = tuple(renames)
        self.modernbert = modernbert  # its checkpoints' names are ours (layers.N.attn.Wqkv, mlp.Wi)

    @classmethod
    def of(cls, model: nn.Module) -> "PeftNames":
        """The names of the encoder inside ``model`` (a bare encoder or one inside a head model)."""
        from lora_tasks.models.modernbert import ModernBertModel

        modules = [m for _, m in model.named_modules()]
        renames = next((m.checkpoint_renames for m in modules if hasattr(m, "checkpoint_renames")), ())
        return cls(renames, modernbert=any(isinstance(m, ModernBertModel) for m in modules))

    def theirs(self, rel: str) -> str:
        """``encoder.layer.0.attention.self.query`` -> the transformers name (``...attention.attn.q``)."""
        name = f".{rel}."
        for theirs, ours in self.renames:
            name = name.replace(ours, theirs)
        return name.strip(".")

    def ours(self, name: str) -> str:
        """A transformers module name (any ``mpnet.``-style prefix) -> ours."""
        name = f".{name}."
        for theirs, ours in self.renames:
            name = name.replace(theirs, ours)
        return name.strip(".")

    def targets(self, targets: tuple[str, ...]) -> list[str] | str:
        """target_modules as PEFT reads them (it matches each as a suffix of module names); a regex
        when a plain suffix would over-match (BERT's ``output.dense`` also ends ``attention.output.dense``)."""
        if self.modernbert:  # q, k and v all live in attn.Wqkv
            return list(dict.fromkeys(MODERNBERT_TARGETS[t] for t in targets))
        if not self.renames:
            names = {t: _PEFT_TARGET_NAME[t] for t in TARGETS}
        else:  # whole layer-relative names: MPNet's "attention.attn.q", DistilBERT's "attention.q_lin"
            names = {t: self.theirs(f"encoder.layer.0.{suffix}").split(".0.", 1)[1] for t, suffix in TARGETS.items()}
        full = {t: self.theirs(f"encoder.layer.0.{suffix}").split(".0.", 1)[1] for t, suffix in TARGETS.items()}
        chosen = [names[t] for t in targets]
        clash = any(full[o].endswith("." + full[t]) for t in targets for o in TARGETS if o not in targets)
        if clash:
            stack = self.theirs("encoder.layer.0").rsplit(".0", 1)[0]
            alternatives = "|".join(re.escape(full[t]) for t in targets)
            return rf".*{re.escape(stack)}\.\d+\.({alternatives})"
        return chosen


def peft_state_dict(adapter: LoRAAdapter) -> dict[str, mx.array]:
    """The adapter's arrays under PEFT's key names."""
    out: dict[str, mx.array] = {}
    names = {v: k for k, v in _SUFFIXES.items() if not k.endswith("vector.weight")}
    peft = PeftNames.of(adapter.model)
    for path, layer in adapter.layers.items():
        rel = peft.theirs(_encoder_relative(path))
        for attr, value in _peft_arrays(layer)[0].items():
            out[f"{PEFT_PREFIX}{rel}{names[attr]}"] = value
    return out


def peft_config_dict(adapter: LoRAAdapter, base_model_name_or_path: str | None = None) -> dict[str, Any]:
    """``adapter_config.json`` contents (PEFT's LoraConfig fields that we use)."""
    cfg = adapter.config
    peft = PeftNames.of(adapter.model)
    rank_pattern: dict[str, int] = {}
    alpha_pattern: dict[str, float] = {}
    for path, layer in adapter.layers.items():
        rel = peft.theirs(_encoder_relative(path))
        _, r, alpha = _peft_arrays(layer)
        if r != cfg.r:
            rank_pattern[rel] = r
        if alpha != cfg.resolved_alpha:
            alpha_pattern[rel] = alpha
    return {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model_name_or_path,
        "r": cfg.r,
        "lora_alpha": cfg.resolved_alpha,
        "lora_dropout": float(cfg.dropout),
        "target_modules": peft.targets(cfg.target_modules),
        "use_rslora": cfg.use_rslora,
        "use_dora": cfg.use_dora,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "layers_to_transform": list(cfg.layers_to_transform) if cfg.layers_to_transform else None,
        "layers_pattern": None,
    }


def export_peft(
    adapter: LoRAAdapter, directory: str | os.PathLike, base_model_name_or_path: str | None = None
) -> Path:
    """Write the adapter in PEFT's layout into ``directory`` (created if needed); returns it. The
    names are those of the transformers model of the encoder's architecture (``BertModel``,
    ``MPNetModel``, ``DistilBertModel``, ...), so ``PeftModel.from_pretrained`` loads it there."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt", "lora_tasks_lora_config": adapter.config.to_json()}
    _atomic_safetensors(directory / ADAPTER_FILE, peft_state_dict(adapter), metadata)
    text = json.dumps(peft_config_dict(adapter, base_model_name_or_path), indent=2, sort_keys=True)
    tmp = directory / f".{CONFIG_FILE}.{os.getpid()}.tmp"
    tmp.write_text(text + "\n")
    os.replace(tmp, directory / CONFIG_FILE)
    head_file = directory / HEAD_FILE
    if adapter.trains_head:
        head = {k: v for k, v in adapter.get_lora_state_dict().items() if k.startswith(HEAD_ATTR + ".")}
        _atomic_safetensors(head_file, head, {"format": "mlx"})
    else:
        head_file.unlink(missing_ok=True)
    return directory


def _atomic_safetensors(path: Path, arrays: Mapping[str, mx.array], metadata: dict[str, str]) -> None:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.safetensors")
    try:
        mx.save_safetensors(str(tmp), dict(arrays), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---- import ------------------------------------------------------------------------------


def read_peft(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, mx.array]]:
    """The adapter_config.json dict and the tensors of a PEFT adapter folder."""
    directory = Path(directory)
    cfg_path = directory / CONFIG_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"No {CONFIG_FILE} in {directory}; pass the folder PEFT's save_pretrained wrote.")
    config = json.loads(cfg_path.read_text())
    if (directory / ADAPTER_FILE).is_file():
        tensors = dict(mx.load(str(directory / ADAPTER_FILE)))
    elif (directory / ADAPTER_BIN).is_file():
        from lora_tasks.models.weights import load_torch_bin

        tensors = {k: mx.array(np.asarray(v)) for k, v in load_torch_bin(directory / ADAPTER_BIN).items()}
    else:
        raise FileNotFoundError(f"No {ADAPTER_FILE} (or {ADAPTER_BIN}) in {directory}.")
    return config, tensors


def _check_peft_config(config: Mapping[str, Any], directory: Path) -> None:
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{directory}/{CONFIG_FILE} has peft_type={config.get('peft_type')!r}; only LORA adapters import.")
    if config.get("bias", "none") != "none":
        raise ValueError(f"{directory}: bias={config['bias']!r} adapters train biases too; only bias='none' imports.")
    if config.get("fan_in_fan_out"):
        raise ValueError(f"{directory}: fan_in_fan_out=True is for GPT-2 style Conv1D layers, not BERT.")


def _split_key(key: str, peft: PeftNames) -> tuple[str, str] | None:
    """PEFT key -> (our encoder-relative module path, our attribute), or None if it is not a LoRA tensor."""
    name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
    for suffix, attr in _SUFFIXES.items():
        if name.endswith(suffix):
            module = peft.ours(name[: -len(suffix)])
            i = module.find("encoder.layer.")
            return (module[i:] if i >= 0 else module), attr
    return None


def _pattern_value(patterns: Mapping[str, Any], rel: str) -> Any:
    """PEFT's rule: a pattern key applies to a module whose name (``rel``: PEFT's, encoder-relative)
    ends with it (key read as a regex)."""
    for candidate in (rel, "bert." + rel):
        for key, value in patterns.items():
            if re.match(rf"(.*\.)?({key})$", candidate):
                return value
    return None


def import_peft(model: nn.Module, directory: str | os.PathLike, freeze_base: bool = True) -> LoRAAdapter:
    """Apply a PEFT LoRA/DoRA adapter folder to ``model`` (in place) and return its :class:`LoRAAdapter`.

    Every problem (tensors for modules this model lacks, wrong shapes, unsupported modules) is
    reported in one :class:`AdapterLoadError`.
    """
    directory = Path(directory)
    if PeftNames.of(model).modernbert:
        raise AdapterLoadError(
            f"PEFT adapters do not import onto ModernBERT: PEFT adapts the fused attn.Wqkv as one module, ours "
            f"adapt its query/key/value row slices. Load adapters saved in our format instead (LoRAAdapter.load); "
            f"{directory} stays as it is.")
    config, tensors = read_peft(directory)
    _check_peft_config(config, directory)
    global_r = int(config["r"])
    global_alpha = float(config.get("lora_alpha", global_r))
    use_dora = bool(config.get("use_dora", False))

    grouped: dict[str, dict[str, mx.array]] = {}
    problems: list[str] = []
    peft = PeftNames.of(model)
    for key, value in tensors.items():
        split = _split_key(key, peft)
        if split is None:
            problems.append(f"  not a LoRA tensor (modules_to_save and trained biases are not supported): {key}")
            continue
        rel, attr = split
        if target_of_path(rel) is None:
            problems.append(f"  adapter on a module that is not a BERT LoRA target: {key}")
            continue
        grouped.setdefault(rel, {})[attr] = value

    linears = {p: m for p, m in model.named_modules() if isinstance(m, nn.Linear)}
    prefix = next((p[: p.find("encoder.layer.")] for p in linears if "encoder.layer." in p), None)
    if prefix is None:
        raise AdapterLoadError(f"{type(model).__name__} has no BERT encoder layers to put the adapter from {directory} on.")

    overrides: dict[str, dict[str, float]] = {}
    for rel, parts in sorted(grouped.items()):
        path = prefix + rel
        needed = ("lora_a", "lora_b", "magnitude") if use_dora else ("lora_a", "lora_b")
        missing = [n for n in needed if n not in parts]
        if missing:
            problems.append(f"  {rel}: missing {', '.join(missing)}")
            continue
        linear = linears.get(path)
        if linear is None:
            problems.append(f"  not in this model: {rel} ({', '.join(f'{a} {tuple(v.shape)}' for a, v in parts.items())})")
            continue
        out_dims, in_dims = linear.weight.shape
        r = int(parts["lora_a"].shape[0])
        expect = {"lora_a": (r, in_dims), "lora_b": (out_dims, r), "magnitude": (out_dims,)}
        for attr, value in parts.items():
            if tuple(value.shape) != expect[attr]:
                problems.append(f"  shape mismatch: {rel}.{attr}: adapter {tuple(value.shape)}, model {expect[attr]}")
        alpha = _pattern_value(config.get("alpha_pattern") or {}, peft.theirs(rel))
        alpha = global_alpha if alpha is None else float(alpha)
        if r != global_r or alpha != global_alpha:
            overrides[path] = {"r": r, "alpha": alpha}
    if problems:
        raise AdapterLoadError(
            f"The PEFT adapter in {directory} does not fit this {type(model).__name__} ({len(problems)} problems); "
            "load it onto the base model it was trained on:\n" + "\n".join(problems)
        )
    if not grouped:
        raise AdapterLoadError(f"No LoRA tensors in {directory}/{ADAPTER_FILE}.")

    targets = tuple(t for t in TARGETS if any(target_of_path(rel) == t for rel in grouped))
    lora_config = LoRAConfig(
        r=global_r,
        alpha=global_alpha,
        dropout=float(config.get("lora_dropout", 0.0)),
        target_modules=targets,
        use_rslora=bool(config.get("use_rslora", False)),
        use_dora=use_dora,
        layer_specific_config=overrides,
    )
    adapter = LoRAAdapter(model, lora_config, freeze_base=freeze_base)
    state = adapter.get_lora_state_dict()  # layers PEFT did not adapt keep B = 0: no change
    for rel, parts in grouped.items():
        for attr, value in parts.items():
            state[f"{prefix}{rel}.{attr}"] = value
    head_file = directory / HEAD_FILE
    if head_file.is_file() and adapter.trains_head:
        state.update(dict(mx.load(str(head_file))))
    adapter.load_lora_state_dict(state)
    return adapter
