"""Step 6: the fold adapters (and, with ``blend``, the scikit-learn members and more adapter
sets) -> one set of test predictions, with its out-of-fold score."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from lora_tasks.steps.adapter_sets import ADAPTERS_MEMBER
from lora_tasks.steps.plan import Plan
from lora_tasks.steps.prepare import Prepared
from lora_tasks.steps.store import PipelineError, save_array
from lora_tasks.steps.targets import (
    blend_metric,
    fold_assignment,
    score_predictions,
    training_labels,
    tunes_label_cut,
)
from lora_tasks.steps.train import (
    MLX_LOCK,
    AdapterResult,
    MemberResult,
    TokenFiles,
    load_dataset,
    ravel,
)

#: How the adapters' fold ensemble and the members are blended (lora_tasks.ensemble.METHODS).
DEFAULT_BLEND_METHOD = "auto"
COMBINE_METHODS = ("blend", "merge")


@dataclass
class CombineResult:
    """Test predictions of the ensemble (model scale), the assembled OOF and its score.

    ``weights``: each member's share of the blend (``lora`` is the mean of the fold adapters;
    with ``merge``, or without members, it has weight 1). ``member_scores``: each member's
    OOF score under the competition metric. ``blend_cv_score``: the blending procedure itself
    fit on the other folds and scored on each held-out fold, so optimistic weights show.
    ``threshold``: the cut of P(class 1) fit on the OOF rows (``[submission] threshold = "auto"``
    with F1), which ``oof_score`` and the submission use; None when the configured cut holds.
    """

    method: str
    test_path: Path
    oof_path: Path
    oof_score: float
    metric: str
    weights: dict[str, float]
    fold_scores: list[float]
    member_scores: dict[str, float] = field(default_factory=dict)
    blend_method: str | None = None
    blend_cv_score: float | None = None
    threshold: float | None = None
    #: why the adapters are not in the blend (they added nothing on fold 0, or a fold failed)
    notes: list[str] = field(default_factory=list)


def fold_ensemble(results: Sequence[AdapterResult]) -> tuple[np.ndarray, list[AdapterResult]]:
    """Every train row's prediction by the fold adapter that did not see it."""
    ordered = sorted(results, key=lambda r: r.fold)
    oof = None
    for r in ordered:
        part = np.load(r.oof_path)
        oof = part if oof is None else np.where(np.isnan(part), oof, part)
    if np.isnan(oof).any():
        missing = int(np.isnan(oof).reshape(len(oof), -1).any(axis=1).sum())
        raise PipelineError(f"{missing} train rows have no out-of-fold prediction; pass the results of every fold.")
    return oof, ordered


