"""The time the adapter folds leave goes to more seeds of them, averaged fold by fold: the clock
decides how many folds fit (and a rerun reads the count back), a later seed trains other weights on
the same held-out rows, and the average replaces the first seed only when it scores at least as well."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lora_tasks import steps
from lora_tasks.steps.adapter_rounds import (
    MAX_ADAPTER_SEEDS,
    adapter_folds_that_fit,
    bag_adapters,
    choose_adapter_folds,
    run_adapter_seeds,
    seed_folds,
    seeds_worth,
)
from lora_tasks.steps.orchestrate import PlainExecutor
from lora_tasks.steps.train import AdapterResult, train_adapter
from lora_tasks.testing.demo import build_demo_competition


def _fold(k: int, seconds: float, **extra) -> AdapterResult:
    return AdapterResult(k, Path("a"), Path("o"), Path("t"), 80, 20, 1, 0.8, "accuracy", seconds=seconds,
                         history=[{"epoch": 1, "seconds": seconds}], **extra)


def test_later_seeds_fill_the_share_of_the_limit_the_clock_leaves():
    folds = [_fold(k, 10.0) for k in (2, 0, 1)]
    assert [(r, a.fold) for r, a in seed_folds(folds)] == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    assert len(seed_folds(folds)) == (MAX_ADAPTER_SEEDS - 1) * 3
    # 85% of 600 s is 510 s: at 100 s every later seed fits; at 470 s four 10-s folds; at 505 s none
    assert adapter_folds_that_fit(600, 100, folds) == 6
    assert adapter_folds_that_fit(600, 470, folds) == 4
    assert adapter_folds_that_fit(600, 505, folds) == 0
    assert adapter_folds_that_fit(600, 100, [_fold(0, float("nan")), _fold(1, 10.0)]) == 0


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo table with 3 tiny-model folds trained, and a copy of its plan as a real-model run's. The
    tiny random encoder ends at the majority class (a failed fold, :mod:`test_adapter_checks`); the
    seeds' mechanics do not need it to learn, so the folds are taken as they came out."""
    data = build_demo_competition(tmp_path_factory.mktemp("served"))
    out = tmp_path_factory.mktemp("artifacts")
    prepared = steps.prepare_data("demo", data, out, max_train_rows=200)
    plan = steps.plan_training("demo", data, out, tiny=True, max_train_rows=200, budget=True, time_limit="10m",
                               overrides={"n_folds": 3, "epochs": 2, "max_seq_len": 32})
    tokens = steps.tokenize_data(prepared, plan, out / "tokens")
    first = [replace(train_adapter(prepared, plan, tokens, k, out), failed=None) for k in range(3)]
    real = replace(steps.Plan.load(plan), tiny=False).save(out / "real")
    return data, out, prepared, plan, tokens, first, real


def test_the_clock_chooses_the_seeds_unless_the_adapters_stopped(demo, caplog):
    *_, first, real = demo
    folds = [replace(a, seconds=5.0) for a in first]
    with caplog.at_level("INFO", logger="lora_tasks.steps"):
        assert choose_adapter_folds(real, folds, run_start=time.time()) == len(seed_folds(folds))
    assert "more fold(s) with other seeds" in caplog.text
    late = time.time() - steps.Plan.load(real).time_limit_s
    assert choose_adapter_folds(real, folds, run_start=late) == 0  # past the share: none
    assert choose_adapter_folds(real, folds[:1], run_start=time.time()) == 0  # fold 0 stopped the adapters
    assert choose_adapter_folds(real, [replace(folds[0], failed="one class"), *folds[1:]], run_start=time.time()) == 0
    assert choose_adapter_folds(demo[3], folds, run_start=time.time()) == 0  # the tiny model: a smoke run


def test_a_later_seed_trains_other_weights_on_the_same_rows_and_the_bag_is_their_mean(demo, caplog):
    _, out, prepared, plan, tokens, first, _ = demo
    again = replace(train_adapter(prepared, plan, tokens, 0, out, round=1, epochs=1), failed=None)
    a, b = np.load(first[0].oof_path), np.load(again.oof_path)
    assert (np.isnan(a) == np.isnan(b)).all(), "the same held-out rows"
    assert not np.allclose(a[~np.isnan(a)], b[~np.isnan(b)]), "another seed, other weights"
    assert len(again.history) == 1 and again.adapter_path != first[0].adapter_path
    with caplog.at_level("INFO", logger="lora_tasks.steps"):
        bagged = bag_adapters(prepared, plan, first, [again], out)
    # accuracy reads labels: the seeds are compared by the Brier score of their probabilities
    assert "averaged over 4 seed-folds: out-of-fold Brier score" in caplog.text
    if bagged[0].seeds == 2:  # the average scored at least as well: it replaces fold 0
        np.testing.assert_allclose(np.load(bagged[0].oof_path), (a + b) / 2, rtol=1e-6)
        np.testing.assert_allclose(np.load(bagged[0].test_path),
                                   (np.load(first[0].test_path) + np.load(again.test_path)) / 2, rtol=1e-6)
        assert bagged[0].seconds == pytest.approx(first[0].seconds + again.seconds)
        assert bagged[1:] == first[1:]
    else:
        assert bagged == first
    # a later seed that predicts the opposite of every label scores worse: the first seed stays
    y = np.asarray(steps.Prepared.load(prepared).y, dtype=np.float32)
    wrong = np.where(np.isnan(b), np.nan, (1.0 - y).reshape(-1, *([1] * (b.ndim - 1))) * np.ones_like(b))
    bad = replace(again, oof_path=steps.save_array(wrong.astype(np.float32), out, "oof-wrong"))
    assert bag_adapters(prepared, plan, first, [bad], out) == first
    assert bag_adapters(prepared, plan, first, [replace(again, failed="one class")], out) == first


