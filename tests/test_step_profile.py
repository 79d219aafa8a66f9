"""The train step's profile adds up: its parts, each timed with the model's own modules, sum to the
measured step (a ratio, never a wall time), in fp32 and with a bf16 base; and the bound is tight enough
that a part counted twice falls outside it."""

from __future__ import annotations

import functools

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest

from lora_tasks.models import BertConfig
from lora_tasks.training.factory import create_bert_with_lora
from lora_tasks.training.step_profile import StepProfile, median_time, profile_step

PARTS = {"embeddings", "linear GEMMs (Q,K,V,O,FFN)", "LoRA branches", "attention (QK^T, softmax, dropout, PV)", "GELU",
         "dropout + residual add + layer norm (x2)", "gradient sums of arrays read twice or more", "head and loss",
         "optimizer update (AdamW)"}
LOW, HIGH = 0.8, 1.25  # the parts' sum over the step


def _model_and_step(dtype: str):
    # small, but with GEMMs large enough to be most of the step (as on real models), so that counting
    # them twice is visible
    cfg = BertConfig(vocab_size=200, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512,
                     max_position_embeddings=64)
    model = create_bert_with_lora("binary_classification", "balanced", config=cfg, pretrained=False, dropout=0.0,
                                  seed=0, compute_dtype=dtype)[0]
    model.train()
    opt = optim.AdamW(learning_rate=1e-4)
    loss_and_grad = nn.value_and_grad(model, lambda m, i, k, y: m.loss(m(i, k), y))

    def step(i, k, y):
        loss, grads = loss_and_grad(model, i, k, y)
        opt.update(model, grads)
        return loss

    state = [model.state, opt.state, mx.random.state]
    return model, mx.compile(step, inputs=state, outputs=state), state


@functools.cache
def _profiles(dtype: str) -> tuple[StepProfile, ...]:
    """Profiles of the tiny model's step, up to five, stopping at the first whose parts add up."""
    model, step, state = _model_and_step(dtype)
    rng = np.random.default_rng(0)
    ids = mx.array(rng.integers(5, 200, (16, 32)).astype(np.int32))
    mask, y = mx.ones((16, 32), dtype=mx.int32), mx.array(np.arange(16) % 2)
    profiles = []
    # the cores are shared: the fastest of several runs on both sides, and up to five tries, so that a
    # neighbour's burst does not decide; a profile that double counts (or misses a part) is off every time
    for _ in range(5):
        step_s = median_time(lambda: (step(ids, mask, y), state), 9, best=True)
        profiles.append(profile_step(model, ids, mask, y, step_s, repeats=9, best=True))
        if LOW <= profiles[-1].ratio <= HIGH:
            break
    return tuple(profiles)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_profile_parts_add_up_to_the_step(dtype):
    profiles = _profiles(dtype)
    prof = profiles[-1]
    assert {p.name for p in prof.parts} == PARTS and all(p.seconds > 0 for p in prof.parts)
    assert prof.unaccounted_s == pytest.approx(prof.step_s - prof.parts_s)
    assert LOW <= prof.ratio <= HIGH, f"the parts sum to {[round(p.ratio, 2) for p in profiles]} x the step"


def test_a_part_counted_twice_falls_outside_the_bound():
    """The bound is only worth something if double counting breaks it: the largest part (the linear
    GEMMs) counted twice adds its share of the step to the sum, and that share must carry a profile
    that adds up exactly (1.0) past the bound. Why not the measured profile itself: on shared cores it
    may sit near the low end of the bound, and then the sum with a part counted twice can land inside
    it, which says nothing about the bound."""
    prof = _profiles("float32")[-1]
    largest = max(prof.parts, key=lambda p: p.seconds)
    doubled = StepProfile(prof.step_s, (*prof.parts, largest))
    share = largest.seconds / prof.step_s
    assert largest.name == "linear GEMMs (Q,K,V,O,FFN)"
    assert doubled.ratio == pytest.approx(prof.ratio + share)
    assert not LOW <= 1.0 + share <= HIGH, f"{largest.name} is {share:.2f} of the step: counted twice in a profile " \
                                           "that adds up, it still sums inside the bound"