def combine(
    prepared_path: str | os.PathLike,
    plan_path: str | os.PathLike,
    results: Sequence[AdapterResult],
    out_dir: str | os.PathLike,
    *,
    method: str = "blend",
    tokens: TokenFiles | None = None,
    model: str | None = None,
    members: Sequence[MemberResult] = (),
    blend_method: str = DEFAULT_BLEND_METHOD,
    adapter_sets: Mapping[str, Sequence[AdapterResult]] | None = None,
) -> CombineResult:
    """Combine the fold adapters (and, with ``blend``, the members) into test predictions.

    The fold adapters form one member, ``lora``: each train row is predicted by the adapter
    that held it out, each test row by the mean of all folds (fold models are equals: each saw
    (K-1)/K of the rows, so there is nothing to weigh between them). ``blend`` then blends that
    member with the ``members`` by ``blend_method`` (:func:`lora_tasks.ensemble.blend`, fit on
    OOF rows only). ``merge``: average the adapters' weight updates (and heads) into one plain
    model and predict the test rows once (one forward pass at inference instead of K; needs
    ``tokens``); members do not enter a merged model. With ``[submission] threshold = "auto"``
    and F1, the cut of the combined P(class 1) is fit on the OOF rows (``CombineResult.threshold``).
    ``adapter_sets``: more fold-adapter sets on the same folds, by member name; each is a member
    like ``lora`` (its folds' OOF rows, the mean of its folds on test).
    """
    adapter_sets = dict(adapter_sets or {})
    if method not in COMBINE_METHODS:
        raise PipelineError(f"combine method {method!r}; use one of {', '.join(COMBINE_METHODS)}.")
    if not results and not members:
        raise PipelineError("No adapters to combine; train at least one fold (or blend scikit-learn members: "
                            "no_adapters with members).")
    if method == "merge" and members:
        raise PipelineError("combine(method='merge') builds one model from the adapters; members only blend. "
                            "Drop the members or use method='blend'.")
    if method == "merge" and adapter_sets:
        raise PipelineError("combine(method='merge') merges one set of adapters; adapter sets of other presets or "
                            "encoders only blend. Drop the adapter sets or use method='blend'.")
    prepared = Prepared.load(prepared_path)
    plan = Plan.load(plan_path)
    notes = _left_out(results)
    if notes and members and method == "blend":
        results = []  # the members (and the other adapter sets) blend without these adapters
    if not results:
        if method != "blend":
            raise PipelineError(f"combine(method={method!r}) needs fold adapters; without them (no_adapters) only "
                                "'blend' of the scikit-learn members is possible.")
        kept_sets = {name: rs for name, rs in adapter_sets.items() if not _left_out(rs)}
        notes += [f"adapter set {name}: {note}" for name, rs in adapter_sets.items() for note in _left_out(rs)]
        combined = _blend_members_only(prepared, plan, members, out_dir, blend_method, kept_sets)
        combined.notes = notes
        return combined
    oof, ordered = fold_ensemble(results)
    fold_weights = [1.0 / len(ordered)] * len(ordered)
    scores = {ADAPTERS_MEMBER: score_predictions(oof, prepared, plan)}
    weights, used_blend, cv_score, cut = {ADAPTERS_MEMBER: 1.0}, None, None, None
    tune = tunes_label_cut(prepared, plan)
    if method == "merge":
        if tokens is None:
            raise PipelineError("combine(method='merge') predicts the test rows again; pass tokens=TokenFiles(...).")
        test = merged_predict(prepared, plan, [r.adapter_path for r in ordered], fold_weights, tokens.test, model=model)
    else:
        test = sum(w * np.load(r.test_path) for w, r in zip(fold_weights, ordered, strict=True))
    if members or adapter_sets:
        # the blenders load scikit-learn's estimators
        from lora_tasks.ensemble.blend import blend

        members_oof, members_test = {ADAPTERS_MEMBER: oof}, {ADAPTERS_MEMBER: test}
        for name, set_results in adapter_sets.items():
            if name in members_oof:
                raise PipelineError(f"Two members are named {name!r}; give each adapter set its own name.")
            members_oof[name], set_ordered = fold_ensemble(set_results)
            members_test[name] = np.mean([np.load(r.test_path) for r in set_ordered], axis=0)
            scores[name] = score_predictions(members_oof[name], prepared, plan)
        for b in members:
            if b.name in members_oof:
                raise PipelineError(f"Two members are named {b.name!r}; give each member its own name.")
            members_oof[b.name], members_test[b.name] = np.load(b.oof_path), np.load(b.test_path)
            scores[b.name] = float(b.oof_score)
        blended = blend(blend_method, members_oof, members_test, training_labels(prepared, plan),
                        blend_metric(prepared, plan), fold_assignment(prepared, plan, members=True), seed=plan.seed,
                        tune_threshold=tune)
        oof, test, weights = blended.oof_pred, blended.test_pred, blended.weights
        used_blend, cv_score, cut = blended.report.method, blended.report.blend_cv_score, blended.threshold
    elif tune:
        from lora_tasks.ensemble.thresholds import best_threshold, nested_threshold_score

        y, folds = training_labels(prepared, plan), fold_assignment(prepared, plan)
        cut = best_threshold(prepared.metric, y, oof)
        cv_score = nested_threshold_score(prepared.metric, y, oof, folds)
    out = Path(out_dir)
    return CombineResult(
        method=method,
        test_path=save_array(np.asarray(test, dtype=np.float32), out, f"ensemble-{method}"),
        oof_path=save_array(np.asarray(oof, dtype=np.float32), out, "oof-all"),
        oof_score=score_predictions(oof, prepared, plan, cut),
        metric=prepared.metric,
        weights={k: float(v) for k, v in weights.items()},
        fold_scores=[float(r.best_score) if r.best_score is not None else float("nan") for r in ordered],
        member_scores=scores,
        blend_method=used_blend,
        blend_cv_score=cv_score,
        threshold=cut,
    )


def _left_out(results: Sequence[AdapterResult]) -> list[str]:
    """Why the adapters leave the blend: fold 0 showed they add nothing, or a fold failed."""
    notes = [r.gain.reason for r in results if r.gain is not None and not r.gain.keep_adapters]
    return notes + [r.failed for r in results if r.failed]


