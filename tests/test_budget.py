"""The time budget: durations, the cost model, the planner's ladder, the probe's cache, the
run-time epoch budget and the members decision."""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

import pytest

from lora_tasks.budget import (
    DEFAULT_TIME_LIMIT_S,
    LADDER,
    BudgetError,
    Candidate,
    Deadline,
    EpochBudget,
    MemberCosts,
    StepCosts,
    Workload,
    candidates,
    effective_width,
    estimate_cost,
    estimate_members,
    members_earn_their_time,
    padded_width,
    parse_duration,
    plan_within_budget,
    reprice_at_width,
    time_members,
)
from lora_tasks.data.duration import ACCEPTED_FORMS
from tests._tiny import TINY

# ------------------------------------------------------------------------------------ durations


@pytest.mark.parametrize(("text", "seconds"), [
    ("20m", 20 * 60), ("1h", 3600), ("90s", 90), ("1h30m", 5400), ("600", 600), (600, 600),
    (" 2H 5s ", 7205), ("1.5h", 5400), ("0.5m", 30),
])
def test_parse_duration_accepts_the_documented_forms(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "20x", "m20", "1h1h", "5s1m", "0", "-5", "10m junk", "nan"])
def test_parse_duration_rejects_others_and_names_the_forms(text):
    with pytest.raises(ValueError, match="20m") as err:
        parse_duration(text)
    assert ACCEPTED_FORMS in str(err.value)


# ------------------------------------------------------------------------------------ cost model

COSTS = StepCosts(seq_len=64, batch_size=32, num_layers=6, full_step_s=1.2, top_step_s=((2, 0.3),),
                  forward_row_s=0.01)
WORK = Workload(train_rows=7000, test_rows=3000, max_seq_len=128, mean_tokens=55.0, columns=12)
MEMBERS = MemberCosts(20.0, "given")
BASE = Candidate("rules", n_folds=5, epochs=4, top_layers=None, batch_size=64)


def test_step_costs_interpolate_between_timed_depths_and_reject_nan():
    assert COSTS.step_s(None) == COSTS.step_s(6) == 1.2
    assert COSTS.step_s(2) == 0.3
    assert COSTS.step_s(1) == pytest.approx(0.15)
    assert 0.3 < COSTS.step_s(4) < 1.2
    with pytest.raises(ValueError, match="positive finite"):
        StepCosts(64, 32, 6, math.nan, (), 0.01)


def test_top_layers_cost_less_per_epoch_and_pay_the_prefix_once():
    full = estimate_cost(BASE, WORK, COSTS, MEMBERS)
    top = estimate_cost(Candidate("top2", 5, 4, 2, 64), WORK, COSTS, MEMBERS)
    assert full.prefix_s == 0 and top.prefix_s > 0
    assert top.epoch_s < full.epoch_s / 2
    assert top.total_s < full.total_s
    assert full.total_s == pytest.approx(full.prefix_s + 5 * 4 * full.epoch_s + full.predict_s + 20.0)
    assert top.reason.startswith("estimated ") and "5 folds × 4 epochs ×" in top.reason and "prefix" in top.reason


def test_cutting_a_wide_tables_rows_cuts_every_part_of_the_cost():
    wide = Workload(train_rows=1460, test_rows=1459, max_seq_len=512, mean_tokens=420.0, columns=80)
    whole = estimate_cost(Candidate("top2", 2, 2, 2, 16, 512), wide, COSTS, MEMBERS)
    cut = estimate_cost(Candidate("top2_seq128", 2, 2, 2, 16, 128), wide, COSTS, MEMBERS)
    assert cut.prefix_s < whole.prefix_s / 3 and cut.epoch_s < whole.epoch_s / 3
    assert cut.predict_s < whole.predict_s / 3 and cut.members_s == whole.members_s
    assert "at most 128 tokens a row" in cut.candidate.describe()
    short = estimate_cost(Candidate("short", 2, 2, 2, 16, 128), WORK, COSTS, MEMBERS)
    assert short.total_s == estimate_cost(Candidate("short", 2, 2, 2, 16), WORK, COSTS, MEMBERS).total_s, (
        "a cap above the rows' width changes nothing")
    with pytest.raises(ValueError, match="n_folds must be >= 2"):
        Candidate("holdout", 1, 2, 2, 16)


def test_effective_width_follows_the_mean_length_not_the_maximum():
    assert effective_width(512, 30.0) < 64
    assert effective_width(48, 300.0) == 48
    assert effective_width(128, None) == 128


