"""Apply a :class:`LoRAConfig` to a model, and own the adapter's state from then on.

A :class:`LoRAAdapter` replaces the targeted ``nn.Linear`` modules of a model in place with
:class:`LoRALinear`/:class:`DoRALinear`, freezes the base, and can report parameter counts, get,
set, save and load the adapter state, and merge the adapters into the base weights and back.

State keys are our module paths plus the layer's attribute (``bert.encoder.layer.0.attention.self
.query.lora_a``) and, when the task head is trained, the head's parameters (``head.classifier
.weight``): the same names as ``model.parameters()``, so nothing needs a second mapping.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from lora_tasks import __version__
from lora_tasks.diskspace import array_bytes, writing
from lora_tasks.lora import peft_format
from lora_tasks.lora.adapter_file import HEAD_ATTR, AdapterFileError, AdapterLoadError, read_adapter_file
from lora_tasks.lora.config import LoRAConfig, is_fused_qkv, layer_index, path_has_prefix
from lora_tasks.lora.layers import DoRALinear, LoRALinear, SlicedLoRALinear, linear_dims, set_child
from lora_tasks.lora.quantized import QLoRALinear, QSlicedLoRALinear, quantize_base

FORMAT = "lora_tasks.lora"
# Fields whose difference changes what a saved adapter computes (dropout does not).
_FUNCTIONAL_FIELDS = ("r", "resolved_alpha", "use_rslora", "use_dora", "target_modules", "layer_specific_config",
                      "train_head")


class BaseModelMismatchWarning(UserWarning):
    """An adapter loaded with ``strict=False`` onto a base model other than the one it was trained on."""


@dataclass(frozen=True)
class ParameterReport:
    """Parameter counts of a model with adapters (counted from shapes: no weights are computed)."""

    total: int
    trainable: int
    lora: int
    head: int

    @property
    def percentage(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return (
            f"trainable params: {self.trainable:,} (LoRA {self.lora:,}, head {self.head:,}) || "
            f"all params: {self.total:,} || trainable%: {self.percentage:.4f}"
        )


def _count(tree: Any) -> int:
    return sum(int(v.size) for _, v in tree_flatten(tree))


class LoRAAdapter:
    """LoRA adapters applied to ``model`` (which is modified in place).

    ``freeze_base=True`` leaves only the adapter parameters (and, with ``config.train_head``, the
    task head) trainable, so ``nn.value_and_grad(model, loss)`` returns gradients for those alone.
    """

    def __init__(self, model: nn.Module, config: LoRAConfig, freeze_base: bool = True) -> None:
        check_supported(config)
        if any(isinstance(m, LoRALinear) for _, m in model.named_modules()):
            raise ValueError(
                "This model already has LoRA layers; apply a LoRAConfig to a fresh model, or use the adapter "
                "that was returned when they were added."
            )
        self.model = model
        self.config = config
        self.freeze_base = freeze_base
        if config.quantize_bits is not None:  # QLoRA: the frozen base linears stored quantized
            quantize_base(model, bits=config.quantize_bits, group_size=config.quantize_group_size,
                          skip_prefixes=(HEAD_ATTR,))
        targets = self._find_targets()
        self._check_layer_specific(targets)
        self.layers: dict[str, LoRALinear] = {}
        modules = dict(model.named_modules())
        for path, linear in targets.items():
            spec = config.for_layer(path)
            kwargs = dict(r=spec.r, alpha=spec.alpha, dropout=config.dropout, use_rslora=config.use_rslora)
            if is_fused_qkv(path):  # ModernBERT's Wqkv: LoRA on the targeted row blocks only
                block = linear_dims(linear)[0] // 3
                order = ("query", "key", "value")
                slices = {n: slice(order.index(n) * block, (order.index(n) + 1) * block)
                          for n in config.fused_targets(path)}
                layer = _layer_class(linear, config, sliced=True).from_base(linear, slices, **kwargs)
            else:
                layer = _layer_class(linear, config, sliced=False).from_base(linear, **kwargs)
            if not model.training:
                layer.eval()
            parent_path, _, name = path.rpartition(".")
            set_child(modules[parent_path], name, layer)
            self.layers[path] = layer
        self._set_trainable()

    # ---- construction --------------------------------------------------------------------

    def _find_targets(self) -> dict[str, nn.Linear]:
        found = {
            path: m
            for path, m in self.model.named_modules()
            if isinstance(m, (nn.Linear, nn.QuantizedLinear)) and self.config.is_target(path)
        }
        if not found:
            raise ValueError(
                f"No module of this {type(self.model).__name__} matches the LoRA targets "
                f"{list(self.config.target_modules)}: LoRA targets BERT layers named like "
                "'encoder.layer.N.attention.self.query' or ModernBERT layers 'layers.N.attn.Wqkv'"
                + (f" in layers {list(self.config.layers_to_transform)}" if self.config.layers_to_transform else "")
                + ". Pass a BERT-family model (and layer indices it has)."
            )
        return dict(sorted(found.items(), key=lambda kv: (layer_index(kv[0]) or 0, kv[0])))

    def _check_layer_specific(self, targets: Mapping[str, nn.Linear]) -> None:
        """Every ``layer_specific_config`` path must reach at least one adapted layer."""
        problems = []
        all_paths = [p for p, _ in self.model.named_modules() if p]
        for prefix in self.config.layer_specific_config:
            if any(path_has_prefix(p, prefix) for p in targets):
                continue
            problems.append(f"  {prefix!r}: {self._why_no_match(prefix, targets, all_paths)}")
        if problems:
            raise ValueError(
                "layer_specific_config paths that match no LoRA layer of this model (they are prefixes of module "
                "paths such as " + repr(next(iter(targets))) + "):\n" + "\n".join(problems)
            )

    def _why_no_match(self, prefix: str, targets: Mapping[str, nn.Linear], all_paths: list[str]) -> str:
        if prefix.startswith("bert.") and any(path_has_prefix(p, prefix[5:]) for p in targets):
            return f"use {prefix[5:]!r}: this model's module paths do not start with 'bert.'"
        if not prefix.startswith("bert.") and any(path_has_prefix(p, "bert." + prefix) for p in targets):
            return f"use {'bert.' + prefix!r}: this model's encoder is its 'bert' attribute"
        if any(path_has_prefix(p, prefix) for p in all_paths):
            return (
                "it names modules that are not LoRA targets; add their target to target_modules "
                f"(now {list(self.config.target_modules)})"
            )
        layers = sorted({i for i in (layer_index(p) for p in targets) if i is not None})
        return f"no such module; this model has encoder layers {layers[0]}..{layers[-1]}"

    def _set_trainable(self) -> None:
        if self.freeze_base:
            self.model.freeze()
            for layer in self.layers.values():
                layer.unfreeze(recurse=False, keys=list(layer.ADAPTER_KEYS))
            if self.trains_head:
                self.head.unfreeze()
        else:
            self.model.unfreeze()

    # ---- introspection -------------------------------------------------------------------

    @property
    def head(self) -> nn.Module | None:
        head = self.model.get(HEAD_ATTR) if isinstance(self.model, dict) else None
        return head if isinstance(head, nn.Module) else None

    @property
    def trains_head(self) -> bool:
        return self.config.train_head and self.head is not None

    @property
    def merged(self) -> bool:
        return any(layer.merged for layer in self.layers.values())

    def parameter_report(self) -> ParameterReport:
        """Total, trainable, LoRA and head parameter counts, and the trainable percentage."""
        lora = sum(int(a.size) for layer in self.layers.values() for a in layer.adapter_parameters().values())
        head = _count(self.head.parameters()) if self.trains_head else 0
        return ParameterReport(
            total=_count(self.model.parameters()),
            trainable=_count(self.model.trainable_parameters()),
            lora=lora,
            head=head,
        )

    def __repr__(self) -> str:
        kind = "DoRA" if self.config.use_dora else "LoRA"
        return f"LoRAAdapter({kind}, {len(self.layers)} layers, targets={list(self.config.target_modules)}, r={self.config.r})"

    # ---- state ---------------------------------------------------------------------------

    def get_lora_state_dict(self) -> dict[str, mx.array]:
        """The adapter's arrays (and the head's when it is trained), keyed by module path."""
        state: dict[str, mx.array] = {}
        for path, layer in self.layers.items():
            for key, value in layer.adapter_parameters().items():
                state[f"{path}.{key}"] = value
        if self.trains_head:
            for key, value in tree_flatten(self.head.parameters()):
                state[f"{HEAD_ATTR}.{key}"] = value
        return state

    def load_lora_state_dict(self, state: Mapping[str, mx.array]) -> None:
        """Set the adapter (and head) arrays; all keys and shapes must match, else one error lists them all."""
        self._raise_if_mismatch(state)
        was_merged = self.merged
        if was_merged:
            self.unmerge_adapters()
        modules = dict(self.model.named_modules())
        current = self.get_lora_state_dict()
        for key, value in state.items():
            module_path, _, attr = key.rpartition(".")
            modules[module_path][attr] = mx.array(value).astype(current[key].dtype)
        if was_merged:
            self.merge_adapters()

    def _raise_if_mismatch(self, state: Mapping[str, Any], config_problems: list[str] | None = None) -> None:
        expected = {k: tuple(v.shape) for k, v in self.get_lora_state_dict().items()}
        got = {k: tuple(v.shape) for k, v in state.items()}
        problems = list(config_problems or [])
        problems += [f"  missing from the adapter state: {k} (model expects shape {expected[k]})"
                     for k in sorted(expected.keys() - got.keys())]
        problems += [f"  not in this model: {k} (shape {got[k]})" for k in sorted(got.keys() - expected.keys())]
        problems += [f"  shape mismatch: {k}: adapter state {got[k]}, model {expected[k]}"
                     for k in sorted(expected.keys() & got.keys()) if got[k] != expected[k]]
        if problems:
            raise AdapterLoadError(
                f"The adapter state does not fit this model ({len(problems)} problems); build the model with the "
                "same base and LoRA config the adapter was trained with (LoRAAdapter.from_file does this):\n"
                + "\n".join(problems)
            )

    def metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "lora_tasks_version": __version__,
            "lora_config": self.config.to_json(),
            **base_identity(self.model),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the adapter state to a ``.safetensors`` file (atomically: temp file, then rename).

        The LoRA config and the library version go into the file's metadata.
        """
        path = Path(path)
        if path.suffix != ".safetensors":
            path = path.with_name(path.name + ".safetensors")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp.safetensors")
        try:
            state = self.get_lora_state_dict()
            with writing(path, array_bytes(state.values()), partial=tmp):  # a full disk names the file
                mx.save_safetensors(str(tmp), state, metadata=self.metadata())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def load(self, path: str | os.PathLike, strict: bool = True) -> None:
        """Load a file written by :meth:`save` into this adapter (config and shapes must match).

        The file records the base model it was trained on (:func:`base_identity`); loading it onto
        another base with the same shapes is an error, or with ``strict=False`` a
        :class:`BaseModelMismatchWarning`."""
        arrays, metadata = read_adapter_file(path)
        self._load_arrays(arrays, metadata, check_base_model(metadata, self.model, path, strict))

    def _load_arrays(self, arrays: Mapping[str, mx.array], metadata: Mapping[str, str],
                     config_problems: list[str]) -> None:
        """Check the file's config against ours (adding to ``config_problems``), then load."""
        if "lora_config" in metadata:
            saved = LoRAConfig.from_json(metadata["lora_config"])
            for name in _FUNCTIONAL_FIELDS:
                a, b = getattr(saved, name), getattr(self.config, name)
                if a != b:
                    label = "alpha" if name == "resolved_alpha" else name
                    config_problems.append(f"  config {label}: file {a!r}, adapter {b!r}")
        self._raise_if_mismatch(arrays, config_problems)
        self.load_lora_state_dict(arrays)

    @classmethod
    def from_file(cls, model: nn.Module, path: str | os.PathLike, freeze_base: bool = True,
                  strict: bool = True) -> "LoRAAdapter":
        """Apply the LoRA config stored in a saved adapter file to ``model`` and load its state
        (``strict``: as in :meth:`load`; the base model is checked before ``model`` is changed)."""
        arrays, metadata = read_adapter_file(path)
        if "lora_config" not in metadata:
            raise AdapterLoadError(f"{path} has no LoRA config in its metadata; it was not written by LoRAAdapter.save.")
        problems = check_base_model(metadata, model, path, strict)
        if problems:
            raise AdapterLoadError(f"{path} does not fit this model:\n" + "\n".join(problems))
        adapter = cls(model, LoRAConfig.from_json(metadata["lora_config"]), freeze_base=freeze_base)
        adapter._load_arrays(arrays, metadata, [])
        return adapter

    # ---- merging -------------------------------------------------------------------------

    def merge_adapters(self) -> None:
        """Fold ``scale * B @ A`` (DoRA: magnitude and direction) into the base weights, for inference."""
        for layer in self.layers.values():
            layer.merge()

    def unmerge_adapters(self) -> None:
        """Restore the exact base weights saved by :meth:`merge_adapters`."""
        for layer in self.layers.values():
            layer.unmerge()

    # ---- PEFT ----------------------------------------------------------------------------

    def export_peft(self, directory: str | os.PathLike) -> Path:
        """Write ``adapter_model.safetensors`` + ``adapter_config.json`` in PEFT's layout."""
        return peft_format.export_peft(self, directory)

    @classmethod
    def from_peft(cls, model: nn.Module, directory: str | os.PathLike, freeze_base: bool = True) -> "LoRAAdapter":
        """Apply an adapter saved by PEFT (``save_pretrained``) or by :meth:`export_peft` to ``model``."""
        return peft_format.apply_peft(cls, model, directory, freeze_base=freeze_base)


