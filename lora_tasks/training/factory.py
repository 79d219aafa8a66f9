"""Every ``create_*`` of the public API and :func:`build_model`: a model with adapters in one call.

This module sits above the adapter library (:mod:`lora_tasks.lora`) and the encoders
(:mod:`lora_tasks.models`), which know nothing of each other; it is the one place that joins them.
The model starts in eval mode, like :func:`~lora_tasks.models.encoder.load_encoder`; call
``model.train()`` before training so dropout (including the adapters') is active.

:func:`create_kaggle_lora_model` is the data-facing entry point: a notebook user with a Kaggle folder
gets one call that profiles the table, picks the LoRA preset and sequence length by the documented
rules (:mod:`lora_tasks.data.autoconfig`) and returns a ready model, without Prefect and without
knowing the head names of :mod:`lora_tasks.models.heads`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import mlx.core as mx
import mlx.nn as nn

from lora_tasks.hub import resolve_model_dir
from lora_tasks.lora.adapter import LoRAAdapter, check_supported
from lora_tasks.lora.config import LoRAConfig, as_config
from lora_tasks.lora.quantized import quantize_embeddings as quantize_embedding_tables
from lora_tasks.models.bert import BertConfig
from lora_tasks.models.encoder import BertWithHead, read_model_config
from lora_tasks.models.factory import ModelType, build_base
from lora_tasks.models.heads import Pooling
from lora_tasks.task import Task
from lora_tasks.training.multi_adapter import MultiAdapterManager
from lora_tasks.training.precision import ComputeDtype, cast_frozen_base, resolve_compute_dtype

if TYPE_CHECKING:
    from lora_tasks.data.autoconfig import TrainSettings


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
      avx512_bf16, and on Metal); see :mod:`lora_tasks.training.precision`.
    """
    if seed is not None:
        mx.random.seed(seed)
    lora = as_config(lora_config)
    check_supported(lora)  # before loading weights
    dtype = resolve_compute_dtype(compute_dtype)  # likewise
    net = build_base(model_type, head_type, num_labels, pooling, model, config, pretrained)
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
    return net, adapter  # type: ignore[return-value]  # "bert_with_head" builds a BertWithHead


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
    net = build_base(model_type, head_type, num_labels, pooling, model, config, pretrained)
    if quantize_embeddings:
        quantize_embedding_tables(net, bits=bits, group_size=group_size)
    adapter = LoRAAdapter(net, lora, freeze_base=True)
    cast_frozen_base(net, dtype)  # bf16: dequantize to bf16, not fp32
    return net, adapter


def create_multi_adapter_model(
    adapter_configs: Mapping[str, Any] | None = None,
    head_type: str = "binary_classification",
    num_labels: int = 1,
    model: str | os.PathLike | None = None,
    config: Any = None,
    pretrained: bool | None = None,
    seed: int | None = None,
    pooling: str = "mean",
) -> tuple[nn.Module, MultiAdapterManager]:
    """A BERT encoder with several named adapters, each with its own head: ``(model, manager)``.

    ``adapter_configs`` maps names to presets, LoRAConfigs or dicts; the default is
    ``{"task1": "efficient", "task2": "balanced", "ensemble": "expressive"}``. ``model``,
    ``config``, ``pretrained`` and ``seed`` mean what they mean for ``create_bert_with_lora``.
    """
    if adapter_configs is None:
        adapter_configs = {"task1": "efficient", "task2": "balanced", "ensemble": "expressive"}
    if not adapter_configs:
        raise ValueError("adapter_configs needs at least one adapter, e.g. {'task1': 'efficient'}.")
    resolved = {n: as_config(c) for n, c in adapter_configs.items()}
    for cfg in resolved.values():
        check_supported(cfg)  # before loading weights
    if seed is not None:
        mx.random.seed(seed)
    net = build_base("bert_with_head", head_type, num_labels, pooling, model, config, pretrained)  # type: ignore[arg-type]  # head_type: str, checked there
    return net, MultiAdapterManager(net, resolved)


#: Task names a user may give -> (head type of the model, whether num_labels comes from classes).
#: A tiny random BERT with MiniLM's vocabulary (so the real tokenizer fits): tests and dry runs.
TINY_BERT: dict[str, int] = dict(
    vocab_size=30522,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=512,
)

def head_type_for(task: str) -> str:
    """The model head for a task name (``binary``, ``multiclass``, ``regression``, ...): the
    :class:`~lora_tasks.task.Task` table, the one place task names are read."""
    try:
        return Task.parse(task).head_type
    except ValueError as exc:
        names = ", ".join(t.value for t in Task)
        raise ValueError(f"Unknown competition type {task!r}; use one of {names} (or a head type).") from exc


