"""The text member: TF-IDF word 1-2-grams and a linear model, for tables whose free text is the
main input (tweets, reviews), on the same folds as every other member."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline

from lora_tasks.ensemble.folds import MemberPredictions, normalize_task, per_column, run_folds


def text_member(
    texts,
    y,
    folds: np.ndarray,
    task: str,
    texts_test=None,
    *,
    metric: str | None = None,
    C: float = 4.0,
    ridge_alpha: float = 1.0,
    max_features: int = 50_000,
    log_target: bool = False,
    seed: int = 0,
    name: str = "tfidf_linear",
) -> MemberPredictions:
    """TF-IDF word 1-2-grams + LogisticRegression (classification) or Ridge (regression).

    ``texts`` is a Series of strings or a DataFrame whose columns are joined as ``"col: value"``
    (so a keyword column stays distinguishable from the body text).
    """
    task = normalize_task(task)
    x = _as_text(texts)
    x_test = _as_text(texts_test) if texts_test is not None else None

    def make() -> BaseEstimator:
        vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=max_features)
        model = (Ridge(alpha=ridge_alpha) if task.is_regression
                 else LogisticRegression(C=C, max_iter=2000, random_state=seed))
        return make_pipeline(vec, per_column(model, task))

    return run_folds(lambda d: make().fit(d.train, d.y_train), x, y, folds, task, x_test, metric=metric,
                     log_target=log_target, name=name)


def _as_text(texts) -> np.ndarray:
    if isinstance(texts, pd.DataFrame):
        parts = [texts[c].fillna("").astype(str).radd(f"{c}: ") for c in texts.columns]
        joined = parts[0]
        for p in parts[1:]:
            joined = joined + " | " + p
        return joined.to_numpy()
    if isinstance(texts, pd.Series):
        return texts.fillna("").astype(str).to_numpy()
    return np.asarray([("" if t is None else str(t)) for t in texts], dtype=object)
