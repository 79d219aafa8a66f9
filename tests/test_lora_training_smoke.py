"""A LoRA model on the real MiniLM learns a trivially separable toy task in 15 steps."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

from lora_tasks.data.tokenizer import Tokenizer
from lora_tasks.training.factory import create_bert_with_lora

POSITIVE = [
    "I love this movie", "What a wonderful day", "The food was great", "She is very happy",
    "This is excellent work", "A delightful and fun story", "Best purchase ever", "I really enjoyed it",
]
NEGATIVE = [
    "I hate this movie", "What a terrible day", "The food was awful", "She is very sad",
    "This is horrible work", "A boring and dull story", "Worst purchase ever", "I really disliked it",
]


def test_lora_minilm_learns_a_toy_sentiment_task():
    mx.random.seed(0)
    model, adapter = create_bert_with_lora("binary_classification", "balanced", seed=0)
    tok = Tokenizer.from_pretrained(None)
    enc = tok(POSITIVE + NEGATIVE, max_length=16)
    ids, mask = mx.array(enc.input_ids), mx.array(enc.attention_mask)
    labels = mx.array([1] * len(POSITIVE) + [0] * len(NEGATIVE))

    def loss_fn(x, m, y):
        return model.loss(model(x, m), y)

    loss_and_grad = nn.value_and_grad(model, loss_fn)
    # bias_correction: MLX's default (False) makes early Adam steps ~3x lr with long momentum,
    # which overshoots once the loss is near zero and makes the loss spike
    opt = optim.AdamW(learning_rate=2e-3, weight_decay=0.0, bias_correction=True)
    model.train()
    losses = []
    for _ in range(15):
        loss, grads = loss_and_grad(ids, mask, labels)
        opt.update(model, grads)
        mx.eval(model.trainable_parameters(), opt.state, loss)
        losses.append(loss.item())
    model.eval()
    pred = np.array(model(ids, mask)) > 0
    accuracy = float((pred == np.array(labels).astype(bool)).mean())

    assert losses[-1] < 0.5 * losses[0], losses
    assert accuracy == 1.0
    # only the adapters and head moved: the base weights are frozen
    assert adapter.parameter_report().percentage < 5.0
