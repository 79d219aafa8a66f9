"""The real MiniLM learns a real competition: rows as text -> tokens -> LoRA training -> metric.

Marked slow (about a minute on 2 cores); it still runs in the default test command.
"""

from __future__ import annotations

import numpy as np
import pytest

from lora_tasks.data.competition import load_competition
from lora_tasks.data.tokenizer import Tokenizer
from lora_tasks.metrics import get_metric
from lora_tasks.training.factory import create_bert_with_lora
from lora_tasks.training.train import Dataset, TrainConfig, predict, train


@pytest.mark.slow
def test_minilm_lora_beats_the_majority_class_on_disaster_tweets(shared_datasets):
    cfg = load_competition("nlp-getting-started", data_dir=shared_datasets / "nlp-getting-started")
    frame = cfg.read_train().sample(n=360, random_state=0).reset_index(drop=True)
    texts = cfg.row_template(frame).render_frame(frame)
    assert frame["text"][0] in texts[0]  # free text passes through
    y = frame[cfg.target_column].to_numpy().astype(np.int32)
    enc = Tokenizer.from_pretrained(None)(texts, max_length=48)
    data = Dataset.from_encoded(enc, y)
    train_idx, valid_idx = np.arange(280), np.arange(280, 360)
    model, adapter = create_bert_with_lora("binary_classification", "balanced", seed=0)
    assert adapter.parameter_report().percentage < 1.0
    res = train(model, data.subset(train_idx), data.subset(valid_idx),
                TrainConfig(epochs=4, batch_size=16, learning_rate=3e-3, metric="accuracy", early_stopping_patience=None))
    acc = get_metric("accuracy")(y[valid_idx], predict(model, data.subset(valid_idx)))
    majority = max(y[valid_idx].mean(), 1 - y[valid_idx].mean())
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert acc == pytest.approx(res.best_score)
    assert acc >= majority + 0.1, (acc, majority)