def test_padded_width_follows_the_batches_the_engine_draws():
    import numpy as np

    same = np.full(100, 20)
    assert padded_width(same, 10) == 32  # every batch cut to 20 tokens, padded to 32
    lengths = np.random.default_rng(0).integers(5, 120, 500)
    width = padded_width(lengths, 32)
    assert lengths.mean() < width <= 128
    assert Workload(500, 0, 128, mean_tokens=float(lengths.mean()), batch_width=width).width == width


def test_member_costs_grow_with_the_table_and_can_be_timed_on_a_sample():
    small = estimate_members(Workload(1000, 500, 64, columns=10), 5)
    large = estimate_members(Workload(100_000, 50_000, 64, columns=10), 5)
    assert large.seconds > small.seconds > 0
    now = [0.0]
    sizes = []

    def fit(n):
        sizes.append(n)
        now[0] += 2.0

    timed = time_members(fit, rows=10_000, sample_rows=1_000, clock=lambda: now[0])
    assert sizes == [1_000] and timed.seconds == pytest.approx(20.0) and "1000 of 10000" in timed.how


# ------------------------------------------------------------------------------------ planner


def test_ladder_is_ordered_from_costliest_to_cheapest_without_repeats():
    cands = candidates(BASE)
    assert cands[0].name == LADDER[0].name and cands[-1].max_seq_len == LADDER[-1].max_seq_len
    assert all(c.n_folds >= 2 for c in cands), "every rung keeps out-of-fold predictions for every row"
    totals = [estimate_cost(c, WORK, COSTS, MEMBERS).total_s for c in cands]
    assert totals == sorted(totals, reverse=True)
    already_top2 = candidates(Candidate("rules", 5, 3, 2, 64))
    assert len({(c.n_folds, c.epochs, c.top_layers, c.max_seq_len) for c in already_top2}) == len(already_top2) < len(cands)


def test_planner_picks_cheaper_candidates_as_the_budget_shrinks():
    everything = [estimate_cost(c, WORK, COSTS, MEMBERS, 60.0).total_s for c in candidates(BASE)]
    roomy = plan_within_budget(BASE, WORK, COSTS, MEMBERS, everything[0] * 2)
    assert roomy.fits and roomy.chosen.candidate.name == "as_planned"
    previous = math.inf
    order = [c.name for c in candidates(BASE)]
    last_rank = 0
    for limit in sorted({t * 1.15 for t in everything}, reverse=True):
        choice = plan_within_budget(BASE, WORK, COSTS, MEMBERS, limit)
        assert choice.fits
        assert choice.chosen.total_s <= limit * 0.9
        assert choice.chosen.total_s <= previous
        rank = order.index(choice.chosen.candidate.name)
        assert rank >= last_rank
        previous, last_rank = choice.chosen.total_s, rank
        assert choice.reasons[-1].startswith("budget: chose " + choice.chosen.candidate.name)
        assert len(choice.reasons) == rank + 2  # every rung tried, then the choice
    assert last_rank > 3  # the smallest limits reached the fold and row-length rungs


def test_planner_grows_a_cut_rung_back_towards_the_rules_while_it_fits():
    # essays: the rows are long, so the last rungs cut them to 128 tokens, which makes a fold far cheaper than the
    # rungs above it: room is left for more folds and epochs at 128 tokens than the cut rung has
    wide = Workload(train_rows=3000, test_rows=1000, max_seq_len=512, mean_tokens=450.0, columns=3)
    cost = lambda c: estimate_cost(c, wide, COSTS, MEMBERS, 60.0).total_s  # noqa: E731
    ladder = candidates(BASE)
    cut = next(c for c in ladder if c.name == "top2_epochs2_folds2_seq128")
    above = ladder[ladder.index(cut) - 1]
    target = replace(cut, n_folds=3)
    assert cost(target) < cost(above), "a third fold at 128 tokens costs less than the rung above at full length"
    limit = (cost(target) + 1.0) / 0.9  # room for one more fold, no more
    assert cost(replace(target, n_folds=4)) > 0.9 * limit and cost(replace(target, epochs=3)) > 0.9 * limit
    choice = plan_within_budget(BASE, wide, COSTS, MEMBERS, limit)
    grown = choice.chosen.candidate
    assert grown.name == cut.name
    assert (grown.n_folds, grown.epochs, grown.top_layers, grown.max_seq_len) == (3, 2, 2, 128)
    assert choice.chosen.total_s <= 0.9 * limit
    assert "grown back towards the rules' settings" in choice.reason and "3 folds × 2 epochs" in choice.reason
    # just under the rung above: grown until one more fold or epoch would not fit, never past the rules' own
    roomy = plan_within_budget(BASE, wide, COSTS, MEMBERS, (cost(above) - 1.0) / 0.9).chosen
    most = roomy.candidate
    assert most.name == cut.name and roomy.total_s <= cost(above) - 1.0
    assert (most.n_folds, most.epochs) > (3, 2) and most.n_folds <= BASE.n_folds and most.epochs <= BASE.epochs
    for larger in (replace(most, n_folds=most.n_folds + 1), replace(most, epochs=most.epochs + 1)):
        assert larger.n_folds > BASE.n_folds or larger.epochs > BASE.epochs or cost(larger) > cost(above) - 1.0


