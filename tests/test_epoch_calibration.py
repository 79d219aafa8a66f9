"""A table's adapter epochs are priced at what its earlier runs measured against the cost probe:
the factor is kept with the table's timings, moves halfway to each run's, refuses what is not a
plausible factor, and the next plan's epoch estimate carries it."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from lora_tasks import steps
from lora_tasks.budget.costs import StepCosts
from lora_tasks.steps.epoch_calibration import FACTOR_RANGE, calibrated, epoch_factor, remember_epochs
from lora_tasks.steps.estimates import estimate_checks
from lora_tasks.steps.member_timings import CachedTimings, cache_dir, keep_timings, load_timings
from lora_tasks.steps.train import AdapterResult
from lora_tasks.testing.demo import build_demo_competition


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private cache dir holding the member timings of one table, ``table``."""
    monkeypatch.setenv("KAGGLE_LORA_MEMBER_COSTS", str(tmp_path / "member-costs"))
    assert keep_timings("table", CachedTimings({"linear": (1.0, 2.0)}, {"linear": 2.5}))
    return cache_dir()


def test_the_factor_moves_halfway_to_each_runs_and_keeps_the_members_timings(cache):
    assert epoch_factor("table") == 1.0  # no run measured one yet
    # priced at 10 s (factor 1), measured 8 s: 0.8 of the probe's price; halfway from 1 is sqrt(0.8)
    assert remember_epochs("table", 10.0, 1.0, 8.0) == pytest.approx(0.8 ** 0.5)
    assert epoch_factor("table") == pytest.approx(0.8 ** 0.5)
    # the next run was priced with that factor and again took 0.8 of the probe's price: closer still
    again = remember_epochs("table", 10.0 * 0.8 ** 0.5, 0.8 ** 0.5, 8.0)
    assert again == pytest.approx(0.8 ** 0.75) and 0.8 < again < 0.8 ** 0.5
    kept = load_timings("table")
    assert kept is not None and kept.samples == {"linear": (1.0, 2.0)} and kept.round == {"linear": 2.5}


def test_an_implausible_factor_or_number_is_not_kept(cache):
    assert remember_epochs("table", 10.0, 1.0, 10.0 * FACTOR_RANGE[1] * 1.5) is None  # a run under heavy load
    assert remember_epochs("table", 10.0, 1.0, float("nan")) is None
    assert remember_epochs("table", 0.0, 1.0, 8.0) is None
    assert remember_epochs(None, 10.0, 1.0, 8.0) is None and remember_epochs("absent", 10.0, 1.0, 8.0) is None
    assert epoch_factor("table") == 1.0 and not (cache / "absent.json").exists()
    # a hand-edited file: a factor out of range prices nothing, a non-number makes the file unreadable
    data = json.loads((cache / "table.json").read_text())
    (cache / "table.json").write_text(json.dumps({**data, "epoch_factor": 7.0}))
    assert epoch_factor("table") == 1.0
    (cache / "table.json").write_text(json.dumps({**data, "epoch_factor": "fast"}))
    assert load_timings("table") is None and epoch_factor("table") == 1.0


def test_calibrated_scales_the_train_steps_not_the_forward():
    costs = StepCosts(seq_len=64, batch_size=8, num_layers=6, full_step_s=0.2, top_step_s=((2, 0.1),),
                      forward_row_s=0.01)
    assert calibrated(costs, 1.0) is costs
    slower = calibrated(costs, 1.5)
    assert slower.full_step_s == pytest.approx(0.3) and slower.top_step_s == ((2, pytest.approx(0.15)),)
    assert slower.forward_row_s == costs.forward_row_s


def test_the_next_plan_of_the_table_prices_its_epochs_with_the_kept_factor(tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLE_LORA_MEMBER_COSTS", str(tmp_path / "member-costs"))
    data = build_demo_competition(tmp_path / "served")
    options = dict(tiny=True, budget=True, time_limit="1h", max_train_rows=200,
                   overrides={"n_folds": 2, "epochs": 2, "max_seq_len": 64})
    first = steps.Plan.load(steps.plan_training("demo", data, tmp_path / "a", **options))
    assert first.epoch_factor == 1.0 and first.members_timing_key and first.epoch_s
    assert not any("adapter epochs priced at" in r for r in first.settings.reasons)
    # the run's epochs took 1.6x the plan's price: the table keeps sqrt(1.6)
    fold = AdapterResult(0, tmp_path, tmp_path, tmp_path, 100, 25, 1, 0.8, "accuracy",
                         history=[{"epoch": 1, "seconds": 1.6 * first.epoch_s}])
    check = estimate_checks(replace(first, members_s=None), [fold], [])[0]
    assert "prices its epochs at 1.26x the cost probe's" in check.detail
    second = steps.Plan.load(steps.plan_training("demo", data, tmp_path / "b", **options))
    assert second.epoch_factor == pytest.approx(1.6 ** 0.5)
    assert any("adapter epochs priced at 1.26x" in r for r in second.settings.reasons)
    # the train steps are dearer by the factor; the epoch's validation pass (the forward) is not
    assert first.epoch_s < second.epoch_s <= first.epoch_s * 1.6 ** 0.5 * 1.02
