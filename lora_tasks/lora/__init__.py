"""LoRA and DoRA adapters for MLX encoders: config and presets, layers, adapter state, PEFT format.

Knows nothing about competitions or data: it adapts any model whose linear layers are named like
Hugging Face BERT's (``encoder.layer.N.attention.self.query``).
"""

from lora_tasks.lora.adapter import AdapterLoadError, LoRAAdapter, ParameterReport, apply_lora, read_adapter_file
from lora_tasks.lora.config import PRESETS, TARGETS, LoRAConfig, get_preset
from lora_tasks.lora.fused import FusedAdapters, default_parallel_mode, train_fused
from lora_tasks.lora.layers import DoRALinear, LoRALinear, SlicedLoRALinear
from lora_tasks.lora.quantized import QLoRALinear, QuantizedBaseLinear, merge_quantized
from lora_tasks.lora.multi import MultiAdapterManager, MultiLoRALinear, create_multi_adapter_model
from lora_tasks.lora.peft_format import export_peft, import_peft

__all__ = [
    "AdapterLoadError",
    "DoRALinear",
    "FusedAdapters",
    "LoRAAdapter",
    "LoRAConfig",
    "LoRALinear",
    "MultiAdapterManager",
    "MultiLoRALinear",
    "PRESETS",
    "QLoRALinear",
    "QuantizedBaseLinear",
    "SlicedLoRALinear",
    "ParameterReport",
    "TARGETS",
    "apply_lora",
    "create_multi_adapter_model",
    "default_parallel_mode",
    "export_peft",
    "get_preset",
    "import_peft",
    "merge_quantized",
    "read_adapter_file",
    "train_fused",
]