def test_planner_does_not_grow_a_plan_that_fits_as_the_rules_wrote_it():
    roomy = plan_within_budget(BASE, WORK, COSTS, MEMBERS, estimate_cost(BASE, WORK, COSTS, MEMBERS, 60.0).total_s * 3)
    assert roomy.chosen.candidate == replace(BASE, name="as_planned") and "grown" not in roomy.reason


def test_a_rung_at_a_width_far_from_the_probe_is_priced_again_with_costs_measured_there():
    wide = Workload(train_rows=3000, test_rows=1000, max_seq_len=512, mean_tokens=450.0, columns=3)
    at_512 = StepCosts(seq_len=512, batch_size=4, num_layers=6, full_step_s=1.2, top_step_s=((2, 0.3),),
                       forward_row_s=0.02)
    cost = lambda c, k=at_512: estimate_cost(c, wide, k, MEMBERS, 60.0).total_s  # noqa: E731
    cut = next(c for c in candidates(BASE) if c.name == "top2_epochs2_folds2_seq128")
    limit = (cost(cut) + 1.0) / 0.9
    first = plan_within_budget(BASE, wide, at_512, MEMBERS, limit)
    assert first.chosen.candidate.name == cut.name
    asked = []

    def measure_at(width, factor):
        asked.append(width)
        scaled = at_512.scaled_to(width)
        return StepCosts(128, 4, 6, scaled.full_step_s * factor, ((2, scaled.step_s(2) * factor),),
                         scaled.forward_row_s * factor)

    # measured dearer than the straight line from 512 said: the rung no longer fits, the next one down is chosen
    dearer = reprice_at_width(first, BASE, wide, at_512, MEMBERS, lambda w: measure_at(w, 3.0))
    assert asked == [128.0]
    assert dearer.chosen.candidate.name == "top1_epochs1_folds2_seq64" and dearer.chosen.total_s <= 0.9 * limit
    assert "priced again at 128 tokens" in dearer.reason and "priced at 512" in dearer.reason
    names = [e.candidate.name for e in dearer.considered]
    assert names[0] == "as_planned" and names.count(cut.name) == 1, "every rung once: above at 512, the rest at 128"
    # measured cheaper: the same rung, grown into the room the dearer price had taken
    cheaper = reprice_at_width(first, BASE, wide, at_512, MEMBERS, lambda w: measure_at(w, 0.5))
    assert cheaper.chosen.candidate.name == cut.name
    assert (cheaper.chosen.candidate.n_folds, cheaper.chosen.candidate.epochs) > (cut.n_folds, cut.epochs)
    # a rung at the probe's own width is left as it is, without measuring
    near = plan_within_budget(BASE, WORK, COSTS, MEMBERS, 600.0)
    assert reprice_at_width(near, BASE, WORK, COSTS, MEMBERS, lambda w: pytest.fail("measured again")) is near


def test_planner_refuses_clearly_when_nothing_fits():
    cheapest = min(estimate_cost(c, WORK, COSTS, MEMBERS, 60.0).total_s for c in candidates(BASE))
    choice = plan_within_budget(BASE, WORK, COSTS, MEMBERS, cheapest * 0.5)
    assert not choice.fits and choice.chosen is None
    assert "--no-adapters" in choice.reason and "--time-limit" in choice.reason
    needed = int(choice.reason.split("--time-limit ")[1].split("m")[0]) * 60
    assert needed * 0.9 >= cheapest
    with pytest.raises(BudgetError, match="no plan with adapters fits"):
        choice.raise_if_unfit()
    with pytest.raises(ValueError, match="positive"):
        plan_within_budget(BASE, WORK, COSTS, MEMBERS, -1)


