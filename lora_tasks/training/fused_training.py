"""Fused parallel training: K LoRA adapters trained in one step on one shared frozen base.

The batch is replicated K times along the batch axis. Every frozen base GEMM runs once over the
K-times batch; each slice then goes through its own low-rank factors with batched matmuls
(A stacked as (K, r, in), B as (K, out, r), x seen as (K, b*s, in)), and through its own head.
:class:`FusedAdapters` has the head interface of the training engine: ``__call__`` returns
(K, batch) logits (or (K, batch, labels)), ``.loss`` returns the sum of the K losses, whose
gradients are those of the K separate losses, so :func:`lora_tasks.training.train.train` trains it as is
(with ``metric=None``: validation scores the summed loss). :meth:`FusedAdapters.unfuse` gives K
ordinary single-adapter models back; :func:`train_fused` does the round trip.

Mixed-batch inference (:meth:`FusedAdapters.mixed`): one batch whose rows each name their adapter;
A, B and the head are gathered per row.

Whether fusing pays depends on the backend: see :func:`default_parallel_mode`.
"""

from __future__ import annotations

from typing import Any, Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from lora_tasks.backend import is_cpu_backend
from lora_tasks.lora.adapter import LoRAAdapter, set_child
from lora_tasks.lora.config import LoRAConfig
from lora_tasks.lora.layers import DoRALinear
from lora_tasks.models.encoder import BertWithHead
from lora_tasks.models.heads import head_loss, predictions
from lora_tasks.training.multi_adapter import fresh_head
from lora_tasks.training.train import TrainConfig, train


def default_parallel_mode() -> str:
    """``"fused"`` or ``"sequential"``: how to train K adapters on the backend at hand.

    On the CPU the GEMMs are already compute-bound at small batches and the K-times activations
    overflow the cache, so fusing was slower than training the adapters one after another
    (``benchmarks/ensemble.py``; numbers in ``benchmarks/results/ensemble.json``): sequential is the
    CPU default. On Metal the GPU is underused at small batches, so one K-times-wider step is the
    expected better use of it: fused (not measured).
    """
    return "sequential" if is_cpu_backend() else "fused"


class FusedLoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus K stacked LoRA factor pairs: ``lora_a`` (K, r, in), ``lora_b`` (K, out, r).

    Input rows are K equal slices along the batch axis (slice k uses adapter k). With
    ``row_index`` set (mixed-batch inference), row i uses adapter ``row_index[i]`` instead.
    """

    def __init__(self, linear: nn.Linear, lora_a: mx.array, lora_b: mx.array, scales: Sequence[float],
                 dropouts: Sequence[float]) -> None:
        super().__init__()
        self.linear = linear
        self.lora_a = lora_a
        self.lora_b = lora_b
        self.k = int(lora_a.shape[0])
        # plain attributes (object.__setattr__): never parameters, whatever their type
        object.__setattr__(self, "_scales", tuple(float(s) for s in scales))
        object.__setattr__(self, "_dropouts", tuple(float(p) for p in dropouts))
        self.set_row_index(None)

    def set_row_index(self, index: mx.array | None) -> None:
        """Mixed-batch mode: row i uses adapter ``index[i]``; None: K equal slices."""
        object.__setattr__(self, "row_index", index)

    def _scale(self, dtype: mx.Dtype) -> mx.array:
        return mx.array(self._scales, dtype=dtype)

    def _dropout(self, x: mx.array) -> mx.array:
        """Per-slice dropout on x (K, n, in), training mode only."""
        if not self.training or not any(self._dropouts):
            return x
        keep = mx.array([1.0 - p for p in self._dropouts], dtype=x.dtype)[:, None, None]
        mask = mx.random.uniform(shape=x.shape) < keep
        return mx.where(mask, x / keep, mx.zeros_like(x))

    def __call__(self, x: mx.array) -> mx.array:
        y = self.linear(x)  # the frozen GEMM, once over all K slices
        if self.row_index is not None:
            idx = self.row_index
            xs = x.reshape(x.shape[0], -1, x.shape[-1])  # (N, s, in)
            z = (xs @ self.lora_a[idx].swapaxes(1, 2)) @ self.lora_b[idx].swapaxes(1, 2)  # (N, s, out)
            z = z * self._scale(z.dtype)[idx][:, None, None]
            return y + z.reshape(y.shape).astype(x.dtype)
        n = x.shape[0]
        if n % self.k:
            raise ValueError(f"A fused layer of {self.k} adapters needs a batch of K equal slices; got {n} rows.")
        xk = self._dropout(x.reshape(self.k, -1, x.shape[-1]))  # (K, b*s, in)
        z = (xk @ self.lora_a.swapaxes(1, 2)) @ self.lora_b.swapaxes(1, 2)  # (K, b*s, out)
        z = z * self._scale(z.dtype)[:, None, None]
        return y + z.reshape(y.shape).astype(x.dtype)


def _base_state(model: nn.Module) -> list[tuple[str, mx.array]]:
    """The frozen base weights of a model with LoRA/multi/fused layers, under plain module names."""
    out = []
    for k, v in tree_flatten(model.parameters()):
        if k.startswith("head.") or ".adapters." in k or k.rsplit(".", 1)[-1] in ("lora_a", "lora_b", "magnitude"):
            continue
        out.append((k.replace(".linear.", "."), v))
    return out


def _bare_like(model: nn.Module) -> nn.Module:
    """A new model of ``model``'s class and shape without adapters (weights set by the caller)."""
    if not isinstance(model, BertWithHead):
        raise TypeError(f"Fused adapters need BertWithHead models, got {type(model).__name__}.")
    return type(model)(model.config, model.head_type, model.num_labels, model.pooling)  # BERT or MPNet


