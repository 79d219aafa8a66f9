"""Merge K LoRA/DoRA adapters into one, and fold a merged update into the base weights.

Every method works on each adapter's *task vector*: the full weight update it makes to a layer.
For LoRA that is ``scale_k * B_k @ A_k`` with the adapter's **own** scale (``alpha/r`` or, with
rsLoRA, ``alpha/sqrt(r)``), so adapters with different ranks or scalings merge correctly (PEFT's
``add_weighted_adapter`` has had bugs exactly there). Methods, for weights ``w_k``:

- ``linear``: ``sum_k w_k * tau_k`` (task arithmetic). Stored exactly as a rank ``sum r_k``
  adapter. Unlike PEFT's "linear" we never average A and B separately: that adds cross terms
  ``B_i A_j`` and is not a weighted sum of the adapters.
- ``cat``: the same exact sum, named as in PEFT (concatenated factors).
- ``svd``: the best rank-``rank`` approximation (truncated SVD, Eckart-Young) of that sum.
- ``ties``: TIES-merging (Yadav et al. 2023) per layer: keep the ``density`` largest-magnitude
  entries of each task vector, weight them, elect each entry's sign by the sum, average the
  entries that agree with it.
- ``dare``: DARE (Yu et al. 2023): drop each entry with probability ``1 - density``, rescale the
  rest by ``1/density``, then sum with the weights. Seeded: entries are drawn with one
  ``np.random.default_rng(seed)`` over layers in order and adapters in order.

TIES/DARE results are full-rank; :class:`MergedAdapter` keeps the exact update per layer
(``deltas``, what :func:`merge_into_base` deploys) and a rank-``rank`` SVD of it as adapter state,
with the relative approximation error per layer in ``approx_error``.

DoRA: the magnitude rescales whole rows of ``W + sBA``, so magnitudes cannot be averaged like
low-rank factors. ``linear``/``cat``/``svd`` merge the full effective updates
``W'_k - W`` and recompute the magnitude from the merged weight (exactly representable as a DoRA
adapter of rank ``sum r_k``: the row scales of the inputs fold into ``B``). TIES/DARE on DoRA are
refused with the alternatives named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from lora_tasks.lora.adapter import HEAD_ATTR, LoRAAdapter
from lora_tasks.lora.config import LoRAConfig
from lora_tasks.lora.layers import DoRALinear, LoRALinear
from lora_tasks.lora.task_vectors import dare, ties, truncated_svd

MergeMethod = Literal["linear", "cat", "svd", "ties", "dare"]
MERGE_METHODS: tuple[str, ...] = ("linear", "cat", "svd", "ties", "dare")
_FACTOR_KEYS = ("lora_a", "lora_b", "magnitude")


class MergeCompatibilityError(ValueError):
    """Adapters that cannot be merged; the message lists every mismatch."""


@dataclass
class _Layer:
    a: np.ndarray  # (r, in)
    b: np.ndarray  # (out, r)
    scale: float
    magnitude: np.ndarray | None = None  # DoRA (out,)

    @property
    def delta(self) -> np.ndarray:
        return self.scale * (self.b @ self.a)


@dataclass
class _Source:
    """One adapter as NumPy float64 arrays (merging is done in float64, stored in float32)."""

    config: LoRAConfig
    layers: dict[str, _Layer]
    head: dict[str, np.ndarray]
    base: dict[str, np.ndarray] | None
    model_class: str | None


@dataclass
class MergedAdapter:
    """A merged adapter: its LoRAConfig and state (load with :meth:`apply_to`) and the exact
    merged update per layer (``deltas``, for :func:`merge_into_base`)."""

    method: str
    weights: list[float]
    config: LoRAConfig
    state: dict[str, mx.array]
    deltas: dict[str, np.ndarray]
    approx_error: dict[str, float] = field(default_factory=dict)

    @property
    def is_exact(self) -> bool:
        """True when the adapter state reproduces ``deltas`` (no rank truncation)."""
        return all(e <= 1e-6 for e in self.approx_error.values())

    def apply_to(self, model: nn.Module, freeze_base: bool = True) -> LoRAAdapter:
        """Add the merged adapter to a fresh ``model`` (same base) and load its state."""
        adapter = LoRAAdapter(model, self.config, freeze_base=freeze_base)
        adapter.load_lora_state_dict(self.state)
        return adapter


# ---- public API ----------------------------------------------------------------------------------


def merge_adapters(
    adapters: Sequence[LoRAAdapter | tuple[Mapping[str, Any], LoRAConfig]],
    weights: Sequence[float] | None = None,
    method: MergeMethod = "linear",
    *,
    density: float = 0.5,
    rank: int | None = None,
    seed: int = 0,
    head: Literal["mean", "first", "drop"] = "mean",
    base_weights: Mapping[str, Any] | None = None,
) -> MergedAdapter:
    """Merge ``adapters`` (LoRAAdapter objects, or ``(state_dict, LoRAConfig)`` pairs) into one.

    - ``weights``: one per adapter (default ``1/K`` each); not required to sum to 1.
    - ``density``: share of entries kept by ``ties``/``dare``.
    - ``rank``: rank of the stored adapter for ``svd`` (default: the largest input rank) and for
      ``ties``/``dare`` (default: the sum of input ranks, capped by the layer size).
    - ``head``: the task heads are averaged with the normalized weights (``"mean"``), taken from
      the first adapter, or left out.
    - ``base_weights``: ``{module path: weight}``; needed for DoRA adapters given as state dicts
      (LoRAAdapter objects carry their base weights).
    """
    if method not in MERGE_METHODS:
        raise ValueError(f"Unknown merge method {method!r}; use one of {', '.join(MERGE_METHODS)}.")
    if len(adapters) == 0:
        raise ValueError("merge_adapters needs at least one adapter.")
    k = len(adapters)
    w = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (k,) or not np.all(np.isfinite(w)):
        raise ValueError(f"Pass one finite weight per adapter: {k} adapters, weights {list(np.atleast_1d(w))}.")
    if method in ("ties", "dare") and not 0.0 < density <= 1.0:
        raise ValueError(f"density is the share of entries kept and must be in (0, 1], got {density}.")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0):
        raise ValueError(f"rank must be a positive integer, got {rank!r}.")
    sources = [_source(a, base_weights) for a in adapters]
    check_compatible(sources, head=head)
    dora = sources[0].config.use_dora
    if dora and method in ("ties", "dare"):
        raise MergeCompatibilityError(
            f"method={method!r} trims or drops single entries of the task vectors, which is not defined for DoRA's "
            "magnitude/direction split. Use method='linear' (exact) or 'svd' (rank-r) for DoRA adapters, or "
            "merge_into_base() the result of those for deployment."
        )
    if dora and any(s.base is None for s in sources):
        raise MergeCompatibilityError(
            "Merging DoRA adapters needs the base weights (the magnitude is relative to them); pass LoRAAdapter "
            "objects, or base_weights={module path: weight} with state dicts."
        )

    rng = np.random.default_rng(seed)
    paths = list(sources[0].layers)
    factors: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}
    deltas: dict[str, np.ndarray] = {}
    errors: dict[str, float] = {}
    for path in paths:
        layers = [s.layers[path] for s in sources]
        base = sources[0].base[path] if dora else None
        if dora:
            delta, a, b, mag = _merge_dora(layers, base, w)
        else:
            delta, a, b, mag = _merge_lora(layers, w, method, density, rng)
        if method == "svd" or method in ("ties", "dare"):
            default = max(lay.a.shape[0] for lay in layers) if method == "svd" else sum(lay.a.shape[0] for lay in layers)
            target = b @ a if dora else delta  # DoRA: truncate the direction update, keep the magnitude exact
            a, b = truncated_svd(target, min(rank or default, *target.shape))
        realized = (b @ a) if not dora else _dora_weight(base, b @ a, mag) - base
        norm = np.linalg.norm(delta)
        errors[path] = float(np.linalg.norm(realized - delta) / norm) if norm > 0 else 0.0
        deltas[path] = delta.astype(np.float32)
        factors[path] = (a, b, mag)

    config = _merged_config(sources[0].config, {p: f[0].shape[0] for p, f in factors.items()}, head)
    state: dict[str, mx.array] = {}
    for path, (a, b, mag) in factors.items():
        state[f"{path}.lora_a"] = mx.array(a.astype(np.float32))
        state[f"{path}.lora_b"] = mx.array(b.astype(np.float32))
        if mag is not None:
            state[f"{path}.magnitude"] = mx.array(mag.astype(np.float32))
    state.update(_merge_heads(sources, w, head))
    return MergedAdapter(method, [float(x) for x in w], config, state, deltas, errors)


def check_compatible(sources: Sequence[Any], head: str = "mean") -> None:
    """Raise :class:`MergeCompatibilityError` listing every reason ``sources`` cannot merge.

    Same base model class, same adapted layers (targets and layer indices), same base weight
    shapes, and values where known, all LoRA or all DoRA, and matching heads unless ``head="drop"``.
    """
    srcs = [s if isinstance(s, _Source) else _source(s, None) for s in sources]
    first = srcs[0]
    problems: list[str] = []
    for i, s in enumerate(srcs[1:], start=1):
        tag = f"adapter {i} vs adapter 0"
        if s.model_class and first.model_class and s.model_class != first.model_class:
            problems.append(f"  {tag}: base model {s.model_class} vs {first.model_class}")
        if s.config.use_dora != first.config.use_dora:
            problems.append(f"  {tag}: use_dora {s.config.use_dora} vs {first.config.use_dora} (cannot mix LoRA and DoRA)")
        for p in sorted(first.layers.keys() - s.layers.keys()):
            problems.append(f"  {tag}: layer {p} is adapted in adapter 0 only")
        for p in sorted(s.layers.keys() - first.layers.keys()):
            problems.append(f"  {tag}: layer {p} is adapted in adapter {i} only")
        for p in sorted(s.layers.keys() & first.layers.keys()):
            got, want = _io_shape(s.layers[p]), _io_shape(first.layers[p])
            if got != want:
                problems.append(f"  {tag}: {p} base shape (out, in) {got} vs {want}")
            elif s.base is not None and first.base is not None and p in s.base and p in first.base:
                if not np.allclose(s.base[p], first.base[p], rtol=1e-5, atol=1e-6):
                    problems.append(f"  {tag}: {p} base weights differ (adapters trained on different checkpoints)")
        if head != "drop":
            for key in sorted(first.head.keys() ^ s.head.keys()):
                problems.append(f"  {tag}: head parameter {key} present in only one of them")
            for key in sorted(first.head.keys() & s.head.keys()):
                if first.head[key].shape != s.head[key].shape:
                    problems.append(f"  {tag}: head {key} shape {s.head[key].shape} vs {first.head[key].shape}")
    if problems:
        raise MergeCompatibilityError(
            f"These adapters cannot be merged ({len(problems)} problems). Merge only adapters trained on the same "
            "base model with the same target_modules and layers (ranks and alphas may differ)"
            + ("; pass head='drop' to merge adapters with different task heads" if head != "drop" else "")
            + ":\n" + "\n".join(problems)
        )


def merge_into_base(model: nn.Module, merged: MergedAdapter | Mapping[str, np.ndarray], *, head: bool = True) -> nn.Module:
    """Add the merged update to the base weights of ``model`` in place, for deployment.

    ``model`` is a plain base model (no LoRA layers) of the adapters' shape; ``merged`` a
    :class:`MergedAdapter` (its exact ``deltas``, plus its head unless ``head=False``) or a
    ``{module path: delta}`` mapping. The result runs at base-model speed with no adapter.
    """
    deltas = merged.deltas if isinstance(merged, MergedAdapter) else merged
    modules = dict(model.named_modules())
    problems = []
    for path, delta in deltas.items():
        module = modules.get(path)
        if isinstance(module, LoRALinear):
            problems.append(f"  {path} has LoRA layers: merge into a fresh base model (or use LoRAAdapter.merge_adapters)")
        elif not isinstance(module, nn.Linear):
            problems.append(f"  {path}: no linear layer at this path")
        elif tuple(module.weight.shape) != tuple(np.shape(delta)):
            problems.append(f"  {path}: weight {tuple(module.weight.shape)}, delta {tuple(np.shape(delta))}")
    if problems:
        raise MergeCompatibilityError("Cannot fold the merged update into this model:\n" + "\n".join(problems))
    for path, delta in deltas.items():
        linear = modules[path]
        linear.weight = (linear.weight + mx.array(np.asarray(delta, dtype=np.float32))).astype(linear.weight.dtype)
    if head and isinstance(merged, MergedAdapter):
        head_items = [(k[len(HEAD_ATTR) + 1:], v) for k, v in merged.state.items() if k.startswith(HEAD_ATTR + ".")]
        if head_items:
            model[HEAD_ATTR].update(tree_unflatten(head_items))
    return model


# ---- reading adapters ----------------------------------------------------------------------------


def weighted_updates(adapter: LoRAAdapter, adapter_files: Sequence[Any], weights: Sequence[float],
                     base: Mapping[str, mx.array]) -> dict[str, np.ndarray]:
    """The weighted sum of each adapter file's effective update per layer, ``fuse() - base``, for
    :func:`merge_into_base`; the weighted head is loaded into ``adapter``'s model.

    Exact for every layer kind, fused projections included: :func:`merge_adapters` reads one A/B
    pair per layer, while a sliced layer (ModernBERT's Wqkv) has one per slice. ``base``: each
    adapted layer's base weight, by path."""
    deltas: dict[str, mx.array] = {}
    head: dict[str, mx.array] = {}
    for w, path in zip(weights, adapter_files, strict=True):
        adapter.load(path)
        for name, layer in adapter.layers.items():
            update = (layer.fuse().weight - base[name]) * w
            deltas[name] = update if name not in deltas else deltas[name] + update
        for key, value in tree_flatten(adapter.model.head.parameters()):
            head[key] = value * w if key not in head else head[key] + value * w
    adapter.model.head.update(tree_unflatten(list(head.items())))
    return {name: np.asarray(delta.astype(mx.float32)) for name, delta in deltas.items()}


def _np(x: Any) -> np.ndarray:
    return np.array(x.astype(mx.float32) if isinstance(x, mx.array) else x, dtype=np.float64)


def _source(item: Any, base_weights: Mapping[str, Any] | None) -> _Source:
    if isinstance(item, _Source):
        return item
    if isinstance(item, LoRAAdapter):
        if item.merged:
            raise MergeCompatibilityError("An adapter is merged into its base weights; call unmerge_adapters() first.")
        layers = {
            p: _Layer(_np(lay.lora_a), _np(lay.lora_b), float(lay.scale),
                      _np(lay.magnitude) if isinstance(lay, DoRALinear) else None)
            for p, lay in item.layers.items()
        }
        head = {k: _np(v) for k, v in item.get_lora_state_dict().items() if k.startswith(HEAD_ATTR + ".")}
        base = {p: _np(lay.base_weight()) for p, lay in item.layers.items()}
        return _Source(item.config, layers, head, base, type(item.model).__name__)
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], LoRAConfig):
        state, config = item
        parts: dict[str, dict[str, np.ndarray]] = {}
        head = {}
        for key, value in state.items():
            path, _, attr = key.rpartition(".")
            if key.startswith(HEAD_ATTR + "."):
                head[key] = _np(value)
            elif attr in _FACTOR_KEYS:
                parts.setdefault(path, {})[attr] = _np(value)
            else:
                raise MergeCompatibilityError(f"Unexpected adapter state key {key!r}; expected '<path>.lora_a', "
                                              "'<path>.lora_b', '<path>.magnitude' or 'head.*'.")
        layers = {}
        for path, arrs in parts.items():
            if "lora_a" not in arrs or "lora_b" not in arrs:
                raise MergeCompatibilityError(f"Adapter state for {path} lacks lora_a or lora_b.")
            layers[path] = _Layer(arrs["lora_a"], arrs["lora_b"], config.for_layer(path).scale, arrs.get("magnitude"))
        base = {p: _np(v) for p, v in base_weights.items()} if base_weights is not None else None
        return _Source(config, layers, head, base, None)
    raise TypeError(
        f"Expected a LoRAAdapter or a (state_dict, LoRAConfig) pair, got {type(item).__name__}. "
        "A saved file loads with lora_tasks.lora.read_adapter_file plus LoRAConfig.from_json(metadata['lora_config'])."
    )


