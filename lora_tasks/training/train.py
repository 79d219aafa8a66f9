"""The training engine: one adapter on tokenized rows, with checkpoints, early stopping and CV.

Works on any model with the head interface of :class:`lora_tasks.models.BertWithHead`
(``model(ids, mask, types) -> logits``, ``model.loss(logits, labels, class_weights)``,
``model.head_type``) whose trainable parameters are the adapter and head. No Prefect here.

Reproducible on the CPU: the batch order of epoch ``e`` depends only on ``(seed, e)`` and the
dropout RNG is reseeded from ``(seed, e)`` at every epoch start, so a run killed after epoch 2 and started
again ends with the same weights as a run that was never interrupted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from lora_tasks.data.batching import bucket_indices, forward_batches
from lora_tasks.lora.adapter import base_identity
from lora_tasks.models.heads import predictions
from lora_tasks.progress import ProgressCallback, ProgressEvent
from lora_tasks.training.checkpoints import (
    BEST_FILE,
    CHECKPOINT_FILE,
    atomic_save,
    load_checkpoint,
    peek_meta,
    read_checkpoint_file,
    save_checkpoint,
)
from lora_tasks.training.records import CLASSIFICATION, Dataset, NonFiniteError, TrainConfig, TrainResult
from lora_tasks.training.step_memory import cache_step_memory

log = logging.getLogger("lora_tasks.training.train")

__all__ = ["CLASSIFICATION", "Dataset", "NonFiniteError", "TrainConfig", "TrainResult", "balanced_class_weights",
           "check_finite_predictions", "evaluate", "make_schedule", "predict", "train"]

# ---- batches ---------------------------------------------------------------------------------


def _trim(data: Dataset, idx: np.ndarray, multiple: int) -> tuple[mx.array, mx.array, mx.array]:
    width = int(data.attention_mask[idx].sum(axis=1).max())
    width = min(data.input_ids.shape[1], int(math.ceil(width / multiple) * multiple))
    return (
        mx.array(data.input_ids[idx, :width]),
        mx.array(data.attention_mask[idx, :width]),
        mx.array(data.token_type_ids[idx, :width]),
    )


# ---- pieces of the loop --------------------------------------------------------------------


def make_schedule(cfg: TrainConfig, total_steps: int) -> Callable[[mx.array], mx.array] | float:
    warmup = int(round(cfg.warmup_ratio * total_steps))
    rest = max(total_steps - warmup, 1)
    if cfg.schedule == "linear":
        decay = optim.linear_schedule(cfg.learning_rate, 0.0, rest)
    elif cfg.schedule == "cosine":
        decay = optim.cosine_decay(cfg.learning_rate, rest)
    else:
        decay = lambda step: mx.array(cfg.learning_rate)  # noqa: E731 - a schedule is a callable of the step
    if warmup == 0:
        return decay
    return optim.join_schedules([optim.linear_schedule(cfg.learning_rate * 0.01, cfg.learning_rate, warmup), decay], [warmup])


def balanced_class_weights(head_type: str, labels: np.ndarray) -> mx.array | None:
    """sklearn's 'balanced' weights: n_samples / (n_classes * count(class))."""
    from sklearn.utils.class_weight import compute_class_weight  # scikit-learn takes seconds to import

    if head_type not in ("binary_classification", "multiclass_classification"):
        return None
    y = labels.astype(np.int64).reshape(-1)
    classes = np.arange(int(y.max()) + 1 if head_type == "multiclass_classification" else 2)
    present = np.unique(y)
    weights = np.ones(len(classes), dtype=np.float32)
    weights[present] = compute_class_weight("balanced", classes=present, y=y)
    return mx.array(weights)


def predict(model: nn.Module, data: Dataset, batch_size: int = 64, pad_to_multiple: int = 16, *,
            name: str | None = None) -> np.ndarray:
    """Predictions (probabilities or values) for every row, in row order. Model in eval mode.

    NaN or infinite predictions raise :class:`NonFiniteError` with their row count (``name``, such
    as ``"fold 2"``, says whose): a blend or a submission must never receive them."""
    was_training = model.training
    model.eval()
    out: list[np.ndarray] = []
    batches = forward_batches(data.lengths, batch_size)  # wide rows: fewer rows a batch (FORWARD_TOKENS)
    try:
        for idx in batches:
            ids, mask, types = _trim(data, idx, pad_to_multiple)
            out.append(np.array(predictions(model.head_type, model(ids, mask, types))))
    finally:
        model.train(was_training)
    if not out:
        return np.zeros((0,), dtype=np.float32)
    preds = np.concatenate(out)
    result = np.empty_like(preds)
    result[np.concatenate(batches)] = preds
    check_finite_predictions(result, name)
    return result


