"""The time a run has left goes to more rounds of the members on new fold splits, averaged: the
clock decides how many fit (and a rerun reads the count back), each round has its own split, the average is the
rounds' mean and stays out of fold, and a run that fell behind stops adding rounds."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from lora_tasks import steps
from lora_tasks.steps.member_costs import MAX_MEMBER_ROUNDS, plan_member_rounds
from lora_tasks.steps.member_rounds import (
    bag_members,
    choose_rounds,
    round_fits,
    rounds_that_fit,
    rounds_to_run,
    run_member_rounds,
    take_round,
)
from lora_tasks.steps.orchestrate import PlainExecutor
from lora_tasks.steps.targets import fold_assignment
from lora_tasks.testing.demo import build_demo_competition


def test_the_plan_gives_the_rounds_what_its_estimate_leaves():
    # 10 min limit; 85% of it is 510 s: 400 s with every fold leaves 110 s (two 50-s rounds),
    # 150 s with fold 0 alone leaves 360 s (seven, the cap with the first round)
    rounds = plan_member_rounds(600, 50, full_s=400, alone_s=150)
    assert (rounds.with_adapters, rounds.alone) == (2, MAX_MEMBER_ROUNDS - 1)
    assert "2 more round(s)" in rounds.reason and "stop after fold 0" in rounds.reason
    assert plan_member_rounds(600, 50, full_s=590, alone_s=590).alone == 0  # no room: none
    assert plan_member_rounds(600, 0.0, 100, 100).alone == 0  # an unknown cost asks for none
    assert plan_member_rounds(600, float("nan"), 100, 100).alone == 0


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    data = build_demo_competition(tmp_path_factory.mktemp("served"))
    out = tmp_path_factory.mktemp("artifacts")
    prepared = steps.prepare_data("demo", data, out, max_train_rows=200)
    plan = steps.plan_training("demo", data, out, tiny=True, max_train_rows=200, no_adapters=True,
                               budget=True, time_limit="10m")
    first = steps.train_members("demo", data, prepared, plan, out)
    return data, out, prepared, plan, first


def test_a_members_only_plan_records_its_rounds(demo, tmp_path):
    data, _, _, plan, _ = demo
    loaded = steps.Plan.load(plan)  # the tiny model: a smoke run, one round
    assert (loaded.member_rounds, loaded.member_rounds_alone) == (0, 0)
    assert any(r.startswith("member_rounds: none with the tiny") for r in loaded.settings.reasons)
    real = steps.Plan.load(steps.plan_training("demo", data, tmp_path, max_train_rows=200, no_adapters=True,
                                               budget=True, time_limit="10m"))
    assert real.member_rounds_alone >= 1, real.settings.reasons
    assert any(r.startswith("member_rounds: ") and "more round(s)" in r for r in real.settings.reasons)
    assert rounds_to_run(real, adapters_stopped=False) == real.member_rounds_alone  # no adapters: alone


def test_rounds_fill_the_share_of_the_limit_the_clock_leaves():
    # 85% of a 10-min limit is 510 s: at 100 s, 50-s rounds would be 8 (7 more is the cap); at 400 s, 2
    assert rounds_that_fit(600, 100, 50) == MAX_MEMBER_ROUNDS - 1
    assert rounds_that_fit(600, 400, 50) == 2
    assert rounds_that_fit(600, 480, 50) == 0  # one more would end past 85%
    assert rounds_that_fit(600, 100, 0.0) == 0 and rounds_that_fit(600, 100, float("nan")) == 0


def test_time_the_folds_did_not_take_goes_to_the_rounds(demo, tmp_path, caplog):
    data, _, _, _, first = demo
    path = steps.plan_training("demo", data, tmp_path, max_train_rows=200, no_adapters=True, budget=True,
                               time_limit="10m")
    real = steps.Plan.load(path)
    limit, round_s = real.time_limit_s, sum(m.seconds for m in first)
    assert round_s > 0
    # a run at its start has room for every round, and says why the count is not the plan's
    with caplog.at_level("INFO", logger="lora_tasks.steps"):
        assert choose_rounds(path, [], first, run_start=time.time()) == MAX_MEMBER_ROUNDS - 1
    if real.member_rounds_alone != MAX_MEMBER_ROUNDS - 1:
        assert f"not the plan's {real.member_rounds_alone}" in caplog.text and "limit" in caplog.text
    # a run already past the rounds' share has none, whatever the plan counted
    assert choose_rounds(path, [], first, run_start=time.time() - 0.85 * limit) == 0
    # halfway through: what is left of the share, in rounds
    half = time.time() - limit / 2
    assert choose_rounds(path, [], first, run_start=half) == rounds_that_fit(limit, time.time() - half, round_s)
    # the tiny random model (a smoke run) keeps the plan's count (none)
    tiny = demo[3]
    assert choose_rounds(tiny, [], first, run_start=time.time()) == rounds_to_run(steps.Plan.load(tiny), True) == 0


def test_a_rerun_takes_the_first_runs_count_from_the_cache(demo, harness, tmp_path):
    """The clock chooses the rounds, but a rerun, whose folds come back from the cache in seconds,
    must not ask for rounds the first run never trained: the step is cached without the clock."""
    from prefect import flow

    from lora_tasks.prefect import tasks

    data, _, _, _, first = demo
    path = steps.plan_training("demo", data, tmp_path, max_train_rows=200, no_adapters=True, budget=True,
                               time_limit="10m")
    limit = steps.Plan.load(path).time_limit_s

    @flow
    def decide(run_start: float, refresh: bool = False) -> int:
        return tasks.configure(tmp_path / "work", refresh=refresh)[choose_rounds](
            plan_path=path, main_folds=[], first=first, run_start=run_start)

    assert decide(time.time() - 0.85 * limit) == 0  # the first run was late: no rounds
    assert decide(time.time()) == 0, "a rerun reads back the first run's count"
    assert decide(time.time(), refresh=True) == MAX_MEMBER_ROUNDS - 1  # --refresh decides again


def test_a_rerun_makes_the_first_runs_call_on_each_round(demo, harness, tmp_path):
    """A round the first run left out for time stays out when the rerun's clock says it fits
    (its earlier rounds came from the cache in seconds): the rerun ends with the first run's blend."""
    from prefect import flow

    from lora_tasks.prefect import tasks

    data, _, _, _, first = demo
    path = steps.plan_training("demo", data, tmp_path, max_train_rows=200, no_adapters=True, budget=True,
                               time_limit="10m")
    limit = steps.Plan.load(path).time_limit_s

    @flow
    def decide(run_start: float, round: int = 3, refresh: bool = False) -> bool:
        return tasks.configure(tmp_path / "work", refresh=refresh)[take_round](
            plan_path=path, first=first, round=round, run_start=run_start)

    assert not take_round(path, first, 3, run_start=time.time() - 0.85 * limit)
    assert take_round(path, first, 3, run_start=time.time())
    assert decide(time.time() - 0.85 * limit) is False  # the first run was late: round 4 left out
    assert decide(time.time()) is False, "a rerun reads back the first run's call"
    assert decide(time.time(), round=2) is True, "another round is its own call"
    assert decide(time.time(), refresh=True) is True  # --refresh decides again