def _io_shape(layer: _Layer) -> tuple[int, int]:
    return int(layer.b.shape[0]), int(layer.a.shape[1])


# ---- merging -------------------------------------------------------------------------------------


def _merge_lora(layers: list[_Layer], w: np.ndarray, method: str, density: float, rng: np.random.Generator):
    """Exact merged delta, plus exact factors (cat) that the caller may truncate."""
    taus = np.stack([lay.delta for lay in layers])
    if method == "ties":
        delta = ties(taus, w, density)
    elif method == "dare":
        delta = dare(taus, w, density, rng)
    else:
        delta = np.tensordot(w, taus, axes=1)
    a = np.concatenate([lay.a for lay in layers], axis=0)
    b = np.concatenate([wk * lay.scale * lay.b for wk, lay in zip(w, layers, strict=True)], axis=1)
    return delta, a, b, None


def _row_norm(x: np.ndarray) -> np.ndarray:
    return np.linalg.norm(x, axis=1)


def _dora_weight(base: np.ndarray, direction_delta: np.ndarray, magnitude: np.ndarray) -> np.ndarray:
    v = base + direction_delta
    return (magnitude / _row_norm(v))[:, None] * v


def _merge_dora(layers: list[_Layer], base: np.ndarray, w: np.ndarray):
    """W* = W + sum_k w_k (W'_k - W), with W'_k = c_k (W + s_k B_k A_k), c_k = m_k / ||W + s_k B_k A_k||.

    Row by row W* = C (W + V) with C = 1 - sum w_k + sum w_k c_k and V = sum_k (w_k c_k / C) s_k B_k A_k,
    so a DoRA adapter with direction update V (rank sum r_k) and magnitude ||W*|| reproduces W*.
    """
    cs = [lay.magnitude / _row_norm(base + lay.delta) for lay in layers]
    merged = base + sum(wk * (c[:, None] * (base + lay.delta) - base) for wk, c, lay in zip(w, cs, layers, strict=True))
    big_c = 1.0 - w.sum() + sum(wk * c for wk, c in zip(w, cs, strict=True))
    if np.any(big_c <= 0):
        raise MergeCompatibilityError(
            "These DoRA weights flip the sign of some merged rows (1 - sum(w) + sum(w_k * m_k/||W'_k||) <= 0); "
            "use non-negative weights that sum to about 1."
        )
    a = np.concatenate([lay.a for lay in layers], axis=0)
    b = np.concatenate([((wk * c / big_c)[:, None]) * lay.scale * lay.b for wk, c, lay in zip(w, cs, layers, strict=True)], axis=1)
    return merged - base, a, b, _row_norm(merged)


