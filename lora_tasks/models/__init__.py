"""MLX encoders (BERT, RoBERTa, DistilBERT, ELECTRA, MPNet, ModernBERT), weight loading and heads.

Never imports the adapter library (:mod:`lora_tasks.lora`): the ``create_*`` factories that join
the two live in :mod:`lora_tasks.training.factory`."""

from lora_tasks.models.bert import BertConfig, BertModel
from lora_tasks.models.distilbert import DistilBertConfig, DistilBertModel
from lora_tasks.models.electra import ElectraConfig, ElectraModel
from lora_tasks.models.encoder import BertWithHead, LoadedEncoder, load_encoder
from lora_tasks.models.factory import MODEL_TYPES, build_base
from lora_tasks.models.heads import HEAD_TYPES, head_loss, predictions
from lora_tasks.models.modernbert import ModernBertConfig, ModernBertModel, ModernBertWithHead
from lora_tasks.models.mpnet import MPNetConfig, MPNetModel
from lora_tasks.models.roberta import RobertaConfig, RobertaModel
from lora_tasks.models.weights import WeightLoadError

__all__ = [
    "BertConfig",
    "BertModel",
    "BertWithHead",
    "HEAD_TYPES",
    "MODEL_TYPES",
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
    "build_base",
    "head_loss",
    "load_encoder",
    "predictions",
]
