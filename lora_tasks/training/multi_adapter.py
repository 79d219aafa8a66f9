"""Several named LoRA adapters (each with its own task head) on one frozen base model.

:class:`MultiLoRALinear` wraps a base ``nn.Linear`` and holds any number of named low-rank
factor pairs (PEFT layout, like :class:`~lora_tasks.lora.layers.LoRALinear`: ``lora_a`` (r, in),
``lora_b`` (out, r)). The layers wrap the union of the adapters' targets; a layer that the
active adapter does not touch just returns the base output.

:class:`MultiAdapterManager` owns the adapters of one model: ``activate_adapter(name)`` routes
every layer to that adapter and puts its head on the model, and leaves only that adapter and
its head trainable, so :func:`lora_tasks.training.train.train` trains exactly one adapter at a time.
With the same weights the active adapter computes exactly what a single-adapter model
(:class:`~lora_tasks.lora.adapter.LoRAAdapter`) computes. It lives beside training, not in
:mod:`lora_tasks.lora`, because each adapter gets its own task head (:mod:`lora_tasks.models.heads`). ``save``/``load`` write and read all
adapters and heads in one ``.safetensors`` file (keys ``<adapter>/<LoRAAdapter state key>``,
configs in the metadata), atomically.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from pathlib import Path
from typing import Any, Mapping

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from lora_tasks import __version__
from lora_tasks.diskspace import array_bytes, writing
from lora_tasks.lora.adapter import (
    AdapterLoadError,
    base_identity,
    check_base_model,
    check_supported,
    read_adapter_file,
    set_child,
)
from lora_tasks.lora.config import LoRAConfig, as_config, layer_index
from lora_tasks.models.heads import ClassificationHead

HEAD_ATTR = "head"
MULTI_FORMAT = "lora_tasks.multi_lora"
_FUNCTIONAL_FIELDS = ("r", "resolved_alpha", "use_rslora", "use_dora", "target_modules", "layer_specific_config",
                      "train_head", "layers_to_transform")


class LoRAFactors(nn.Module):
    """One adapter's factors in one layer: ``lora_a`` (r, in), ``lora_b`` (out, r), ``scale``, dropout."""

    def __init__(self, input_dims: int, output_dims: int, r: int, scale: float, dropout: float = 0.0) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(input_dims)  # as LoRALinear (PEFT's kaiming-uniform bound)
        self.lora_a = mx.random.uniform(low=-bound, high=bound, shape=(r, input_dims))
        self.lora_b = mx.zeros((output_dims, r))
        self.scale = float(scale)
        self.r = int(r)
        self.dropout = nn.Dropout(p=dropout)

    def __call__(self, x: mx.array) -> mx.array:
        z = (self.dropout(x) @ self.lora_a.T) @ self.lora_b.T  # the same ops as LoRALinear._lora
        return (self.scale * z).astype(x.dtype)


class MultiLoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus named LoRA factors; only the ``active`` one is applied."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear
        self.adapters: dict[str, LoRAFactors] = {}
        self.active: str | None = None

    @property
    def in_features(self) -> int:
        return int(self.linear.weight.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.linear.weight.shape[0])

    def add(self, name: str, r: int, scale: float, dropout: float = 0.0) -> LoRAFactors:
        factors = LoRAFactors(self.in_features, self.out_features, r, scale, dropout)
        factors.train(self.training)
        self.adapters[name] = factors
        return factors

    def __call__(self, x: mx.array) -> mx.array:
        y = self.linear(x)
        if self.active is None or self.active not in self.adapters:
            return y
        return y + self.adapters[self.active](x)


