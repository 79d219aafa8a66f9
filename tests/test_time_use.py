"""A run that ends well before its time limit says why, from its own decisions: the summary, the log
and the settings artifact carry the sentence."""

from __future__ import annotations

from dataclasses import replace

import pytest

from lora_tasks import steps
from lora_tasks.steps.adapter_checks import AdapterGain
from lora_tasks.steps.estimates import EstimateCheck
from lora_tasks.steps.member_costs import MAX_MEMBER_ROUNDS
from lora_tasks.steps.time_use import EARLY_SHARE, time_use
from lora_tasks.steps.train import AdapterResult, MemberResult
from lora_tasks.testing.demo import build_demo_competition


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    data = build_demo_competition(tmp_path_factory.mktemp("served"))
    out = tmp_path_factory.mktemp("artifacts")
    return steps.Plan.load(steps.plan_training("demo", data, out, max_train_rows=200, no_adapters=True, budget=True,
                                               time_limit="10m"))


def _fold(k: int, epochs: int, tmp_path, **extra) -> AdapterResult:
    return AdapterResult(fold=k, adapter_path=tmp_path, oof_path=tmp_path, test_path=tmp_path, n_train=80, n_valid=20,
                         best_epoch=1, best_score=0.8, metric="accuracy",
                         history=[{"epoch": e + 1, "seconds": 1.0} for e in range(epochs)], **extra)


def _members(rounds: int, tmp_path) -> list[MemberResult]:
    return [MemberResult(name=n, oof_path=tmp_path, test_path=tmp_path, oof_score=0.8, metric="accuracy", rounds=rounds)
            for n in ("lightgbm", "linear")]


def test_a_run_that_used_its_limit_gives_no_reasons_and_one_without_a_limit_nothing(plan, tmp_path):
    use = time_use(plan, [], _members(MAX_MEMBER_ROUNDS, tmp_path), EARLY_SHARE * plan.time_limit_s)
    assert use.reasons == () and "ended early" not in use.sentence()
    assert use.sentence().startswith("used 7.5 min of the 10.0 min limit (75%)")
    assert time_use(replace(plan, time_limit_s=None), [], [], 10.0) is None


def test_an_early_members_only_run_names_the_plan_and_the_rounds(plan, tmp_path):
    use = time_use(plan, [], _members(MAX_MEMBER_ROUNDS, tmp_path), 60.0)
    assert use.share == pytest.approx(0.1)
    assert use.reasons[0] == "the plan is the scikit-learn members alone"
    assert f"the members ran {MAX_MEMBER_ROUNDS} rounds" in use.reasons[-1]
    assert len(time_use(plan, [], _members(2, tmp_path), 60.0).reasons) == 1  # fewer rounds: not a reason


def test_an_early_run_with_adapters_names_fold_0s_decision_and_early_stopping(plan, tmp_path):
    epochs = int(plan.settings.epochs)
    assert epochs >= 2
    rules = replace(plan, no_adapters=False,
                    settings=replace(plan.settings, reasons=[*plan.settings.reasons, "budget: chose as_planned: ..."]))
    gain = AdapterGain(False, 0.0, 0.8, 0.8, "accuracy", "nested accuracy 0.8 with the adapters, 0.8 without")
    stopped = time_use(rules, [_fold(0, 1, tmp_path, gain=gain)], [], 60.0)
    assert stopped.reasons[0].startswith("the rules' plan fit as it is")
    assert "the adapters stopped after fold 0 (nested accuracy 0.8 with the adapters, 0.8 without)" in stopped.reasons
    assert f"after 1 of their {epochs} planned epochs" in stopped.reasons[-1]
    # every fold trained: early stopping counts each fold's epochs, the later folds' as fold 0's decision set them
    folds = [_fold(0, epochs, tmp_path, later_epochs=2)] + [_fold(k, 1, tmp_path) for k in range(1, rules.n_folds)]
    early = time_use(rules, folds, [], 60.0)
    assert not any("stopped after fold 0" in r for r in early.reasons)
    assert f"after {epochs + rules.n_folds - 1} of their {epochs + 2 * (rules.n_folds - 1)} planned" in early.reasons[-1]
    # a fold the time budget cut is not early stopping
    cut = [_fold(k, 1, tmp_path, stopped_for_time=True) for k in range(rules.n_folds)]
    assert not any("early stopping" in r for r in time_use(rules, cut, [], 60.0).reasons)


def test_an_early_run_names_the_parts_that_took_less_than_their_estimate(plan, tmp_path):
    quick = EstimateCheck("one adapter epoch", 20.0, 15.0, "mean of 6 epochs")
    close = EstimateCheck("the members, one round", 10.0, 9.5, "5 members")
    slow = EstimateCheck("the members, one round", 10.0, 13.0, "5 members")
    reasons = time_use(plan, [], [], 60.0, [quick, close, slow]).reasons
    assert "one adapter epoch took 0.75x of the plan's estimate" in reasons
    assert not any("members, one round took" in r for r in reasons)  # within ±15%, or slower: not why it ended early


def test_an_early_run_names_the_decisions_after_its_folds(plan, tmp_path):
    note = "the adapters' out-of-fold accuracy 0.80 against the best member's (lightgbm) 0.85, 5.3% behind: ..."
    use = time_use(plan, [], _members(MAX_MEMBER_ROUNDS, tmp_path), 60.0, notes=[note])
    assert note in use.reasons and note in use.sentence()
    assert note not in time_use(plan, [], [], 0.9 * plan.time_limit_s, notes=[note]).reasons  # it used its limit


def test_a_rerun_from_the_cache_says_so(plan, tmp_path):
    folds = [replace(_fold(k, 2, tmp_path), seconds=40.0) for k in range(plan.n_folds)]
    rerun = time_use(replace(plan, no_adapters=False), folds, [], 9.0, cached_steps=17)
    assert rerun.reasons[0].startswith("its steps came from an earlier run's cache (they record ")
    assert time_use(plan, folds, [], 0.8).sentence().startswith("used 0.8 s of the 10.0 min limit (0%)")
    first_run = time_use(replace(plan, no_adapters=False), folds, [], 40.0 * plan.n_folds + 5.0, cached_steps=2)
    assert not any("cache" in r for r in first_run.reasons)
    # folds trained side by side in worker processes record more seconds than the run took, with nothing cached
    parallel = time_use(replace(plan, no_adapters=False), folds, [], 9.0, cached_steps=0)
    assert not any("cache" in r for r in parallel.reasons)
