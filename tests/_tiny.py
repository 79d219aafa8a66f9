"""Tiny random models and toy data for fast engine tests (importable by test subprocesses)."""

from __future__ import annotations

import numpy as np

TINY = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=32)


def toy_data(n: int = 160, seed: int = 0):
    """Rows of random tokens; the label says whether token 1 is above 27 (learnable, not trivial)."""
    from lora_tasks.training.train import Dataset

    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 50, (n, 12)).astype(np.int32)
    y = (ids[:, 1] > 27).astype(np.int32)
    mask = np.ones_like(ids)
    for i, length in enumerate(rng.integers(3, 13, n)):
        mask[i, length:] = 0
        ids[i, length:] = 0
    return Dataset(ids, mask, np.zeros_like(ids), y)


def tiny_model(seed: int = 0, head_type: str = "binary_classification", num_labels: int = 1):
    import mlx.core as mx

    from lora_tasks.models import BertConfig, BertWithHead

    mx.random.seed(seed)
    return BertWithHead(BertConfig(**TINY), head_type, num_labels)