def test_default_budget_is_twenty_minutes():
    assert parse_duration("20m") == DEFAULT_TIME_LIMIT_S


# ------------------------------------------------------------------------------------ the probe


def _tiny_factory(calls: list):
    from lora_tasks.models import BertConfig
    from lora_tasks.training.factory import create_bert_with_lora

    def factory(top):
        calls.append(top)
        overrides = {} if top is None else {"layers_to_transform": tuple(range(TINY["num_hidden_layers"] - top,
                                                                                TINY["num_hidden_layers"]))}
        net, _ = create_bert_with_lora("binary_classification", "balanced", 1, config=BertConfig(**TINY),
                                       pretrained=False, seed=0, **overrides)
        return net

    return factory


def test_probe_times_the_tiny_model_and_reuses_its_cache(tmp_path):
    from lora_tasks.budget.probe import probe_costs

    calls: list = []
    factory = _tiny_factory(calls)
    first = probe_costs(factory, model_id="tiny:balanced", seq_len=12, batch_size=8, cache_dir=tmp_path,
                        timed_tops=(1,), steps=2)
    assert calls == [None, 1] and first.source == "measured" and "measured in" in first.reason
    costs = first.costs
    assert costs.seq_len == 16 and costs.num_layers == TINY["num_hidden_layers"] and costs.batch_size == 8
    assert costs.full_step_s > 0 and dict(costs.top_step_s)[1] > 0 and costs.forward_row_s > 0
    assert len(list(tmp_path.glob("cost-probe-*.json"))) == 1
    again = probe_costs(factory, model_id="tiny:balanced", seq_len=14, batch_size=8, cache_dir=tmp_path,
                        timed_tops=(1,), steps=2)
    assert again.costs == costs and again.source == "reused" and calls == [None, 1]  # same bucket: read, not timed
    # 32 tokens is twice the cached 16: too far to scale a point up (the line underprices wider rows), so measured
    probe_costs(factory, model_id="tiny:balanced", seq_len=24, batch_size=8, cache_dir=tmp_path, timed_tops=(1,),
                steps=1)
    assert calls == [None, 1, None, 1] and len(list(tmp_path.glob("cost-probe-*.json"))) == 2
    at32 = probe_costs(factory, model_id="tiny:balanced", seq_len=32, batch_size=8, cache_dir=tmp_path,
                       timed_tops=(1,)).costs
    # 48 tokens is 1.5x the cached 32 (and nothing is cached above it to interpolate): scaled up, nothing timed
    scaled = probe_costs(factory, model_id="tiny:balanced", seq_len=40, batch_size=8, cache_dir=tmp_path,
                         timed_tops=(1,))
    assert scaled.source == "reused" and "scaled from the point cached at 32" in scaled.how
    assert calls == [None, 1, None, 1] and scaled.costs.full_step_s == pytest.approx(at32.full_step_s * 1.5)
    # 128 tokens is too far from 32: measured, and kept as a third point
    probe_costs(factory, model_id="tiny:balanced", seq_len=100, batch_size=8, cache_dir=tmp_path,
                timed_tops=(1,), steps=1)
    assert calls == [None, 1, None, 1, None, 1] and len(list(tmp_path.glob("cost-probe-*.json"))) == 3
    # 192 tokens: 128 is the nearest point below it (nothing above to interpolate with), 1.5x: scaled
    between = probe_costs(factory, model_id="tiny:balanced", seq_len=180, batch_size=8, cache_dir=tmp_path,
                          timed_tops=(1,))
    assert between.source == "reused" and "128" in between.how
    # another dtype is another profile: measured again
    probe_costs(factory, model_id="tiny:balanced", seq_len=12, batch_size=8, cache_dir=tmp_path, dtype="bfloat16",
                timed_tops=(1,), steps=1)
    assert calls == [None, 1, None, 1, None, 1, None, 1]


