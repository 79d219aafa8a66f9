"""The training engine on a tiny random BERT: learning, determinism, schedules, early stopping,
gradient accumulation, class weights, and resuming after a real kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_unflatten

from lora_tasks.progress import EventLog
from lora_tasks.training.checkpoints import BEST_FILE, CHECKPOINT_FILE, CheckpointError
from lora_tasks.training.train import (
    NonFiniteError,
    TrainConfig,
    balanced_class_weights,
    make_schedule,
    predict,
    train,
)
from tests._tiny import tiny_model, toy_data

REPO = Path(__file__).resolve().parents[1]


def _weights(model) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in tree_flatten(model.trainable_parameters())}


def test_learns_a_toy_task_and_keeps_the_best_epoch():
    data = toy_data(200)
    model = tiny_model()
    log = EventLog()
    cfg = TrainConfig(epochs=8, batch_size=16, learning_rate=1e-2, early_stopping_patience=None)
    res = train(model, data.subset(np.arange(150)), data.subset(np.arange(150, 200)), cfg, progress=log)
    losses = [r["train_loss"] for r in res.history]
    assert losses[-1] < 0.5 * losses[0]
    valid = [r["valid_loss"] for r in res.history]
    assert res.best_score == min(valid) and res.best_epoch == 1 + int(np.argmin(valid))
    preds = predict(model, data.subset(np.arange(150, 200)))
    assert preds.shape == (50,) and ((preds > 0.5) == data.labels[150:]).mean() >= 0.8
    # the model holds the best epoch's weights: its validation loss equals the best score
    from lora_tasks.training.train import evaluate

    assert abs(evaluate(model, data.subset(np.arange(150, 200)), None, cfg)[0] - res.best_score) < 1e-4
    ends = log.epoch_ends()
    assert [e.epoch for e in ends] == list(range(1, 9)) and ends[-1].step == ends[-1].steps
    assert all(e.samples_per_s > 0 for e in log.events)


def test_same_seed_same_weights_and_other_seed_differs():
    data = toy_data(64)
    cfg = TrainConfig(epochs=2, batch_size=16, early_stopping_patience=None)
    a, b, c = tiny_model(), tiny_model(), tiny_model()
    train(a, data, None, cfg)
    train(b, data, None, cfg)
    train(c, data, None, TrainConfig(epochs=2, batch_size=16, seed=7))
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    assert all(np.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    assert any(not np.allclose(wa[k], wc[k], atol=1e-6) for k in wa)


def test_early_stopping_stops_when_validation_stops_improving():
    data = toy_data(96)
    # a learning rate of zero: validation never improves after epoch 1
    cfg = TrainConfig(epochs=10, batch_size=32, learning_rate=0.0, early_stopping_patience=2, warmup_ratio=0.0)
    res = train(tiny_model(), data.subset(np.arange(64)), data.subset(np.arange(64, 96)), cfg)
    assert res.stopped_early and len(res.history) == 3 and res.best_epoch == 1


def test_gradient_accumulation_counts_optimizer_steps():
    data = toy_data(64)
    log = EventLog()
    res = train(tiny_model(), data, None, TrainConfig(epochs=1, batch_size=8, grad_accum=4), progress=log)
    assert log.events[-1].steps == 2 and log.events[-1].step == 2
    assert np.isfinite(res.history[0]["train_loss"])


def test_warmup_then_linear_decay():
    sched = make_schedule(TrainConfig(learning_rate=1.0, warmup_ratio=0.1, schedule="linear"), 100)
    lrs = [sched(mx.array(s)).item() for s in (0, 5, 10, 55, 99)]
    assert lrs[0] < lrs[1] < lrs[2] and abs(lrs[2] - 1.0) < 1e-6
    assert lrs[2] > lrs[3] > lrs[4] >= 0


def test_balanced_class_weights_follow_sklearn_formula():
    w = np.array(balanced_class_weights("binary_classification", np.array([0] * 30 + [1] * 10)))
    np.testing.assert_allclose(w, [40 / (2 * 30), 40 / (2 * 10)])
    assert balanced_class_weights("regression", np.zeros(4)) is None


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="exp")
    with pytest.raises(ValueError, match="labels"):
        unlabelled = toy_data(8)
        unlabelled.labels = None
        train(tiny_model(), unlabelled)


CHILD = """
import sys, time, json
sys.path.insert(0, {repo!r})
import lora_tasks
import numpy as np
from mlx.utils import tree_flatten
from lora_tasks.training.train import train, TrainConfig
from tests._tiny import tiny_model, toy_data
slow = float(sys.argv[2])
data = toy_data(160)
model = tiny_model()
cfg = TrainConfig(epochs=4, batch_size=16, early_stopping_patience=None, compile=False)
res = train(model, data.subset(np.arange(128)), data.subset(np.arange(128, 160)), cfg, checkpoint_dir=sys.argv[1],
            progress=lambda e: time.sleep(slow))
