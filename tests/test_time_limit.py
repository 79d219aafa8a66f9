"""``--time-limit`` through a run: the plan fits the limit (or says why it cannot, before any
training), training cuts epochs when behind, ``--no-adapters`` blends the scikit-learn members
alone, and a run whose output is a file shows progress lines. Tiny random model, the demo
competition served by the in-process fake Kaggle server."""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lora_tasks import steps
from lora_tasks.budget import BudgetError
from lora_tasks.options import RunOptions
from lora_tasks.testing import fake_kaggle as fk
from lora_tasks.testing.demo import build_demo_competition


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    return build_demo_competition(tmp_path_factory.mktemp("served"))


def _options(work: Path, **kw) -> RunOptions:
    return RunOptions(**{"competition": "demo", "work_dir": str(work), "tiny": True, "max_seq_len": 64,
                         "submit": False, **kw})


def test_time_limit_option_and_config_key_are_checked():
    assert RunOptions(time_limit="20m").time_limit_s == 1200.0
    assert RunOptions(time_limit=90).time_limit_s == 90.0
    assert RunOptions().time_limit_s is None
    with pytest.raises(ValueError, match="20m, 1h"):
        RunOptions(time_limit="soon")
    with pytest.raises(ValueError, match="no_adapters"):
        RunOptions(no_adapters=True, members=False)
    from lora_tasks.data.config_file import validate_config_dict

    assert validate_config_dict({"training": {"time_limit": "15m"}})["training"]["time_limit"] == "15m"
    with pytest.raises(ValueError, match="time_limit"):
        validate_config_dict({"training": {"time_limit": "-5"}})


def test_the_configs_time_limit_applies_when_the_run_gives_none(demo_dir):
    from dataclasses import replace

    from lora_tasks.budget import DEFAULT_TIME_LIMIT_S
    from lora_tasks.data.competition import load_competition
    from lora_tasks.steps.plan import run_time_limit

    config = load_competition("demo", data_dir=demo_dir)
    assert run_time_limit(None, config) == DEFAULT_TIME_LIMIT_S
    with_limit = replace(config, training={**config.training, "time_limit": "15m"})
    assert run_time_limit(None, with_limit) == 900.0
    assert run_time_limit("1h", with_limit) == 3600.0, "the run's own limit wins over the config's"


def test_a_limit_nothing_fits_fails_before_training_and_offers_the_ways_out(creds, tmp_path):
    work = tmp_path / "work"
    with pytest.raises(BudgetError) as info:
        steps.plan_run(_options(work, time_limit="1s"))
    message = str(info.value)
    assert "--no-adapters" in message and "--time-limit" in message
    assert not (work / "artifacts" / "checkpoints").exists(), "nothing may train before the budget is known"
    assert not (work / "artifacts" / "cost-probe").exists(), "the probe is cached in the user's cache dir"


def test_a_limit_only_the_members_fit_runs_them_alone_and_says_what_adapters_need(harness, creds, tmp_path):
    """run_pipeline and the flow both fall back to the members' blend, and write a submission."""
    from lora_tasks.budget.planner import PLAN_SHARE
    from lora_tasks.prefect.flow import kaggle_lora

    served = tmp_path / "served"
    build_demo_competition(served)
    with fk.serve(served) as server:
        def members_only_limit(work: str) -> str:
            """Room for the members and the overhead, not for the cheapest adapters. Taken again before
            each run: the members' timings are kept per machine and table, and a run adds its own round
            to them (steps.member_timings), so the next plan of the table prices the members anew."""
            roomy = steps.Plan.load(steps.plan_run(_options(tmp_path / work, kaggle_endpoint=server.url,
                                                            time_limit="2h"))["lora"])
            assert roomy.members_s is not None and roomy.members_s > 0
            return f"{(roomy.members_s + roomy.reserve_s) / PLAN_SHARE + 0.05:.3f}"

        limit = members_only_limit("probe")
        with pytest.raises(BudgetError, match="no plan with adapters fits"):
            steps.plan_run(_options(tmp_path / "bare", kaggle_endpoint=server.url, time_limit=limit, members=False))
        result = steps.run_pipeline(_options(tmp_path / "work", kaggle_endpoint=server.url, time_limit=limit),
                                    run_key="fallback")
        summary = kaggle_lora(_options(tmp_path / "flow", kaggle_endpoint=server.url,
                                       time_limit=members_only_limit("probe-again"), retry_delay_s=0.05))
    assert summary.cv == [] and not any(k.startswith("train-fold") for k in summary.task_states), summary.task_states
    assert summary.members and not any(str(r["member"]).startswith("lora") for r in summary.members)
    assert len(pd.read_csv(summary.submission_path)) == len(pd.read_csv(served / "demo" / "test.csv"))
    plan = steps.Plan.load(result.plan_path)
    assert plan.no_adapters and result.adapters == [] and result.combined.weights
    fallback = [r for r in plan.settings.reasons if "members alone" in r]
    assert fallback and "--time-limit" in fallback[0], plan.settings.reasons
    assert math.isfinite(result.combined.oof_score)
    assert len(pd.read_csv(result.submission_path)) == len(pd.read_csv(served / "demo" / "test.csv"))