def test_forgetting_a_profiles_points_leaves_other_profiles_and_measures_again(tmp_path):
    from lora_tasks.budget.cache import forget_points
    from lora_tasks.budget.probe import probe_costs

    calls: list = []
    factory = _tiny_factory(calls)
    fp32 = probe_costs(factory, model_id="tiny:balanced", seq_len=12, batch_size=8, cache_dir=tmp_path,
                       timed_tops=(1,), steps=1)
    probe_costs(factory, model_id="tiny:balanced", seq_len=100, batch_size=8, cache_dir=tmp_path, timed_tops=(1,), steps=1)
    bf16 = probe_costs(factory, model_id="tiny:balanced", seq_len=12, batch_size=8, cache_dir=tmp_path,
                       dtype="bfloat16", timed_tops=(1,), steps=1)
    assert fp32.points_key != bf16.points_key and fp32.points_key.startswith(str(tmp_path))
    assert forget_points(fp32.points_key) == 2  # both widths of the fp32 profile
    assert [p.name for p in tmp_path.glob("cost-probe-*.json")] == [f"{bf16.points_key.rsplit('/', 1)[1]}-s16-b8.json"]
    assert forget_points(fp32.points_key) == 0
    calls.clear()
    again = probe_costs(factory, model_id="tiny:balanced", seq_len=12, batch_size=8, cache_dir=tmp_path,
                        timed_tops=(1,), steps=1)
    assert again.source == "measured" and calls == [None, 1]


def test_cached_points_are_interpolated_between_and_scaled_per_row():
    from lora_tasks.budget.costs import costs_from_points

    a = StepCosts(64, 32, 6, 1.0, ((2, 0.4),), 0.01)
    b = StepCosts(128, 8, 6, 0.6, ((2, 0.2),), 0.03)  # per row: 0.075 s against a's 0.03125 s
    mid, how = costs_from_points([a, b], 96)
    assert "interpolated" in how and mid.seq_len == 96 and mid.batch_size == 32
    assert mid.full_step_s == pytest.approx((0.5 * 1.0 / 32 + 0.5 * 0.6 / 8) * 32)
    assert dict(mid.top_step_s)[2] == pytest.approx((0.5 * 0.4 / 32 + 0.5 * 0.2 / 8) * 32)
    assert mid.forward_row_s == pytest.approx(0.02)
    assert costs_from_points([a, b], 64) == (a, "the point cached at 64 tokens")
    assert costs_from_points([a], 512) is None, "8x away from the only point: measure"
    assert costs_from_points([], 64) is None
    # a point is scaled down within 2x, up only within 1.5x (a straight line underprices wider rows)
    assert costs_from_points([b], 64)[0].full_step_s == pytest.approx(0.3)
    assert costs_from_points([a], 96)[0].full_step_s == pytest.approx(1.5)
    assert costs_from_points([a], 128) is None, "twice the only point's width: measure"
    assert costs_from_points([StepCosts(60, 32, 6, 1.0, ((2, 0.4),), 0.01)], 100) is None, "1.67x up: measure"


