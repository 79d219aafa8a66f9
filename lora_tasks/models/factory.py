"""Build a bare encoder (pretrained or randomly initialized) by model type, with or without a task head.

No LoRA here: :mod:`lora_tasks.training.factory` adds adapters on top of what :func:`build_base` returns,
so the models layer never depends on the adapter library.
"""

from __future__ import annotations

import os
from typing import Literal

import mlx.nn as nn

from lora_tasks.models.architectures import encoder_class
from lora_tasks.models.bert import BertConfig
from lora_tasks.models.encoder import BertWithHead, load_encoder
from lora_tasks.models.heads import Pooling
from lora_tasks.models.modernbert import ModernBertConfig, ModernBertModel, ModernBertWithHead

MODEL_TYPES = ("bert_with_head", "bert", "modernbert_with_head", "modernbert")
ModelType = Literal["bert_with_head", "bert", "modernbert_with_head", "modernbert"]


def build_base(
    model_type: str,
    head_type: str,
    num_labels: int,
    pooling: Pooling,
    model: str | os.PathLike | None,
    config: BertConfig | None,
    pretrained: bool | None,
) -> nn.Module:
    """The model of ``model_type`` in eval mode: pretrained weights (``model`` id or folder) or, with
    ``config`` and ``pretrained=False``, randomly initialized."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"Unknown model_type {model_type!r}; use one of {', '.join(MODEL_TYPES)}.")
    if pretrained is None:
        pretrained = config is None
    if pretrained:
        if config is not None:
            raise ValueError(
                "config= builds a randomly initialized model; pass pretrained=False with it, or drop config= "
                "to load pretrained weights (model= picks the checkpoint)."
            )
        head = head_type if model_type.endswith("_with_head") else None
        return load_encoder(model, head_type=head, num_labels=num_labels, pooling=pooling).model
    if model is not None:
        raise ValueError("model= names pretrained weights; with pretrained=False pass config=BertConfig(...) instead.")
    net: nn.Module
    if model_type.startswith("modernbert"):
        mcfg = config if isinstance(config, ModernBertConfig) else ModernBertConfig()
        if model_type == "modernbert_with_head":
            net = ModernBertWithHead(mcfg, head_type, num_labels, pooling)
        else:
            net = ModernBertModel(mcfg)
        net.eval()
        return net
    config = config or BertConfig()
    # the config's class picks the encoder: BertConfig, RobertaConfig, MPNetConfig, ...
    if model_type == "bert_with_head":
        net = BertWithHead(config, head_type, num_labels, pooling)
    else:
        net = encoder_class(config)(config, add_pooler=False)
    net.eval()
    return net
