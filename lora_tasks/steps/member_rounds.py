"""More rounds of the members on new fold splits, in the time the plan leaves, averaged: bagging.

Why: a run that has time left once its adapters are done (a small table, or one where fold 0
showed the adapters add nothing to the members' blend) used to end early, with a quarter to
most of the user's time limit unused. The members cost seconds there, and repeating their K
folds on a new split and seed and averaging the rounds (what AutoGluon's repeated bagging does)
lowers the variance of both their out-of-fold and their test predictions: each test row is
predicted by K models per round instead of K in all. Every round's out-of-fold predictions stay
out of fold, so their average is too, and the blend and its nested score read it as before.

How many rounds: as many as fit :data:`~lora_tasks.steps.member_costs.ROUNDS_SHARE` of the limit
by the clock once the adapters are done (:func:`choose_rounds`), each priced at the first round's
measured seconds; without a limit, or on the tiny random model, the plan's count
(:func:`~lora_tasks.steps.member_costs.plan_member_rounds`). The clock, not the plan's estimates:
the plan prices every fold at its full epochs and the run's overhead at a fixed guess, so early
stopping, fold 0's members decision and a quick download all left time the plan's count did not
use. The decision is a step of its own, cached on everything but the clock, so a rerun whose folds
come from the cache reads back the same count and finds its rounds cached; the run still checks its
deadline before each round.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lora_tasks.budget import format_duration
from lora_tasks.steps.member_costs import MAX_MEMBER_ROUNDS, ROUNDS_SHARE
from lora_tasks.steps.plan import Plan
from lora_tasks.steps.prepare import Prepared
from lora_tasks.steps.store import PipelineError, save_array
from lora_tasks.steps.targets import score_predictions
from lora_tasks.steps.train import AdapterResult, MemberResult, train_members

log = logging.getLogger("lora_tasks.steps")


def rounds_to_run(plan: Plan, adapters_stopped: bool) -> int:
    """The extra rounds this run asks for: the plan's ``alone`` count once the adapters stopped
    (or none were planned), else its ``with_adapters`` count."""
    alone = adapters_stopped or plan.no_adapters
    return int(plan.member_rounds_alone if alone else plan.member_rounds)


def rounds_that_fit(limit_s: float, elapsed_s: float, round_s: float) -> int:
    """The rounds of ``round_s`` seconds each that still end inside :data:`ROUNDS_SHARE` of ``limit_s``
    after ``elapsed_s`` (the rest of the limit is the blend's, the submission's and the run's margin),
    at most :data:`MAX_MEMBER_ROUNDS` in all with the first. None for an unknown cost."""
    if not (np.isfinite(round_s) and round_s > 0 and np.isfinite(elapsed_s)):
        return 0
    return int(max(0, min(MAX_MEMBER_ROUNDS - 1, (ROUNDS_SHARE * limit_s - elapsed_s) // round_s)))


def choose_rounds(plan_path: str | os.PathLike, main_folds: Sequence[AdapterResult], first: Sequence[MemberResult],
                  run_start: float) -> int:
    """The extra rounds this run takes: what fits the time left by the clock (:func:`rounds_that_fit`,
    since ``run_start``), priced at the first round's (``first``) measured seconds; the plan's count
    (:func:`rounds_to_run`; ``main_folds`` fewer than its folds: the adapters stopped) without a limit
    or on the tiny random model. The log says why the count differs from the plan's.

    A step of the run: the executor caches it without ``run_start``, so a rerun takes the first
    run's count, not what the clock says once every step before it came from the cache."""
    plan = Plan.load(plan_path)
    planned = rounds_to_run(plan, adapters_stopped=len(main_folds) < plan.n_folds)
    round_s = sum(m.seconds for m in first)
    if plan.tiny or plan.time_limit_s is None or round_s <= 0:
        return planned
    elapsed = time.time() - run_start
    rounds = rounds_that_fit(float(plan.time_limit_s), elapsed, round_s)
    if rounds != planned:
        log.info("members: %d more round(s), not the plan's %d: the run is at %s of its %s limit and a round takes "
                 "%.0f s (rounds fill %.0f%% of the limit)", rounds, planned, format_duration(elapsed),
                 format_duration(float(plan.time_limit_s)), round_s, 100 * ROUNDS_SHARE)
    return rounds


def round_fits(run_start: float, now: float, round_s: float, plan: Plan) -> bool:
    """Whether one more round (``round_s``, the first round's measured seconds) still ends inside
    :data:`ROUNDS_SHARE` of the plan's limit: a run that fell behind its estimates stops adding."""
    if plan.time_limit_s is None:
        return True
    return rounds_that_fit(float(plan.time_limit_s), now - run_start, round_s) >= 1


def take_round(plan_path: str | os.PathLike, first: Sequence[MemberResult], round: int, run_start: float) -> bool:
    """Whether round ``round`` (1: the first extra one) still fits by the clock (:func:`round_fits`,
    priced at the first round's seconds). A step of the run, cached without ``run_start`` as
    :func:`choose_rounds` is: a rerun whose rounds come from the cache makes the first run's call
    again, instead of training a round the first run left out for time and ending with another blend."""
    plan = Plan.load(plan_path)
    round_s = sum(m.seconds for m in first)
    if round_fits(run_start, time.time(), round_s, plan):
        return True
    log.info("members: round %d left out: one more (~%.0f s) would not end inside %.0f%% of the limit", round + 1,
             round_s, 100 * ROUNDS_SHARE)
    return False


def bag_members(prepared_path: str | os.PathLike, plan_path: str | os.PathLike,
                rounds: Sequence[Sequence[MemberResult]], out_dir: str | os.PathLike) -> list[MemberResult]:
    """Each member's predictions averaged over ``rounds`` (the first round first), scored again;
    a member missing from a later round keeps the rounds it has. One round returns it as is."""
    if not rounds:
        raise PipelineError("bag_members needs at least one round of members.")
    if len(rounds) == 1:
        return list(rounds[0])
    prepared, plan = Prepared.load(prepared_path), Plan.load(plan_path)
    out = Path(out_dir)
    bagged = []
    for first in rounds[0]:
        same = [m for r in rounds for m in r if m.name == first.name]
        oof = np.mean([np.load(m.oof_path) for m in same], axis=0).astype(np.float32)
        test = np.mean([np.load(m.test_path) for m in same], axis=0).astype(np.float32)
        if not (np.isfinite(oof).all() and np.isfinite(test).all()):
            raise PipelineError(f"member {first.name}'s averaged predictions hold NaN or inf; rerun with --refresh.")
        tag = f"-bag{len(same)}"
        bagged.append(MemberResult(
            name=first.name, oof_path=save_array(oof, out, f"oof-{first.name}{tag}"),
            test_path=save_array(test, out, f"test-{first.name}{tag}"),
            oof_score=score_predictions(oof, prepared, plan), metric=first.metric,
            seconds=sum(m.seconds for m in same), dropped_columns=list(first.dropped_columns), rounds=len(same)))
        log.info("members: %s averaged over %d rounds: OOF %s %.5f (first round %.5f)", first.name, len(same),
                 first.metric, bagged[-1].oof_score, first.oof_score)
    return bagged


def run_member_rounds(ex: Any, first: list[MemberResult], rounds: int, *, competition: Any, data_dir: Path,
                      prepared_path: Path, plan_path: Path, out_dir: Path, run_start: float) -> list[MemberResult]:
    """Up to ``rounds`` more rounds of :func:`~lora_tasks.steps.train.train_members` (on
    ``competition``'s files in ``data_dir``) through the executor ``ex``, each only while it still
    fits the limit (:func:`take_round`), then :func:`bag_members` of all of them."""
    if rounds <= 0 or not first:
        return first
    done = [first]
    for r in range(1, rounds + 1):
        if not ex.result(ex.submit(take_round, run_name=f"take-member-round-{r}", plan_path=plan_path, first=first,
                                   round=r, run_start=run_start)):
            break
        log.info("members: round %d of %d, on a new fold split", r + 1, rounds + 1)
        done.append(ex.result(ex.submit(train_members, run_name=f"train-members-round-{r}", competition=competition,
                                        data_dir=data_dir, prepared_path=prepared_path, plan_path=plan_path,
                                        out_dir=out_dir, round=r)))
    return ex.result(ex.submit(bag_members, prepared_path=prepared_path, plan_path=plan_path, rounds=done,
                               out_dir=out_dir))


__all__ = ["bag_members", "choose_rounds", "round_fits", "rounds_that_fit", "rounds_to_run", "run_member_rounds",
           "take_round"]