def _merged_config(first: LoRAConfig, ranks: Mapping[str, int], head: str) -> LoRAConfig:
    """Config whose every layer has scale 1 (alpha = r, no rsLoRA): the factors carry the scales."""
    common = max(set(ranks.values()), key=list(ranks.values()).count)
    overrides = {p: {"r": r, "alpha": float(r)} for p, r in ranks.items() if r != common}
    return first.replace(
        r=int(common), alpha=float(common), use_rslora=False, layer_specific_config=overrides,
        train_head=first.train_head and head != "drop",
    )


def _merge_heads(sources: list[_Source], w: np.ndarray, head: str) -> dict[str, mx.array]:
    if head == "drop" or not sources[0].head:
        return {}
    if head == "first":
        return {k: mx.array(v.astype(np.float32)) for k, v in sources[0].head.items()}
    if head != "mean":
        raise ValueError(f"head must be 'mean', 'first' or 'drop', got {head!r}.")
    if abs(w.sum()) < 1e-12:
        raise ValueError("head='mean' normalizes by the sum of the weights, which is 0; pass head='first' or 'drop'.")
    wn = w / w.sum()
    return {k: mx.array(sum(wk * s.head[k] for wk, s in zip(wn, sources, strict=True)).astype(np.float32)) for k in sources[0].head}


__all__ = [
    "MERGE_METHODS",
    "MergeCompatibilityError",
    "MergedAdapter",
    "check_compatible",
    "dare",
    "merge_adapters",
    "merge_into_base",
    "ties",
    "weighted_updates",
]