def check_finite_predictions(preds: np.ndarray, name: str | None = None) -> None:
    """Raise :class:`NonFiniteError` naming how many rows hold NaN or infinite values."""
    bad = ~np.isfinite(np.asarray(preds, dtype=np.float64))
    if not bad.any():
        return
    rows = int(bad.reshape(len(bad), -1).any(axis=1).sum())
    who = f"{name}: " if name else ""
    raise NonFiniteError(
        f"{who}{rows} of {len(bad)} rows of predictions are NaN or infinite. The model's weights have probably "
        "diverged (a learning rate too high: lower it, e.g. by 10x) or were loaded from a broken adapter file."
    )


def evaluate(model: nn.Module, data: Dataset, metric: str | None, cfg: TrainConfig) -> tuple[float, bool]:
    """(score, higher_is_better) on labelled data: the competition metric, or the mean loss."""
    if data.labels is None:
        raise ValueError("Validation data needs labels.")
    if metric is None:
        model.eval()
        losses = []
        for i in range(0, len(data), cfg.eval_batch_size):
            idx = np.arange(i, min(i + cfg.eval_batch_size, len(data)))
            ids, mask, types = _trim(data, idx, cfg.pad_to_multiple)
            losses.append(model.loss(model(ids, mask, types), mx.array(data.labels[idx])).item() * len(idx))
        model.train()
        return float(np.sum(losses) / len(data)), False
    from lora_tasks.metrics import get_metric  # imports scikit-learn (seconds): only when a metric is asked for

    m = get_metric(metric)
    preds = predict(model, data, cfg.eval_batch_size, cfg.pad_to_multiple)
    return float(m(data.labels, preds)), m.greater_is_better


# ---- checkpoints -----------------------------------------------------------------------------


def _fingerprint(cfg: TrainConfig, train: Dataset, model: nn.Module) -> str:
    """What a checkpoint must match to be resumed: the settings, the data, the trainable shapes and
    the base model's identity (its config and pretrained weights), so a checkpoint trained on
    another checkpoint of the same architecture is never resumed on this one."""
    h = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode())
    h.update(json.dumps(base_identity(model), sort_keys=True).encode())
    h.update(train.input_ids.tobytes())
    if train.labels is not None:
        h.update(np.ascontiguousarray(train.labels).tobytes())
    h.update(json.dumps(sorted((k, list(v.shape)) for k, v in tree_flatten(model.trainable_parameters()))).encode())
    return h.hexdigest()[:16]


# ---- the loop -----------------------------------------------------------------------------------


