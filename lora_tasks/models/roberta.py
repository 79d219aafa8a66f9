"""RoBERTa in MLX (``model_type`` ``"roberta"``, ``"xlm-roberta"``, ``"camembert"``: roberta-base,
twitter-roberta, XLM-R, distilroberta).

The layer stack is BERT's, with the same module names; only the positions differ: they count
the real tokens from ``pad_token_id + 1`` (padding sits at ``pad_token_id``), so a row's states do
not depend on how much padding follows it. Loading a RoBERTa checkpoint as a BERT would shift
every position by two and give quietly wrong states; this module is what prevents that.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx

from lora_tasks.models.bert import BertConfig, BertEmbeddings, BertModel
from lora_tasks.models.weights import hf_to_ours


def padding_positions(input_ids: mx.array, padding_idx: int) -> mx.array:
    """RoBERTa's position ids: ``padding_idx + 1, + 2, ...`` over real tokens, ``padding_idx`` on
    padding (also MPNet's)."""
    real = (input_ids != padding_idx).astype(mx.int32)
    return mx.cumsum(real, axis=1) * real + padding_idx


@dataclass
class RobertaConfig(BertConfig):
    """A Hugging Face RoBERTa ``config.json`` (defaults: roberta-base)."""

    vocab_size: int = 50265
    hidden_size: int = 768
    num_hidden_layers: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    model_type: str = "roberta"


class RobertaEmbeddings(BertEmbeddings):
    """BERT's embeddings with :func:`padding_positions`."""

    def __init__(self, cfg: RobertaConfig) -> None:
        super().__init__(cfg)
        self.padding_idx = cfg.pad_token_id

    def positions(self, input_ids: mx.array) -> mx.array:
        return padding_positions(input_ids, self.padding_idx)


class RobertaModel(BertModel):
    """BERT's encoder with :class:`RobertaEmbeddings`."""

    def __init__(self, cfg: RobertaConfig, add_pooler: bool = True) -> None:
        super().__init__(cfg, add_pooler=add_pooler)
        self.embeddings = RobertaEmbeddings(cfg)


def roberta_to_ours(name: str) -> str:
    """HF RoBERTa checkpoint name -> our module path (``roberta.`` of ``RobertaFor*`` dropped)."""
    return hf_to_ours(name, prefix="roberta.")