def test_the_orchestrated_seeds_train_the_chosen_folds_and_bag(demo):
    _, out, prepared, plan, tokens, first, _ = demo
    asked: list[tuple[int, int, int]] = []

    def submit_fold(k, **again):
        asked.append((k, again["round"], again["epochs"]))
        done = train_adapter(prepared_path=prepared, plan_path=plan, tokens=tokens, fold=k, out_dir=out, **again)
        return PlainExecutor().submit(lambda: replace(done, failed=None))

    result = run_adapter_seeds(PlainExecutor(), first, 2, submit_fold=submit_fold, prepared_path=prepared,
                               plan_path=plan, out_dir=out)
    assert asked == [(0, 1, len(first[0].history)), (1, 1, len(first[1].history))]
    assert [a.fold for a in result] == [0, 1, 2] and result[2] == first[2]
    assert all(a.seeds == 2 for a in result[:2]) or result == first  # the bag, or the first seed kept
    assert run_adapter_seeds(PlainExecutor(), first, 0, submit_fold=submit_fold, prepared_path=prepared,
                             plan_path=plan, out_dir=out) == first


def test_a_rerun_takes_the_first_runs_seed_count_from_the_cache(demo, harness, tmp_path):
    from prefect import flow

    from lora_tasks.prefect import tasks

    *_, first, real = demo
    folds = [replace(a, seconds=5.0) for a in first]
    limit = steps.Plan.load(real).time_limit_s

    @flow
    def decide(run_start: float, refresh: bool = False) -> int:
        return tasks.configure(tmp_path / "work", refresh=refresh)[choose_adapter_folds](
            plan_path=real, main_folds=folds, run_start=run_start)

    assert decide(time.time() - limit) == 0  # the first run was late: no seeds
    assert decide(time.time()) == 0, "a rerun reads back the first run's count"
    assert decide(time.time(), refresh=True) == len(seed_folds(folds))


def test_a_later_seed_behind_the_limit_trains_its_minimum(demo):
    """A later seed was counted to end by 85% of the limit; one that starts when the run is behind
    (the machine slowed) is the run's last fold for the time budget and stops at its minimum."""
    _, out, prepared, plan, tokens, _, _ = demo
    loaded = steps.Plan.load(plan)
    assert loaded.time_limit_s and loaded.epoch_s, "the demo plan has a budget"
    late = time.time() - 0.99 * loaded.time_limit_s
    behind = train_adapter(prepared, plan, tokens, 1, out, round=2, epochs=2, run_start=late)
    assert len(behind.history) == 1 and any("behind" in r for r in behind.budget_reasons), behind.budget_reasons
    on_time = train_adapter(prepared, plan, tokens, 2, out, round=2, epochs=2, run_start=time.time())
    assert len(on_time.history) == 2 and not on_time.stopped_for_time


def test_the_seeds_train_only_where_the_adapters_add_to_the_members_blend(demo, caplog):
    """The tiny folds end at the majority class: they add nothing to the members' blend, so their
    seeds are not trained, and the reason gives the nested scores. Folds that predict every label
    add, and so do any folds when there are no members to blend with."""
    data, out, prepared, plan, _, first, _ = demo
    members = steps.train_members("demo", data, prepared, plan, out)
    with caplog.at_level("INFO", logger="lora_tasks.steps"):
        call = seeds_worth(prepared, plan, first, members)
    assert not call.train and "add nothing to the members' blend (nested accuracy of the blend on all" in call.reason
    assert "their folds were not trained again with other seeds" in call.reason and call.reason in caplog.text
    y = np.asarray(steps.Prepared.load(prepared).y, dtype=np.float32)
    knowing = []
    for a in first:
        held = ~np.isnan(np.load(a.oof_path)).reshape(len(y), -1).any(axis=1)
        oof = np.where(held, y, np.nan).astype(np.float32)
        knowing.append(replace(a, oof_path=steps.save_array(oof, out, f"oof-knowing-{a.fold}")))
    added = seeds_worth(prepared, plan, knowing, members)
    assert added.train and "the adapters add to the members' blend" in added.reason
    assert seeds_worth(prepared, plan, first, []).train
