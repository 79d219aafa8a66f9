"""Encoders with task heads, and loading them from a model id or folder."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mlx.core as mx
import mlx.nn as nn

from lora_tasks.data.tokenizer import Tokenizer
from lora_tasks.hub import resolve_model_dir, weight_file, weights_fingerprint
from lora_tasks.models.architectures import ARCHITECTURES, Architecture, architecture, encoder_class
from lora_tasks.models.bert import BertConfig, BertModel
from lora_tasks.models.heads import POOLINGS, EncoderWithHead, Pooling
from lora_tasks.models.modernbert import ModernBertConfig, ModernBertModel, ModernBertWithHead, modernbert_to_ours
from lora_tasks.models.weights import WeightLoadError, hf_to_ours, load_weights, read_checkpoint


class BertWithHead(EncoderWithHead):
    """An encoder on BERT's layer stack (BERT, RoBERTa, DistilBERT, ELECTRA, MPNet: the class its
    config asks for) under attribute ``bert``, as in HF's ``BertForSequenceClassification``, plus a head.

    ``__call__`` returns logits: shape (batch,) for binary classification, else (batch, num_labels).
    """

    def __init__(
        self,
        config: BertConfig,
        head_type: str = "binary_classification",
        num_labels: int = 1,
        pooling: Pooling = "mean",
        head_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"Unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}.")
        # the encoder the config's class asks for: RobertaConfig -> RobertaModel, ... (architectures.py)
        self.bert = encoder_class(config)(config, add_pooler=pooling == "pooler")
        self._init_head(config.hidden_size, head_type, num_labels, pooling, head_dropout)

    @property
    def backbone(self) -> BertModel:
        """The encoder, whatever the attribute is called (``bert`` here, ``model`` for ModernBERT)."""
        return self.bert

    def pool(self, hidden: mx.array, attention_mask: mx.array | None) -> mx.array:
        if self.pooling == "pooler":
            return self.bert.pooler(hidden)
        return super().pool(hidden, attention_mask)

    # ---- split at a layer: the frozen-prefix cache computes the bottom once ------------------

    @property
    def num_layers(self) -> int:
        return len(self.bert.encoder.layer)

    def hidden_before(
        self, layer: int, input_ids: mx.array, attention_mask: mx.array | None, token_type_ids: mx.array | None = None
    ) -> mx.array:
        """Hidden states entering encoder layer ``layer`` (0: the embeddings' output)."""
        x = self.bert.embeddings(input_ids, token_type_ids)
        mask = self.bert.attention_bias(attention_mask, x)
        for block in self.bert.encoder.layer[:layer]:
            x = block(x, mask)
        return x

    def forward_from(self, layer: int, hidden: mx.array, attention_mask: mx.array | None) -> mx.array:
        """Logits from the hidden states entering encoder layer ``layer``."""
        x = self.bert.encoder(hidden, self.bert.attention_bias(attention_mask, hidden), start=layer)
        return self.logits_from_hidden(x, attention_mask)


@dataclass
class LoadedEncoder:
    """What :func:`load_encoder` returns: the model, its tokenizer, and where they came from."""

    model: nn.Module
    tokenizer: Tokenizer
    config: BertConfig | ModernBertConfig
    source: Path


def _file_has_pooler(path: Path, checkpoint_name: Callable[[str], str] = hf_to_ours) -> bool:
    return any(checkpoint_name(k).startswith("pooler.") for k in read_checkpoint(path))


def load_encoder(
    model: str | os.PathLike | None = None,
    head_type: str | None = None,
    num_labels: int = 1,
    pooling: Pooling = "mean",
    dtype: mx.Dtype = mx.float32,
) -> LoadedEncoder:
    """Load a BERT-family encoder with pretrained weights (``head_type=None``: the bare encoder,
    a :class:`BertModel`; otherwise a :class:`BertWithHead` whose head is freshly initialized).

    ``model`` is a local folder, a hub id, or ``None`` for the offline default all-MiniLM-L6-v2.
    The architecture follows config.json's ``model_type`` (:mod:`lora_tasks.models.architectures`):
    ``"bert"`` builds the above; ``"roberta"`` (and ``"xlm-roberta"``, ``"camembert"``),
    ``"mpnet"``, ``"distilbert"`` and ``"electra"`` build BERT's layer stack with their own
    embeddings (:class:`RobertaModel`, :class:`MPNetModel`, ... under the same head, BERT's module
    names); ``"modernbert"`` a :class:`ModernBertModel` or :class:`ModernBertWithHead` (encoder
    attribute ``model``; pooling ``"cls"`` or ``"mean"``).
    """
    folder = resolve_model_dir(model)
    config = read_model_config(folder)
    if isinstance(config, ModernBertConfig):
        loaded = _load_modernbert(folder, config, head_type, num_labels, pooling, dtype)
        loaded.model.base_weights_id = weights_fingerprint(model)
        return loaded
    arch = _architecture(folder)
    checkpoint_name = arch.checkpoint_name
    weights = weight_file(folder)
    if weights is None:  # resolve_model_dir checked, but keep the error explicit
        raise WeightLoadError(f"No weights in {folder}.")
    if head_type is None:
        net: nn.Module = arch.encoder(config, add_pooler=_file_has_pooler(weights, checkpoint_name))
        load_weights(net, weights, name_map=checkpoint_name)
    else:
        net = BertWithHead(config, head_type, num_labels, pooling)
        load_weights(net.bert, weights, name_map=lambda n: _strip_pooler_if_unused(checkpoint_name(n), pooling))
    if dtype != mx.float32:
        net.set_dtype(dtype)
    net.eval()  # MLX modules start in training mode; inference is the safe default
    net.base_weights_id = weights_fingerprint(model)  # the adapters' base identity (lora.adapter.base_identity)
    return LoadedEncoder(net, Tokenizer.from_file(folder / "tokenizer.json"), config, folder)


def read_model_config(folder: str | os.PathLike) -> BertConfig | ModernBertConfig:
    """A model folder's config.json as the config class its ``model_type`` asks for, in our field
    names (DistilBERT's ``dim``/``n_layers`` read as ``hidden_size``/``num_hidden_layers``)."""
    folder = Path(folder)
    if _model_type(folder / "config.json") == "modernbert":
        return ModernBertConfig.from_file(folder / "config.json")
    return _architecture(folder).config.from_file(folder / "config.json")


def _architecture(folder: Path) -> Architecture:
    model_type = _model_type(folder / "config.json")
    arch = architecture(model_type)
    if arch is None:
        known = ", ".join(repr(t) for t in [*ARCHITECTURES, "modernbert"] if t)
        raise ValueError(
            f"{folder}/config.json has model_type={model_type!r}, which load_encoder does not build. "
            f"Encoders it builds: model_type {known}."
        )
    return arch


def _model_type(config_file: Path) -> str:
    try:
        return str(json.loads(config_file.read_text()).get("model_type", "bert"))
    except (OSError, json.JSONDecodeError, AttributeError) as exc:
        raise ValueError(f"Cannot read model config {config_file}: {exc}") from exc


def _load_modernbert(
    folder: Path, config: ModernBertConfig, head_type: str | None, num_labels: int, pooling: Pooling, dtype: mx.Dtype
) -> LoadedEncoder:
    weights = weight_file(folder)
    if weights is None:
        raise WeightLoadError(f"No weights in {folder}.")
    if head_type is None:
        net: nn.Module = ModernBertModel(config)
        load_weights(net, weights, name_map=modernbert_to_ours)
    else:
        net = ModernBertWithHead(config, head_type, num_labels, pooling)
        load_weights(net.model, weights, name_map=modernbert_to_ours)
    if dtype != mx.float32:
        net.set_dtype(dtype)
    net.eval()
    return LoadedEncoder(net, Tokenizer.from_file(folder / "tokenizer.json"), config, folder)


def _strip_pooler_if_unused(key: str, pooling: str) -> str:
    if pooling != "pooler" and key.startswith("pooler."):
        return "cls.unused_pooler." + key  # ignored prefix: the head does not use the pooler
    return key


def config_json(config: BertConfig) -> str:
    return json.dumps(config.to_dict(), indent=2)