def test_a_generous_limit_records_the_estimate_in_the_plan(creds, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="lora_tasks"):
        plans = steps.plan_run(_options(tmp_path / "work", time_limit="2h", epochs=3))
    plan = steps.Plan.load(plans["lora"])
    estimates = [r for r in plan.settings.reasons if r.startswith("budget:") and "estimated" in r]
    assert estimates, plan.settings.reasons
    assert any("chose as_planned" in r for r in plan.settings.reasons), "2 h fits the rules' own settings"
    assert plan.time_limit_s == 7200.0 and plan.settings.epochs == 3
    assert plan.epoch_s is not None and plan.epoch_s > 0 and plan.predict_s is not None and plan.reserve_s is not None
    assert "estimated" in plan.settings_markdown(), "--plan shows the estimate"
    assert plan.cost_probe in ("measured", "reused")
    assert any(r.startswith(f"cost_probe: {plan.cost_probe}") for r in plan.settings.reasons), "the plan says which"
    assert any(r.getMessage().startswith("budget: chose as_planned") for r in caplog.records), "and so does the log"


def test_a_second_plan_in_a_new_work_dir_reuses_the_probe_and_another_dtype_measures(creds, tmp_path,
                                                                                      monkeypatch):
    """The probe's points live in the user's cache dir: a later run (another work dir) measures
    nothing; another compute dtype is another model to time."""
    monkeypatch.setenv("KAGGLE_LORA_PROBE_CACHE", str(tmp_path / "user-cache"))

    def plan(work: str, **kw) -> steps.Plan:
        return steps.Plan.load(steps.plan_run(_options(tmp_path / work, time_limit="2h", **kw))["lora"])

    def probe_line(p: steps.Plan) -> str:
        return next(r for r in p.settings.reasons if r.startswith("cost_probe:"))

    first = plan("first", compute_dtype="float32")
    assert any(r.startswith("compute_dtype: float32 -> float32 (asked for)") for r in first.settings.reasons)
    assert first.cost_probe == "measured" and "measured in" in probe_line(first)
    points = sorted((tmp_path / "user-cache").glob("cost-probe-*.json"))
    assert len(points) == 1
    second = plan("second", compute_dtype="float32")
    assert second.cost_probe == "reused" and "float32" in probe_line(second), probe_line(second)
    assert sorted((tmp_path / "user-cache").glob("cost-probe-*.json")) == points, "nothing was measured"
    assert second.epoch_s == pytest.approx(first.epoch_s), "the same costs price the same plan"
    # the plan says where its points are kept, so a run that finds them stale can drop them
    assert second.cost_probe_points == first.cost_probe_points
    assert [p.name for p in points] == [p.name for p in Path(first.cost_probe_points).parent.glob(
        Path(first.cost_probe_points).name + "-*.json")]
    bf16 = plan("bf16", compute_dtype="bfloat16")
    assert bf16.cost_probe == "measured" and "bfloat16" in probe_line(bf16)
    assert len(list((tmp_path / "user-cache").glob("cost-probe-*.json"))) == 2


def test_should_stop_cuts_epochs_and_keeps_the_best_checkpoint(tmp_path):
    from _tiny import tiny_model, toy_data

    from lora_tasks.training.checkpoints import BEST_FILE
    from lora_tasks.training.train import TrainConfig, predict, train

    data = toy_data(160)
    asked: list[tuple[int, int]] = []

    def should_stop(done: int, seconds: list[float]) -> bool:
        asked.append((done, len(seconds)))
        return done >= 2

    model = tiny_model()
    result = train(model, data.subset(np.arange(120)), data.subset(np.arange(120, 160)),
                   TrainConfig(epochs=5, batch_size=16, metric="accuracy"), tmp_path / "ckpt", should_stop=should_stop)
    assert [row["epoch"] for row in result.history] == [1, 2]
    assert asked == [(1, 1), (2, 2)], "asked after each epoch with every epoch's seconds"
    assert result.stopped_for_time and result.stopped_early and result.best_epoch in (1, 2)
    assert (tmp_path / "ckpt" / BEST_FILE).is_file()
    assert np.isfinite(predict(model, data.subset(np.arange(120, 160)))).all()


