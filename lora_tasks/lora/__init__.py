"""LoRA and DoRA adapters for MLX encoders: config and presets, layers, adapter state, merge, PEFT format.

Knows nothing about competitions, data, model classes or training: it adapts any model whose
linear layers are named like Hugging Face BERT's (``encoder.layer.N.attention.self.query``) or
ModernBERT's (``layers.N.attn.Wqkv``). The names below load lazily so that
``lora_tasks.lora.config`` (presets, :class:`LoRAConfig`) imports without MLX: the data layer
reads the preset table from there.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# name -> submodule that defines it; resolved on first access.
_LAZY: dict[str, str] = {
    "AdapterLoadError": "adapter",
    "LoRAAdapter": "adapter",
    "ParameterReport": "adapter",
    "apply_lora": "adapter",
    "read_adapter_file": "adapter_file",
    "PRESETS": "config",
    "TARGETS": "config",
    "LoRAConfig": "config",
    "get_preset": "config",
    "DoRALinear": "layers",
    "LoRALinear": "layers",
    "SlicedLoRALinear": "layers",
    "QLoRALinear": "quantized",
    "QuantizedBaseLinear": "quantized",
    "merge_quantized": "quantized",
    "export_peft": "peft_format",
    "import_peft": "adapter",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lora_tasks.lora' has no attribute {name!r}")
    return getattr(import_module(f"lora_tasks.lora.{module}"), name)


__all__ = sorted(_LAZY)
