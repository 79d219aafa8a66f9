"""kaggle-lora: MLX LoRA/QLoRA adapter ensembles on BERT-family encoders for Kaggle competitions.

Importing this package first sets up the fastest BLAS for MLX (see :mod:`lora_tasks.backend`) and,
on glibc, a heap that keeps freed memory mapped (:mod:`lora_tasks.heap`);
it must therefore be imported before ``mlx.core``. The public API is loaded lazily so that
``import lora_tasks`` stays cheap for code that only needs the Kaggle or data layers.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .backend import blas_info
from .backend import configure as _configure_backend
from .heap import keep_freed_memory as _keep_freed_memory

_keep_freed_memory()  # glibc on Linux only, before MLX or any thread allocates: see lora_tasks.heap
_configure_backend()

__version__ = "0.1.0"

# name -> module that defines it; resolved on first access.
_LAZY = {
    "BertConfig": "lora_tasks.models",
    "BertModel": "lora_tasks.models",
    "BertWithHead": "lora_tasks.models",
    "ModernBertConfig": "lora_tasks.models",
    "ModernBertModel": "lora_tasks.models",
    "ModernBertWithHead": "lora_tasks.models",
    "MPNetConfig": "lora_tasks.models",
    "MPNetModel": "lora_tasks.models",
    "RobertaConfig": "lora_tasks.models",
    "RobertaModel": "lora_tasks.models",
    "DistilBertConfig": "lora_tasks.models",
    "DistilBertModel": "lora_tasks.models",
    "ElectraConfig": "lora_tasks.models",
    "ElectraModel": "lora_tasks.models",
    "Tokenizer": "lora_tasks.data.tokenizer",
    "load_encoder": "lora_tasks.models",
    "resolve_model_dir": "lora_tasks.hub",
    "DEFAULT_MODEL_ID": "lora_tasks.hub",
    # LoRA library (issue 3)
    "LoRAConfig": "lora_tasks.lora",
    "LoRAAdapter": "lora_tasks.lora",
    "LoRALinear": "lora_tasks.lora",
    "DoRALinear": "lora_tasks.lora",
    "AdapterLoadError": "lora_tasks.lora",
    "ParameterReport": "lora_tasks.lora",
    "PRESETS": "lora_tasks.lora",
    "get_preset": "lora_tasks.lora",
    "export_peft": "lora_tasks.lora",
    "import_peft": "lora_tasks.lora",
    # the seed's create_* factories: one module above lora/ and models/
    "create_bert_with_lora": "lora_tasks.training.factory",
    "create_model_with_lora": "lora_tasks.training.factory",
    "create_qlora_model": "lora_tasks.training.factory",
    "create_multi_adapter_model": "lora_tasks.training.factory",
    "create_kaggle_lora_model": "lora_tasks.training.factory",
    "KaggleLoRAModel": "lora_tasks.training.factory",
    "build_model": "lora_tasks.training.factory",
    # several adapters on one base: beside training
    "MultiAdapterManager": "lora_tasks.training.multi_adapter",
    "FusedAdapters": "lora_tasks.training.fused_training",
    "train_fused": "lora_tasks.training.fused_training",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lora_tasks' has no attribute {name!r}")
    return getattr(import_module(module), name)


__all__ = ["blas_info", "__version__", *_LAZY]
