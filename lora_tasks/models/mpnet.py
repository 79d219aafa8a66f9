"""An MPNet encoder in MLX (all-mpnet-base-v2 and other ``model_type: "mpnet"`` checkpoints).

MPNet is a BERT layer stack with two differences, so it is built as a :class:`BertModel` with
those two parts swapped:

- positions: RoBERTa-style absolute positions counted from ``pad_token_id + 1`` over the real
  tokens (no token-type embeddings);
- attention: every layer adds a bias learned per head for each bucket of the key-minus-query
  offset (T5's bidirectional log buckets, 32 of them), computed once per forward pass in
  :meth:`MPNetModel.attention_bias` and passed to every layer with the padding mask.

Module names are BERT's (``encoder.layer.3.attention.self.query``), so LoRA presets, target
names, ``layer_specific_config`` paths and the frozen-prefix cache work unchanged;
:func:`mpnet_to_ours` maps the checkpoint's names (``attention.attn.q``, ``attention.LayerNorm``)
onto them. PEFT export writes BERT's names, so it refuses MPNet adapters (see
:mod:`lora_tasks.lora.peft_format`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from lora_tasks.models import ops
from lora_tasks.models.bert import BertConfig, BertModel, additive_mask
from lora_tasks.models.roberta import padding_positions
from lora_tasks.models.weights import hf_to_ours

# checkpoint name piece -> ours (BERT's module names)
_RENAMES = (
    (".attention.attn.q.", ".attention.self.query."),
    (".attention.attn.k.", ".attention.self.key."),
    (".attention.attn.v.", ".attention.self.value."),
    (".attention.attn.o.", ".attention.output.dense."),
    (".attention.LayerNorm.", ".attention.output.LayerNorm."),
)


@dataclass
class MPNetConfig(BertConfig):
    """A Hugging Face MPNet ``config.json`` (defaults: mpnet-base)."""

    vocab_size: int = 30527
    hidden_size: int = 768
    num_hidden_layers: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 514
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    relative_attention_num_buckets: int = 32
    model_type: str = "mpnet"


class MPNetEmbeddings(nn.Module):
    """Word + position embeddings; position ids count real tokens from ``pad_token_id + 1``
    (padding rows sit at ``pad_token_id``), as in RoBERTa."""

    def __init__(self, cfg: MPNetConfig) -> None:
        super().__init__()
        self.padding_idx = cfg.pad_token_id
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.LayerNorm = ops.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = ops.Dropout(cfg.hidden_dropout_prob)

    def __call__(self, input_ids: mx.array, token_type_ids: mx.array | None = None) -> mx.array:
        """``token_type_ids`` is accepted and ignored (MPNet has none), as for ModernBERT."""
        x = self.word_embeddings(input_ids) + self.position_embeddings(padding_positions(input_ids, self.padding_idx))
        return self.dropout(self.LayerNorm(x))


@lru_cache(maxsize=64)
def relative_position_buckets(seq: int, num_buckets: int = 32, max_distance: int = 128) -> np.ndarray:
    """(seq, seq) bucket of each (query i, key j) pair: half the buckets for keys to the left,
    half to the right; offsets below a quarter of ``num_buckets`` get a bucket each, larger ones
    share log-spaced buckets up to ``max_distance``. Computed in float32 like transformers'
    ``MPNetEncoder.relative_position_bucket`` so the bucket edges agree."""
    n = np.arange(seq)[:, None] - np.arange(seq)[None, :]  # query - key
    half = num_buckets // 2
    out = (n < 0).astype(np.int64) * half
    n = np.abs(n)
    max_exact = half // 2
    scaled = np.log(np.maximum(n, 1).astype(np.float32) / np.float32(max_exact))
    scaled = scaled / np.float32(math.log(max_distance / max_exact)) * np.float32(half - max_exact)
    large = np.minimum(max_exact + scaled.astype(np.int64), half - 1)
    out = (out + np.where(n < max_exact, n, large)).astype(np.int32)
    out.setflags(write=False)  # cached: shared by every call
    return out


class MPNetModel(BertModel):
    """MPNet: BERT's layer stack with :class:`MPNetEmbeddings` and a relative position bias
    (``encoder.relative_attention_bias``: buckets x heads) added to every layer's scores."""

    checkpoint_renames = _RENAMES  # (theirs, ours): checkpoints and PEFT say attention.attn.q/k/v/o

    def __init__(self, cfg: MPNetConfig, add_pooler: bool = True) -> None:
        super().__init__(cfg, add_pooler=add_pooler)
        self.embeddings = MPNetEmbeddings(cfg)
        self.encoder.relative_attention_bias = nn.Embedding(cfg.relative_attention_num_buckets, cfg.num_attention_heads)

    def attention_bias(self, attention_mask: mx.array | None, hidden: mx.array) -> mx.array:
        """Position bias (1, heads, seq, seq) plus the padding mask (batch, 1, 1, seq)."""
        buckets = relative_position_buckets(hidden.shape[1], self.config.relative_attention_num_buckets)
        bias = self.encoder.relative_attention_bias(mx.array(buckets)).transpose(2, 0, 1)[None]
        bias = bias.astype(hidden.dtype)
        mask = additive_mask(attention_mask, hidden.dtype)
        return bias if mask is None else bias + mask


def mpnet_to_ours(name: str) -> str:
    """HF MPNet checkpoint name -> our (BERT) module path; ``mpnet.`` prefixes of
    ``MPNetFor*`` checkpoints are dropped."""
    key = hf_to_ours(name, prefix="mpnet.")
    for theirs, ours in _RENAMES:
        key = key.replace(theirs, ours)
    return key
