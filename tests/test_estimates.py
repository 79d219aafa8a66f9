"""The plan's estimates against what the run measured: an adapter epoch and one round of the members."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from lora_tasks import steps
from lora_tasks.steps.estimates import TOLERANCE, estimate_checks
from lora_tasks.steps.train import AdapterResult, MemberResult
from lora_tasks.testing.demo import build_demo_competition


@pytest.fixture(scope="module")
def plan(tmp_path_factory) -> steps.Plan:
    data = build_demo_competition(tmp_path_factory.mktemp("served"))
    return steps.Plan.load(steps.plan_training("demo", data, tmp_path_factory.mktemp("artifacts"), tiny=True,
                                               max_train_rows=200))


def _fold(fold: int, seconds: list[float]) -> AdapterResult:
    return AdapterResult(fold, Path("a"), Path("o"), Path("t"), 100, 25, 1, 0.8, "accuracy",
                         history=[{"epoch": i + 1, "seconds": s} for i, s in enumerate(seconds)])


def _member(name: str, seconds: float) -> MemberResult:
    return MemberResult(name, Path("o"), Path("t"), 0.8, "accuracy", seconds=seconds)


def test_each_planned_part_is_compared_with_what_the_run_measured(plan):
    budgeted = replace(plan, epoch_s=2.0, members_s=10.0)
    checks = estimate_checks(budgeted, [_fold(0, [2.0, 2.2]), _fold(1, [1.9])], [_member("linear", 4.0),
                                                                              _member("lightgbm", 9.0)])
    epoch, members = checks
    assert epoch.part == "one adapter epoch" and epoch.measured_s == pytest.approx(6.1 / 3)
    assert epoch.within and "mean of 3 epoch(s) over 2 fold(s)" in epoch.detail
    assert members.measured_s == 13.0 and members.ratio == pytest.approx(1.3) and not members.within
    row = members.row()
    assert row["measured / estimated"] == 1.3 and row[f"within ±{TOLERANCE:.0%}"] == "no"
    assert "outside ±15%" in members.sentence() and "2 member(s)" in members.sentence()


def test_a_run_without_a_budget_has_nothing_to_compare(plan):
    unbudgeted = replace(plan, epoch_s=None, members_s=None)
    assert estimate_checks(unbudgeted, [_fold(0, [2.0])], [_member("linear", 4.0)]) == []
    # the budget planned the members only (no adapter folds trained): only their estimate is checked
    assert [c.part for c in estimate_checks(replace(plan, epoch_s=3.0, members_s=5.0), [], [_member("linear", 5.0)])] \
        == ["the members, one round"]


def test_the_members_round_is_kept_for_the_next_plan_of_the_table(plan, tmp_path, monkeypatch):
    from lora_tasks.steps.member_timings import cache_dir, load_timings

    monkeypatch.setenv("KAGGLE_LORA_MEMBER_COSTS", str(tmp_path / "member-costs"))
    cache_dir().mkdir(parents=True)
    (cache_dir() / "table.json").write_text('{"timings": {"linear": [1.0, 2.0], "catboost": [3.0, 5.0]}}')
    checks = estimate_checks(replace(plan, members_s=10.0, members_timing_key="table"), [],
                             [_member("linear", 2.5), _member("catboost", 8.0)])
    assert "the next plan of this table takes these seconds" in checks[0].detail
    kept = load_timings("table")
    assert kept is not None and kept.round == {"linear": 2.5, "catboost": 8.0}
    assert kept.samples == {"linear": (1.0, 2.0), "catboost": (3.0, 5.0)}  # the samples stay beside it
    # the next run moves each kept round halfway (in ratio) to its own: one slow run does not set the price alone
    estimate_checks(replace(plan, members_s=10.0, members_timing_key="table"), [],
                    [_member("linear", 10.0), _member("catboost", 8.0)])
    again = load_timings("table")
    assert again is not None and again.round == {"linear": pytest.approx(5.0), "catboost": pytest.approx(8.0)}
    # without timings under the key (a read-only cache, or none kept) nothing is claimed
    none = estimate_checks(replace(plan, members_s=10.0, members_timing_key="absent"), [], [_member("linear", 2.0)])
    assert "next plan" not in none[0].detail and not (cache_dir() / "absent.json").exists()


def test_an_epoch_well_under_its_estimate_drops_the_probe_points_that_priced_it(plan, tmp_path):
    from lora_tasks.steps.estimates import STALE_POINTS_BELOW

    key = tmp_path / "cost-probe-abc"
    points = [tmp_path / "cost-probe-abc-s64-b8.json", tmp_path / "cost-probe-abc-s128-b4.json"]
    other = tmp_path / "cost-probe-xyz-s64-b8.json"  # another model's point stays
    for f in (*points, other):
        f.write_text("{}")
    budgeted = replace(plan, epoch_s=10.0, members_s=None, cost_probe_points=str(key))
    # slower than the estimate, or a little faster: the points stay (a slow run says nothing of them)
    for seconds in (14.0, 10.0 * STALE_POINTS_BELOW + 0.5):
        check = estimate_checks(budgeted, [_fold(0, [seconds])], [])[0]
        assert all(f.exists() for f in points) and "measures them again" not in check.detail
    fast = estimate_checks(budgeted, [_fold(0, [4.0, 5.0])], [])[0]
    assert fast.ratio == pytest.approx(0.45)
    assert not any(f.exists() for f in points) and other.exists()
    assert "the next plan with this model measures them again" in fast.detail


def test_a_rerun_from_the_cache_leaves_points_measured_after_its_folds(plan, tmp_path):
    """A rerun of an old run from its cache sees the old epochs again: it must not drop the points a
    later run measured since (their files are newer than the old run's adapters)."""
    import os

    adapter = tmp_path / "adapter.safetensors"
    adapter.write_text("weights")
    old, new = tmp_path / "cost-probe-abc-s64-b8.json", tmp_path / "cost-probe-abc-s128-b4.json"
    for f in (old, new):
        f.write_text("{}")
    written = adapter.stat().st_mtime
    os.utime(old, (written - 60, written - 60))  # timed before the folds trained: stale
    os.utime(new, (written + 60, written + 60))  # measured again by a later run
    fold = replace(_fold(0, [3.0]), adapter_path=adapter)
    check = estimate_checks(replace(plan, epoch_s=10.0, members_s=None, cost_probe_points=str(tmp_path / "cost-probe-abc")),
                            [fold], [])[0]
    assert not old.exists() and new.exists() and "measures them again" in check.detail