def _copy_head(head: nn.Module) -> nn.Module:
    new = fresh_head(head)
    new.update(head.parameters())
    return new


class FusedAdapters(nn.Module):
    """K adapters of the same rank and targets on one frozen base, trained or run in one pass.

    Build it with :meth:`from_models` (K single-adapter models on the same base) or
    :meth:`from_manager` (adapters of a :class:`~lora_tasks.training.multi_adapter.MultiAdapterManager`).
    """

    def __init__(self, base: nn.Module, configs: Sequence[LoRAConfig], factors: dict[str, tuple[mx.array, mx.array]],
                 heads: Sequence[nn.Module], names: Sequence[str] | None = None) -> None:
        super().__init__()
        self.k = len(configs)
        object.__setattr__(self, "configs", tuple(configs))
        object.__setattr__(self, "names", tuple(names) if names is not None else
                           tuple(f"adapter{i}" for i in range(self.k)))
        self.head_type = base.head_type
        modules = dict(base.named_modules())
        for path, (a, b) in factors.items():
            linear = modules[path]
            scales = [c.for_layer(path).scale for c in configs]
            layer = FusedLoRALinear(linear, a, b, scales, [c.dropout for c in configs])
            parent, _, attr = path.rpartition(".")
            set_child(modules[parent], attr, layer)
        object.__setattr__(self, "layer_paths", tuple(factors))
        self.model = base
        self.heads = list(heads)
        self.train(base.training)  # the new layers and heads follow the base's mode
        self.freeze()
        for path in self.layer_paths:
            self._layer(path).unfreeze(recurse=False, keys=["lora_a", "lora_b"])
        for head, cfg in zip(self.heads, self.configs, strict=True):
            if cfg.train_head:
                head.unfreeze()

    # ---- construction --------------------------------------------------------------------

    @staticmethod
    def check_compatible(configs: Sequence[LoRAConfig], paths_per_adapter: Sequence[Sequence[str]],
                         ranks_per_adapter: Sequence[dict[str, int]]) -> None:
        if len(configs) < 1:
            raise ValueError("FusedAdapters needs at least one adapter.")
        problems = []
        for i, cfg in enumerate(configs):
            if cfg.use_dora:
                problems.append(f"  adapter {i} uses DoRA (fusing supports plain LoRA only)")
            if sorted(paths_per_adapter[i]) != sorted(paths_per_adapter[0]):
                problems.append(f"  adapter {i} targets {list(cfg.target_modules)} (layers "
                                f"{cfg.layers_to_transform}), adapter 0 {list(configs[0].target_modules)} "
                                f"(layers {configs[0].layers_to_transform})")
            elif ranks_per_adapter[i] != ranks_per_adapter[0]:
                diff = sorted({ranks_per_adapter[i][p] for p in ranks_per_adapter[i]}
                              | {ranks_per_adapter[0][p] for p in ranks_per_adapter[0]})
                problems.append(f"  adapter {i} has rank r={cfg.r}, adapter 0 r={configs[0].r} (ranks seen {diff})")
        if problems:
            raise ValueError("Fused training needs adapters of the same rank and the same target layers:\n"
                             + "\n".join(problems) + "\nGroup adapters by preset (rank and targets) and fuse each "
                             "group, or train the others sequentially.")

    @classmethod
    def from_models(cls, models: Sequence[nn.Module], adapters: Sequence[LoRAAdapter], check_base: bool = True,
                    names: Sequence[str] | None = None) -> "FusedAdapters":
        """Fuse K single-adapter models that share their base weights (checked with ``check_base``).
        The models are not changed; the fused module shares their (frozen) base arrays."""
        if len(models) != len(adapters) or not models:
            raise ValueError(f"Pass one adapter per model; got {len(models)} models and {len(adapters)} adapters.")
        for ad in adapters:
            if ad.merged:
                raise ValueError("Unmerge the adapters (adapter.unmerge_adapters()) before fusing them.")
            if any(isinstance(layer, DoRALinear) for layer in ad.layers.values()):
                cls.check_compatible([ad.config], [[]], [{}])  # raises the DoRA message
        cls.check_compatible([a.config for a in adapters], [list(a.layers) for a in adapters],
                             [{p: layer.r for p, layer in a.layers.items()} for a in adapters])
        base_state = _base_state(models[0])
        if check_base:
            ref = dict(base_state)
            for i, m in enumerate(models[1:], 1):
                other = dict(_base_state(m))
                if other.keys() != ref.keys() or not all(mx.array_equal(ref[k], other[k]).item() for k in ref):
                    raise ValueError(f"Model {i} has other base weights than model 0: fused adapters share one "
                                     "frozen base; build every model from the same checkpoint (or seed).")
        base = _bare_like(models[0])
        base.update(tree_unflatten(base_state))
        base.train(models[0].training)
        paths = list(adapters[0].layers)
        factors = {p: (mx.stack([ad.layers[p].lora_a for ad in adapters]),
                       mx.stack([ad.layers[p].lora_b for ad in adapters])) for p in paths}
        heads = [_copy_head(m.head) for m in models]
        for h in heads:
            h.train(models[0].training)
        return cls(base, [a.config for a in adapters], factors, heads, names)

    @classmethod
    def from_manager(cls, manager: Any, names: Sequence[str] | None = None) -> "FusedAdapters":
        """Fuse adapters ``names`` (default: all) of a multi-adapter manager (which is not changed)."""
        names = list(names or manager.list_adapters())
        layers = [manager.adapter_layers(n) for n in names]
        configs = [manager.configs[n] for n in names]
        cls.check_compatible(configs, [list(ls) for ls in layers], [{p: f.r for p, f in ls.items()} for ls in layers])
        base = _bare_like(manager.model)
        base.update(tree_unflatten(_base_state(manager.model)))
        base.train(manager.model.training)
        factors = {p: (mx.stack([ls[p].lora_a for ls in layers]), mx.stack([ls[p].lora_b for ls in layers]))
                   for p in layers[0]}
        heads = [_copy_head(manager.heads[n]) for n in names]
        for h in heads:
            h.train(manager.model.training)
        return cls(base, configs, factors, heads, names)

    # ---- computing -----------------------------------------------------------------------

    def _layer(self, path: str) -> FusedLoRALinear:
        return dict(self.model.named_modules())[path]

    def _layers(self) -> list[FusedLoRALinear]:
        return [m for _, m in self.model.named_modules() if isinstance(m, FusedLoRALinear)]

    def _finish(self, logits: mx.array) -> mx.array:
        return logits.squeeze(-1) if self.head_type == "binary_classification" else logits

    def __call__(self, input_ids: mx.array, attention_mask: mx.array | None = None,
                 token_type_ids: mx.array | None = None) -> mx.array:
        """Logits of every adapter on the same batch: (K, batch) (binary) or (K, batch, labels)."""
        k, b = self.k, input_ids.shape[0]

        def rep(a: mx.array | None) -> mx.array | None:
            return None if a is None else mx.concatenate([a] * k, axis=0) if k > 1 else a

        mask = rep(attention_mask)
        hidden = self.model.bert(rep(input_ids), mask, rep(token_type_ids))
        pooled = self.model.pool(hidden, mask).reshape(k, b, -1)
        logits = mx.stack([head(pooled[i]) for i, head in enumerate(self.heads)])
        return self._finish(logits)

    def losses(self, logits: mx.array, labels: mx.array, class_weights: mx.array | None = None) -> mx.array:
        """The K per-adapter losses, shape (K,)."""
        return mx.stack([head_loss(self.head_type, logits[i], labels, class_weights) for i in range(self.k)])

    def loss(self, logits: mx.array, labels: mx.array, class_weights: mx.array | None = None) -> mx.array:
        """The sum of the K losses: its gradient w.r.t. adapter k is adapter k's own gradient."""
        return self.losses(logits, labels, class_weights).sum()

    def mixed(self, input_ids: mx.array, attention_mask: mx.array | None, token_type_ids: mx.array | None,
              adapter_index: Any) -> mx.array:
        """Logits of a mixed batch: row i through adapter ``adapter_index[i]`` (A, B and head gathered per row)."""
        idx = mx.array(adapter_index).astype(mx.int32).reshape(-1)
        if idx.shape[0] != input_ids.shape[0]:
            raise ValueError(f"adapter_index has {idx.shape[0]} entries for {input_ids.shape[0]} rows.")
        if idx.size and (int(idx.min().item()) < 0 or int(idx.max().item()) >= self.k):
            raise ValueError(f"adapter_index values must be in 0..{self.k - 1}.")
        layers = self._layers()
        for layer in layers:
            layer.set_row_index(idx)
        try:
            hidden = self.model.bert(input_ids, attention_mask, token_type_ids)
        finally:
            for layer in layers:
                layer.set_row_index(None)
        pooled = self.model.pool(hidden, attention_mask)  # (N, h)
        w = mx.stack([h.classifier.weight for h in self.heads])[idx]  # (N, out, h)
        bias = mx.stack([h.classifier.bias for h in self.heads])[idx]  # (N, out)
        if not self.training:
            logits = (w @ pooled[:, :, None]).squeeze(-1) + bias
        else:  # keep each head's dropout
            dropped = mx.stack([h.dropout(pooled) for h in self.heads])  # (K, N, h)
            rows = dropped[idx, mx.arange(pooled.shape[0])]
            logits = (w @ rows[:, :, None]).squeeze(-1) + bias
        return self._finish(logits)

    # ---- back to single adapters ---------------------------------------------------------

    def adapter_state_dict(self, i: int) -> dict[str, mx.array]:
        """Adapter ``i``'s arrays under a single :class:`LoRAAdapter`'s keys."""
        state: dict[str, mx.array] = {}
        for path in self.layer_paths:
            layer = self._layer(path)
            state[f"{path}.lora_a"] = layer.lora_a[i]
            state[f"{path}.lora_b"] = layer.lora_b[i]
        if self.configs[i].train_head:
            state.update({f"head.{k}": v for k, v in tree_flatten(self.heads[i].parameters())})
        return state

    def write_back(self, adapters: Sequence[LoRAAdapter]) -> None:
        """Copy the fused weights into K single adapters (for example the ones fused by :meth:`from_models`)."""
        if len(adapters) != self.k:
            raise ValueError(f"Expected {self.k} adapters, got {len(adapters)}.")
        for i, ad in enumerate(adapters):
            ad.load_lora_state_dict(self.adapter_state_dict(i))
            if not self.configs[i].train_head and ad.head is not None:
                ad.head.update(self.heads[i].parameters())

    def unfuse(self) -> list[tuple[nn.Module, LoRAAdapter]]:
        """K new single-adapter models (sharing this base's frozen arrays) with the fused weights."""
        out = []
        base_state = _base_state(self.model)
        for i, cfg in enumerate(self.configs):
            model = _bare_like(self.model)
            model.update(tree_unflatten(base_state))
            model.head.update(self.heads[i].parameters())
            model.train(self.training)
            adapter = LoRAAdapter(model, cfg)
            adapter.load_lora_state_dict(self.adapter_state_dict(i))
            out.append((model, adapter))
        return out