print(json.dumps({{"resumed_from": res.resumed_from_epoch, "epochs": len(res.history),
                  "seconds": [h["seconds"] for h in res.history],
                  "w": {{k: np.array(v).tolist() for k, v in tree_flatten(model.trainable_parameters())
                        if k.startswith("head")}}}}))
"""


def _child(ckpt: Path, slow: float) -> subprocess.Popen:
    """A training process; its stderr goes to a file (a full pipe would block it)."""
    code = CHILD.format(repo=str(REPO))
    ckpt.mkdir(parents=True, exist_ok=True)
    err = open(ckpt.parent / f"{ckpt.name}-{slow}.stderr", "w")
    return subprocess.Popen([sys.executable, "-c", code, str(ckpt), str(slow)], stdout=subprocess.PIPE,
                            stderr=err, text=True, cwd=REPO)


def _stderr(proc: subprocess.Popen) -> str:
    return Path(proc.stderr.name).read_text() if proc.stderr else ""


def _checkpoint_epoch(path: Path) -> int:
    try:
        _, meta = mx.load(str(path), return_metadata=True)
        return json.loads(meta["meta"])["epoch"]
    except Exception:
        return 0


def test_killed_training_resumes_from_last_checkpoint(tmp_path):
    killed = tmp_path / "killed"
    proc = _child(killed, 0.05)
    deadline = time.time() + 120
    while _checkpoint_epoch(killed / CHECKPOINT_FILE) < 2:
        assert proc.poll() is None, _stderr(proc)
        assert time.time() < deadline, "no checkpoint of epoch 2 within 120 s"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # mid-epoch 3
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert _checkpoint_epoch(killed / CHECKPOINT_FILE) >= 2

    again = _child(killed, 0.0)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, _stderr(again)
    resumed = json.loads(out.strip().splitlines()[-1])
    assert resumed["resumed_from"] >= 2 and resumed["epochs"] == 4
    # the epochs of the killed run keep their cost (8 steps slept 0.05 s each); the resumed ones are new
    assert min(resumed["seconds"][:2]) >= 0.4 and all(s > 0 for s in resumed["seconds"])

    fresh = _child(tmp_path / "fresh", 0.0)
    out, _ = fresh.communicate(timeout=300)
    assert fresh.returncode == 0, _stderr(fresh)
    reference = json.loads(out.strip().splitlines()[-1])
    assert reference["resumed_from"] == 0
    for k, v in reference["w"].items():
        np.testing.assert_allclose(np.array(resumed["w"][k]), np.array(v), atol=1e-5)


def test_cross_validation_gives_oof_for_every_row_and_test_per_fold():
    from lora_tasks.metrics import score
    from lora_tasks.training.cv import cross_validate, make_folds

    data = toy_data(120)
    test = toy_data(30, seed=5)
    test.labels = None
    cfg = TrainConfig(epochs=3, batch_size=16, learning_rate=3e-3, metric="accuracy", early_stopping_patience=None)
    res = cross_validate(lambda k: tiny_model(seed=k), data, test, n_folds=3, cfg=cfg)
    assert res.oof.shape == (120,) and np.all((res.oof >= 0) & (res.oof <= 1))
    assert sorted(np.bincount(res.fold_of_row).tolist()) == [40, 40, 40]
    # stratified: every fold holds the class balance of the whole set within one row
    for k in range(3):
        share = data.labels[res.fold_of_row == k].mean()
        assert abs(share - data.labels.mean()) <= 1 / 40 + 1e-9
    assert len(res.test_per_fold) == 3 and res.test.shape == (30,)
    np.testing.assert_allclose(res.test, np.mean(res.test_per_fold, axis=0))
    assert res.oof_score == pytest.approx(score("accuracy", data.labels, res.oof))
    assert len(res.fold_scores) == 3 and all(0 <= s <= 1 for s in res.fold_scores)
    with pytest.raises(ValueError, match="at least 2 folds"):
        make_folds(data.labels, "binary_classification", 1)


def test_regression_head_starts_at_the_label_mean():
    data = toy_data(64)
    data.labels = (12.0 + data.input_ids[:, 1] / 50.0).astype(np.float32)  # like log house prices
    model = tiny_model(head_type="regression")
    res = train(model, data, None, TrainConfig(epochs=2, batch_size=16, learning_rate=0.0, warmup_ratio=0.0))
    preds = predict(model, data).reshape(-1)
    assert abs(preds.mean() - data.labels.mean()) < 0.5  # lr 0: only the initial bias gets it there (else ~12 off)
    assert res.history[0]["train_loss"] < 1.0


def test_a_huge_learning_rate_stops_the_fold_with_the_cause(tmp_path):
    data = toy_data(64)
    model = tiny_model()
    cfg = TrainConfig(epochs=3, learning_rate=1e8, grad_clip=None, warmup_ratio=0.0, compile=False)
    with pytest.raises(NonFiniteError) as err:
        train(model, data.subset(np.arange(48)), data.subset(np.arange(48, 64)), cfg, tmp_path, name="fold 3")
    msg = str(err.value)
    assert "'fold 3'" in msg and "epoch 1" in msg and "learning rate (1e+08)" in msg and "lower it" in msg
    assert not (tmp_path / CHECKPOINT_FILE).exists()  # nothing non-finite is checkpointed


def _poison_after_epoch(model, at_epoch: int):
    """A progress callback that breaks the adapter weights once ``at_epoch`` has ended (and been checkpointed)."""

    def callback(event):
        if event.epoch_end and event.epoch == at_epoch:
            broken = [(k, mx.full(v.shape, float("nan"))) for k, v in tree_flatten(model.trainable_parameters())]
            model.update(tree_unflatten(broken))

    return callback


def test_a_non_finite_loss_keeps_the_last_good_checkpoint_and_weights(tmp_path):
    data = toy_data(64)
    train_part, valid_part = data.subset(np.arange(48)), data.subset(np.arange(48, 64))
    cfg = TrainConfig(epochs=3, learning_rate=1e-2, compile=False, early_stopping_patience=None)
    model = tiny_model()
    with pytest.raises(NonFiniteError, match=r"'fold 1' stopped in epoch 2.*checkpoint of the last good epoch"):
        train(model, train_part, valid_part, cfg, tmp_path, progress=_poison_after_epoch(model, 1), name="fold 1")
    assert _checkpoint_epoch(tmp_path / CHECKPOINT_FILE) == 1
    # the model holds the best (finite) weights again, and predicts finite values
    assert all(np.isfinite(v).all() for v in _weights(model).values())
    assert np.isfinite(predict(model, valid_part)).all()
    # the rerun resumes after the good epoch
    again = train(tiny_model(), train_part, valid_part, cfg, tmp_path, name="fold 1")
    assert again.resumed_from_epoch == 1 and len(again.history) == 3


def test_predict_refuses_nan_and_names_the_rows():
    data = toy_data(40)
    model = tiny_model()
    broken = [(k, mx.full(v.shape, float("nan"))) for k, v in tree_flatten(model.parameters()) if "classifier" in k]
    model.update(tree_unflatten(broken))
    with pytest.raises(NonFiniteError, match=r"fold 0: 40 of 40 rows of predictions are NaN or infinite"):
        predict(model, data, name="fold 0")


@pytest.mark.parametrize("which", [CHECKPOINT_FILE, BEST_FILE])
def test_a_truncated_checkpoint_names_the_file_and_the_fix(tmp_path, which):
    data = toy_data(48)
    train_part, valid_part = data.subset(np.arange(32)), data.subset(np.arange(32, 48))
    cfg = TrainConfig(epochs=1, learning_rate=1e-2, compile=False)
    train(tiny_model(), train_part, valid_part, cfg, tmp_path)
    target = tmp_path / which
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    with pytest.raises(CheckpointError) as err:  # the same run again: it resumes, so it reads both files
        train(tiny_model(), train_part, valid_part, cfg, tmp_path)
    msg = str(err.value)
    assert str(target) in msg and "delete it or run with --refresh" in msg.lower()
