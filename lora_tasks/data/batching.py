"""Length-bucketed batches with dynamic padding.

Why: attention and feed-forward cost grow with the padded length, and serialized rows vary a
lot in length (a tweet of 12 tokens next to one of 60). Padding every batch to the global
maximum wastes most of the compute; padding each batch to its own longest row helps, and
grouping rows of similar length into the same batch helps most. Sorting the whole set by
length would make batches non-random (all short rows in one epoch phase), so rows are
shuffled, cut into chunks of ``chunk_batches`` batches, sorted by length within each chunk,
and the resulting batches are shuffled again: random at the batch level, tight inside.
Everything is driven by a seed, so an epoch's batches are reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .tokenizer import Encoded


@dataclass(frozen=True)
class Batch:
    """Rows ``indices`` of the dataset, arrays trimmed to the longest of these rows."""

    indices: np.ndarray
    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray

    def __len__(self) -> int:
        return int(self.indices.shape[0])


def bucket_indices(
    lengths: np.ndarray,
    batch_size: int,
    *,
    seed: int = 0,
    shuffle: bool = True,
    chunk_batches: int = 50,
    drop_last: bool = False,
) -> list[np.ndarray]:
    """Index arrays of the batches of one epoch.

    ``shuffle=True`` (training): seeded shuffle, sort by length within chunks of
    ``chunk_batches * batch_size`` rows, batches in seeded random order.
    ``shuffle=False``: one global sort by length, in batches of ``batch_size`` rows (least padding;
    callers put outputs back in place with the indices). Prediction and the frozen prefix use
    :func:`forward_batches`, which also caps a batch's tokens.
    """
    lengths = np.asarray(lengths)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; use 1 or more.")
    n = len(lengths)
    if n == 0:
        return []
    if shuffle:
        rng = np.random.default_rng(seed)
        order = rng.permutation(n)
        chunk = max(1, chunk_batches) * batch_size
        pieces = [order[s : s + chunk] for s in range(0, n, chunk)]
        order = np.concatenate([p[np.argsort(lengths[p], kind="stable")] for p in pieces])
    else:
        order = np.argsort(lengths, kind="stable")
    batches = [order[s : s + batch_size] for s in range(0, n, batch_size)]
    if drop_last and len(batches[-1]) < batch_size:
        batches = batches[:-1]
    if shuffle:
        perm = np.random.default_rng(seed + 1).permutation(len(batches))
        batches = [batches[i] for i in perm]
    return batches


#: Tokens (rows x the batch's longest row) in one batch of a forward pass (prediction, the frozen
#: prefix): 32 rows at 512 tokens, the full 64 at 256 and below. At 500 tokens, 64-row batches
#: whose widths change from batch to batch ran 1.6x slower a row than 32-row ones in a worker
#: thread (as a fold runs); at 256 tokens and below the two were the same.
FORWARD_TOKENS = 16_384


def forward_batches(lengths: np.ndarray, max_rows: int, max_tokens: int = FORWARD_TOKENS) -> list[np.ndarray]:
    """Index arrays of a forward pass over every row, longest rows first: at most ``max_rows``
    rows a batch, and at most ``max_tokens`` tokens counted at the batch's longest row (always at
    least one row). Callers put the outputs back in place with the indices."""
    lengths = np.asarray(lengths)
    if max_rows < 1 or max_tokens < 1:
        raise ValueError(f"max_rows={max_rows}, max_tokens={max_tokens}; use 1 or more.")
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        rows = max(1, min(max_rows, max_tokens // max(int(lengths[order[start]]), 1)))
        batches.append(np.sort(order[start:start + rows]))
        start += rows
    return batches


def iter_batches(
    encoded: Encoded,
    lengths: np.ndarray,
    batch_size: int,
    *,
    seed: int = 0,
    shuffle: bool = True,
    chunk_batches: int = 50,
    drop_last: bool = False,
) -> Iterator[Batch]:
    """Batches of ``encoded`` in bucketed order, each trimmed to its own longest row."""
    if len(encoded) != len(lengths):
        raise ValueError(f"{len(encoded)} encoded rows but {len(lengths)} lengths; pass the lengths of these rows.")
    for idx in bucket_indices(
        lengths, batch_size, seed=seed, shuffle=shuffle, chunk_batches=chunk_batches, drop_last=drop_last
    ):
        width = int(np.max(lengths[idx]))
        yield Batch(
            indices=idx,
            input_ids=encoded.input_ids[idx, :width],
            attention_mask=encoded.attention_mask[idx, :width],
            token_type_ids=encoded.token_type_ids[idx, :width],
        )


def _padded(lengths: np.ndarray, batches: list[np.ndarray]) -> int:
    return int(sum(len(b) * int(lengths[b].max()) for b in batches))


@dataclass(frozen=True)
class PaddingReport:
    """Token slots computed per epoch under three batching schemes (real tokens are the floor)."""

    rows: int
    batch_size: int
    real_tokens: int
    global_max_tokens: int  # every batch padded to the longest row of the set
    random_dynamic_tokens: int  # random batches, each padded to its own longest row
    bucketed_tokens: int  # length-bucketed batches (this module), own longest row

    @property
    def saved_vs_random(self) -> float:
        """Share of padded slots removed by bucketing compared with random dynamic batches."""
        return 1.0 - self.bucketed_tokens / self.random_dynamic_tokens if self.random_dynamic_tokens else 0.0

    @property
    def saved_vs_global_max(self) -> float:
        return 1.0 - self.bucketed_tokens / self.global_max_tokens if self.global_max_tokens else 0.0

    @property
    def bucketed_efficiency(self) -> float:
        """Real tokens per computed token under bucketing (1.0 = no padding at all)."""
        return self.real_tokens / self.bucketed_tokens if self.bucketed_tokens else 1.0


def padding_report(
    lengths: np.ndarray, batch_size: int, *, seed: int = 0, chunk_batches: int = 50, max_len: int | None = None
) -> PaddingReport:
    """Padded tokens of one training epoch with and without bucketing (lengths capped at ``max_len``)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if max_len is not None:
        lengths = np.minimum(lengths, max_len)
    n = len(lengths)
    order = np.random.default_rng(seed).permutation(n)
    random_batches = [order[s : s + batch_size] for s in range(0, n, batch_size)]
    bucketed = bucket_indices(lengths, batch_size, seed=seed, shuffle=True, chunk_batches=chunk_batches)
    return PaddingReport(
        rows=n,
        batch_size=batch_size,
        real_tokens=int(lengths.sum()),
        global_max_tokens=int(n * lengths.max()) if n else 0,
        random_dynamic_tokens=_padded(lengths, random_batches) if n else 0,
        bucketed_tokens=_padded(lengths, bucketed) if n else 0,
    )
