"""LoRA configuration, the presets table, and the map from target names to BERT module paths.

This is the one place presets are defined (``PRESETS``) and the one place a target name such as
``"query"`` is tied to a module path suffix (``TARGETS``). Nothing here touches a model: checks
that need a model (does a ``layer_specific_config`` path exist?) run in :class:`LoRAAdapter`.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Mapping

# target name -> module path suffix inside one transformer layer (``encoder.layer.N.<suffix>``).
# Suffixes are anchored at the layer, so "output" never matches "attention.output.dense".
TARGETS: dict[str, str] = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attention_output": "attention.output.dense",
    "intermediate": "intermediate.dense",
    "output": "output.dense",
}

# ModernBERT (module names as Hugging Face's, per layer ``layers.N.``): query, key and value are row
# blocks ``[q | k | v]`` of the fused ``attn.Wqkv``, adapted as slices (SlicedLoRALinear); the other
# roles map one to one. Mirrors ``lora_tasks.models.modernbert.LORA_TARGETS`` (a test checks).
FUSED_QKV_SUFFIX = "attn.Wqkv"
QKV_ORDER = ("query", "key", "value")
MODERNBERT_TARGETS: dict[str, str] = {
    "query": FUSED_QKV_SUFFIX,
    "key": FUSED_QKV_SUFFIX,
    "value": FUSED_QKV_SUFFIX,
    "attention_output": "attn.Wo",
    "intermediate": "mlp.Wi",
    "output": "mlp.Wo",
}

# Short or PEFT-flavoured spellings users reach for; all map to a name in TARGETS.
ALIASES: dict[str, str] = {
    "q": "query",
    "k": "key",
    "v": "value",
    "o": "attention_output",
    "attn_output": "attention_output",
    "attention.output": "attention_output",
    "attention.output.dense": "attention_output",
    "ffn_in": "intermediate",
    "intermediate.dense": "intermediate",
    "ffn_out": "output",
    "output.dense": "output",
}

# Not a LoRA target: "head" in target_modules means "train the task head in full".
HEAD_TARGET = "head"

ALL_TARGETS = tuple(TARGETS)
LAYER_OVERRIDE_KEYS = ("r", "alpha")

_LAYER_RE = re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\.(.+)$")
_MODERN_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.(.+)$")


def normalize_target(name: str) -> str:
    """A target name or alias -> its canonical name; ``ValueError`` naming the valid ones otherwise.

    One name only: a module-name suffix that covers several targets (``"dense"``) goes through
    :func:`expand_target`."""
    names = expand_target(name)
    if len(names) != 1:
        raise ValueError(f"LoRA target {name!r} covers {list(names)}; name one of them.")
    return names[0]


def expand_target(name: str) -> tuple[str, ...]:
    """Every canonical target (or ``"head"``) that ``name`` means, PEFT's way.

    A target name (``query``) or alias (``q``, ``attn_output``) means itself. Any other name
    follows PEFT's convention and matches every module of a block whose path ends with it on a
    dot boundary, in BERT's or ModernBERT's naming: ``"dense"`` is the three dense layers of a
    BERT block (``attention.output.dense``, ``intermediate.dense``, ``output.dense``),
    ``"self.query"`` is query, ``"Wqkv"`` is query, key and value. An unknown name is a
    ``ValueError`` with the closest valid name."""
    key = str(name).strip()
    if key in TARGETS or key == HEAD_TARGET:
        return (key,)
    if key.lower() in ALIASES:
        return (ALIASES[key.lower()],)
    if key.lower() in TARGETS:
        return (key.lower(),)
    found = _suffix_targets(key) or _suffix_targets(key.lower())
    if found:
        return found
    known = [*TARGETS, *ALIASES, HEAD_TARGET, "dense"]
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(
        f"Unknown LoRA target module {name!r}.{hint} Use any of {', '.join(TARGETS)} "
        f"(aliases q, k, v, o), a module-name suffix such as 'dense' (PEFT's convention), "
        f"or {HEAD_TARGET!r} to train the task head in full."
    )


def _suffix_targets(suffix: str) -> tuple[str, ...]:
    """Canonical targets whose module path ends with ``suffix`` (whole dotted components)."""
    found: list[str] = []
    for table in (TARGETS, MODERNBERT_TARGETS):
        for canon, path in table.items():
            if ("." + path).endswith("." + suffix) and canon not in found:
                found.append(canon)
    return tuple(sorted(found, key=ALL_TARGETS.index))


def target_of_path(path: str) -> str | None:
    """The target name of a module path such as ``bert.encoder.layer.3.attention.self.query``, or None.

    ModernBERT's ``layers.N.attn.Wo`` / ``mlp.Wi`` / ``mlp.Wo`` map too; the fused ``attn.Wqkv``
    holds three targets and gives None here (see :func:`targets_of_path`).
    """
    names = targets_of_path(path)
    return names[0] if len(names) == 1 else None


def targets_of_path(path: str) -> tuple[str, ...]:
    """Every target name a module path plays: one for BERT modules, ``(query, key, value)`` for
    ModernBERT's fused ``layers.N.attn.Wqkv``, () for other modules."""
    m = _LAYER_RE.search(path)
    if m is not None:
        return tuple(name for name, suffix in TARGETS.items() if m.group(2) == suffix)
    m = _MODERN_LAYER_RE.search(path)
    if m is not None:
        return tuple(name for name, suffix in MODERNBERT_TARGETS.items() if m.group(2) == suffix)
    return ()