class MultiAdapterManager:
    """Named adapters (each a :class:`LoRAConfig` plus its own task head) on one model, in place.

    ``adapter_configs`` maps names to a LoRAConfig, a preset name or a dict of config fields. The
    first adapter is active after construction.
    """

    def __init__(self, model: nn.Module, adapter_configs: Mapping[str, Any] | None = None) -> None:
        if any(type(m).__name__ in ("LoRALinear", "DoRALinear") for _, m in model.named_modules()):
            raise ValueError("This model already has single-adapter LoRA layers; build the multi-adapter model from "
                             "a fresh base (create_multi_adapter_model does this).")
        if not isinstance(model.get(HEAD_ATTR) if isinstance(model, dict) else None, nn.Module):
            raise ValueError(f"{type(model).__name__} has no task head ('head' attribute); the multi-adapter manager "
                             "gives each adapter its own head, so use a model with a head (BertWithHead).")
        self.model = model
        self.configs: dict[str, LoRAConfig] = {}
        self.heads: dict[str, nn.Module] = {}
        self._template_head: nn.Module | None = model[HEAD_ATTR]
        self._active: str | None = None
        for name, spec in (adapter_configs or {}).items():
            self.add_adapter(name, spec)

    # ---- introspection -------------------------------------------------------------------

    @property
    def active(self) -> str | None:
        return self._active

    def list_adapters(self) -> list[str]:
        return list(self.configs)

    @property
    def layers(self) -> dict[str, MultiLoRALinear]:
        return {p: m for p, m in self.model.named_modules() if isinstance(m, MultiLoRALinear)}

    def adapter_layers(self, name: str) -> dict[str, LoRAFactors]:
        """Module path -> factors of adapter ``name``, in the order a LoRAAdapter lists its layers."""
        self._check_name(name)
        found = {p: m.adapters[name] for p, m in self.layers.items() if name in m.adapters}
        return dict(sorted(found.items(), key=lambda kv: (layer_index(kv[0]) or 0, kv[0])))

    def __repr__(self) -> str:
        return f"MultiAdapterManager(adapters={self.list_adapters()}, active={self._active!r})"

    # ---- managing adapters ---------------------------------------------------------------

    def add_adapter(self, name: str, config: LoRAConfig | str | Mapping[str, Any] | None = None) -> None:
        """Add adapter ``name`` (fresh factors, ``lora_b`` zero, and a fresh head). Does not activate it
        unless it is the first one."""
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"Adapter names are non-empty strings without '/', got {name!r}.")
        if name in self.configs:
            raise ValueError(f"An adapter named {name!r} already exists; delete_adapter({name!r}) first or pick "
                             f"another name (existing: {self.list_adapters()}).")
        cfg = as_config(config)
        check_supported(cfg)
        if cfg.use_dora:
            raise NotImplementedError("DoRA adapters are not supported by the multi-adapter manager; use a "
                                      "single LoRAAdapter for DoRA, or use_dora=False here.")
        if cfg.quantize_bits is not None:
            raise NotImplementedError(
                f"Adapter {name!r} asks for a {cfg.quantize_bits}-bit base (QLoRA); the multi-adapter manager keeps "
                "one fp32 base for all adapters. Use the full-precision preset with the same targets "
                "('qlora_memory' -> 'efficient', 'qlora_quality' -> 'balanced'), or create_qlora_model for one adapter."
            )
        targets = {p: m for p, m in self.model.named_modules()
                   if isinstance(m, (nn.Linear, MultiLoRALinear)) and cfg.is_target(p)}
        targets = {p: m for p, m in targets.items() if not (isinstance(m, nn.Linear) and p.endswith(".linear"))}
        if not targets:
            raise ValueError(f"No module of this {type(self.model).__name__} matches the LoRA targets "
                             f"{list(cfg.target_modules)} of adapter {name!r}.")
        modules = dict(self.model.named_modules())
        for path, module in targets.items():
            if isinstance(module, nn.Linear):
                wrapped = MultiLoRALinear(module)
                wrapped.train(self.model.training)
                parent, _, attr = path.rpartition(".")
                set_child(modules[parent], attr, wrapped)
                module = wrapped
            spec = cfg.for_layer(path)
            module.add(name, spec.r, spec.scale, cfg.dropout)
        if not self.heads:
            head = self._template_head
        else:
            head = fresh_head(self._template_head)
        head.train(self.model.training)
        self.heads[name] = head
        self.configs[name] = cfg
        if self._active is None:
            self.activate_adapter(name)
        else:
            self._set_trainable()

    def delete_adapter(self, name: str) -> None:
        """Remove adapter ``name`` and its head; layers left without adapters go back to plain ``nn.Linear``.
        Deleting the active adapter activates the first remaining one."""
        self._check_name(name)
        if len(self.configs) == 1:
            raise ValueError(f"{name!r} is the only adapter; add another before deleting it (the model needs an "
                             "active adapter and head).")
        modules = dict(self.model.named_modules())
        for path, layer in self.layers.items():
            if name in layer.adapters:
                del layer.adapters[name]
                if not layer.adapters:
                    parent, _, attr = path.rpartition(".")
                    set_child(modules[parent], attr, layer.linear)
        del self.configs[name]
        del self.heads[name]
        if self._active == name:
            self._active = None
            self.activate_adapter(next(iter(self.configs)))

    def activate_adapter(self, name: str) -> None:
        """Route every layer to adapter ``name``, put its head on the model, and train only those."""
        self._check_name(name)
        for layer in self.layers.values():
            layer.active = name if name in layer.adapters else None
        self.model[HEAD_ATTR] = self.heads[name]
        self._active = name
        self._set_trainable()

    def _set_trainable(self) -> None:
        self.model.freeze()
        for head in self.heads.values():
            head.freeze()
        name = self._active
        if name is None:
            return
        for factors in self.adapter_layers(name).values():
            factors.unfreeze(recurse=False, keys=["lora_a", "lora_b"])
        if self.configs[name].train_head:
            self.heads[name].unfreeze()

    def _check_name(self, name: str) -> None:
        if name not in self.configs:
            raise KeyError(f"No adapter named {name!r}; this model has {self.list_adapters()}.")

    # ---- state ---------------------------------------------------------------------------

    def adapter_state_dict(self, name: str) -> dict[str, mx.array]:
        """Adapter ``name``'s arrays with the keys a single :class:`LoRAAdapter` uses
        (``<module path>.lora_a``, ``head.<param>`` when its head is trained)."""
        state: dict[str, mx.array] = {}
        for path, factors in self.adapter_layers(name).items():
            state[f"{path}.lora_a"] = factors.lora_a
            state[f"{path}.lora_b"] = factors.lora_b
        if self.configs[name].train_head:
            for key, value in tree_flatten(self.heads[name].parameters()):
                state[f"{HEAD_ATTR}.{key}"] = value
        return state

    def load_adapter_state_dict(self, name: str, state: Mapping[str, mx.array]) -> None:
        """Set adapter ``name``'s arrays from a state with :meth:`adapter_state_dict`'s keys (for example
        ``LoRAAdapter.get_lora_state_dict()`` of a single adapter with the same config)."""
        expected = {k: tuple(v.shape) for k, v in self.adapter_state_dict(name).items()}
        got = {k: tuple(v.shape) for k, v in state.items()}
        problems = [f"  missing: {k} (expects {expected[k]})" for k in sorted(expected.keys() - got.keys())]
        problems += [f"  not in adapter {name!r}: {k}" for k in sorted(got.keys() - expected.keys())]
        problems += [f"  shape mismatch: {k}: state {got[k]}, adapter {expected[k]}"
                     for k in sorted(expected.keys() & got.keys()) if got[k] != expected[k]]
        if problems:
            raise AdapterLoadError(f"The state does not fit adapter {name!r} ({len(problems)} problems); it must come "
                                   "from an adapter with the same base and LoRA config:\n" + "\n".join(problems))
        layers = self.adapter_layers(name)
        head_updates = []
        for key, value in state.items():
            if key.startswith(HEAD_ATTR + "."):
                head_updates.append((key[len(HEAD_ATTR) + 1:], mx.array(value)))
            else:
                path, _, attr = key.rpartition(".")
                layers[path][attr] = mx.array(value).astype(layers[path][attr].dtype)
        if head_updates:
            self.heads[name].update(tree_unflatten(head_updates))

    def metadata(self) -> dict[str, str]:
        return {
            "format": MULTI_FORMAT,
            "lora_tasks_version": __version__,
            "adapters": json.dumps({n: c.to_dict() for n, c in self.configs.items()}),
            "active": self._active or "",
            **base_identity(self.model),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """All adapters and heads in one ``.safetensors`` file (atomically: temp file, then rename)."""
        path = Path(path)
        if path.suffix != ".safetensors":
            path = path.with_name(path.name + ".safetensors")
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, mx.array] = {}
        for name in self.configs:
            state = self.adapter_state_dict(name)
            if not self.configs[name].train_head:  # a frozen head is still this adapter's own
                state.update({f"{HEAD_ATTR}.{k}": v for k, v in tree_flatten(self.heads[name].parameters())})
            arrays.update({f"{name}/{k}": v for k, v in state.items()})
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp.safetensors")
        try:
            with writing(path, array_bytes(arrays.values()), partial=tmp):  # a full disk names the file
                mx.save_safetensors(str(tmp), arrays, metadata=self.metadata())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def load(self, path: str | os.PathLike, strict: bool = True) -> None:
        """Load a file written by :meth:`save`: adapters missing here are added with the file's configs;
        existing ones must have the same config. The file's active adapter becomes active.
        A file trained on another base model is an error, or a warning with ``strict=False``."""
        arrays, metadata = read_adapter_file(path)
        if metadata.get("format") != MULTI_FORMAT:
            raise AdapterLoadError(f"{path} was not written by MultiAdapterManager.save (format "
                                   f"{metadata.get('format')!r}); load single adapters with LoRAAdapter.from_file.")
        configs = {n: LoRAConfig.from_dict(d) for n, d in json.loads(metadata["adapters"]).items()}
        problems = check_base_model(metadata, self.model, path, strict)
        for name, saved in configs.items():
            if name in self.configs:
                for f in _FUNCTIONAL_FIELDS:
                    a, b = getattr(saved, f), getattr(self.configs[name], f)
                    if a != b:
                        problems.append(f"  adapter {name!r} config {f}: file {a!r}, model {b!r}")
        if problems:
            raise AdapterLoadError(f"{path} does not fit this model's adapters:\n" + "\n".join(problems))
        for name, cfg in configs.items():
            if name not in self.configs:
                self.add_adapter(name, cfg)
        for name in configs:
            prefix = name + "/"
            state = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
            if not self.configs[name].train_head:
                head = {k: v for k, v in state.items() if k.startswith(HEAD_ATTR + ".")}
                state = {k: v for k, v in state.items() if k not in head}
                self.heads[name].update(tree_unflatten([(k[len(HEAD_ATTR) + 1:], v) for k, v in head.items()]))
            self.load_adapter_state_dict(name, state)
        active = metadata.get("active")
        if active and active in self.configs:
            self.activate_adapter(active)


def fresh_head(template: nn.Module) -> nn.Module:
    """A newly initialized head of the template's type and shape."""
    if isinstance(template, ClassificationHead):
        out_dims, in_dims = template.classifier.weight.shape
        p = 1.0 - float(getattr(template.dropout, "_p_1", 1.0))
        return ClassificationHead(int(in_dims), int(out_dims), p)
    raise TypeError(f"Cannot build a fresh head like {type(template).__name__}; the manager supports "
                    "ClassificationHead heads (BertWithHead).")


__all__ = ["LoRAFactors", "MultiAdapterManager", "MultiLoRALinear", "fresh_head"]