def train(
    model: nn.Module,
    train_data: Dataset,
    valid_data: Dataset | None = None,
    cfg: TrainConfig | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: ProgressCallback | None = None,
    name: str = "adapter",
    should_stop: Callable[[int, list[float]], bool] | None = None,
) -> TrainResult:
    """Train ``model``'s trainable parameters; keep the best epoch's weights by validation score.

    With ``checkpoint_dir``, the state is written atomically after every epoch and a rerun with
    the same data and config resumes after the last finished epoch. ``should_stop(epochs_done,
    epoch_seconds)`` is asked after each epoch's checkpoint (the time budget,
    :class:`lora_tasks.budget.EpochBudget`): True ends training there, with the best weights so far.
    """
    cfg = cfg or TrainConfig()
    if train_data.labels is None:
        raise ValueError("Training data needs labels.")
    if len(train_data) == 0:
        raise ValueError("Training data is empty.")
    mx.random.seed(cfg.seed)
    steps_per_epoch = math.ceil(math.ceil(len(train_data) / cfg.batch_size) / cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.epochs
    # bias correction on: without it the first steps are far too large (the loss jumps on a toy task)
    optimizer = optim.AdamW(
        learning_rate=make_schedule(cfg, total_steps), weight_decay=cfg.weight_decay, bias_correction=True
    )
    weights = balanced_class_weights(model.head_type, train_data.labels) if cfg.class_weights else None

    def loss_fn(m: nn.Module, ids: mx.array, mask: mx.array, types: mx.array, y: mx.array) -> mx.array:
        return m.loss(m(ids, mask, types), y, weights)

    loss_and_grad = nn.value_and_grad(model, loss_fn)

    def clip(grads):
        return optim.clip_grad_norm(grads, cfg.grad_clip)[0] if cfg.grad_clip else grads

    def full_step(ids, mask, types, y):
        loss, grads = loss_and_grad(model, ids, mask, types, y)
        optimizer.update(model, clip(grads))
        return loss

    def grad_step(ids, mask, types, y):
        return loss_and_grad(model, ids, mask, types, y)


    if model.head_type == "regression":
        _start_at_label_mean(model, train_data.labels)
    model.train()
    ckpt = Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir else None
    fingerprint = _fingerprint(cfg, train_data, model)
    result = TrainResult(metric=cfg.metric or "loss")
    best_weights: list | None = None
    start_epoch = 1
    higher = False
    if ckpt is not None and ckpt.exists():
        meta = peek_meta(ckpt)
        if meta.get("fingerprint") == fingerprint:
            meta = load_checkpoint(ckpt, model, optimizer)
            best_file = ckpt.with_name(BEST_FILE)
            if best_file.exists():
                best_weights = list(read_checkpoint_file(best_file)[0].items())
            result.history = meta["history"]
            result.best_epoch, result.best_score = meta["best_epoch"], meta["best_score"]
            result.resumed_from_epoch = meta["epoch"]
            start_epoch = meta["epoch"] + 1
            log.info("%s: resumed from the checkpoint of epoch %d", name, meta["epoch"])
        else:
            log.info("%s: checkpoint %s is for other data or settings; starting afresh", name, ckpt)

    # built after a resume: the compiled step must capture the restored optimizer state
    state = [model.state, optimizer.state, mx.random.state]
    step_fn = mx.compile(full_step, inputs=state, outputs=state) if cfg.compile else full_step
    grad_fn = mx.compile(grad_step, inputs=state, outputs=state) if cfg.compile else grad_step

    t_start = time.perf_counter()
    samples_done = 0
    step = (start_epoch - 1) * steps_per_epoch
    bad_epochs = 0
    if result.history:
        bad_epochs = result.history[-1]["epoch"] - result.best_epoch if result.best_epoch else 0
    for epoch in range(start_epoch, cfg.epochs + 1):
        if cfg.early_stopping_patience is not None and valid_data is not None and bad_epochs >= cfg.early_stopping_patience:
            result.stopped_early = True
            break
        losses: list[float] = []
        epoch_start = time.perf_counter()
        mx.random.seed(cfg.seed * 1000 + epoch)  # dropout masks depend on (seed, epoch) only
        batches = bucket_indices(train_data.lengths, cfg.batch_size, seed=cfg.seed * 1000 + epoch)
        accum = None
        for b, idx in enumerate(batches):
            ids, mask, types = _trim(train_data, idx, cfg.pad_to_multiple)
            y = mx.array(train_data.labels[idx])
            if cfg.grad_accum == 1:
                loss = step_fn(ids, mask, types, y)
                mx.eval(state)
            else:
                loss, grads = grad_fn(ids, mask, types, y)
                accum = grads if accum is None else tree_map_add(accum, grads)
                if (b + 1) % cfg.grad_accum == 0 or b + 1 == len(batches):
                    optimizer.update(model, clip(tree_map_scale(accum, 1.0 / cfg.grad_accum)))
                    accum = None
                mx.eval(state, loss)
            cache_step_memory()  # the next step reuses this one's buffers instead of faulting in fresh pages
            losses.append(loss.item())
            samples_done += len(idx)
            if cfg.grad_accum == 1 or (b + 1) % cfg.grad_accum == 0 or b + 1 == len(batches):
                step += 1
            if progress is not None:
                elapsed = time.perf_counter() - t_start
                rate = samples_done / max(elapsed, 1e-9)
                remaining = (total_steps - step) * cfg.batch_size * cfg.grad_accum / max(rate, 1e-9)
                progress(ProgressEvent(name, epoch, cfg.epochs, step, total_steps, float(np.mean(losses)), rate, remaining))

        row = {"epoch": epoch, "train_loss": float(np.mean(losses))}
        if not math.isfinite(row["train_loss"]):
            _stop_diverged(model, best_weights, name, epoch, cfg, f"the mean training loss is {row['train_loss']}", ckpt)
        if valid_data is not None:
            try:
                score, higher = evaluate(model, valid_data, cfg.metric, cfg)
            except NonFiniteError as exc:
                _stop_diverged(model, best_weights, name, epoch, cfg, str(exc), ckpt)
            if not math.isfinite(score):
                _stop_diverged(model, best_weights, name, epoch, cfg, f"the validation {result.metric} is {score}", ckpt)
            row[f"valid_{result.metric}"] = score
            improved = result.best_score is None or (score > result.best_score if higher else score < result.best_score)
            if improved:
                result.best_epoch, result.best_score = epoch, score
                best_weights = tree_flatten(model.trainable_parameters())
                bad_epochs = 0
            else:
                bad_epochs += 1
        else:
            result.best_epoch = epoch
        # kept in the checkpoint with the rest of the history: a resumed run still knows what it cost
        row["seconds"] = round(time.perf_counter() - epoch_start, 2)
        result.history.append(row)
        if ckpt is not None:
            if best_weights is not None and result.best_epoch == epoch:
                atomic_save(ckpt.with_name(BEST_FILE), dict(best_weights))
            save_checkpoint(ckpt, model, optimizer, {
                "fingerprint": fingerprint, "epoch": epoch, "history": result.history,
                "best_epoch": result.best_epoch, "best_score": result.best_score,
            })
        if progress is not None:
            elapsed = time.perf_counter() - t_start
            progress(ProgressEvent(
                name, epoch, cfg.epochs, step, total_steps, row["train_loss"], samples_done / max(elapsed, 1e-9),
                0.0, row.get(f"valid_{result.metric}"), result.metric, epoch_end=True,
            ))
        log.info("%s: epoch %d of %d done in %.1f s: %s", name, epoch, cfg.epochs, row["seconds"], ", ".join(
            f"{k.replace('_', ' ')} {v:.4f}" for k, v in row.items() if k not in ("epoch", "seconds")))
        if should_stop is not None and epoch < cfg.epochs and should_stop(epoch, [h.get("seconds", 0.0) for h in result.history]):
            result.stopped_early = result.stopped_for_time = True
            log.info("%s: stopped after epoch %d of %d to keep the time limit", name, epoch, cfg.epochs)
            break

    if best_weights is not None:
        model.update(tree_unflatten(best_weights))
    model.eval()
    result.seconds = time.perf_counter() - t_start
    result.samples_per_s = samples_done / max(result.seconds, 1e-9)
    return result


def _stop_diverged(model: nn.Module, best_weights: list | None, name: str, epoch: int, cfg: TrainConfig,
                   what: str, ckpt: Path | None) -> None:
    """Stop a run whose numbers left the finite range: restore the best weights so far, keep the
    last good checkpoint (this epoch's is not written), and say what probably went wrong."""
    if best_weights is not None:
        model.update(tree_unflatten(best_weights))
    model.eval()
    kept = f" The checkpoint of the last good epoch stays in {ckpt.parent}." if ckpt is not None and ckpt.exists() else ""
    clip = " and turn gradient clipping on (grad_clip=1.0)" if not cfg.grad_clip else ""
    raise NonFiniteError(
        f"Training {name!r} stopped in epoch {epoch}: {what}. The learning rate ({cfg.learning_rate:g}) is probably "
        f"too high: lower it (e.g. 10x){clip}.{kept}"
    )


def _start_at_label_mean(model: nn.Module, labels: np.ndarray) -> None:
    """Set a regression head's output bias to the mean label.

    A fresh head predicts ~0; targets such as log house prices sit near 12, and a few epochs of
    small LoRA steps would spend themselves walking the bias there. (A resumed run then loads
    its checkpointed bias over this.)
    """
    for path, value in tree_flatten(model.trainable_parameters()):
        if path.endswith("head.classifier.bias"):
            mean = np.asarray(labels, dtype=np.float32).reshape(len(labels), -1).mean(axis=0)
            model.update(tree_unflatten([(path, mx.array(mean.reshape(value.shape)))]))
            return


def tree_map_add(a, b):
    return tree_map(lambda x, y: x + y, a, b)


def tree_map_scale(a, s: float):
    return tree_map(lambda x: x * s, a)