def check_supported(config: LoRAConfig) -> None:
    """Raise early for configs this library cannot apply (DoRA over a quantized base)."""
    if config.quantize_bits is not None and config.use_dora:
        raise NotImplementedError(
            f"DoRA over a {config.quantize_bits}-bit base is not supported: use LoRA (use_dora=False) with the "
            "quantized base, or DoRA with quantize_bits=None."
        )


def _layer_class(linear: nn.Module, config: LoRAConfig, sliced: bool) -> type[LoRALinear]:
    if isinstance(linear, nn.QuantizedLinear):
        if config.use_dora:
            check_supported(config.replace(quantize_bits=linear.bits))
        return QSlicedLoRALinear if sliced else QLoRALinear
    if sliced:
        if config.use_dora:
            raise NotImplementedError("DoRA on ModernBERT's fused Wqkv is not supported; use LoRA (use_dora=False).")
        return SlicedLoRALinear
    return DoRALinear if config.use_dora else LoRALinear


#: The attribute a model loader sets on the model it loads: what identifies its weights
#: (:func:`lora_tasks.hub.weights_fingerprint`). A randomly initialized model has none.
BASE_WEIGHTS_ATTRIBUTE = "base_weights_id"
_IDENTITY_KEYS = ("model_class", "base_classes", "base_config_sha256", "base_weights")


