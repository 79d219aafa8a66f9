"""A BERT encoder in MLX (post-LayerNorm; BERT, MiniLM and other BERT-family checkpoints).

Module names follow Hugging Face's ``BertModel`` one to one (``encoder.layer.3.attention.self.query``)
so that weights, PEFT adapters and ``layer_specific_config`` paths read the same as in the PyTorch
world; the few renamings live in :mod:`lora_tasks.models.weights`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from lora_tasks.models import ops


class ConfigFile:
    """``from_file``/``to_dict`` for config dataclasses read from a Hugging Face ``config.json``."""

    @classmethod
    def from_file(cls, path: str | Path):
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"Cannot read model config {path}: {exc}") from exc
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class BertConfig(ConfigFile):
    """The subset of a Hugging Face ``config.json`` that defines a BERT encoder."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    model_type: str = "bert"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BertConfig":
        known = {f.name for f in fields(cls)}
        cfg = cls(**{k: v for k, v in data.items() if k in known})
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ValueError(
                f"hidden_size={cfg.hidden_size} is not divisible by num_attention_heads="
                f"{cfg.num_attention_heads}; fix config.json."
            )
        if cfg.hidden_act not in ops.ACTIVATIONS:
            raise ValueError(f"hidden_act={cfg.hidden_act!r} is not supported; use one of {sorted(ops.ACTIVATIONS)}.")
        return cfg



class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, normalized. ``width`` (default: the hidden size)
    is the embedding width, narrower in ELECTRA, whose encoder projects it up."""

    def __init__(self, cfg: BertConfig, width: int | None = None) -> None:
        super().__init__()
        width = width or cfg.hidden_size
        self.word_embeddings = nn.Embedding(cfg.vocab_size, width)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, width)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, width)
        self.LayerNorm = ops.LayerNorm(width, eps=cfg.layer_norm_eps)
        self.dropout = ops.Dropout(cfg.hidden_dropout_prob)

    def positions(self, input_ids: mx.array) -> mx.array:
        """Position ids: 0, 1, ... (RoBERTa counts from its pad id instead)."""
        return mx.arange(input_ids.shape[1])

    def __call__(self, input_ids: mx.array, token_type_ids: mx.array | None = None) -> mx.array:
        x = self.word_embeddings(input_ids) + self.position_embeddings(self.positions(input_ids))
        if token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout = ops.Dropout(cfg.attention_probs_dropout_prob)

    def __call__(self, x: mx.array, mask: mx.array | None) -> mx.array:
        return ops.multi_head_attention(self.query(x), self.key(x), self.value(x), mask, self.num_heads,
                                        1.0 / math.sqrt(self.head_dim), self.dropout)


class BertSelfOutput(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = ops.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = ops.Dropout(cfg.hidden_dropout_prob)

    def __call__(self, x: mx.array, residual: mx.array) -> mx.array:
        return ops.dropout_add_norm(self.dense(x), residual, self.dropout, self.LayerNorm)


class BertAttention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(cfg)
        self.output = BertSelfOutput(cfg)

    def __call__(self, x: mx.array, mask: mx.array | None) -> mx.array:
        return self.output(self.self(x, mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = ops.ACTIVATIONS[cfg.hidden_act]

    def __call__(self, x: mx.array) -> mx.array:
        return self.act(self.dense(x))


class BertOutput(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.LayerNorm = ops.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = ops.Dropout(cfg.hidden_dropout_prob)

    def __call__(self, x: mx.array, residual: mx.array) -> mx.array:
        return ops.dropout_add_norm(self.dense(x), residual, self.dropout, self.LayerNorm)


class BertLayer(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertOutput(cfg)

    def __call__(self, x: mx.array, mask: mx.array | None) -> mx.array:
        h = self.attention(x, mask)
        return self.output(self.intermediate(h), h)


class BertEncoder(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.layer = [BertLayer(cfg) for _ in range(cfg.num_hidden_layers)]

    def __call__(self, x: mx.array, mask: mx.array | None, start: int = 0) -> mx.array:
        for layer in self.layer[start:]:
            x = layer(x, mask)
        return x


class BertPooler(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def __call__(self, hidden: mx.array) -> mx.array:
        return mx.tanh(self.dense(hidden[:, 0]))


def additive_mask(attention_mask: mx.array | None, dtype: mx.Dtype = mx.float32) -> mx.array | None:
    """(batch, seq) 1/0 mask -> (batch, 1, 1, seq) additive mask for attention scores."""
    if attention_mask is None:
        return None
    m = attention_mask.astype(dtype)
    return ((1.0 - m) * mx.finfo(dtype).min)[:, None, None, :]


class BertModel(nn.Module):
    """Embeddings, a stack of post-LN transformer layers, and the optional pooler."""

    def __init__(self, cfg: BertConfig, add_pooler: bool = True) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)
        if add_pooler:
            self.pooler = BertPooler(cfg)

    def __call__(
        self,
        input_ids: mx.array,
        attention_mask: mx.array | None = None,
        token_type_ids: mx.array | None = None,
    ) -> mx.array:
        """Last hidden states, shape (batch, seq, hidden)."""
        x = self.embeddings(input_ids, token_type_ids)
        return self.encoder(x, self.attention_bias(attention_mask, x))

    def attention_bias(self, attention_mask: mx.array | None, hidden: mx.array) -> mx.array | None:
        """What every layer adds to its attention scores: here the key-padding mask, shaped
        (batch, 1, 1, seq); encoders with relative positions (MPNet) add their position bias."""
        return additive_mask(attention_mask, hidden.dtype)