def test_each_round_has_its_own_split_and_the_bag_is_their_mean(demo):
    data, out, prepared, plan, first = demo
    p, pl = steps.Prepared.load(prepared), steps.Plan.load(plan)
    assert (fold_assignment(p, pl, members=True) != fold_assignment(p, pl, members=True, round=1)).any()
    second = steps.train_members("demo", data, prepared, plan, out, round=1)
    assert [m.name for m in second] == [m.name for m in first]
    assert all(a.oof_path != b.oof_path for a, b in zip(first, second, strict=True))
    bagged = bag_members(prepared, plan, [first, second], out)
    for a, b, bag in zip(first, second, bagged, strict=True):
        mean = (np.load(a.oof_path) + np.load(b.oof_path)) / 2
        np.testing.assert_allclose(np.load(bag.oof_path), mean, rtol=1e-6)
        np.testing.assert_allclose(np.load(bag.test_path), (np.load(a.test_path) + np.load(b.test_path)) / 2, rtol=1e-6)
        assert bag.name == a.name and bag.seconds == pytest.approx(a.seconds + b.seconds)
        assert 0.0 <= bag.oof_score <= 1.0
    assert bag_members(prepared, plan, [first], out) == first


def test_the_orchestrated_rounds_run_and_bag_while_they_fit(demo):
    data, out, prepared, plan, first = demo
    bagged = run_member_rounds(PlainExecutor(), first, 1, plan_path=plan, run_start=time.time(), competition="demo",
                               data_dir=data, prepared_path=prepared, out_dir=out)
    assert [m.name for m in bagged] == [m.name for m in first]
    assert all(b.oof_path.name.startswith(f"oof-{b.name}-bag2") for b in bagged)
    assert all(b.seconds > a.seconds for a, b in zip(first, bagged, strict=True))


def test_a_run_behind_its_estimate_adds_no_round(demo):
    data, out, prepared, plan, first = demo
    loaded = steps.Plan.load(plan)
    assert round_fits(0.0, 10.0, 5.0, loaded)
    assert not round_fits(0.0, loaded.time_limit_s, 5.0, loaded)
    # started a whole limit ago: the rounds are left out and the first round comes back as is
    late = run_member_rounds(PlainExecutor(), first, 3, plan_path=plan, run_start=0.0, competition="demo",
                             data_dir=data, prepared_path=prepared, out_dir=out)
    assert late == first
    # a NaN from a member is refused by name, not averaged into the blend
    broken = replace(first[0], oof_path=steps.save_array(np.full(np.load(first[0].oof_path).shape, np.nan,
                                                                 dtype=np.float32), out, "oof-nan"))
    with pytest.raises(steps.PipelineError, match=f"member {first[0].name}.*NaN"):
        bag_members(prepared, plan, [first, [broken, *first[1:]]], out)
