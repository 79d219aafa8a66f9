"""LoRA and DoRA layers that wrap a frozen ``nn.Linear``.

Both store the low-rank factors in PEFT's layout (``lora_a``: (r, in), ``lora_b``: (out, r)) so
adapters move to and from PEFT without transposes. ``lora_b`` starts at zero: a fresh adapter
leaves the model's outputs unchanged. Dropout acts on the LoRA branch only, and only in training
mode (it is an ``nn.Dropout`` child, so ``model.train()``/``model.eval()`` reach it).

The base weight is read through :meth:`LoRALinear.base_weight` so that a quantized base (QLoRA)
can later supply a dequantized weight there without touching the rest of the layer.
"""

from __future__ import annotations

import math
from typing import Any

import mlx.core as mx
import mlx.nn as nn


def _fused_lora_add():
    """The native LoRA branch (:mod:`lora_tasks.native.lora_branch`) on the CPU, else None (Metal, or
    no native kernels): MLX's own ops then run the branch."""
    from lora_tasks.native.lora_branch import fused_lora_add

    return fused_lora_add()


def linear_dims(linear: nn.Module) -> tuple[int, int]:
    """``(output_dims, input_dims)`` of an ``nn.Linear`` or a quantized linear (whose weight is packed)."""
    out_dims, cols = linear.weight.shape
    if "scales" in linear:  # packed: 32 // bits values per uint32
        return int(out_dims), int(cols) * 32 // int(linear.bits)
    return int(out_dims), int(cols)


