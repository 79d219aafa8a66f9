"""Task-vector arithmetic for merging adapters (numpy only): TIES, DARE, top-k trimming and the
truncated SVD that refactors a merged update into LoRA factors.

Why apart from :mod:`lora_tasks.lora.merge`: these are the published merge rules on plain arrays,
tested against reference formulas; ``merge`` reads adapters and builds the merged one around them.
"""

from __future__ import annotations

import numpy as np


def ties(taus: np.ndarray, weights: np.ndarray, density: float) -> np.ndarray:
    """TIES-merging of task vectors ``taus`` (K, ...): trim, weight, elect sign, disjoint mean."""
    trimmed = np.stack([keep_top(t, density) for t in taus])
    weighted = trimmed * np.asarray(weights).reshape((-1,) + (1,) * (taus.ndim - 1))
    majority = np.where(weighted.sum(axis=0) >= 0, 1.0, -1.0)
    agree = np.sign(weighted) == majority
    return (weighted * agree).sum(axis=0) / np.clip(agree.sum(axis=0), 1, None)


def dare(taus: np.ndarray, weights: np.ndarray, density: float, rng: np.random.Generator) -> np.ndarray:
    """DARE: keep each entry with probability ``density`` and rescale by ``1/density``, then weighted sum."""
    out = np.zeros(taus.shape[1:])
    for wk, t in zip(weights, taus, strict=True):
        keep = rng.random(t.shape) < density
        out += wk * np.where(keep, t / density, 0.0)
    return out


def keep_top(t: np.ndarray, density: float) -> np.ndarray:
    """Zero all but the ``int(density * size)`` largest-magnitude entries."""
    k = int(density * t.size)
    if k <= 0:
        return np.zeros_like(t)
    flat = np.abs(t).ravel()
    keep = np.argpartition(flat, flat.size - k)[flat.size - k:]
    mask = np.zeros(flat.size, dtype=bool)
    mask[keep] = True
    return np.where(mask.reshape(t.shape), t, 0.0)


def truncated_svd(delta: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Factors (A (rank, in), B (out, rank)) of the best rank-``rank`` approximation, sqrt(S) on each side."""
    u, s, vt = np.linalg.svd(delta, full_matrices=False)
    root = np.sqrt(s[:rank])
    return root[:, None] * vt[:rank], u[:, :rank] * root[None, :]
