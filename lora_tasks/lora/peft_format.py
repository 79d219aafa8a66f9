"""Adapters in Hugging Face PEFT's format: ``adapter_model.safetensors`` + ``adapter_config.json``.

Keys are relative to the BERT encoder, as PEFT writes them for a ``BertModel``:
``base_model.model.encoder.layer.0.attention.self.query.lora_A.weight`` (A: (r, in), B: (out, r)),
and ``...query.lora_magnitude_vector`` (out,) for DoRA. Import also accepts the
``base_model.model.bert.encoder...`` keys PEFT writes for ``BertFor*`` models, so an adapter maps
onto the encoder wherever it sits in our model (``BertModel`` or ``BertWithHead.bert``).

MPNet and DistilBERT checkpoints name their layers differently (``attention.attn.q``,
``transformer.layer.N.attention.q_lin``); their encoders list the renames
(``checkpoint_renames``) and :class:`PeftNames` writes and reads PEFT's names for them.
ModernBERT's names are its checkpoints' (``layers.N.attn.Wqkv``); PEFT adapts the fused ``Wqkv``
as one module, ours its q/k/v row slices, and both directions are exact (:func:`_peft_arrays`,
:func:`_wqkv_slices`).

PEFT has no slot for our task head on a ``BertModel``; a trained head is written next to the
adapter as ``head.safetensors`` (our key names) and read back by :func:`apply_peft`.
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

from lora_tasks.diskspace import array_bytes, writing
from lora_tasks.lora.adapter_file import HEAD_ATTR, AdapterFileError, AdapterLoadError, read_adapter_file
from lora_tasks.lora.config import MODERNBERT_TARGETS, QKV_ORDER, TARGETS, LoRAConfig, is_fused_qkv, targets_of_path
from lora_tasks.lora.layers import SlicedLoRALinear
from lora_tasks.torch_bin import load_torch_bin

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
        named = model.named_modules()
        renames = next((m.checkpoint_renames for _, m in named if hasattr(m, "checkpoint_renames")), ())
        # ModernBERT is recognised by its fused attention projection (layers.N.attn.Wqkv), not by class
        return cls(renames, modernbert=any(is_fused_qkv(p) for p, _ in named))

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


def peft_state_dict(adapter: Any) -> dict[str, mx.array]:
    """The adapter's arrays under PEFT's key names."""
    out: dict[str, mx.array] = {}
    names = {v: k for k, v in _SUFFIXES.items() if not k.endswith("vector.weight")}
    peft = PeftNames.of(adapter.model)
    for path, layer in adapter.layers.items():
        rel = peft.theirs(_encoder_relative(path))
        for attr, value in _peft_arrays(layer)[0].items():
            out[f"{PEFT_PREFIX}{rel}{names[attr]}"] = value
    return out


def peft_config_dict(adapter: Any, base_model_name_or_path: str | None = None) -> dict[str, Any]:
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
    adapter: Any, directory: str | os.PathLike, base_model_name_or_path: str | None = None
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
        with writing(path, array_bytes(arrays.values()), partial=tmp):  # a full disk names the file
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
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterFileError(f"Cannot read {cfg_path} ({exc}); it is incomplete or not JSON. Delete the folder and "
                               "save the adapter again (PEFT's save_pretrained, or export_peft).") from exc
    if (directory / ADAPTER_FILE).is_file():
        tensors = read_adapter_file(directory / ADAPTER_FILE)[0]
    elif (directory / ADAPTER_BIN).is_file():
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
            m = _STACK_RE.search(module)
            return (m.group(1) if m else module), attr
    return None


def _wqkv_slices(parts: Mapping[str, mx.array], r: int, alpha: float, use_rslora: bool,
                 ) -> tuple[dict[str, mx.array], int, float]:
    """One PEFT LoRA on ModernBERT's fused ``Wqkv`` -> our per-slice arrays, rank and alpha.

    A rank-r LoRA on the whole projection is exactly a rank-r pair per q/k/v row block sharing A
    (``B[block] @ A``). When each block's B uses only some of the r columns, and all blocks the
    same number (what :func:`export_peft` writes: k slices of rank r as one LoRA of rank r*k),
    only those columns are kept: the slices come back at their own rank and alpha, exactly. A
    block whose B is all zero is not adapted. Alpha follows the rank so that ``alpha / r`` (or
    ``alpha / sqrt(r)``, rsLoRA) stays what PEFT used."""
    a, b = np.array(parts["lora_a"]), np.array(parts["lora_b"])
    block = b.shape[0] // 3
    rows = {n: b[i * block:(i + 1) * block] for i, n in enumerate(QKV_ORDER)}
    used = {n: np.flatnonzero(np.any(rb != 0, axis=0)) for n, rb in rows.items()}
    used = {n: cols for n, cols in used.items() if cols.size}
    if not used:  # B still at its zero init: every block, as PEFT would go on training it
        used = {n: np.arange(r) for n in QKV_ORDER}
    if len({cols.size for cols in used.values()}) > 1:  # blocks of different ranks: keep them whole
        used = {n: np.arange(r) for n in used}
    rank = next(iter(used.values())).size
    arrays: dict[str, mx.array] = {}
    for n, cols in used.items():
        arrays[f"lora_a_{n}"] = mx.array(a[cols])
        arrays[f"lora_b_{n}"] = mx.array(rows[n][:, cols])
    ratio = rank / r
    # 12 digits: undo the export's sqrt(k) exactly (8 * sqrt(2) / sqrt(2) is 8.000000000000002)
    return arrays, rank, float(f"{alpha * (math.sqrt(ratio) if use_rslora else ratio):.12g}")


def _pattern_value(patterns: Mapping[str, Any], rel: str) -> Any:
    """PEFT's rule: a pattern key applies to a module whose name (``rel``: PEFT's, encoder-relative)
    ends with it (key read as a regex)."""
    for candidate in (rel, "bert." + rel):
        for key, value in patterns.items():
            if re.match(rf"(.*\.)?({key})$", candidate):
                return value
    return None


def apply_peft(adapter_cls: Any, model: nn.Module, directory: str | os.PathLike, freeze_base: bool = True) -> Any:
    """Apply a PEFT LoRA/DoRA adapter folder to ``model`` (in place) and return its adapter, an
    ``adapter_cls`` (:class:`~lora_tasks.lora.adapter.LoRAAdapter`, which builds on this module:
    ``LoRAAdapter.from_peft`` and :func:`~lora_tasks.lora.adapter.import_peft` call this).

    Every problem (tensors for modules this model lacks, wrong shapes, unsupported modules) is
    reported in one :class:`AdapterLoadError`.
    """
    directory = Path(directory)
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
        if not targets_of_path(rel):
            problems.append(f"  adapter on a module that is not a BERT LoRA target: {key}")
            continue
        if use_dora and len(targets_of_path(rel)) > 1:
            problems.append(f"  DoRA on ModernBERT's fused Wqkv is not supported (our Wqkv adapters are LoRA): {key}")
            continue
        grouped.setdefault(rel, {})[attr] = value

    linears = {p: m for p, m in model.named_modules() if isinstance(m, nn.Linear)}
    stacks = (_STACK_RE.search(p) for p in linears)
    prefix = next((m.string[: m.start(1)] for m in stacks if m is not None), None)
    if prefix is None:
        raise AdapterLoadError(f"{type(model).__name__} has no encoder layers to put the adapter from {directory} on.")

    overrides: dict[str, dict[str, float]] = {}
    arrays: dict[str, dict[str, mx.array]] = {}  # per module, the arrays under our attribute names
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
        arrays[rel] = dict(parts)
        if len(targets_of_path(rel)) > 1 and tuple(parts["lora_b"].shape) == expect["lora_b"]:
            arrays[rel], r, alpha = _wqkv_slices(parts, r, alpha, bool(config.get("use_rslora", False)))
        if r != global_r or alpha != global_alpha:
            overrides[path] = {"r": r, "alpha": alpha}
    if problems:
        raise AdapterLoadError(
            f"The PEFT adapter in {directory} does not fit this {type(model).__name__} ({len(problems)} problems); "
            "load it onto the base model it was trained on:\n" + "\n".join(problems)
        )
    if not grouped:
        raise AdapterLoadError(f"No LoRA tensors in {directory}/{ADAPTER_FILE}.")

    adapted = {target for rel, parts in arrays.items() for target in targets_of_path(rel)
               if len(targets_of_path(rel)) == 1 or f"lora_a_{target}" in parts}
    targets = tuple(t for t in TARGETS if t in adapted)
    lora_config = LoRAConfig(
        r=global_r,
        alpha=global_alpha,
        dropout=float(config.get("lora_dropout", 0.0)),
        target_modules=targets,
        use_rslora=bool(config.get("use_rslora", False)),
        use_dora=use_dora,
        layer_specific_config=overrides,
    )
    adapter = adapter_cls(model, lora_config, freeze_base=freeze_base)
    state = adapter.get_lora_state_dict()  # layers PEFT did not adapt keep B = 0: no change
    for rel, parts in arrays.items():
        for attr, value in parts.items():
            state[f"{prefix}{rel}.{attr}"] = value
    head_file = directory / HEAD_FILE
    if head_file.is_file() and adapter.trains_head:
        state.update(read_adapter_file(head_file)[0])
    adapter.load_lora_state_dict(state)
    return adapter