def build_model(
    head_type: str,
    preset: str,
    num_labels: int = 1,
    *,
    model: str | os.PathLike | None = None,
    tiny: bool = False,
    seed: int = 0,
    top_layers: int | None = None,
    base_seed: int | None = None,
    compute_dtype: ComputeDtype = "float32",
) -> tuple[nn.Module, LoRAAdapter]:
    """``(model, adapter)``: the pretrained encoder (``model`` id or folder; None = offline
    MiniLM), or with ``tiny=True`` a tiny random BERT with MiniLM's vocabulary.
    ``seed`` initializes the adapters (and the head); ``base_seed`` (default ``seed``) the tiny
    model's random base, so the folds of one run share their base like pretrained folds do.
    ``top_layers``: adapters on the top N encoder layers only (None: every layer).
    ``compute_dtype``: the frozen base's dtype (see :func:`create_model_with_lora`)."""
    overrides: dict[str, Any] = {}
    if top_layers is not None:
        n_layers = model_shape(model, tiny)["num_layers"]
        if not 1 <= int(top_layers) <= n_layers:
            raise ValueError(f"top_layers={top_layers}: this model has {n_layers} encoder layers; "
                             f"use 1..{n_layers}, or None to adapt every layer.")
        overrides["layers_to_transform"] = tuple(range(n_layers - int(top_layers), n_layers))
    if tiny:
        return create_bert_with_lora(
            head_type, preset, num_labels, config=BertConfig(**TINY_BERT), pretrained=False,
            seed=seed if base_seed is None else base_seed, adapter_seed=seed, compute_dtype=compute_dtype, **overrides
        )
    return create_bert_with_lora(head_type, preset, num_labels, model=model, seed=seed, compute_dtype=compute_dtype,
                                 **overrides)


@dataclass
class KaggleLoRAModel:
    """What :func:`create_kaggle_lora_model` built, and why (``settings.reasons``)."""

    model: nn.Module
    adapter: LoRAAdapter
    head_type: str
    num_labels: int
    settings: TrainSettings  # the chosen settings; ``settings.reasons`` says why each was chosen

    def __iter__(self) -> Iterator[Any]:  # ``model, lora_adapter = create_kaggle_lora_model(...)``, as the seed writes
        return iter((self.model, self.adapter))


def create_kaggle_lora_model(
    competition_type: str,
    data_path: str | os.PathLike | None = None,
    auto_select_preset: bool = True,
    *,
    preset: str = "balanced",
    num_labels: int | None = None,
    model: str | os.PathLike | None = None,
    competition: str | None = None,
    tiny: bool = False,
    seed: int = 0,
) -> KaggleLoRAModel:
    """A model with LoRA for a Kaggle task: profile -> settings -> model + adapter.

    ``competition_type``: ``binary``, ``multiclass``, ``multilabel`` or ``regression`` (the head
    names of :mod:`lora_tasks.models.heads` work too). ``data_path``: the competition's data folder
    or its train.csv (a sample submission, when there is one, names the id and target columns;
    without one they are guessed from train.csv, and ``settings.reasons`` says how); with it and
    ``auto_select_preset`` the table is profiled
    with the model's tokenizer and the rule table picks the preset, sequence length, epochs and
    folds (``settings.reasons`` says why). Without data the given ``preset`` is used with the
    default settings. ``num_labels`` defaults to the number of classes found in the data
    (multiclass) or 1. ``competition`` names the config in ``competitions/`` (default: the data
    folder's name, else everything is inferred from the files).
    """
    # the data layer pulls in pandas and scikit-learn (seconds): loaded only by this entry point
    from lora_tasks.data.autoconfig import TrainSettings, auto_configure
    from lora_tasks.data.competition import load_competition
    from lora_tasks.data.profile import profile_competition
    from lora_tasks.data.tokenizer import Tokenizer
    from lora_tasks.data.train_only import has_sample_submission, load_train_only

    head_type = head_type_for(competition_type)
    settings = TrainSettings(preset=preset)
    classes: tuple | None = None
    guesses: list[str] = []
    if data_path is not None:
        given = Path(data_path)
        folder = given.parent if given.is_file() else given
        name, train = competition or folder.name, None
        if not has_sample_submission(folder):  # train.csv alone: its roles are guessed
            config, train, guesses = load_train_only(given if given.is_file() else folder / "train.csv",
                                                     Task.parse(competition_type), name)
        else:
            config = load_competition(name, data_dir=folder)
        classes = config.classes
        tokenizer = Tokenizer.from_pretrained(None if tiny else model)
        profile = profile_competition(config, tokenizer=tokenizer, train=train)
        if auto_select_preset:
            settings = auto_configure(profile, competition=config, **model_shape(model, tiny))
    settings.reasons[:0] = guesses
    if not auto_select_preset:
        settings.preset = preset
    if num_labels is None:
        num_labels = len(classes) if head_type == "multiclass_classification" and classes else 1
    net, adapter = build_model(head_type, settings.preset, num_labels, model=model, tiny=tiny, seed=seed)
    return KaggleLoRAModel(net, adapter, head_type, num_labels, settings)


def model_shape(model: str | os.PathLike | None = None, tiny: bool = False) -> dict[str, int]:
    """Size facts of the encoder for the auto-config memory rules (read from config.json)."""
    if tiny:
        h, n_layers, inter, vocab = (TINY_BERT[k] for k in ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size"))
        max_len = TINY_BERT["max_position_embeddings"]
    else:
        cfg = read_model_config(resolve_model_dir(model))
        h, n_layers, inter = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size
        vocab, max_len = cfg.vocab_size, cfg.max_position_embeddings
    params = vocab * h + max_len * h + n_layers * (4 * h * h + 2 * h * inter)
    return {"model_params": params, "hidden_size": h, "num_layers": n_layers, "model_max_len": min(max_len, 512)}
