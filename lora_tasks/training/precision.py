"""The compute dtype of the frozen base: fp32, or bf16 weights with everything else in fp32.

Why: on a CPU with AVX512-BF16, a bf16 GEMM (``vdpbf16ps``) does twice the multiply-adds of an fp32
one on operands half the size, and the linear GEMMs are most of a LoRA train step; PyTorch users get
this with ``torch.autocast("cpu", dtype=torch.bfloat16)``. Only the frozen base's matrices are stored
in bf16 (half the memory): LoRA A/B, DoRA magnitudes, the task head, layer norms, softmax, GELU,
dropout, the loss and AdamW stay fp32, so the trained parameters and their optimizer see fp32 only.

- :func:`resolve_compute_dtype` turns ``"auto" | "float32" | "bfloat16"`` into an ``mx.Dtype``;
  ``auto`` is bf16 where the CPU runs the AVX512-BF16 kernel (checked with cpuid, see
  :mod:`lora_tasks.native`) and on Metal (MLX's own bf16), else fp32.
- :func:`cast_frozen_base` stores a model's frozen linear and embedding weights in bf16 and routes
  those linears through :func:`lora_tasks.models.ops.bf16_linear` (fp32 activations in and out).
- :func:`compute_dtype_choice` says what ``auto`` picks here and why (``kaggle-lora blas``).

On a CPU without the instructions an explicit ``"bfloat16"`` stays correct: the weight is widened to
fp32 for the BLAS (or, with ``KAGGLE_LORA_BF16_GEMM=native``, the portable bf16 kernel runs).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from lora_tasks import native
from lora_tasks.backend import is_cpu_backend
from lora_tasks.lora.quantized import QuantizedBaseLinear, dequantized_weight
from lora_tasks.models import ops

log = logging.getLogger("lora_tasks")

COMPUTE_DTYPES = ("auto", "float32", "bfloat16")
ComputeDtype = Literal["auto", "float32", "bfloat16"]


@dataclass(frozen=True)
class ComputeDtypeChoice:
    """What a requested compute dtype resolves to on this machine, and how bf16 GEMMs would run."""

    requested: str
    dtype: mx.Dtype
    reason: str
    gemm: str  # how a bf16 base's GEMMs run here

    @property
    def name(self) -> str:
        return "bfloat16" if self.dtype == mx.bfloat16 else "float32"

    def summary(self) -> str:
        return f"Compute dtype: {self.requested} -> {self.name} ({self.reason}); bf16 GEMM: {self.gemm}"


def _bf16_gemm_here() -> tuple[str, str | None]:
    """(how bf16 GEMMs run, the native kernel the CPU would use or None)."""
    if not is_cpu_backend():
        return "MLX's bf16 matmul (Metal)", None
    k = native.kernels()
    if k is None:
        return f"fp32 upcast (native kernels unavailable: {native.native_info().reason})", None
    kernel = k.bf16_kernel()
    mode = ops.bf16_gemm_mode()
    if mode == "native":
        return f"native, {kernel} micro-kernel", kernel
    return "fp32 upcast for the BLAS (no avx512_bf16; KAGGLE_LORA_BF16_GEMM=native runs the portable kernel)", kernel


def compute_dtype_choice(name: str = "auto") -> ComputeDtypeChoice:
    """Resolve ``name`` on this machine; raises ``ValueError`` for an unknown name."""
    requested = str(name).strip().lower()
    if requested not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype {name!r} is unknown; use one of {', '.join(COMPUTE_DTYPES)}.")
    if requested == "float32":  # decided without building the native kernels
        return ComputeDtypeChoice(requested, mx.float32, "asked for", "not used (fp32 base)")
    gemm, kernel = _bf16_gemm_here()
    if requested == "bfloat16":
        return ComputeDtypeChoice(requested, mx.bfloat16, "asked for", gemm)
    if not is_cpu_backend():
        return ComputeDtypeChoice(requested, mx.bfloat16, "Metal runs bf16 natively", gemm)
    if kernel == "avx512bf16":
        return ComputeDtypeChoice(requested, mx.bfloat16, "cpuid: the CPU has avx512_bf16", gemm)
    if kernel is None:
        return ComputeDtypeChoice(requested, mx.float32, "no native bf16 kernel here", gemm)
    return ComputeDtypeChoice(requested, mx.float32, "cpuid: no avx512_bf16 on this CPU", gemm)


_LOGGED: set[tuple[str, str]] = set()


def resolve_compute_dtype(name: str = "auto") -> mx.Dtype:
    """``"auto" | "float32" | "bfloat16"`` -> ``mx.float32`` or ``mx.bfloat16`` (see :func:`compute_dtype_choice`).

    The first time a request resolves to a bf16 base in a process, or ``auto`` resolves at all, the
    run's log says which dtype and why (a run's log then shows what its GEMMs ran in)."""
    choice = compute_dtype_choice(name)
    seen = (choice.requested, choice.name)
    if seen not in _LOGGED and (choice.requested == "auto" or choice.dtype == mx.bfloat16):
        _LOGGED.add(seen)
        log.info("%s", choice.summary())
    return choice.dtype


class Bf16Linear(nn.Linear):
    """A frozen ``nn.Linear`` with a bf16 weight: fp32 activations in and out, bias kept fp32."""

    def __call__(self, x: mx.array) -> mx.array:
        return ops.bf16_linear(x, self.weight, self["bias"] if "bias" in self else None)


class Bf16Embedding(nn.Embedding):
    """A frozen ``nn.Embedding`` with a bf16 table whose lookups come out fp32 (the hidden stream stays fp32)."""

    def __call__(self, x: mx.array) -> mx.array:
        return super().__call__(x).astype(mx.float32)


class Bf16QuantizedBaseLinear(QuantizedBaseLinear):
    """A QLoRA base linear that, on the CPU, dequantizes to bf16 (not fp32) for the bf16 GEMM."""

    def __call__(self, x: mx.array) -> mx.array:
        if not is_cpu_backend():
            return super().__call__(x)
        return ops.bf16_linear(x, dequantized_weight(self, dtype=mx.bfloat16), self["bias"] if "bias" in self else None)


def cast_frozen_base(model: nn.Module, dtype: mx.Dtype) -> list[str]:
    """Store ``model``'s frozen linear and embedding weights in ``dtype``; returns the module paths changed.

    Call it after the adapters are applied and the base frozen (the factories do): only weights that
    are not trainable change, so LoRA/DoRA parameters, the head and anything trained stay fp32, and
    layer norms are never touched. ``mx.float32`` changes nothing. The modules keep their identity
    (their class becomes the bf16 subclass, so adapters, merging and parents that hold them are
    unaffected); a merged adapter merges into the bf16 weight, and unmerging restores it exactly.
    """
    if dtype == mx.float32:
        return []
    if dtype != mx.bfloat16:
        raise ValueError(f"cast_frozen_base supports mx.float32 and mx.bfloat16, got {dtype}.")
    trainable = {k for k, _ in tree_flatten(model.trainable_parameters())}
    done: list[str] = []
    for path, m in model.named_modules():
        key = f"{path}.weight" if path else "weight"
        if key in trainable:
            continue
        if type(m) in (nn.Linear, Bf16Linear):
            m.weight = m.weight.astype(mx.bfloat16)
            m.__class__ = Bf16Linear
        elif type(m) in (nn.Embedding, Bf16Embedding):
            m.weight = m.weight.astype(mx.bfloat16)
            m.__class__ = Bf16Embedding
        elif type(m) is QuantizedBaseLinear:
            m.__class__ = Bf16QuantizedBaseLinear  # stays 4/8-bit at rest; only the dequantized temporary is bf16
        else:
            continue
        done.append(path)
    if not done:
        log.info("compute dtype bfloat16: no frozen base weights to cast (is the base trained?); the model stays fp32")
    return done


__all__ = [
    "COMPUTE_DTYPES",
    "Bf16Embedding",
    "Bf16Linear",
    "Bf16QuantizedBaseLinear",
    "ComputeDtype",
    "ComputeDtypeChoice",
    "cast_frozen_base",
    "compute_dtype_choice",
    "resolve_compute_dtype",
]