def test_a_fold_behind_its_budget_trains_the_minimum_and_still_predicts(demo_dir, tmp_path):
    out = tmp_path / "artifacts"
    prepared = steps.prepare_data("demo", demo_dir, out)
    plan_path = steps.plan_training("demo", demo_dir, out, tiny=True, budget=True, time_limit="1h",
                                    overrides={"n_folds": 2, "epochs": 3, "max_seq_len": 64})
    plan = steps.Plan.load(plan_path)
    assert plan.settings.epochs == 3 and plan.time_limit_s == 3600.0
    tokens = steps.tokenize_data(prepared, plan_path, out / "tokens")
    started_long_ago = time.time() - 3600 + 1  # the limit is all but spent
    result = steps.train_adapter(prepared, plan_path, tokens, 0, out, run_start=started_long_ago)
    assert len(result.history) == 1, "behind the limit, a fold trains its minimum epoch"
    assert any("behind" in r for r in result.budget_reasons), result.budget_reasons
    oof = np.load(result.oof_path)
    assert np.isfinite(oof).sum() == result.n_valid, "the fold still predicts every held-out row"
    on_time = steps.train_adapter(prepared, plan_path, tokens, 1, out, run_start=time.time())
    assert len(on_time.history) == 3 and not on_time.stopped_for_time
    assert any("on time" in r for r in on_time.budget_reasons), on_time.budget_reasons


def test_members_keep_the_rules_folds_when_the_budget_cuts_the_adapters(demo_dir, tmp_path):
    """Members cost seconds: a budget that gives the adapters 2 folds leaves the members (and the
    blend's nested score) on the rules' 4, and the blend still combines both row by row."""
    from dataclasses import replace

    out = tmp_path / "artifacts"
    prepared_path = steps.prepare_data("demo", demo_dir, out)
    prepared = steps.Prepared.load(prepared_path)
    rules_path = steps.plan_training("demo", demo_dir, out, tiny=True, budget=True, time_limit="1h",
                                     overrides={"n_folds": 4, "epochs": 1, "max_seq_len": 64})
    rules = steps.Plan.load(rules_path)
    cut = replace(rules, settings=replace(rules.settings, n_folds=2, n_adapters=2), member_folds=4)
    cut_path = cut.save(out)
    assert steps.Plan.load(cut_path).members_n_folds == 4 and steps.Plan.load(rules_path).members_n_folds == 4
    assert len(np.unique(steps.fold_assignment(prepared, cut))) == 2
    assert (steps.fold_assignment(prepared, cut, members=True) == steps.fold_assignment(prepared, rules)).all()

    members = steps.train_members("demo", demo_dir, prepared_path, cut_path, out / "cut")
    same = steps.train_members("demo", demo_dir, prepared_path, rules_path, out / "rules")
    for a, b in zip(members, same, strict=True):
        np.testing.assert_array_equal(np.load(a.oof_path), np.load(b.oof_path))
    tokens = steps.tokenize_data(prepared_path, cut_path, out / "tokens")
    from dataclasses import replace

    # the tiny encoder's folds end at the majority class (a failed fold): taken as they are, to blend
    adapters = [replace(steps.train_adapter(prepared_path, cut_path, tokens, k, out), failed=None) for k in range(2)]
    combined = steps.combine(prepared_path, cut_path, adapters, out, method="blend", members=members)
    assert "lora" in combined.member_scores and math.isfinite(combined.blend_cv_score)


def test_no_adapters_blends_the_members_alone_and_writes_a_submission(creds, tmp_path):
    served = tmp_path / "served"
    build_demo_competition(served)
    with fk.serve(served) as server:
        options = _options(tmp_path / "work", kaggle_endpoint=server.url, no_adapters=True, time_limit="1s")
        result = steps.run_pipeline(options, run_key="no-adapters")
    assert result.adapters == []
    assert "lora" not in result.combined.weights and result.combined.weights
    assert math.isfinite(result.combined.oof_score)
    plan = steps.Plan.load(result.plan_path)
    assert plan.no_adapters and any("--no-adapters" in r for r in plan.settings.reasons)
    sub = pd.read_csv(result.submission_path)
    assert len(sub) == len(pd.read_csv(served / "demo" / "test.csv"))
    assert not list((tmp_path / "work" / "artifacts").glob("adapter-*")), "no adapter was trained"


