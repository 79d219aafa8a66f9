"""A fold's checkpoints under ``--refresh`` and a stop request (issue 22 items 6 and 8), on the
plain step function with the tiny model: a corrupt checkpoint keeps failing with a message naming
it until ``refresh`` starts the fold afresh; a stop request ends the fold after one step and keeps
what was checkpointed."""

from __future__ import annotations

import signal

import pytest

from lora_tasks import lifecycle, steps
from lora_tasks.testing.demo import build_demo_competition
from lora_tasks.training.checkpoints import CHECKPOINT_FILE, CheckpointError


@pytest.fixture(scope="module")
def demo_steps(tmp_path_factory):
    served = build_demo_competition(tmp_path_factory.mktemp("served"))
    out = tmp_path_factory.mktemp("artifacts")
    prepared = steps.prepare_data("demo", served, out, max_train_rows=60)
    plan = steps.plan_training("demo", served, out, tiny=True, max_train_rows=60,
                               overrides={"n_folds": 2, "epochs": 2, "max_seq_len": 32})
    tokens = steps.tokenize_data(prepared, plan, out / "tokens")
    return prepared, plan, tokens


def test_refresh_starts_a_fold_past_a_corrupt_checkpoint(demo_steps, tmp_path, caplog):
    prepared, plan, tokens = demo_steps
    steps.train_adapter(prepared, plan, tokens, 0, tmp_path)
    [checkpoint] = (tmp_path / "checkpoints").glob(f"*/{CHECKPOINT_FILE}")
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])  # truncated, as by a full disk
    for _ in range(2):  # not once: every rerun
        with pytest.raises(CheckpointError, match="run with --refresh") as err:
            steps.train_adapter(prepared, plan, tokens, 0, tmp_path)
        assert str(checkpoint) in str(err.value)
    with caplog.at_level("INFO", logger="lora_tasks"):
        result = steps.train_adapter(prepared, plan, tokens, 0, tmp_path, refresh=True)
    assert "--refresh: deleted" in caplog.text and str(checkpoint.parent) in caplog.text
    assert [h["epoch"] for h in result.history] == [1, 2], "trained from the first epoch"
    again = steps.train_adapter(prepared, plan, tokens, 0, tmp_path)  # the new checkpoint is readable
    assert again.history == result.history


def test_a_stop_request_ends_the_fold_after_one_step(demo_steps, tmp_path):
    prepared, plan, tokens = demo_steps
    seen = []

    def progress(event):
        seen.append(event)
        lifecycle.request_stop(signal.SIGTERM)  # as the signal handler does, from the first step on

    try:
        with pytest.raises(lifecycle.StopRequested, match="fold 1 stopped at epoch 1"):
            steps.train_adapter(prepared, plan, tokens, 1, tmp_path, progress=progress)
    finally:
        lifecycle.reset_stop()
    assert len(seen) == 1, "the fold stopped at the first step after the request"
    assert not list(tmp_path.glob("adapter-*.safetensors")), "no adapter file for an unfinished fold"