def base_identity(model: nn.Module) -> dict[str, str]:
    """What identifies the base model an adapter is trained on, for the file's metadata: the model's
    class, the classes of the modules that hold an encoder config, a hash of that config, and the
    fingerprint of the pretrained weights (:data:`BASE_WEIGHTS_ATTRIBUTE`, set by the loader).

    Read from the model itself (any module with a ``config`` that has ``to_dict``; any module with
    the weights attribute), so this library needs no model classes; two checkpoints of one
    architecture with equal shapes but other settings (vocabulary, position scheme, model_type)
    differ in the hash, and two checkpoints with equal configs but other weights (another
    fine-tune of MiniLM) in the weights fingerprint."""
    modules = [m for _, m in model.named_modules()]
    holders = [m for m in modules if callable(getattr(getattr(m, "config", None), "to_dict", None))]
    identity = {"model_class": type(model).__name__}
    if holders:
        identity["base_classes"] = ",".join(sorted({type(m).__name__ for m in holders}))
        config = json.dumps(holders[0].config.to_dict(), sort_keys=True, default=str)
        identity["base_config_sha256"] = hashlib.sha256(config.encode()).hexdigest()[:16]
    weights = next((w for m in modules if isinstance(w := getattr(m, BASE_WEIGHTS_ATTRIBUTE, None), str)), None)
    if weights:
        identity["base_weights"] = weights
    return identity


