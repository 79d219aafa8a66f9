"""MLX encoders (BERT, RoBERTa, DistilBERT, ELECTRA, MPNet, ModernBERT), weight loading, heads, and the
``create_*`` factories."""

from lora_tasks.models.bert import BertConfig, BertModel
from lora_tasks.models.distilbert import DistilBertConfig, DistilBertModel
from lora_tasks.models.electra import ElectraConfig, ElectraModel
from lora_tasks.models.encoder import BertWithHead, LoadedEncoder, load_encoder
from lora_tasks.models.factory import create_bert_with_lora, create_model_with_lora, create_qlora_model
from lora_tasks.models.heads import HEAD_TYPES, head_loss, predictions
from lora_tasks.models.modernbert import ModernBertConfig, ModernBertModel, ModernBertWithHead
from lora_tasks.models.mpnet import MPNetConfig, MPNetModel
from lora_tasks.models.roberta import RobertaConfig, RobertaModel
from lora_tasks.models.weights import WeightLoadError
from lora_tasks.lora import (  # the LoRA API is part of the seed API
    PRESETS,
    AdapterLoadError,
    DoRALinear,
    LoRAAdapter,
    LoRAConfig,
    LoRALinear,
    ParameterReport,
    export_peft,
    get_preset,
    import_peft,
)

__all__ = [
    "BertConfig",
    "BertModel",
    "BertWithHead",
    "HEAD_TYPES",
    "LoadedEncoder",
    "ModernBertConfig",
    "ModernBertModel",
    "ModernBertWithHead",
    "MPNetConfig",
    "MPNetModel",
    "RobertaConfig",
    "RobertaModel",
    "DistilBertConfig",
    "DistilBertModel",
    "ElectraConfig",
    "ElectraModel",
    "WeightLoadError",
    "AdapterLoadError",
    "DoRALinear",
    "LoRAAdapter",
    "LoRAConfig",
    "LoRALinear",
    "PRESETS",
    "ParameterReport",
    "create_bert_with_lora",
    "create_model_with_lora",
    "create_qlora_model",
    "export_peft",
    "get_preset",
    "import_peft",
    "head_loss",
    "load_encoder",
    "predictions",
]
