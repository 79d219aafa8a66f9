"""``create_kaggle_lora_model``: from a task type (and optionally the data) to a model with LoRA.

Why a separate entry point: a notebook user who has a Kaggle folder wants one call that
profiles the table, picks the LoRA preset and sequence length by the documented rules
(:mod:`lora_tasks.data.autoconfig`) and returns a ready model, without Prefect and without
knowing the head names of :mod:`lora_tasks.models.heads`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Task names a user may give -> (head type of the model, whether num_labels comes from classes).
TASK_TO_HEAD: dict[str, str] = {
    "binary": "binary_classification",
    "binary_classification": "binary_classification",
    "classification": "binary_classification",
    "multiclass": "multiclass_classification",
    "multiclass_classification": "multiclass_classification",
    "multilabel": "multilabel_classification",
    "multilabel_classification": "multilabel_classification",
    "regression": "regression",
}

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
    """The model head for a task name (``binary``, ``multiclass``, ``regression``, ...)."""
    key = str(task).strip().lower().replace("-", "_")
    if key not in TASK_TO_HEAD:
        raise ValueError(
            f"Unknown competition type {task!r}; use one of {', '.join(sorted(set(TASK_TO_HEAD)))}."
        )
    return TASK_TO_HEAD[key]


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
) -> tuple[Any, Any]:
    """``(model, adapter)``: the pretrained encoder (``model`` id or folder; None = offline
    MiniLM), or with ``tiny=True`` a tiny random BERT with MiniLM's vocabulary.
    ``seed`` initializes the adapters (and the head); ``base_seed`` (default ``seed``) the tiny
    model's random base, so the folds of one run share their base like pretrained folds do.
    ``top_layers``: adapters on the top N encoder layers only (None: every layer)."""
    from lora_tasks.models.bert import BertConfig
    from lora_tasks.models.factory import create_bert_with_lora

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
            seed=seed if base_seed is None else base_seed, adapter_seed=seed, **overrides
        )
    return create_bert_with_lora(head_type, preset, num_labels, model=model, seed=seed, **overrides)


@dataclass
class KaggleLoRAModel:
    """What :func:`create_kaggle_lora_model` built, and why (``settings.reasons``)."""

    model: Any
    adapter: Any
    head_type: str
    num_labels: int
    settings: Any  # lora_tasks.data.autoconfig.TrainSettings

    def __iter__(self):  # ``model, adapter, settings = create_kaggle_lora_model(...)``
        return iter((self.model, self.adapter, self.settings))


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
    (train.csv, sample submission); with it and ``auto_select_preset`` the table is profiled
    with the model's tokenizer and the rule table picks the preset, sequence length, epochs and
    folds (``settings.reasons`` says why). Without data the given ``preset`` is used with the
    default settings. ``num_labels`` defaults to the number of classes found in the data
    (multiclass) or 1. ``competition`` names the config in ``competitions/`` (default: the data
    folder's name, else everything is inferred from the files).
    """
    from lora_tasks.data.autoconfig import TrainSettings

    head_type = head_type_for(competition_type)
    settings = TrainSettings(preset=preset)
    classes: tuple | None = None
    if data_path is not None:
        from lora_tasks.data.autoconfig import auto_configure
        from lora_tasks.data.competition import load_competition
        from lora_tasks.data.profile import profile_competition
        from lora_tasks.data.tokenizer import Tokenizer

        folder = Path(data_path)
        if folder.is_file():
            folder = folder.parent
        config = load_competition(competition or folder.name, data_dir=folder)
        classes = config.classes
        tokenizer = Tokenizer.from_pretrained(None if tiny else model)
        profile = profile_competition(config, tokenizer=tokenizer)
        if auto_select_preset:
            settings = auto_configure(profile, competition=config, **model_shape(model, tiny))
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
        from lora_tasks.hub import resolve_model_dir
        from lora_tasks.models.encoder import read_model_config

        cfg = read_model_config(resolve_model_dir(model))
        h, n_layers, inter = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size
        vocab, max_len = cfg.vocab_size, cfg.max_position_embeddings
    params = vocab * h + max_len * h + n_layers * (4 * h * h + 2 * h * inter)
    return {"model_params": params, "hidden_size": h, "num_layers": n_layers, "model_max_len": min(max_len, 512)}
