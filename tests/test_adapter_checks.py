"""Adapters earn their time: a fold at the majority class is noticed (retried, else dropped), and
after fold 0 the adapters continue only if they add to the members' blend (nested on its rows)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lora_tasks import steps
from lora_tasks.steps.adapter_checks import MIN_GAIN, adapters_gain, collapsed, retry_learning_rate
from lora_tasks.steps.train import members_decide
from lora_tasks.task import Task
from lora_tasks.testing.demo import build_demo_competition


def test_collapse_is_every_row_at_one_class():
    y = np.array([0, 1, 1, 0, 1])
    assert "class 1, the majority class" in collapsed(Task.BINARY, y, np.full(5, 0.7))
    assert "class 0, a minority class" in collapsed(Task.BINARY, y, np.full(5, 0.2))
    assert collapsed(Task.BINARY, y, np.array([0.2, 0.8, 0.7, 0.4, 0.9])) is None
    probs = np.tile([0.2, 0.5, 0.3], (5, 1))
    assert "class 1" in collapsed(Task.MULTICLASS, np.array([0, 1, 2, 1, 0]), probs)
    assert collapsed(Task.BINARY, np.ones(5, int), np.full(5, 0.7)) is None  # one class held out: nothing to tell
    assert collapsed(Task.REGRESSION, y, np.full(5, 0.7)) is None


def test_retry_learning_rate_goes_up_when_learning_and_down_when_not():
    falling = [{"train_loss": 0.7}, {"train_loss": 0.6}]
    flat = [{"train_loss": 0.69}, {"train_loss": 0.70}]
    assert retry_learning_rate(1e-3, falling)[0] > 1e-3
    assert retry_learning_rate(1e-3, [{"train_loss": 0.7}])[0] > 1e-3  # one epoch: too few steps
    lower, why = retry_learning_rate(1e-3, flat)
    assert lower < 1e-3 and "did not fall" in why


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo table (numbers, no free text) with the tiny model: its random encoder ends at the
    majority class, the collapse this module is about."""
    data = build_demo_competition(tmp_path_factory.mktemp("served"))
    out = tmp_path_factory.mktemp("artifacts")
    prepared = steps.prepare_data("demo", data, out, max_train_rows=240)
    plan = steps.plan_training("demo", data, out, tiny=True, max_train_rows=240,
                               overrides={"n_folds": 2, "epochs": 1, "max_seq_len": 32})
    tokens = steps.tokenize_data(prepared, plan, out / "tokens")
    members = steps.train_members("demo", data, prepared, plan, out)
    return out, prepared, plan, tokens, members


def test_a_fold_at_the_majority_class_is_retried_or_dropped_never_kept(demo):
    out, prepared, plan, tokens, _ = demo
    fold = steps.train_adapter(prepared, plan, tokens, 1, out)
    folds = steps.fold_assignment(steps.Prepared.load(prepared), steps.Plan.load(plan))
    y = np.asarray(steps.Prepared.load(prepared).y)[folds == 1]
    pred = np.load(fold.oof_path)[folds == 1]
    if fold.failed is None:  # it learned, possibly on the second try
        assert collapsed(Task.BINARY, y, pred) is None
    else:
        assert fold.retried is not None and "trained again at" in fold.retried
        assert "dropped" in fold.failed and collapsed(Task.BINARY, y, pred) is not None
    assert fold.retried is None or "ended at one class" in fold.retried


def test_first_fold_decides_whether_adapters_continue(demo):
    """Adapters that predict fold 0 perfectly add to the members' blend; noise adds nothing, and
    then the members blend alone with the reason in the result."""
    out, prepared, plan, tokens, members = demo
    loaded_prepared, loaded_plan = steps.Prepared.load(prepared), steps.Plan.load(plan)
    assert not loaded_plan.has_text and members_decide(loaded_plan, members)
    folds = steps.fold_assignment(loaded_prepared, loaded_plan)
    valid = np.flatnonzero(folds == 0)
    y = np.asarray(loaded_prepared.y)[valid]
    oofs = [(m.name, np.load(m.oof_path)) for m in members]
    perfect = adapters_gain(loaded_prepared, loaded_plan, valid, y.astype(float), oofs)
    noise = adapters_gain(loaded_prepared, loaded_plan, valid, np.random.default_rng(0).random(len(y)), oofs)
    assert perfect.keep_adapters and perfect.gain > 0 and "adapters add" in perfect.reason
    assert not noise.keep_adapters and noise.gain <= 0 and "adapters stop" in noise.reason
    assert "nested accuracy" in noise.reason and f"{len(y)} held-out rows" in noise.reason
    # adapters that only copy a member tie with the blend without them: a tie buys no later fold
    copy = adapters_gain(loaded_prepared, loaded_plan, valid, oofs[0][1][valid], oofs)
    assert copy.gain is not None and copy.gain < MIN_GAIN and not copy.keep_adapters, copy.reason

    first = steps.train_adapter(prepared, plan, tokens, 0, out, members=members)
    assert first.gain is not None or first.failed is not None, "fold 0 with members decides (or failed)"
    stopped = replace(first, gain=noise, failed=None)
    assert not stopped.keep_adapters
    combined = steps.combine(prepared, plan, [stopped], out, members=members)
    assert "lora" not in combined.weights and combined.notes == [noise.reason]
    assert set(combined.weights) == {m.name for m in members}


def test_text_tables_keep_the_adapters(demo, tmp_path):
    _, prepared, plan_path, _, members = demo
    plan = steps.Plan.load(plan_path)
    texty = Path(steps.Plan(**{**plan.__dict__, "has_text": True}).save(tmp_path))
    gain = adapters_gain(steps.Prepared.load(prepared), steps.Plan.load(texty), np.arange(10), np.full(10, 0.5),
                         [(m.name, np.load(m.oof_path)) for m in members])
    assert gain.keep_adapters and "free text" in gain.reason
