"""``create_*`` factories: an encoder (pretrained or tiny random) with LoRA adapters, in one call.

Both return ``(model, lora_adapter)``. The model starts in eval mode, like :func:`load_encoder`;
call ``model.train()`` before training so dropout (including the adapters') is active.
"""

from __future__ import annotations

import os
from typing import Any, Literal, Mapping

import mlx.core as mx
import mlx.nn as nn

from lora_tasks.lora import LoRAAdapter, LoRAConfig
from lora_tasks.lora.adapter import check_supported
from lora_tasks.lora.config import as_config
from lora_tasks.models.architectures import encoder_class
from lora_tasks.models.bert import BertConfig
from lora_tasks.models.encoder import BertWithHead, load_encoder
from lora_tasks.models.heads import Pooling
from lora_tasks.models.precision import ComputeDtype, cast_frozen_base, resolve_compute_dtype

MODEL_TYPES = ("bert_with_head", "bert", "modernbert_with_head", "modernbert")
ModelType = Literal["bert_with_head", "bert", "modernbert_with_head", "modernbert"]


def _build(
    model_type: str,
    head_type: str,
    num_labels: int,
    pooling: Pooling,
    model: str | os.PathLike | None,
    config: BertConfig | None,
    pretrained: bool | None,
) -> nn.Module:
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
        from lora_tasks.models.modernbert import ModernBertConfig, ModernBertModel, ModernBertWithHead

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


def create_model_with_lora(
    model_type: ModelType = "bert_with_head",
    lora_config: LoRAConfig | str | Mapping[str, Any] | None = None,
    *,
    head_type: str = "binary_classification",
    num_labels: int = 1,
    model: str | os.PathLike | None = None,
    pooling: Pooling = "mean",
    freeze_bert: bool = True,
    config: BertConfig | None = None,
    pretrained: bool | None = None,
    seed: int | None = None,
    adapter_seed: int | None = None,
    compute_dtype: ComputeDtype = "float32",
) -> tuple[nn.Module, LoRAAdapter]:
    """Build a model and apply LoRA to it.

    - ``model_type``: ``"bert_with_head"`` (encoder + task head) or ``"bert"`` (bare encoder).
    - ``lora_config``: a :class:`LoRAConfig`, a preset name, a dict of config fields, or None
      (preset ``"balanced"``).
    - ``model``: a model id or folder; None is the offline all-MiniLM-L6-v2.
    - ``config`` with ``pretrained=False``: a randomly initialized model of that shape (tests,
      parameter counts; nothing is computed until used).
    - ``freeze_bert=False`` trains the whole model along with the adapters.
    - ``seed`` seeds MLX's generator first, so adapter (and random model) initialization repeats.
      ``adapter_seed`` reseeds it after the model is built: several adapters on one random base
      (the folds of a tiny test model) share the base and differ in their adapters.
    - ``compute_dtype``: ``"float32"``, ``"bfloat16"`` (frozen base weights stored and multiplied
      in bf16; adapters, head, norms and loss stay fp32) or ``"auto"`` (bf16 where the CPU has
      avx512_bf16, and on Metal); see :mod:`lora_tasks.models.precision`.
    """
    if seed is not None:
        mx.random.seed(seed)
    lora = as_config(lora_config)
    check_supported(lora)  # before loading weights
    dtype = resolve_compute_dtype(compute_dtype)  # likewise
    net = _build(model_type, head_type, num_labels, pooling, model, config, pretrained)
    if adapter_seed is not None:
        mx.random.seed(adapter_seed)
    adapter = LoRAAdapter(net, lora, freeze_base=freeze_bert)
    cast_frozen_base(net, dtype)
    return net, adapter


