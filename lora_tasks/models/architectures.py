"""Which MLX encoder a checkpoint's ``config.json`` asks for: the one table from ``model_type``
to config class, encoder class and checkpoint-name map, for every encoder built on BERT's layer
stack (ModernBERT, a different stack, is loaded on its own path)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from lora_tasks.models.bert import BertConfig, BertModel
from lora_tasks.models.distilbert import DistilBertConfig, DistilBertModel, distilbert_to_ours
from lora_tasks.models.electra import ElectraConfig, ElectraModel, electra_to_ours
from lora_tasks.models.mpnet import MPNetConfig, MPNetModel, mpnet_to_ours
from lora_tasks.models.roberta import RobertaConfig, RobertaModel, roberta_to_ours
from lora_tasks.models.weights import hf_to_ours


@dataclass(frozen=True)
class Architecture:
    config: type[BertConfig]
    encoder: type[BertModel]
    checkpoint_name: Callable[[str], str]  # HF parameter name -> our module path


_BERT = Architecture(BertConfig, BertModel, hf_to_ours)
_ROBERTA = Architecture(RobertaConfig, RobertaModel, roberta_to_ours)

#: config.json ``model_type`` -> architecture ("" : a config without one, read as BERT)
ARCHITECTURES: dict[str, Architecture] = {
    "bert": _BERT,
    "": _BERT,
    "roberta": _ROBERTA,
    "xlm-roberta": _ROBERTA,
    "camembert": _ROBERTA,
    "mpnet": Architecture(MPNetConfig, MPNetModel, mpnet_to_ours),
    "distilbert": Architecture(DistilBertConfig, DistilBertModel, distilbert_to_ours),
    "electra": Architecture(ElectraConfig, ElectraModel, electra_to_ours),
}


def architecture(model_type: str) -> Architecture | None:
    """The architecture for a ``model_type``, or None when it is not built on BERT's stack."""
    return ARCHITECTURES.get(model_type)


def encoder_class(config: BertConfig) -> type[BertModel]:
    """The encoder class for a config object (its class, or the nearest base class, in the table)."""
    for cls in type(config).__mro__:
        for arch in ARCHITECTURES.values():
            if arch.config is cls:
                return arch.encoder
    raise TypeError(f"No encoder for config type {type(config).__name__}; use one of the configs in ARCHITECTURES.")