def is_fused_qkv(path: str) -> bool:
    """True for ModernBERT's fused query/key/value projection ``layers.N.attn.Wqkv``."""
    m = _MODERN_LAYER_RE.search(path)
    return m is not None and _LAYER_RE.search(path) is None and m.group(2) == FUSED_QKV_SUFFIX


def layer_index(path: str) -> int | None:
    m = _LAYER_RE.search(path) or _MODERN_LAYER_RE.search(path)
    return int(m.group(1)) if m else None


def path_has_prefix(path: str, prefix: str) -> bool:
    """Prefix match on dotted components: ``encoder.layer.1`` matches ``encoder.layer.1.x`` but not ``layer.11``."""
    prefix = prefix.rstrip(".")
    return path == prefix or path.startswith(prefix + ".")


@dataclass(frozen=True)
class LayerLoRA:
    """The resolved rank and scaling of one adapted layer."""

    r: int
    alpha: float
    scale: float


@dataclass
class LoRAConfig:
    """What to adapt and how. Validates itself on construction.

    - ``r``: rank of the update ``B @ A``; ``alpha`` defaults to ``2 * r``.
    - scaling is ``alpha / r``, or ``alpha / sqrt(r)`` with ``use_rslora`` (rank-stabilized LoRA,
      which keeps the update's size steady when r grows).
    - ``target_modules``: names from :data:`TARGETS` (or aliases), or module-name suffixes as PEFT
      reads them (``{"query", "key", "value", "dense"}`` adapts every linear layer of each block);
      ``"head"`` also trains the task head. Stored as the canonical names.
    - ``layer_specific_config``: ``{module path prefix: {"r": .., "alpha": ..}}``; a layer whose path
      starts with the prefix uses those values (longest prefix wins). Without ``alpha`` an override
      keeps the global ``alpha`` if one was given, else ``2 * r`` of the override.
    - ``train_head``: train the task head (if the model has one) in full. A new head is random, so
      this defaults to True.
    - ``quantize_bits``: 4 (or 8) stores the frozen base linears quantized (QLoRA, groups of
      ``quantize_group_size`` = 64 along the input); the adapters stay fp32.
    - ``layers_to_transform``: encoder layer indices that get adapters (PEFT's name); None: all.
      Adapting only the top layers lets :mod:`lora_tasks.training.prefix_cache` compute the frozen
      lower layers once for every epoch and adapter.
    """

    r: int = 8
    alpha: float | None = None
    dropout: float = 0.1
    target_modules: tuple[str, ...] = ("query", "value")
    use_rslora: bool = False
    use_dora: bool = False
    layer_specific_config: dict[str, dict[str, float]] = field(default_factory=dict)
    train_head: bool = True
    quantize_bits: int | None = None
    quantize_group_size: int = 64
    layers_to_transform: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, str):
            self.target_modules = (self.target_modules,)
        unordered = isinstance(self.target_modules, (set, frozenset))  # PEFT keeps a set
        targets: list[str] = []
        for name in self.target_modules:
            for canon in expand_target(name):
                if canon == HEAD_TARGET:
                    self.train_head = True
                elif canon not in targets:
                    targets.append(canon)
        if unordered:  # a set has no order of its own: use the layer's, so configs and files repeat
            targets.sort(key=ALL_TARGETS.index)
        if not targets:
            raise ValueError(
                f"LoRAConfig needs at least one LoRA target module; got {list(self.target_modules)}. "
                f"Add some of {', '.join(TARGETS)}."
            )
        self.target_modules = tuple(targets)
        self.r = _check_rank(self.r, "r")
        if self.alpha is not None and not (isinstance(self.alpha, (int, float)) and self.alpha > 0):
            raise ValueError(f"LoRA alpha must be a positive number (or None for 2*r), got {self.alpha!r}.")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}.")
        if self.quantize_bits not in (None, 4, 8):
            raise ValueError(f"quantize_bits must be None, 4 or 8, got {self.quantize_bits!r}.")
        if self.quantize_group_size not in (32, 64, 128):
            raise ValueError(f"quantize_group_size must be 32, 64 or 128, got {self.quantize_group_size!r}.")
        cleaned: dict[str, dict[str, float]] = {}
        for prefix, override in dict(self.layer_specific_config).items():
            if not isinstance(prefix, str) or not prefix.strip("."):
                raise ValueError(f"layer_specific_config keys are module path prefixes, got {prefix!r}.")
            if not isinstance(override, Mapping):
                raise ValueError(
                    f"layer_specific_config[{prefix!r}] must be a dict like {{'r': 16}}, got {override!r}."
                )
            unknown = set(override) - set(LAYER_OVERRIDE_KEYS)
            if unknown:
                raise ValueError(
                    f"layer_specific_config[{prefix!r}] has unknown keys {sorted(unknown)}; "
                    f"only {', '.join(LAYER_OVERRIDE_KEYS)} can be set per layer."
                )
            entry: dict[str, float] = {}
            if "r" in override:
                entry["r"] = _check_rank(override["r"], f"layer_specific_config[{prefix!r}]['r']")
            if "alpha" in override:
                a = override["alpha"]
                if not (isinstance(a, (int, float)) and a > 0):
                    raise ValueError(f"layer_specific_config[{prefix!r}]['alpha'] must be positive, got {a!r}.")
                entry["alpha"] = float(a)
            cleaned[prefix.rstrip(".")] = entry
        self.layer_specific_config = cleaned
        if self.layers_to_transform is not None:
            layers = tuple(sorted({int(i) for i in self.layers_to_transform}))
            if not layers or layers[0] < 0:
                raise ValueError(
                    f"layers_to_transform={self.layers_to_transform!r} must list encoder layer indices >= 0, "
                    "e.g. (4, 5) for the top two layers of a 6-layer model; None adapts every layer."
                )
            self.layers_to_transform = layers

    # ---- resolution ------------------------------------------------------------------------

    @property
    def resolved_alpha(self) -> float:
        return float(self.alpha) if self.alpha is not None else 2.0 * self.r

    @property
    def scale(self) -> float:
        """The global scaling: alpha/r, or alpha/sqrt(r) with rsLoRA."""
        return self.scaling(self.r, self.resolved_alpha)

    def scaling(self, r: int, alpha: float) -> float:
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r

    def override_for(self, path: str) -> str | None:
        """The longest ``layer_specific_config`` prefix that matches ``path``, if any."""
        matches = [p for p in self.layer_specific_config if path_has_prefix(path, p)]
        return max(matches, key=len) if matches else None

    def for_layer(self, path: str) -> LayerLoRA:
        """Rank, alpha and scale of the module at ``path``, after layer-specific overrides."""
        prefix = self.override_for(path)
        override = self.layer_specific_config.get(prefix, {}) if prefix else {}
        r = int(override.get("r", self.r))
        if "alpha" in override:
            alpha = float(override["alpha"])
        elif self.alpha is not None:
            alpha = float(self.alpha)
        else:
            alpha = 2.0 * r
        return LayerLoRA(r, alpha, self.scaling(r, alpha))

    def is_target(self, path: str) -> bool:
        if self.layers_to_transform is not None and layer_index(path) not in self.layers_to_transform:
            return False
        return any(name in self.target_modules for name in targets_of_path(path))

    def fused_targets(self, path: str) -> tuple[str, ...]:
        """The targeted row blocks (in q, k, v order) of a fused ``attn.Wqkv`` at ``path``."""
        return tuple(name for name in QKV_ORDER if name in self.target_modules and name in targets_of_path(path))

    # ---- serialization ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["target_modules"] = list(self.target_modules)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LoRAConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"Unknown LoRAConfig fields {sorted(unknown)}; known: {', '.join(sorted(known))}.")
        kwargs = dict(data)
        if "target_modules" in kwargs:
            kwargs["target_modules"] = tuple(kwargs["target_modules"])
        if kwargs.get("layers_to_transform") is not None:
            kwargs["layers_to_transform"] = tuple(kwargs["layers_to_transform"])
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "LoRAConfig":
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> "LoRAConfig":
        """A copy with some fields changed (and validated again)."""
        return replace(self, **changes)


