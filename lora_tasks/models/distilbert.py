"""DistilBERT in MLX (``model_type: "distilbert"``: distilbert-base-uncased and its fine-tunes).

A six-layer BERT without token types or pooler, whose checkpoints and config.json use their own
names (``dim``, ``n_layers``; ``transformer.layer.N.attention.q_lin``, ``sa_layer_norm``,
``ffn.lin1``). It is built as a :class:`BertModel` (BERT's module names, so presets, targets,
``layer_specific_config`` and the frozen-prefix cache work unchanged); :meth:`DistilBertConfig.from_dict`
and :func:`distilbert_to_ours` translate the names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from lora_tasks.models import ops
from lora_tasks.models.bert import BertConfig, BertModel
from lora_tasks.models.weights import hf_to_ours

# DistilBERT config.json key -> BertConfig field
_CONFIG_KEYS = {
    "dim": "hidden_size",
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "hidden_dim": "intermediate_size",
    "activation": "hidden_act",
    "dropout": "hidden_dropout_prob",
    "attention_dropout": "attention_probs_dropout_prob",
}

# checkpoint name piece -> ours (BERT's module names)
_RENAMES = (
    ("transformer.layer.", "encoder.layer."),
    (".attention.q_lin.", ".attention.self.query."),
    (".attention.k_lin.", ".attention.self.key."),
    (".attention.v_lin.", ".attention.self.value."),
    (".attention.out_lin.", ".attention.output.dense."),
    (".sa_layer_norm.", ".attention.output.LayerNorm."),
    (".ffn.lin1.", ".intermediate.dense."),
    (".ffn.lin2.", ".output.dense."),
    (".output_layer_norm.", ".output.LayerNorm."),
)


@dataclass
class DistilBertConfig(BertConfig):
    """A DistilBERT ``config.json``, held in BERT's field names (defaults: distilbert-base)."""

    hidden_size: int = 768
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    model_type: str = "distilbert"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DistilBertConfig":
        """Reads DistilBERT's own keys (``dim``, ``n_layers``, ...) or BERT's (a saved copy of ours).
        Its layer norms always use eps 1e-12, whatever the file says."""
        translated = {_CONFIG_KEYS.get(k, k): v for k, v in data.items()}
        translated["layer_norm_eps"] = 1e-12
        return super().from_dict(translated)  # type: ignore[return-value]  # BertConfig.from_dict builds cls


class DistilBertEmbeddings(nn.Module):
    """Word + position embeddings (DistilBERT has no token types)."""

    def __init__(self, cfg: DistilBertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.LayerNorm = ops.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = ops.Dropout(cfg.hidden_dropout_prob)

    def __call__(self, input_ids: mx.array, token_type_ids: mx.array | None = None) -> mx.array:
        """``token_type_ids`` is accepted and ignored."""
        x = self.word_embeddings(input_ids) + self.position_embeddings(mx.arange(input_ids.shape[1]))
        return self.dropout(self.LayerNorm(x))


class DistilBertModel(BertModel):
    """BERT's layer stack with :class:`DistilBertEmbeddings`; never a pooler (DistilBERT has none)."""

    checkpoint_renames = _RENAMES  # (theirs, ours): checkpoints and PEFT say transformer.layer.N.attention.q_lin, ...

    def __init__(self, cfg: DistilBertConfig, add_pooler: bool = False) -> None:
        if add_pooler:
            raise ValueError("DistilBERT has no pooler; use pooling='mean' or 'cls'.")
        super().__init__(cfg, add_pooler=False)
        self.embeddings = DistilBertEmbeddings(cfg)


def distilbert_to_ours(name: str) -> str:
    """HF DistilBERT checkpoint name -> our (BERT) module path (``distilbert.`` prefixes dropped)."""
    key = hf_to_ours(name, prefix="distilbert.")
    for theirs, ours in _RENAMES:
        key = key.replace(theirs, ours)
    return key
