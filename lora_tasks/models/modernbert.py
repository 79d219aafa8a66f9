"""A ModernBERT encoder in MLX: rotary positions, GeGLU, pre-norm, alternating global and
sliding-window local attention, no biases (by default), a final norm.

Module names follow Hugging Face's ``ModernBertModel`` one to one (``layers.3.attn.Wqkv``,
``layers.3.mlp.Wi``, ``final_norm``) so that checkpoints and PEFT adapter keys map 1:1; every
projection is a plain ``mlx.nn.Linear`` so the LoRA layers can wrap it. Query, key and value live
in one fused ``attn.Wqkv`` (output rows ``[q | k | v]``); see ``docs/modernbert.md`` for how the
BERT LoRA presets translate, and :data:`LORA_TARGETS` / :func:`qkv_slices` for the same in code.

Unlike transformers (which unpads for flash attention) this works on padded batches with an
attention mask; positions are ``0..seq-1`` per row, so batches must be right-padded (ours are).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from lora_tasks.backend import is_cpu_backend
from lora_tasks.models import ops
from lora_tasks.models.bert import ConfigFile
from lora_tasks.models.heads import EncoderWithHead, Pooling
from lora_tasks.models.weights import hf_to_ours

GLOBAL = "full_attention"
LOCAL = "sliding_attention"
_DEFAULT_THETA = {GLOBAL: 160_000.0, LOCAL: 10_000.0}

# Role of a BERT LoRA target -> the ModernBERT module that plays it (per layer, under ``layers.N.``).
# query, key and value share the fused ``attn.Wqkv``: one LoRA on it, or a LoRA restricted to
# the rows of :func:`qkv_slices` when a preset adapts only some of them.
LORA_TARGETS: dict[str, str] = {
    "query": "attn.Wqkv",
    "key": "attn.Wqkv",
    "value": "attn.Wqkv",
    "attention_output": "attn.Wo",
    "intermediate": "mlp.Wi",
    "output": "mlp.Wo",
}


@dataclass
class ModernBertConfig(ConfigFile):
    """The subset of a Hugging Face ModernBERT ``config.json`` that defines the encoder.

    Reads both config styles on the hub: the original (``global_attn_every_n_layers``,
    ``global_rope_theta``, ``local_rope_theta``) and transformers 5's (``layer_types``,
    ``rope_parameters``). ``layer_types`` is always filled in after :meth:`from_dict`.
    """

    vocab_size: int = 50368
    hidden_size: int = 768
    intermediate_size: int = 1152
    num_hidden_layers: int = 22
    num_attention_heads: int = 12
    hidden_activation: str = "gelu"
    max_position_embeddings: int = 8192
    norm_eps: float = 1e-5
    norm_bias: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    attention_dropout: float = 0.0
    embedding_dropout: float = 0.0
    mlp_dropout: float = 0.0
    local_attention: int = 128
    global_attn_every_n_layers: int = 3
    global_rope_theta: float = _DEFAULT_THETA[GLOBAL]
    local_rope_theta: float = _DEFAULT_THETA[LOCAL]
    layer_types: list[str] = field(default_factory=list)
    pad_token_id: int = 50283
    classifier_pooling: str = "cls"
    model_type: str = "modernbert"

    def __post_init__(self) -> None:
        if not self.layer_types:
            n = self.global_attn_every_n_layers
            self.layer_types = [LOCAL if i % n else GLOBAL for i in range(self.num_hidden_layers)]

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def window_radius(self) -> int:
        """A local layer's query attends to keys at distance <= ``local_attention // 2``."""
        return self.local_attention // 2

    def rope_theta(self, layer_type: str) -> float:
        return self.global_rope_theta if layer_type == GLOBAL else self.local_rope_theta

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModernBertConfig":
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known and v is not None}
        rope = data.get("rope_parameters") or {}
        for layer_type, key in ((GLOBAL, "global_rope_theta"), (LOCAL, "local_rope_theta")):
            params = rope.get(layer_type) or {}
            if params.get("rope_type", "default") != "default":
                raise ValueError(
                    f"rope_parameters[{layer_type!r}] has rope_type={params['rope_type']!r}; only the default "
                    "RoPE of ModernBERT is supported. Use a config without RoPE scaling."
                )
            if "rope_theta" in params:
                kwargs[key] = float(params["rope_theta"])
        if data.get("rope_scaling"):
            raise ValueError("config.json sets rope_scaling; only ModernBERT's default RoPE is supported. Remove it.")
        cfg = cls(**kwargs)
        cfg._validate()
        return cfg

    def _validate(self) -> None:
        if self.hidden_size % self.num_attention_heads or self.head_dim % 2:
            raise ValueError(
                f"hidden_size={self.hidden_size} must split into num_attention_heads={self.num_attention_heads} "
                "heads of an even size (rotary embeddings rotate pairs); fix config.json."
            )
        if self.hidden_activation not in ops.ACTIVATIONS:
            raise ValueError(
                f"hidden_activation={self.hidden_activation!r} is not supported; use one of {sorted(ops.ACTIVATIONS)}."
            )
        if len(self.layer_types) != self.num_hidden_layers or set(self.layer_types) - {GLOBAL, LOCAL}:
            raise ValueError(
                f"layer_types={self.layer_types!r} must list {self.num_hidden_layers} entries, each "
                f"{GLOBAL!r} or {LOCAL!r}; fix config.json (or drop it and set global_attn_every_n_layers)."
            )



