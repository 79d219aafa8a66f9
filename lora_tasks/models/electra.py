"""ELECTRA discriminators in MLX (``model_type: "electra"``: electra-small/base/large).

BERT's layer stack and names; the embeddings may be narrower than the hidden size
(``embedding_size``: 128 in electra-small, hidden 256) and are then projected up by a linear layer,
which the checkpoint calls ``embeddings_project`` and we keep inside the embeddings
(``embeddings.project``), so everything above the embeddings is a plain BERT.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from lora_tasks.models.bert import BertConfig, BertEmbeddings, BertModel
from lora_tasks.models.weights import hf_to_ours


@dataclass
class ElectraConfig(BertConfig):
    """A Hugging Face ELECTRA ``config.json`` (defaults: electra-base-discriminator)."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    embedding_size: int | None = None  # None: the hidden size (no projection)
    model_type: str = "electra"


class ElectraEmbeddings(BertEmbeddings):
    """BERT's embeddings at ``embedding_size``, then projected to the hidden size when they differ."""

    def __init__(self, cfg: ElectraConfig) -> None:
        width = cfg.embedding_size or cfg.hidden_size
        super().__init__(cfg, width=width)
        if width != cfg.hidden_size:
            self.project = nn.Linear(width, cfg.hidden_size)

    def __call__(self, input_ids: mx.array, token_type_ids: mx.array | None = None) -> mx.array:
        x = super().__call__(input_ids, token_type_ids)
        return self.project(x) if "project" in self else x


class ElectraModel(BertModel):
    """BERT's encoder with :class:`ElectraEmbeddings`."""

    def __init__(self, cfg: ElectraConfig, add_pooler: bool = False) -> None:
        if add_pooler:
            raise ValueError("ELECTRA has no pooler; use pooling='mean' or 'cls'.")
        super().__init__(cfg, add_pooler=False)
        self.embeddings = ElectraEmbeddings(cfg)


def electra_to_ours(name: str) -> str:
    """HF ELECTRA checkpoint name -> our module path (``electra.`` dropped, the projection moved
    into the embeddings)."""
    key = hf_to_ours(name, prefix="electra.")
    if key.startswith("embeddings_project."):
        key = "embeddings.project." + key[len("embeddings_project."):]
    return key