def test_adapters_far_behind_the_members_give_later_folds_fewer_epochs(creds, tmp_path):
    """The tiny random model scores near chance; the demo's members score far above: after the
    first fold's early epochs the later folds get fewer epochs, and the reason names both scores."""
    served = tmp_path / "served"
    build_demo_competition(served)
    with fk.serve(served) as server:
        options = _options(tmp_path / "work", kaggle_endpoint=server.url, folds=2, epochs=4, time_limit="1h")
        result = steps.run_pipeline(options, run_key="members")
    first = result.adapters[0]
    decision = [r for r in first.budget_reasons if "members:" in r]
    assert decision and "scikit-learn members'" in decision[0] and "trail" in decision[0], first.budget_reasons
    assert first.later_epochs is not None and first.later_epochs < 4
    if len(result.adapters) == 2:
        second = result.adapters[1]
    else:  # fold 0 failed or added nothing to the blend, so the run stopped: train fold 1 as the run would have
        assert not first.keep_adapters and len(result.adapters) == 1
        second = steps.train_adapter(result.prepared_path, result.plan_path, result.tokens, 1,
                                     tmp_path / "work" / "artifacts", epochs=first.later_epochs)
    assert len(second.history) <= first.later_epochs
    assert np.isfinite(np.load(second.oof_path)).sum() == second.n_valid, "the later fold still predicts its rows"


def test_the_flow_makes_the_members_decision_before_its_later_folds(harness, creds, tmp_path):
    """Through Prefect as well: fold 0 is compared with the members, and the later fold is
    submitted with the epochs it decided (the summary's CV rows show how many each trained)."""
    from lora_tasks.prefect.flow import kaggle_lora

    served = tmp_path / "served"
    build_demo_competition(served)
    with fk.serve(served) as server:
        summary = kaggle_lora(_options(tmp_path / "work", kaggle_endpoint=server.url, folds=2, epochs=4,
                                       time_limit="1h", retry_delay_s=0.05))
    first = summary.cv[0]
    assert first["epochs"] >= 2, summary.cv  # it trained up to the members check
    if len(summary.cv) == 2:
        assert summary.cv[1]["epochs"] < 4, f"the later fold kept the plan's 4 epochs: {summary.cv}"
    else:  # fold 0 failed (the tiny encoder at the majority class) or added nothing: no later fold, and why
        assert len(summary.cv) == 1 and "train-fold-1" not in summary.task_states
        assert any(str(r["member"]).startswith("no adapters in the blend") for r in summary.members), summary.members
    assert summary.task_states["train-fold-0"] == "Completed"
    assert math.isfinite(summary.oof_score)


RUN_TO_LOG = """
import sys
from lora_tasks import steps
from lora_tasks.options import RunOptions
from lora_tasks.progress import progress_for_output
from lora_tasks.testing import fake_kaggle as fk

with fk.serve(sys.argv[1]) as server:
    options = RunOptions(competition="demo", work_dir=sys.argv[2], kaggle_endpoint=server.url, tiny=True,
                         max_seq_len=64, folds=2, epochs=2, submit=False, time_limit="1h")
    with progress_for_output(every_s=0.0) as progress:
        steps.run_pipeline(options, progress=progress)
"""


def test_a_run_whose_output_is_a_file_prints_progress_lines(creds, tmp_path):
    served = tmp_path / "served"
    build_demo_competition(served)
    log = tmp_path / "run.log"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with log.open("w") as out:
        done = subprocess.run([sys.executable, "-c", RUN_TO_LOG, str(served), str(tmp_path / "work")],
                              stdout=out, stderr=subprocess.PIPE, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = log.read_text().splitlines()
    epoch_lines = [line for line in lines if line.startswith("fold 0: epoch") and "valid" in line]
    assert epoch_lines, lines[-20:]
    assert any("run done in ~" in line for line in lines), "the run's time left is shown under a time limit"
    assert not any("\r" in line or "\x1b[" in line for line in lines), "no bar redraws in a log file"


def test_the_probe_counts_the_layers_of_an_encoder_without_a_layer_split(tmp_path):
    """ModernBERT has no ``num_layers`` (no frozen-prefix split); the probe counts its layers."""
    import json

    from lora_tasks.budget.probe import probe_for_plan

    folder = Path(__file__).parent / "fixtures" / "modernbert_tiny"
    costs = probe_for_plan("binary_classification", "balanced", 1, model=str(folder), tiny=False, seq_len=32,
                           batch_size=8, cache_dir=tmp_path, timed_tops=(1,)).costs
    assert costs.num_layers == json.loads((folder / "config.json").read_text())["num_hidden_layers"]
    assert costs.full_step_s > 0 and dict(costs.top_step_s)[1] > 0
