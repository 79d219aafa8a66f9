"""More seeds of the adapter folds in the time the run has left, averaged fold by fold.

Why: on text the adapters carry the blend, and their folds often end sooner than the plan priced
them (early stopping, epochs quicker than the estimate). The members' rounds cost seconds there
and stop at their cap, so a run used to end with a third of its limit unused. A fine-tuned model's
predictions move with its seed (the adapters' initialisation, the batches' order, dropout);
averaging the folds of two or three seeds lowers that variance, which is what the time buys
(seed ensembles). Each seed of fold ``k`` holds out the same rows, so the fold's average stays out
of fold, and the blend reads it as the ``lora`` member it was.

How many folds: as many as still end inside :data:`~lora_tasks.steps.member_costs.ROUNDS_SHARE` of
the limit by the clock (:func:`choose_adapter_folds`), each priced at what its first seed took, at
most :data:`MAX_ADAPTER_SEEDS` seeds of every fold; a round may stop after some of its folds (each
fold averages the seeds it has). Each later seed trains at most the epochs its first seed trained,
so it costs what the first did. The count is a step cached without the clock, as the members'
rounds are: a rerun reads back the first run's count and finds its folds cached.

The average replaces the first seed only when its out-of-fold score is at least the first seed's
(:func:`bag_adapters`); the log says both scores, and the averaged folds record their ``seeds``.
The seeds train only where the adapters add to the members' blend, nested over every out-of-fold
row (:func:`seeds_worth`): where they add nothing, the blend gives them no weight, and more seeds
would only make a member that adds nothing take more of the run. The seeds go before the members'
rounds.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lora_tasks.budget import format_duration
from lora_tasks.steps.adapter_checks import blend_gain
from lora_tasks.steps.combine import fold_ensemble
from lora_tasks.steps.member_costs import ROUNDS_SHARE
from lora_tasks.steps.plan import Plan
from lora_tasks.steps.prepare import Prepared
from lora_tasks.steps.store import PipelineError, save_array
from lora_tasks.steps.targets import to_metric_scale
from lora_tasks.steps.train import AdapterResult, MemberResult

log = logging.getLogger("lora_tasks.steps")

#: Seeds of each fold at most, the first included. Why 3: the variance a seed average removes
#: falls as 1/seeds, so a fourth seed buys a third of what the second did.
MAX_ADAPTER_SEEDS = 3


def seed_folds(first: Sequence[AdapterResult]) -> list[tuple[int, AdapterResult]]:
    """The later seeds' folds in the order they train: ``(round, first seed's fold)``, every fold
    of round 1, then of round 2, up to :data:`MAX_ADAPTER_SEEDS`."""
    ordered = sorted(first, key=lambda a: a.fold)
    return [(r, a) for r in range(1, MAX_ADAPTER_SEEDS) for a in ordered]


def adapter_folds_that_fit(limit_s: float, elapsed_s: float, first: Sequence[AdapterResult]) -> int:
    """How many of :func:`seed_folds` still end inside :data:`ROUNDS_SHARE` of ``limit_s`` after
    ``elapsed_s``, each costing its first seed's seconds (an unknown cost: none)."""
    left, n = ROUNDS_SHARE * limit_s - elapsed_s, 0
    for _, fold in seed_folds(first):
        if not (np.isfinite(fold.seconds) and fold.seconds > 0) or fold.seconds > left:
            break
        left -= fold.seconds
        n += 1
    return n


def choose_adapter_folds(plan_path: str | os.PathLike, main_folds: Sequence[AdapterResult], run_start: float) -> int:
    """How many later-seed folds this run trains (:func:`adapter_folds_that_fit`, by the clock since
    ``run_start``): none on the tiny random model, without a limit, or when the adapters stopped
    after fold 0 or a fold failed (their member is out of the blend, or every fold is not there to
    average). The log says why and how many.

    A step of the run: the executor caches it without ``run_start``, so a rerun takes the first
    run's count."""
    plan = Plan.load(plan_path)
    if plan.tiny or plan.no_adapters or plan.time_limit_s is None or not main_folds:
        return 0
    if len(main_folds) < plan.n_folds or any(a.failed for a in main_folds):
        return 0
    elapsed = time.time() - run_start
    n = adapter_folds_that_fit(float(plan.time_limit_s), elapsed, main_folds)
    if n:
        log.info("adapters: %d more fold(s) with other seeds, to average with the first: the run is at %s of its %s "
                 "limit and the %d fold(s) took %s", n, format_duration(elapsed), format_duration(plan.time_limit_s),
                 len(main_folds), format_duration(sum(a.seconds for a in main_folds)))
    return n


@dataclass(frozen=True)
class SeedsCall:
    """Whether the adapters' later seeds may take the time the folds left, and why (for the log and
    the run's ``Time:`` line)."""

    train: bool
    reason: str