class LoRALinear(nn.Module):
    """``y = linear(x) + scale * dropout(x) @ A.T @ B.T``."""

    ADAPTER_KEYS: tuple[str, ...] = ("lora_a", "lora_b")

    def __init__(
        self,
        input_dims: int,
        output_dims: int,
        r: int = 8,
        alpha: float | None = None,
        dropout: float = 0.0,
        use_rslora: bool = False,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if r <= 0:
            raise ValueError(f"LoRA rank r must be positive, got {r}.")
        self.linear = nn.Linear(input_dims, output_dims, bias=bias)
        self.r = int(r)
        self.alpha = float(2 * r if alpha is None else alpha)
        self.use_rslora = bool(use_rslora)
        self.scale = self.alpha / (math.sqrt(r) if use_rslora else r)
        self.dropout = nn.Dropout(p=dropout)
        self.merged = False
        bound = 1.0 / math.sqrt(input_dims)  # PEFT's kaiming-uniform(a=sqrt(5)) bound
        self.lora_a = mx.random.uniform(low=-bound, high=bound, shape=(r, input_dims))
        self.lora_b = mx.zeros((output_dims, r))

    @classmethod
    def from_base(
        cls,
        linear: nn.Linear,
        r: int = 8,
        alpha: float | None = None,
        dropout: float = 0.0,
        use_rslora: bool = False,
    ) -> "LoRALinear":
        """Wrap an existing linear layer (its weights are shared, not copied)."""
        output_dims, input_dims = linear_dims(linear)
        layer = cls(input_dims, output_dims, r, alpha, dropout, use_rslora, bias=False)
        layer.linear = linear
        layer._init_from_base()
        return layer

    def _init_from_base(self) -> None:
        """Hook for subclasses that derive state from the base weight (DoRA's magnitude)."""

    # ---- maths ---------------------------------------------------------------------------

    @property
    def in_features(self) -> int:
        return int(self.lora_a.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.lora_b.shape[0])

    def base_weight(self) -> mx.array:
        """The base weight as a dense array (the place a quantized base will dequantize)."""
        return self.linear.weight

    def delta_weight(self) -> mx.array:
        """``scale * B @ A``, shape (out, in): what merging adds to the base weight."""
        return self.scale * (self.lora_b @ self.lora_a)

    def _lora(self, x: mx.array) -> mx.array:
        z = (self.dropout(x) @ self.lora_a.T) @ self.lora_b.T
        return (self.scale * z).astype(x.dtype)

    def __call__(self, x: mx.array) -> mx.array:
        y = self.linear(x)
        if self.merged:
            return y
        if type(self) is LoRALinear and x.dtype == y.dtype == self.lora_a.dtype == self.lora_b.dtype == mx.float32:
            fused = _fused_lora_add()
            if fused is not None:  # the CPU's native kernel: the branch and the add in one pass
                return fused(y, self.dropout(x), self.lora_a, self.lora_b, self.scale)
        return y + self._lora(x)

    # ---- merging -------------------------------------------------------------------------

    def merged_weight(self) -> mx.array:
        w = self.base_weight()
        return (w + self.delta_weight()).astype(w.dtype)

    def fuse(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing what this layer computes (in eval mode)."""
        w = self._unmerged_weight if self.merged else self.base_weight()
        out_dims, in_dims = w.shape
        has_bias = "bias" in self.linear
        fused = nn.Linear(in_dims, out_dims, bias=has_bias)
        fused.weight = self._merge(w)
        if has_bias:
            fused.bias = self.linear.bias
        return fused

    def _merge(self, w: mx.array) -> mx.array:
        return (w + self.delta_weight()).astype(w.dtype)

    def merge(self) -> None:
        """Fold the adapter into the base weight in place; :meth:`unmerge` restores it exactly.

        The original weight is kept (it is not a parameter: underscore attributes are skipped by
        ``parameters()``), so unmerging is exact rather than a lossy subtraction.
        """
        if self.merged:
            return
        self._unmerged_weight = self.linear.weight
        self.linear.weight = self._merge(self.base_weight())
        self.merged = True

    def unmerge(self) -> None:
        if not self.merged:
            return
        self.linear.weight = self._unmerged_weight
        del self._unmerged_weight
        self.merged = False

    def adapter_parameters(self) -> dict[str, mx.array]:
        return {k: self[k] for k in self.ADAPTER_KEYS}


class DoRALinear(LoRALinear):
    """Weight-decomposed LoRA: ``y = m / ||W + sBA||_row * (W + sBA) x + bias``.

    ``magnitude`` (out,) starts at the row norms of the base weight, so a fresh DoRA layer also
    leaves outputs unchanged. As in the DoRA paper and PEFT, the norm is not differentiated.
    """

    ADAPTER_KEYS = ("lora_a", "lora_b", "magnitude")

    def __init__(self, input_dims: int, output_dims: int, *args, **kwargs) -> None:
        super().__init__(input_dims, output_dims, *args, **kwargs)
        self._init_from_base()

    def _init_from_base(self) -> None:
        self.magnitude = mx.linalg.norm(self.base_weight(), axis=1)

    def _norm_scale(self, w: mx.array) -> mx.array:
        adapted = w + self.delta_weight()
        norm = mx.stop_gradient(mx.linalg.norm(adapted, axis=1))
        return self.magnitude / norm

    def __call__(self, x: mx.array) -> mx.array:
        if self.merged:
            return self.linear(x)
        w = self.base_weight()
        out = x @ w.T + self._lora(x)
        out = self._norm_scale(w).astype(x.dtype) * out
        if "bias" in self.linear:
            out = out + self.linear.bias
        return out

    def _merge(self, w: mx.array) -> mx.array:
        return (self._norm_scale(w)[:, None] * (w + self.delta_weight())).astype(w.dtype)


class SlicedLoRALinear(LoRALinear):
    """LoRA on chosen row blocks of a fused projection (ModernBERT's ``attn.Wqkv``, rows ``[q | k | v]``).

    One pair ``lora_a_<name>`` (r, in), ``lora_b_<name>`` (rows, r) per adapted slice, added only
    to that slice's output rows; the other rows are the base's. So the ``efficient`` preset adapts
    query and value of ModernBERT exactly as it does on BERT (same rank and parameter count).
    It equals one LoRA of rank ``r * len(slices)`` with ``A = concat(A_t)`` and a block ``B``
    (:meth:`delta_weight`), which is what merging adds.
    """

    def __init__(
        self,
        input_dims: int,
        output_dims: int,
        slices: dict[str, slice],
        r: int = 8,
        alpha: float | None = None,
        dropout: float = 0.0,
        use_rslora: bool = False,
        bias: bool = True,
    ) -> None:
        nn.Module.__init__(self)
        if r <= 0:
            raise ValueError(f"LoRA rank r must be positive, got {r}.")
        if not slices:
            raise ValueError("SlicedLoRALinear needs at least one row slice to adapt.")
        self.linear = nn.Linear(input_dims, output_dims, bias=bias)
        self.r = int(r)
        self.alpha = float(2 * r if alpha is None else alpha)
        self.use_rslora = bool(use_rslora)
        self.scale = self.alpha / (math.sqrt(r) if use_rslora else r)
        self.dropout = nn.Dropout(p=dropout)
        self.merged = False
        ordered = sorted(slices.items(), key=lambda kv: kv[1].start)
        for (_, a), (_, b) in zip(ordered, ordered[1:], strict=False):  # neighbours
            if a.stop > b.start:
                raise ValueError(f"Row slices overlap: {a} and {b}.")
        object.__setattr__(self, "slice_names", tuple(name for name, _ in ordered))  # plain attribute, not a parameter
        object.__setattr__(self, "_slices", {name: (int(sl.start), int(sl.stop)) for name, sl in ordered})  # plain attribute, not a parameter
        object.__setattr__(self, "_dims", (int(output_dims), int(input_dims)))  # plain attribute, not a parameter
        keys: list[str] = []
        bound = 1.0 / math.sqrt(input_dims)
        for name, (start, stop) in self._slices.items():
            if not 0 <= start < stop <= output_dims:
                raise ValueError(f"Row slice {name}={start}:{stop} is outside 0:{output_dims}.")
            setattr(self, f"lora_a_{name}", mx.random.uniform(low=-bound, high=bound, shape=(r, input_dims)))
            setattr(self, f"lora_b_{name}", mx.zeros((stop - start, r)))
            keys += [f"lora_a_{name}", f"lora_b_{name}"]
        object.__setattr__(self, "ADAPTER_KEYS", tuple(keys))  # plain attribute, not a parameter

    @classmethod
    def from_base(  # type: ignore[override]  # takes the slices too
        cls,
        linear: nn.Module,
        slices: dict[str, slice],
        r: int = 8,
        alpha: float | None = None,
        dropout: float = 0.0,
        use_rslora: bool = False,
    ) -> "SlicedLoRALinear":
        output_dims, input_dims = linear_dims(linear)
        layer = cls(input_dims, output_dims, slices, r, alpha, dropout, use_rslora, bias=False)
        layer.linear = linear
        return layer

    @property
    def in_features(self) -> int:
        return self._dims[1]

    @property
    def out_features(self) -> int:
        return self._dims[0]

    def slice_rows(self) -> dict[str, slice]:
        return {name: slice(a, b) for name, (a, b) in self._slices.items()}

    def _blocks(self, per_slice: dict[str, mx.array], rows_axis_size, make_zeros) -> list[mx.array]:
        pieces, pos = [], 0
        for name, (start, stop) in self._slices.items():
            if start > pos:
                pieces.append(make_zeros(start - pos))
            pieces.append(per_slice[name])
            pos = stop
        if pos < rows_axis_size:
            pieces.append(make_zeros(rows_axis_size - pos))
        return pieces

    def delta_weight(self) -> mx.array:
        out_dims, in_dims = self._dims
        per = {n: self.scale * (self[f"lora_b_{n}"] @ self[f"lora_a_{n}"]) for n in self.slice_names}
        dtype = per[self.slice_names[0]].dtype
        return mx.concatenate(self._blocks(per, out_dims, lambda k: mx.zeros((k, in_dims), dtype=dtype)), axis=0)

    def _lora(self, x: mx.array) -> mx.array:
        xd = self.dropout(x)
        a = mx.concatenate([self[f"lora_a_{n}"] for n in self.slice_names], axis=0)  # (n*r, in)
        z = xd @ a.T
        per = {}
        for i, n in enumerate(self.slice_names):
            per[n] = (self.scale * (z[..., i * self.r:(i + 1) * self.r] @ self[f"lora_b_{n}"].T)).astype(x.dtype)
        lead = x.shape[:-1]
        pieces = self._blocks(per, self._dims[0], lambda k: mx.zeros((*lead, k), dtype=x.dtype))
        return mx.concatenate(pieces, axis=-1)


def set_child(parent: Any, name: str, child: nn.Module) -> None:
    """Replace the child ``name`` of a module (or an index of a module list) in place."""
    if isinstance(parent, list):
        parent[int(name)] = child
    else:
        parent[name] = child