def check_base_model(metadata: Mapping[str, str], model: nn.Module, path: str | os.PathLike,
                     strict: bool = True) -> list[str]:
    """Problem lines (for an :class:`AdapterLoadError`) when the file was trained on another base
    model than ``model``; with ``strict=False`` a :class:`BaseModelMismatchWarning` instead (and
    no lines). Keys a file lacks (older files) are not compared."""
    ours = base_identity(model)
    problems = [f"  base model {key}: file {metadata[key]!r}, this model {ours[key]!r}"
                for key in _IDENTITY_KEYS
                if key in metadata and key in ours and metadata[key] != ours[key]]
    if not problems:
        return []
    if strict:
        problems[-1] += (" -- the adapter was trained on another base model: load it onto that model, "
                         "or pass strict=False to load it anyway")
        return problems
    warnings.warn(f"{path} was trained on another base model; loading it anyway (strict=False):\n"
                  + "\n".join(problems), BaseModelMismatchWarning, stacklevel=3)
    return []


def import_peft(model: nn.Module, directory: str | os.PathLike, freeze_base: bool = True) -> LoRAAdapter:
    """Apply a PEFT LoRA/DoRA adapter folder to ``model`` (in place): :meth:`LoRAAdapter.from_peft`."""
    return LoRAAdapter.from_peft(model, directory, freeze_base=freeze_base)


def apply_lora(model: nn.Module, config: LoRAConfig, freeze_base: bool = True) -> LoRAAdapter:
    """Add LoRA layers to ``model`` in place and return their :class:`LoRAAdapter`."""
    return LoRAAdapter(model, config, freeze_base=freeze_base)


def describe(adapter: LoRAAdapter) -> str:
    """One line per adapted layer: path, rank, scale (for logs)."""
    return "\n".join(
        f"{path}: {type(layer).__name__} r={layer.r} scale={layer.scale:g}" for path, layer in adapter.layers.items()
    )


__all__ = ["BASE_WEIGHTS_ATTRIBUTE", "HEAD_ATTR", "AdapterFileError", "AdapterLoadError", "import_peft", "BaseModelMismatchWarning", "base_identity", "check_base_model", "LoRAAdapter", "ParameterReport", "apply_lora", "read_adapter_file", "describe", "set_child"]