def seeds_worth(prepared_path: str | os.PathLike, plan_path: str | os.PathLike, adapters: Sequence[AdapterResult],
                members: Sequence[MemberResult]) -> SeedsCall:
    """Whether the later seeds are worth their time: when the adapters add to the members' blend,
    nested over every out-of-fold row (:func:`~lora_tasks.steps.adapter_checks.blend_gain`, the check
    fold 0 makes on a table without text), or there are no members. Where they add nothing, the blend
    gives them no weight, and more seeds would only make a member that adds nothing take more of the
    run. An adapter member behind the best member can still add (on a text regression its errors
    differ from the TF-IDF model's), which is why the blend decides, not the two scores."""
    if not members or not adapters or any(a.failed for a in adapters):
        return SeedsCall(True, "no members to blend with")
    prepared, plan = Prepared.load(prepared_path), Plan.load(plan_path)
    oof, _ = fold_ensemble(adapters)
    found = blend_gain(prepared, plan, np.arange(len(oof)), oof, [(m.name, np.load(m.oof_path)) for m in members],
                       f"all {len(oof)} out-of-fold rows")
    call = (SeedsCall(True, f"the adapters add to the members' blend ({found.reason}): their later seeds may take "
                            "the time the folds left") if found.keep_adapters or found.gain is None else
            SeedsCall(False, f"the adapters add nothing to the members' blend ({found.reason}): their folds were not "
                             "trained again with other seeds"))
    log.info("adapters: %s", call.reason)
    return call


def bag_adapters(prepared_path: str | os.PathLike, plan_path: str | os.PathLike, first: Sequence[AdapterResult],
                 later: Sequence[AdapterResult], out_dir: str | os.PathLike) -> list[AdapterResult]:
    """Each fold's predictions averaged over its seeds (``first`` and the ``later`` seeds' folds; a
    failed fold of a later seed is left out), kept when the averaged out-of-fold score
    (:func:`_oof_score`) is at least the first seed's, else ``first`` as it is."""
    kept = [a for a in later if not a.failed]
    if not kept:
        return list(first)
    prepared, plan = Prepared.load(prepared_path), Plan.load(plan_path)
    out = Path(out_dir)
    bagged = []
    for a in first:
        same = [a, *(b for b in kept if b.fold == a.fold)]
        if len(same) == 1:
            bagged.append(a)
            continue
        oof = np.mean([np.load(b.oof_path) for b in same], axis=0).astype(np.float32)
        test = np.mean([np.load(b.test_path) for b in same], axis=0).astype(np.float32)
        if not np.isfinite(test).all() or not np.isfinite(oof[~np.isnan(np.load(a.oof_path))]).all():
            raise PipelineError(f"fold {a.fold}'s averaged predictions hold NaN or inf; rerun with --refresh.")
        bagged.append(replace(a, oof_path=save_array(oof, out, f"oof-fold{a.fold}-seeds{len(same)}"),
                              test_path=save_array(test, out, f"test-fold{a.fold}-seeds{len(same)}"),
                              seconds=sum(b.seconds for b in same), seeds=len(same)))
    (before, higher, scored), (after, *_) = _oof_score(first, prepared, plan), _oof_score(bagged, prepared, plan)
    better = after >= before if higher else after <= before
    seeds = sum(b.seeds for b in bagged)
    verdict = "kept" if better else "not kept: the first seed alone scores better"
    log.info("adapters: %d fold(s) averaged over %d seed-folds: out-of-fold %s %.5f, the first seed's %.5f (%s)",
             len(first), seeds, scored, after, before, verdict)
    return bagged if better else list(first)


def run_adapter_seeds(ex: Any, first: list[AdapterResult], n: int, *, submit_fold: Any, prepared_path: Path,
                      plan_path: Path, out_dir: Path) -> list[AdapterResult]:
    """The first ``n`` of :func:`seed_folds` through ``submit_fold(fold, round=, epochs=)`` (a future
    of :func:`~lora_tasks.steps.train.train_adapter`; the executor may run them in any order, the count
    is fixed), then :func:`bag_adapters`."""
    if n <= 0:
        return first
    futures = [submit_fold(fold.fold, round=r, epochs=max(1, len(fold.history))) for r, fold in seed_folds(first)[:n]]
    later = [ex.result(f) for f in futures]
    return ex.result(ex.submit(bag_adapters, prepared_path=prepared_path, plan_path=plan_path, first=first,
                               later=later, out_dir=out_dir))


def _metric_score(folds: Sequence[AdapterResult], prepared: Prepared, plan: Plan) -> float:
    """The competition metric of every fold's out-of-fold predictions."""
    from lora_tasks.metrics import get_metric

    oof, _ = fold_ensemble(folds)
    return float(get_metric(prepared.metric)(np.asarray(prepared.y), to_metric_scale(oof, prepared, plan)))


def _oof_score(folds: Sequence[AdapterResult], prepared: Prepared, plan: Plan) -> tuple[float, bool, str]:
    """Every fold's out-of-fold predictions scored, whether higher is better, and the score's name.

    The competition metric where it reads the predictions as they are (values, probabilities);
    where it reads labels (accuracy, F1), the Brier score of the probabilities instead: a few
    hundred rows' labels move by a row or two between two sets of predictions, and an average of
    seeds shows its gain in how sure it is, which the cut to labels hides."""
    from lora_tasks.metrics import get_metric

    metric = get_metric(prepared.metric)
    if prepared.task.is_regression or metric.needs != "labels":
        return _metric_score(folds, prepared, plan), bool(metric.greater_is_better), prepared.metric
    oof, _ = fold_ensemble(folds)
    y = np.asarray(prepared.y)
    prob = np.asarray(oof, dtype=float)
    truth = np.eye(prob.shape[1])[y.astype(int)] if prob.ndim == 2 and y.ndim == 1 else y.astype(float)
    return float(np.mean((prob - truth.reshape(prob.shape)) ** 2)), False, "Brier score"


__all__ = ["MAX_ADAPTER_SEEDS", "adapter_folds_that_fit", "bag_adapters", "choose_adapter_folds",
           "run_adapter_seeds", "seed_folds", "seeds_worth", "SeedsCall"]
