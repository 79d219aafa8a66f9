"""AutoGluon peer of ``time_to_submission.py``, run in its own Python (AutoGluon pins its own
scikit-learn): what a tabular user would pick instead, at its strongest preset, within the same
time limit.

    python autogluon_peer.py --train train.csv --test test.csv --label Survived --id PassengerId
        --metric accuracy --time-limit 300 --out submission.csv [--rows N] [--log-target]

Prints one JSON line: ``{"score": ..., "metric": ..., "model": ..., "wall_s": ...}``. ``score`` is
AutoGluon's own validation score of its best model, which with ``best_quality`` (bagged folds,
stacking) is out-of-fold over the training rows, in the metric's natural sign. ``best_quality``
where it fits (:data:`BEST_QUALITY_MIN_S` per predictor or more, and a fit that trains a model),
else ``medium_quality``; ``presets`` in the JSON line says which ran. ``--log-target``
fits log1p of the label with RMSE (= RMSLE of the label, house prices' metric).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time

import numpy as np
import pandas as pd
from autogluon.tabular import TabularPredictor

#: AutoGluon's name of each competition metric (``--metric``), and whether it is an error.
METRICS = {"accuracy": ("accuracy", False), "f1": ("f1", False), "rmsle": ("root_mean_squared_error", True),
           "rmse": ("root_mean_squared_error", True), "mcrmse": ("root_mean_squared_error", True),
           "roc_auc": ("roc_auc", False)}
#: Seconds per predictor below which ``best_quality`` is not tried: its dynamic-stacking check
#: fits a sub-model on a quarter of the time first, and on long text rows nothing fits in that.
BEST_QUALITY_MIN_S = 240
FOLDERS: list[str] = []  # the predictors' folders, removed at exit


def fit(frame: pd.DataFrame, label: str, metric: str, time_limit: float, presets: str) -> TabularPredictor:
    """One predictor in a fresh folder of its own (a failed fit leaves its folder unusable)."""
    path = tempfile.mkdtemp(prefix="ag-peer-")
    FOLDERS.append(path)
    predictor = TabularPredictor(label=label, eval_metric=metric, path=path, verbosity=1)
    return predictor.fit(frame, time_limit=time_limit, presets=presets)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--train", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--label", required=True, help="the target column; several, comma-separated, get one "
                   "predictor each (the time limit split between them)")
    p.add_argument("--id", required=True)
    p.add_argument("--metric", required=True, choices=sorted(METRICS))
    p.add_argument("--time-limit", type=float, required=True, help="seconds, for the whole fit")
    p.add_argument("--out", required=True, help="submission CSV to write")
    p.add_argument("--rows", type=int, default=None, help="a seeded sample of this many train rows")
    p.add_argument("--log-target", action="store_true")
    p.add_argument("--id-is-feature", action="store_true", help="keep the id column as a feature (a datetime id)")
    args = p.parse_args()

    start = time.perf_counter()
    labels = [c for c in args.label.split(",") if c]
    train = pd.read_csv(args.train)
    if args.rows and args.rows < len(train):
        train = train.sample(args.rows, random_state=0)
    test = pd.read_csv(args.test)
    ids = test[args.id]
    # what a user hands AutoGluon: the columns test.csv has (train-only columns cannot be features)
    features = [c for c in test.columns if c != args.id or args.id_is_feature]
    name, is_error = METRICS[args.metric]
    out, scores, models, presets_used = {args.id: ids}, [], [], []
    for label in labels:
        frame = train[[*features, label]].copy()
        if args.log_target:
            frame[label] = np.log1p(frame[label])
        budget = args.time_limit / len(labels)
        presets = "best_quality" if budget >= BEST_QUALITY_MIN_S else "medium_quality"
        label_start = time.perf_counter()
        try:
            predictor = fit(frame, label, name, budget, presets)
        except (AssertionError, RuntimeError, ValueError) as err:  # no model fit in time (text n-grams on long rows)
            left = budget - (time.perf_counter() - label_start)
            print(f"{presets} failed on {label} ({err}); medium_quality with the {left:.0f} s left", file=sys.stderr)
            presets = "medium_quality"
            predictor = fit(frame, label, name, max(left, 30.0), presets)
        best = predictor.leaderboard(silent=True).iloc[0]
        pred = predictor.predict(test[features]).to_numpy()
        presets_used.append(presets)
        out[label] = np.expm1(pred) if args.log_target else pred
        scores.append(float(best["score_val"]))
        models.append(str(best["model"]))
    pd.DataFrame(out).to_csv(args.out, index=False)
    score = float(np.mean(scores))
    print(json.dumps({"score": -score if is_error else score, "metric": args.metric, "model": ",".join(models),
                      "presets": ",".join(sorted(set(presets_used))),
                      "wall_s": time.perf_counter() - start}))


if __name__ == "__main__":
    try:
        main()
    finally:
        for folder in FOLDERS:
            shutil.rmtree(folder, ignore_errors=True)