def qkv_slices(config: ModernBertConfig) -> dict[str, slice]:
    """Output rows of ``attn.Wqkv`` that compute query, key and value (HF's layout: q, k, v)."""
    h = config.hidden_size
    return {"query": slice(0, h), "key": slice(h, 2 * h), "value": slice(2 * h, 3 * h)}


# ---- rotary embeddings -----------------------------------------------------------------------


class RotaryTables:
    """cos/sin tables of rotate-half RoPE, per (theta, seq length), computed once in float64.

    Why not ``mx.fast.rope``: the tables are tiny and exact this way, and the formula stays
    visibly the one transformers uses (``x * cos + rotate_half(x) * sin``).
    """

    def __init__(self, head_dim: int) -> None:
        self.head_dim = head_dim
        self._cache: dict[tuple[float, int], tuple[mx.array, mx.array]] = {}

    def __call__(self, theta: float, seq: int) -> tuple[mx.array, mx.array]:
        key = (theta, seq)
        if key not in self._cache:
            inv_freq = 1.0 / theta ** (np.arange(0, self.head_dim, 2, dtype=np.float64) / self.head_dim)
            freqs = np.arange(seq, dtype=np.float64)[:, None] * inv_freq[None, :]
            emb = np.concatenate([freqs, freqs], axis=-1)
            self._cache[key] = (mx.array(np.cos(emb).astype(np.float32)), mx.array(np.sin(emb).astype(np.float32)))
        return self._cache[key]


def apply_rotary(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    """Rotate (batch, heads, seq, head_dim) by position: ``x * cos + rotate_half(x) * sin``."""
    half = x.shape[-1] // 2
    rotated = mx.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos.astype(x.dtype) + rotated * sin.astype(x.dtype)


# ---- layers ----------------------------------------------------------------------------------

_CPU = is_cpu_backend()


def attention(
    q: mx.array, k: mx.array, v: mx.array, mask: mx.array | None, scale: float, dropout: nn.Module
) -> mx.array:
    """:func:`ops.attention`, except that on the CPU half-precision scores go through the softmax
    in float32 (as transformers does): the fast polynomial ``exp`` squares its result 8 times,
    which in bfloat16 wrecks the probabilities (cosine to float32 outputs fell to 0.85)."""
    if q.dtype == mx.float32 or not _CPU:
        return ops.attention(q, k, v, mask, scale, dropout)
    scores = ((q * scale) @ k.swapaxes(-1, -2)).astype(mx.float32)
    if mask is not None:
        scores = scores + mask
    return dropout(ops.softmax(scores).astype(v.dtype)) @ v



class ModernBertEmbeddings(nn.Module):
    """Token embeddings then a LayerNorm; no position embeddings (positions enter via RoPE)."""

    def __init__(self, cfg: ModernBertConfig) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.norm = ops.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps, bias=cfg.norm_bias)
        self.drop = ops.Dropout(cfg.embedding_dropout)

    def __call__(self, input_ids: mx.array) -> mx.array:
        return self.drop(self.norm(self.tok_embeddings(input_ids)))


class ModernBertAttention(nn.Module):
    """Self-attention through one fused ``Wqkv`` projection, RoPE on queries and keys, then ``Wo``."""

    def __init__(self, cfg: ModernBertConfig, layer_type: str) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.head_dim
        self.layer_type = layer_type
        self.rope_theta = cfg.rope_theta(layer_type)
        self.Wqkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=cfg.attention_bias)
        self.Wo = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.attention_bias)
        self.attn_drop = ops.Dropout(cfg.attention_dropout)
        self.out_drop = ops.Dropout(cfg.attention_dropout)

    def __call__(self, x: mx.array, mask: mx.array | None, rotary: RotaryTables) -> mx.array:
        b, s, _ = x.shape
        qkv = self.Wqkv(x).reshape(b, s, 3, self.num_heads, self.head_dim).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        cos, sin = rotary(self.rope_theta, s)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = attention(q, k, v, mask, 1.0 / math.sqrt(self.head_dim), self.attn_drop)
        return self.out_drop(self.Wo(out.transpose(0, 2, 1, 3).reshape(b, s, -1)))


class ModernBertMLP(nn.Module):
    """GeGLU: ``Wi`` makes ``[input | gate]`` (2 x intermediate), then ``Wo(act(input) * gate)``."""

    def __init__(self, cfg: ModernBertConfig) -> None:
        super().__init__()
        self.Wi = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=cfg.mlp_bias)
        self.act = ops.ACTIVATIONS[cfg.hidden_activation]
        self.drop = ops.Dropout(cfg.mlp_dropout)
        self.Wo = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def __call__(self, x: mx.array) -> mx.array:
        h, gate = mx.split(self.Wi(x), 2, axis=-1)
        return self.Wo(self.drop(self.act(h) * gate))