@pytest.mark.parametrize(("where", "env", "name"), [
    ("lora_tasks.budget.cache:probe_cache_dir", "KAGGLE_LORA_PROBE_CACHE", "cost-probe"),
    ("lora_tasks.steps.member_timings:cache_dir", "KAGGLE_LORA_MEMBER_COSTS", "member-costs"),
])
def test_measurements_live_in_the_users_cache_dir_unless_overridden(monkeypatch, tmp_path, where, env, name):
    import importlib

    module, function = where.split(":")
    folder = getattr(importlib.import_module(module), function)
    monkeypatch.delenv(env, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert folder() == tmp_path / "kaggle-lora" / name
    monkeypatch.setenv(env, str(tmp_path / "elsewhere"))
    assert folder() == tmp_path / "elsewhere"


def test_the_probe_cache_is_keyed_by_the_machine():
    from lora_tasks.budget.cache import machine_id

    assert "flags:" in machine_id() and f"x{os.cpu_count()}" in machine_id()


def test_a_test_session_keeps_the_member_timings_out_of_the_users_cache():
    from lora_tasks.steps.member_timings import cache_dir

    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    assert not cache_dir().is_relative_to(home), "conftest.py points KAGGLE_LORA_MEMBER_COSTS at a session dir"


def test_step_costs_measured_with_other_native_kernels_are_not_reused():
    from lora_tasks import native
    from lora_tasks.budget.cache import ProbeProfile, kernels_build

    built = kernels_build()
    versions = ProbeProfile.here("tiny:balanced", "float32", (1,)).versions
    assert f"kernels={built}" in versions
    path = native.native_info().path
    assert built == ("none" if path is None else Path(path).name.split(".")[0])
    if path is not None:  # the build's fingerprint (sources and flags) is in the name, so in the key
        assert built.startswith("_kaggle_lora_kernels_") and len(built) > len("_kaggle_lora_kernels_")


# ------------------------------------------------------------------------------------ run time


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_epoch_budget_keeps_the_plan_when_on_time_and_cuts_epochs_when_behind():
    clock = Clock()
    budget = EpochBudget(Deadline.start(3600, clock), n_folds=5, epochs=4, epoch_s=60.0, predict_s=10.0,
                         reserve_s=120.0)
    clock.now += 70
    on_time = budget.after_epoch(0, 1, [70.0])
    assert not on_time.stop_fold and on_time.epochs_this_fold == on_time.epochs_later_folds == 4
    assert "on time" in on_time.reason
    # epochs run at 5 min instead of 1: what is left affords fewer epochs per fold
    clock.now += 2 * 300
    behind = budget.after_epoch(0, 2, [70.0, 300.0])
    assert not behind.behind and behind.epochs_later_folds < 4
    assert behind.stop_fold == (behind.epochs_later_folds <= 2)
    per_epoch = (70 + 300) / 2
    used = (max(0, behind.epochs_later_folds - 2) + 4 * behind.epochs_later_folds) * per_epoch
    assert used <= budget.deadline.remaining() - 120 - 5 * 10
    assert "cut" in behind.reason and f"{behind.epochs_later_folds} of the planned 4 epochs" in behind.reason


def test_epoch_budget_stops_at_the_minimum_when_even_that_overruns():
    clock = Clock()
    budget = EpochBudget(Deadline.start(600, clock), n_folds=5, epochs=3, epoch_s=60.0)
    clock.now += 500
    late = budget.after_epoch(1, 1, [250.0, 250.0])
    assert late.behind and late.stop_fold and late.epochs_later_folds == 1 and late.epochs_this_fold == 1
    assert "overrun" in late.reason
    at_start = budget.after_epoch(4, 0)
    assert not at_start.stop_fold and at_start.epochs_this_fold >= 1  # a fold always trains an epoch


def test_members_decision_cuts_epochs_when_adapters_trail_and_keeps_or_adds_when_they_lead():
    behind = members_earn_their_time(0.745, 0.801, True, epochs=4, epochs_done=3, metric="accuracy")
    assert behind.verdict == "behind" and behind.epochs < 4
    assert "0.7450" in behind.reason and "0.8010" in behind.reason
    ahead = members_earn_their_time(0.83, 0.80, True, epochs=4, epochs_done=2, max_epochs=6)
    assert ahead.verdict == "ahead" and ahead.epochs == 6 and "0.8300" in ahead.reason
    close = members_earn_their_time(0.795, 0.80, True, epochs=4, epochs_done=2)
    assert close.verdict == "close" and close.epochs == 4
    # lower is better (RMSE): a larger adapter error trails
    rmse = members_earn_their_time(0.150, 0.125, False, epochs=4, epochs_done=2, metric="rmse")
    assert rmse.verdict == "behind" and rmse.epochs < 4 and "lower is better" in rmse.reason
    assert members_earn_their_time(0.110, 0.125, False, epochs=4, epochs_done=2).verdict == "ahead"
    # free text keeps the adapters' epochs: an early epoch that trails says little of the last one
    text = members_earn_their_time(0.737, 0.770, True, epochs=2, epochs_done=1, metric="f1", may_cut=False)
    assert text.verdict == "close" and text.epochs == 2 and "free text" in text.reason
    assert members_earn_their_time(0.80, 0.77, True, epochs=2, epochs_done=1, max_epochs=3,
                                   may_cut=False).epochs == 3  # leading still earns more
    with pytest.raises(ValueError, match="adapters_score"):
        members_earn_their_time(math.nan, 0.8, True, epochs=4, epochs_done=1)
    shorter = EpochBudget(Deadline.start(600, Clock()), 5, 4, 60.0).with_epochs(behind.epochs)
    assert shorter.epochs == behind.epochs


def test_probe_for_plan_builds_the_pipelines_model_and_keys_the_cache_by_it(tmp_path):
    from lora_tasks.budget.probe import probe_for_plan

    result = probe_for_plan("regression", "efficient", 1, model=None, tiny=True, seq_len=20.5, batch_size=4,
                            cache_dir=tmp_path)
    costs = result.costs
    assert costs.model == "tiny:efficient" and costs.seq_len == 32 and result.dtype == "float32"
    # the tiny model has 2 layers: top 2 is the full depth, so only the full step is timed
    assert costs.num_layers == 2 and costs.top_step_s == ()
    assert costs.step_s(1) == costs.full_step_s / 2
