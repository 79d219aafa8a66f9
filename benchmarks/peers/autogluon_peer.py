"""AutoGluon peer of ``time_to_submission.py``, run in its own Python (AutoGluon pins its own
scikit-learn): what a tabular user would pick instead, at its strongest preset, within the same
time limit.

    python autogluon_peer.py --train train.csv --test test.csv --label Survived --id PassengerId
        --metric accuracy --time-limit 300 --out submission.csv [--rows N] [--log-target]

Prints one JSON line: ``{"score": ..., "metric": ..., "model": ..., "wall_s": ...}``. ``score`` is
AutoGluon's own validation score of its best model, which with ``best_quality`` (bagged folds,
stacking) is out-of-fold over the training rows, in the metric's natural sign. ``--log-target``
fits log1p of the label with RMSE (= RMSLE of the label, house prices' metric).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import pandas as pd
from autogluon.tabular import TabularPredictor

#: AutoGluon's name of each competition metric (``--metric``), and whether it is an error.
METRICS = {"accuracy": ("accuracy", False), "f1": ("f1", False), "rmsle": ("root_mean_squared_error", True),
           "rmse": ("root_mean_squared_error", True), "roc_auc": ("roc_auc", False)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--train", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--label", required=True)
    p.add_argument("--id", required=True)
    p.add_argument("--metric", required=True, choices=sorted(METRICS))
    p.add_argument("--time-limit", type=float, required=True, help="seconds, for the whole fit")
    p.add_argument("--out", required=True, help="submission CSV to write")
    p.add_argument("--rows", type=int, default=None, help="a seeded sample of this many train rows")
    p.add_argument("--log-target", action="store_true")
    args = p.parse_args()

    start = time.perf_counter()
    train = pd.read_csv(args.train)
    if args.rows and args.rows < len(train):
        train = train.sample(args.rows, random_state=0)
    test = pd.read_csv(args.test)
    ids = test[args.id]
    train = train.drop(columns=[args.id])
    test = test.drop(columns=[args.id])
    if args.log_target:
        train[args.label] = np.log1p(train[args.label])
    name, is_error = METRICS[args.metric]
    with tempfile.TemporaryDirectory() as tmp:
        predictor = TabularPredictor(label=args.label, eval_metric=name, path=tmp, verbosity=1)
        predictor.fit(train, time_limit=args.time_limit, presets="best_quality")
        board = predictor.leaderboard(silent=True)
        best = board.iloc[0]
        pred = predictor.predict(test)
    values = np.expm1(pred.to_numpy()) if args.log_target else pred.to_numpy()
    pd.DataFrame({args.id: ids, args.label: values}).to_csv(args.out, index=False)
    score = float(best["score_val"])
    print(json.dumps({"score": -score if is_error else score, "metric": args.metric, "model": str(best["model"]),
                      "wall_s": time.perf_counter() - start}))


if __name__ == "__main__":
    main()