def train_fused(models: Sequence[nn.Module], adapters: Sequence[LoRAAdapter], train_data: Any,
                valid_data: Any = None, cfg: Any = None, **train_kwargs: Any) -> Any:
    """Train K single-adapter models (same base, rank and targets) in fused steps; the trained weights
    are written back into ``adapters``. Returns the engine's TrainResult (validation: the summed loss)."""
    cfg = cfg or TrainConfig()
    if cfg.metric is not None:
        raise ValueError(f"Fused training scores validation by the summed loss of the K adapters; set "
                         f"TrainConfig(metric=None) (got {cfg.metric!r}), then score each unfused adapter with "
                         "lora_tasks.training.train.predict.")
    fused = FusedAdapters.from_models(models, adapters)
    fused.train(models[0].training)
    result = train(fused, train_data, valid_data, cfg, **train_kwargs)
    fused.write_back(adapters)
    return result


def predict_mixed(fused: FusedAdapters, data: Any, adapter_index: Any, batch_size: int = 64) -> Any:
    """Predictions for every row of ``data``, row i through adapter ``adapter_index[i]`` (numpy, row order)."""
    index = np.asarray(adapter_index).reshape(-1)
    was = fused.training
    fused.eval()
    out = []
    try:
        for s in range(0, len(data), batch_size):
            sl = slice(s, s + batch_size)
            logits = fused.mixed(mx.array(data.input_ids[sl]), mx.array(data.attention_mask[sl]),
                                 mx.array(data.token_type_ids[sl]), index[sl])
            out.append(np.array(predictions(fused.head_type, logits)))
    finally:
        fused.train(was)
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


__all__ = ["FusedAdapters", "FusedLoRALinear", "default_parallel_mode", "predict_mixed", "train_fused"]