def create_bert_with_lora(
    head_type: str = "binary_classification",
    lora_preset: str | LoRAConfig = "balanced",
    num_labels: int = 1,
    freeze_bert: bool = True,
    *,
    model: str | os.PathLike | None = None,
    pooling: Pooling = "mean",
    config: BertConfig | None = None,
    pretrained: bool | None = None,
    seed: int | None = None,
    adapter_seed: int | None = None,
    compute_dtype: ComputeDtype = "float32",
    **lora_overrides: Any,
) -> tuple[BertWithHead, LoRAAdapter]:
    """A BERT encoder with a task head and LoRA from a preset (``efficient``, ``balanced``,
    ``expressive``; ``qlora_memory`` and ``qlora_quality`` store the frozen base 4-bit, see
    :func:`create_qlora_model`).

    Extra keyword arguments override preset fields: ``create_bert_with_lora("regression",
    "balanced", dropout=0.0, use_dora=True)``. ``lora_preset`` may also be a :class:`LoRAConfig`.
    """
    lora = as_config(lora_preset)
    if lora_overrides:
        unknown = set(lora_overrides) - set(LoRAConfig.__dataclass_fields__)
        if unknown:
            raise TypeError(
                f"create_bert_with_lora got unknown arguments {sorted(unknown)}; extra keyword arguments must be "
                f"LoRAConfig fields ({', '.join(LoRAConfig.__dataclass_fields__)})."
            )
        lora = lora.replace(**lora_overrides)
    net, adapter = create_model_with_lora(
        "bert_with_head",
        lora,
        head_type=head_type,
        num_labels=num_labels,
        model=model,
        pooling=pooling,
        freeze_bert=freeze_bert,
        config=config,
        pretrained=pretrained,
        seed=seed,
        adapter_seed=adapter_seed,
        compute_dtype=compute_dtype,
    )
    return net, adapter  # type: ignore[return-value]


def create_qlora_model(
    model_type: ModelType = "bert_with_head",
    qlora_preset: str | LoRAConfig = "qlora_memory",
    *,
    head_type: str = "binary_classification",
    num_labels: int = 1,
    model: str | os.PathLike | None = None,
    config: Any = None,
    pretrained: bool | None = None,
    bits: int = 4,
    group_size: int = 64,
    quantize_embeddings: bool = False,
    pooling: Pooling = "mean",
    seed: int | None = None,
    compute_dtype: ComputeDtype = "float32",
    **lora_overrides: Any,
) -> tuple[nn.Module, LoRAAdapter]:
    """QLoRA: a model whose frozen base linears are stored ``bits``-bit (MLX affine quantization,
    groups of ``group_size``), with fp32 LoRA adapters and an fp32 task head on top.

    - ``qlora_preset``: ``"qlora_memory"`` (r 4 on query, value) or ``"qlora_quality"`` (r 8 on
      the attention), or any preset/:class:`LoRAConfig` (its base is then quantized too).
    - ``bits``: 4 (default) or 8.
    - ``quantize_embeddings=True`` also stores the embedding tables quantized (MiniLM's word
      embeddings are 47 MB of its 87 MB in fp32); lookups dequantize only the gathered rows.
    - ``model_type``: ``"bert_with_head"``, ``"modernbert_with_head"`` (or the bare encoders).
    - ``compute_dtype="bfloat16"`` (or ``"auto"`` on a CPU with avx512_bf16) dequantizes the base to
      bf16 instead of fp32 before each GEMM.

    On the CPU the quantized weights are dequantized right before each GEMM (see
    :mod:`lora_tasks.lora.quantized`); :func:`lora_tasks.lora.quantized.array_bytes` measures memory.
    """
    if seed is not None:
        mx.random.seed(seed)
    lora = as_config(qlora_preset)
    if lora_overrides:
        unknown = set(lora_overrides) - set(LoRAConfig.__dataclass_fields__)
        if unknown:
            raise TypeError(f"create_qlora_model got unknown arguments {sorted(unknown)}; extra keyword arguments "
                            f"must be LoRAConfig fields ({', '.join(LoRAConfig.__dataclass_fields__)}).")
        lora = lora.replace(**lora_overrides)
    lora = lora.replace(quantize_bits=bits, quantize_group_size=group_size)
    check_supported(lora)
    dtype = resolve_compute_dtype(compute_dtype)
    net = _build(model_type, head_type, num_labels, pooling, model, config, pretrained)
    if quantize_embeddings:
        from lora_tasks.lora.quantized import quantize_embeddings as _quantize_embeddings

        _quantize_embeddings(net, bits=bits, group_size=group_size)
    adapter = LoRAAdapter(net, lora, freeze_base=True)
    cast_frozen_base(net, dtype)  # bf16: dequantize to bf16, not fp32
    return net, adapter