class ModernBertEncoderLayer(nn.Module):
    """Pre-norm block. Layer 0 has no ``attn_norm`` (the embedding norm precedes it), as in HF."""

    def __init__(self, cfg: ModernBertConfig, index: int) -> None:
        super().__init__()
        self.attention_type = cfg.layer_types[index]
        self.attn_norm = nn.Identity() if index == 0 else ops.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps, bias=cfg.norm_bias)
        self.attn = ModernBertAttention(cfg, self.attention_type)
        self.mlp_norm = ops.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps, bias=cfg.norm_bias)
        self.mlp = ModernBertMLP(cfg)

    def __call__(self, x: mx.array, mask: mx.array | None, rotary: RotaryTables) -> mx.array:
        x = x + self.attn(self.attn_norm(x), mask, rotary)
        return x + self.mlp(self.mlp_norm(x))


def attention_masks(
    attention_mask: mx.array | None, seq: int, window_radius: int, dtype: mx.Dtype = mx.float32
) -> dict[str, mx.array | None]:
    """Additive masks per layer type: global layers see every real key; local layers only keys
    within ``window_radius`` positions (inclusive) of the query.

    Built from one boolean "allowed" mask and converted once, so a fully masked row (a padding
    query far from every real key) holds finite values rather than ``-inf - -inf = nan``.
    """
    neg = mx.array(mx.finfo(dtype).min, dtype=dtype)
    zero = mx.array(0.0, dtype=dtype)
    pos = np.arange(seq)
    window = mx.array(np.abs(pos[:, None] - pos[None, :]) <= window_radius)  # (seq, seq)
    if attention_mask is None:
        return {GLOBAL: None, LOCAL: mx.where(window, zero, neg)[None, None]}
    keys = attention_mask.astype(mx.bool_)[:, None, None, :]  # (batch, 1, 1, seq)
    return {GLOBAL: mx.where(keys, zero, neg), LOCAL: mx.where(keys & window, zero, neg)}


class ModernBertModel(nn.Module):
    """Embeddings, pre-norm layers alternating global and local attention, and ``final_norm``."""

    def __init__(self, cfg: ModernBertConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = ModernBertEmbeddings(cfg)
        self.layers = [ModernBertEncoderLayer(cfg, i) for i in range(cfg.num_hidden_layers)]
        self.final_norm = ops.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps, bias=cfg.norm_bias)
        self._rotary = RotaryTables(cfg.head_dim)  # underscore: not a module or parameter

    def __call__(
        self,
        input_ids: mx.array,
        attention_mask: mx.array | None = None,
        token_type_ids: mx.array | None = None,
    ) -> mx.array:
        """Last hidden states, shape (batch, seq, hidden). ``token_type_ids`` is accepted and
        ignored (ModernBERT has none) so callers can treat BERT and ModernBERT alike."""
        x = self.embeddings(input_ids)
        masks = attention_masks(attention_mask, input_ids.shape[1], self.config.window_radius, x.dtype)
        for layer in self.layers:
            x = layer(x, masks[layer.attention_type], self._rotary)
        return self.final_norm(x)


class ModernBertWithHead(EncoderWithHead):
    """A ModernBERT encoder (attribute ``model``, as in HF's ``ModernBertForSequenceClassification``)
    plus the same head as :class:`lora_tasks.models.BertWithHead` (dropout + linear on the pooled
    vector), so training code treats both alike. ``__call__`` returns logits: shape (batch,) for
    binary classification, else (batch, num_labels).

    HF's own classifier adds a dense+GELU+norm block before the linear layer; ours is freshly
    initialized anyway, so we keep the one head design across encoders.
    """

    def __init__(
        self,
        config: ModernBertConfig,
        head_type: str = "binary_classification",
        num_labels: int = 1,
        pooling: Pooling = "mean",
        head_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(
                f"pooling={pooling!r} is not available for ModernBERT (it has no pooler layer); use 'cls' or 'mean'."
            )
        self.model = ModernBertModel(config)
        self._init_head(config.hidden_size, head_type, num_labels, pooling, head_dropout)

    @property
    def backbone(self) -> ModernBertModel:
        """The encoder, whatever the attribute is called (``model`` here, ``bert`` for BERT)."""
        return self.model


def modernbert_to_ours(name: str) -> str:
    """HF ModernBERT checkpoint name -> our module path. Names are identical once the ``model.``
    prefix of ``ModernBertFor*`` checkpoints is gone; their ``head.``/``decoder.`` (MLM) entries
    are ignored by :func:`lora_tasks.models.weights.load_weights`, and a fine-tuned
    ``classifier.`` is routed there too, because our heads are always fresh."""
    key = hf_to_ours(name, prefix="model.")
    if key.startswith("classifier."):
        return "head." + key
    return key