def _check_rank(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"LoRA {what} must be a positive integer (try 4, 8 or 16), got {value!r}.")
    return value


# ---- presets: the one table --------------------------------------------------------------------

_ATTENTION = ("query", "key", "value", "attention_output")

PRESETS: dict[str, dict[str, Any]] = {
    "efficient": {"r": 4, "target_modules": ("query", "value")},
    "balanced": {"r": 8, "target_modules": _ATTENTION},
    "expressive": {"r": 16, "target_modules": ALL_TARGETS},
    "qlora_memory": {"r": 4, "target_modules": ("query", "value"), "quantize_bits": 4},
    "qlora_quality": {"r": 8, "target_modules": _ATTENTION, "quantize_bits": 4},
}


def get_preset(name: str, **overrides: Any) -> LoRAConfig:
    """The :class:`LoRAConfig` of a preset, with any field overridden (``get_preset("balanced", dropout=0.0)``)."""
    if name not in PRESETS:
        close = difflib.get_close_matches(str(name), list(PRESETS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown LoRA preset {name!r}.{hint} Use one of {', '.join(PRESETS)}.")
    return LoRAConfig(**{**PRESETS[name], **overrides})


def as_config(spec: "LoRAConfig | str | Mapping[str, Any] | None", default: str = "balanced") -> LoRAConfig:
    """Accept a LoRAConfig, a preset name, a dict of LoRAConfig fields, or None (the default preset)."""
    if spec is None:
        return get_preset(default)
    if isinstance(spec, LoRAConfig):
        return spec
    if isinstance(spec, str):
        return get_preset(spec)
    if isinstance(spec, Mapping):
        return LoRAConfig.from_dict(spec)
    raise TypeError(f"Expected a LoRAConfig, a preset name or a dict, got {type(spec).__name__}.")
