"""MLX encoders (BERT family), weight loading, heads, and the ``create_*`` factories."""

from lora_tasks.models.bert import BertConfig, BertModel
from lora_tasks.models.encoder import BertWithHead, LoadedEncoder, load_encoder
from lora_tasks.models.heads import HEAD_TYPES, head_loss, predictions
from lora_tasks.models.weights import WeightLoadError

__all__ = [
    "BertConfig",
    "BertModel",
    "BertWithHead",
    "HEAD_TYPES",
    "LoadedEncoder",
    "WeightLoadError",
    "head_loss",
    "load_encoder",
    "predictions",
]
