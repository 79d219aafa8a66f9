"""K-fold cross-validation of adapters: out-of-fold predictions for every train row and test
predictions from every fold's adapter (the inputs of blending and of the submission)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import mlx.nn as nn
import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold

from lora_tasks.metrics import get_metric
from lora_tasks.progress import ProgressCallback
from lora_tasks.training.train import Dataset, TrainConfig, TrainResult, predict, train

log = logging.getLogger("lora_tasks.training.cv")


@dataclass
class CVResult:
    """Out-of-fold and test predictions of a K-fold run, with each fold's training record."""

    oof: np.ndarray  # one prediction per train row, from the fold that did not train on it
    test: np.ndarray | None  # mean over folds of the test predictions
    test_per_fold: list[np.ndarray] = field(default_factory=list)
    fold_of_row: np.ndarray | None = None
    fold_results: list[TrainResult] = field(default_factory=list)
    fold_scores: list[float] = field(default_factory=list)
    oof_score: float | None = None
    metric: str = "loss"


def make_folds(labels: np.ndarray, head_type: str, n_folds: int, seed: int = 0) -> np.ndarray:
    """Fold index per row: stratified for single-label classification, plain K-fold otherwise."""
    n = len(labels)
    if n_folds < 2:
        raise ValueError(f"n_folds={n_folds}; cross-validation needs at least 2 folds.")
    if n_folds > n:
        raise ValueError(f"n_folds={n_folds} but only {n} rows; use fewer folds.")
    fold = np.empty(n, dtype=np.int64)
    if head_type in ("binary_classification", "multiclass_classification"):
        y = np.asarray(labels).reshape(n, -1)[:, 0]
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(n), y)
    else:
        splits = KFold(n_splits=n_folds, shuffle=True, random_state=seed).split(np.zeros(n))
    for k, (_, valid_idx) in enumerate(splits):
        fold[valid_idx] = k
    return fold


def cross_validate(
    make_model: Callable[[int], nn.Module],
    data: Dataset,
    test: Dataset | None = None,
    n_folds: int = 5,
    cfg: TrainConfig | None = None,
    checkpoint_root: str | os.PathLike | None = None,
    progress: ProgressCallback | None = None,
    folds: np.ndarray | None = None,
    name: str = "fold",
) -> CVResult:
    """Train one adapter per fold (``make_model(fold)`` gives a fresh model) and collect OOF and
    test predictions. Pass ``folds`` to reuse the exact splits of another run (e.g. of a
    scikit-learn anchor or another ensemble member)."""
    cfg = cfg or TrainConfig()
    if data.labels is None:
        raise ValueError("Cross-validation needs labelled data.")
    head_type = make_model(0).head_type if folds is None else None
    if folds is None:
        folds = make_folds(data.labels, head_type, n_folds, cfg.seed)
    n_folds = int(folds.max()) + 1
    oof: np.ndarray | None = None
    result = CVResult(oof=np.empty(0), test=None, fold_of_row=folds, metric=cfg.metric or "loss")
    for k in range(n_folds):
        model = make_model(k)
        train_idx, valid_idx = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        ckpt = Path(checkpoint_root) / f"{name}{k}" if checkpoint_root else None
        fold_cfg = replace(cfg, seed=cfg.seed + k)
        res = train(model, data.subset(train_idx), data.subset(valid_idx), fold_cfg, ckpt, progress, f"{name} {k}")
        preds = predict(model, data.subset(valid_idx), cfg.eval_batch_size, cfg.pad_to_multiple, name=f"{name} {k}")
        if oof is None:
            oof = np.zeros((len(data),) + preds.shape[1:], dtype=np.float32)
        oof[valid_idx] = preds
        if test is not None:
            result.test_per_fold.append(predict(model, test, cfg.eval_batch_size, cfg.pad_to_multiple,
                                                name=f"{name} {k} (test rows)"))
        result.fold_results.append(res)
        result.fold_scores.append(res.best_score if res.best_score is not None else float("nan"))
        log.info("%s %d: best %s %.5f at epoch %d", name, k, result.metric, result.fold_scores[-1], res.best_epoch)
    result.oof = oof
    if result.test_per_fold:
        result.test = np.mean(result.test_per_fold, axis=0)
    if cfg.metric:
        result.oof_score = float(get_metric(cfg.metric)(data.labels, oof))
    return result