def _blend_members_only(prepared: Prepared, plan: Plan, members: Sequence[MemberResult],
                        out_dir: str | os.PathLike, blend_method: str,
                        adapter_sets: Mapping[str, Sequence[AdapterResult]] | None = None) -> CombineResult:
    """``no_adapters`` (or the main adapters left out): the scikit-learn members blended alone,
    with any other adapter sets, weights fit on their OOF rows."""
    from lora_tasks.ensemble.blend import blend  # the blenders load scikit-learn's estimators

    members_oof = {b.name: np.load(b.oof_path) for b in members}
    members_test = {b.name: np.load(b.test_path) for b in members}
    if len(members_oof) != len(members):
        raise PipelineError(f"Two members share a name among {[b.name for b in members]}; give each its own name.")
    scores = {b.name: float(b.oof_score) for b in members}
    for name, set_results in (adapter_sets or {}).items():
        members_oof[name], set_ordered = fold_ensemble(set_results)
        members_test[name] = np.mean([np.load(r.test_path) for r in set_ordered], axis=0)
        scores[name] = score_predictions(members_oof[name], prepared, plan)
    blended = blend(blend_method, members_oof, members_test, training_labels(prepared, plan),
                    blend_metric(prepared, plan), fold_assignment(prepared, plan, members=True), seed=plan.seed,
                    tune_threshold=tunes_label_cut(prepared, plan))
    out = Path(out_dir)
    return CombineResult(
        method="blend",
        test_path=save_array(np.asarray(blended.test_pred, dtype=np.float32), out, "ensemble-blend"),
        oof_path=save_array(np.asarray(blended.oof_pred, dtype=np.float32), out, "oof-all"),
        oof_score=score_predictions(blended.oof_pred, prepared, plan, blended.threshold),
        metric=prepared.metric,
        weights={k: float(v) for k, v in blended.weights.items()},
        fold_scores=[],
        member_scores=scores,
        blend_method=blended.report.method,
        blend_cv_score=blended.report.blend_cv_score,
        threshold=blended.threshold,
    )


def merged_predict(
    prepared: Prepared,
    plan: Plan,
    adapter_paths: Sequence[Path],
    weights: Sequence[float],
    test_tokens: str | os.PathLike,
    *,
    model: str | None = None,
) -> np.ndarray:
    """Merge the adapters' task vectors with ``weights`` (:func:`lora_tasks.lora.merge.merge_adapters`,
    ``linear``: the exact weighted sum, heads averaged), fold the result into the base weights
    (:func:`~lora_tasks.lora.merge.merge_into_base`) and predict: one plain model whose every
    layer is the ensemble's mean layer."""
    # the model factory, the merge and the training engine load MLX: only when a model runs
    from lora_tasks.lora.adapter import read_adapter_file
    from lora_tasks.lora.layers import SlicedLoRALinear
    from lora_tasks.lora.merge import merge_adapters, merge_into_base, weighted_updates
    from lora_tasks.training.factory import build_model
    from lora_tasks.training.train import predict

    with MLX_LOCK:
        net, adapter = build_model(
            prepared.head_type, plan.settings.preset, prepared.num_labels,
            model=None if plan.tiny else model, tiny=plan.tiny, seed=plan.seed, top_layers=plan.settings.top_layers,
            compute_dtype=plan.settings.compute_dtype,
        )
        base = {name: layer.base_weight() for name, layer in adapter.layers.items()}
        if any(isinstance(layer, SlicedLoRALinear) for layer in adapter.layers.values()):
            # merge_adapters reads one A/B pair per layer; a fused projection (ModernBERT's Wqkv)
            # has one per slice, so its exact updates are summed from each layer's own delta
            merged: Any = weighted_updates(adapter, adapter_paths, weights, base)
        else:
            merged = merge_adapters([(read_adapter_file(path)[0], adapter.config) for path in adapter_paths],
                                    weights, method="linear", base_weights=base)
        _unwrap_lora_layers(net, adapter, base)
        merge_into_base(net, merged)
        net.eval()
        return ravel(predict(net, load_dataset(test_tokens)))


def _unwrap_lora_layers(net: Any, adapter: Any, base: Mapping[str, Any]) -> None:
    """Put plain ``nn.Linear`` layers holding the base weights where the LoRA layers are:
    :func:`~lora_tasks.lora.merge.merge_into_base` folds updates into a plain base model."""
    import mlx.nn as nn

    from lora_tasks.lora.adapter import set_child

    modules = dict(net.named_modules())
    for name, layer in adapter.layers.items():
        plain = nn.Linear(*reversed(base[name].shape), bias="bias" in layer.linear)
        plain.weight = base[name]
        if "bias" in layer.linear:
            plain.bias = layer.linear.bias
        parent_name, _, child = name.rpartition(".")
        set_child(modules[parent_name], child, plain)
