"""Two checks of a trained adapter fold: did it learn anything (not stuck at the majority class),
and do the adapters add to the members' blend (first fold only).

Why after the first fold: by then the members have their OOF predictions for every row, so the
fold's held-out rows can be blended with and without the adapters and scored nested (weights fit
on part of the rows, scored on the rest), which is what the final blend will see. Adapters that
add nothing there would take the rest of the run for weight 0; the run stops training them and
blends the members alone. Where the table has free text, the adapters keep their time: that is
where they lead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from lora_tasks.steps.plan import Plan
from lora_tasks.steps.prepare import Prepared
from lora_tasks.steps.targets import blend_metric, training_labels, tunes_label_cut
from lora_tasks.task import Task

log = logging.getLogger("lora_tasks.steps.train")

#: Sub-folds of the first fold's held-out rows for the nested blend score.
GAIN_FOLDS = 5
#: The least gain, in the metric's units, that counts as the adapters adding to the blend: a
#: selection that gives them a sliver of weight can move the score by a rounding error, which
#: would buy the later folds' whole time for nothing.
MIN_GAIN = 1e-4
#: The learning rate of a retried fold, as a multiple of the plan's: up when the fold learned
#: too slowly to leave the majority class, down when its training loss did not fall.
RETRY_LR_UP, RETRY_LR_DOWN = 3.0, 1.0 / 3.0


@dataclass(frozen=True)
class AdapterGain:
    """What the adapters add to the members' blend on the first fold's held-out rows."""

    keep_adapters: bool
    gain: float | None  # nested score with the adapters minus without, signed: positive adds
    with_adapters: float | None
    members_only: float | None
    metric: str
    reason: str


def adapters_gain(prepared: Prepared, plan: Plan, valid_idx: np.ndarray, valid_pred: np.ndarray,
                  member_oofs: Sequence[tuple[str, np.ndarray]]) -> AdapterGain:
    """The first fold's check: :func:`blend_gain` on its held-out rows ``valid_idx``; the later folds
    train only if the adapters add at least :data:`MIN_GAIN`. A table with free text keeps them."""
    if plan.has_text:
        return AdapterGain(True, None, None, None, blend_metric(prepared, plan),
                           "adapters keep the time: the table has free text")
    found = blend_gain(prepared, plan, valid_idx, valid_pred, member_oofs, f"fold 0's {len(valid_idx)} held-out rows")
    if found.gain is None:
        return replace(found, reason="adapters kept: no nested score to compare")
    reason = (f"adapters add: {found.reason}; the later folds train" if found.keep_adapters else
              f"adapters stop: {found.reason}; the later folds are not trained and the members blend alone")
    return replace(found, reason=reason)


def blend_gain(prepared: Prepared, plan: Plan, rows: np.ndarray, pred: np.ndarray,
               member_oofs: Sequence[tuple[str, np.ndarray]], where: str) -> AdapterGain:
    """Blend the members with and without the adapters' predictions ``pred`` on ``rows`` (Caruana
    selection, nested over :data:`GAIN_FOLDS` sub-folds of those rows): ``keep_adapters`` when they
    add at least :data:`MIN_GAIN`; the reason gives both nested scores (``where``: which rows)."""
    from lora_tasks.ensemble.blend import blend  # scikit-learn loads slowly
    from lora_tasks.metrics import get_metric
    from lora_tasks.training.cv import make_folds

    metric = blend_metric(prepared, plan)
    y = training_labels(prepared, plan)[rows]
    members = {name: oof[rows] for name, oof in member_oofs}
    sub = make_folds(y, prepared.head_type, min(GAIN_FOLDS, max(2, len(y) // 10)), plan.seed)
    tune = tunes_label_cut(prepared, plan)
    without = blend("caruana", members, None, y, metric, sub, seed=plan.seed, tune_threshold=tune).report
    both = blend("caruana", {**members, "lora": ravel_pred(pred)}, None, y, metric, sub, seed=plan.seed,
                 tune_threshold=tune).report
    if without.blend_cv_score is None or both.blend_cv_score is None:
        return AdapterGain(True, None, None, None, metric, "no nested score to compare")
    sign = 1.0 if get_metric(metric).greater_is_better else -1.0
    gain = sign * (both.blend_cv_score - without.blend_cv_score)
    scores = (f"nested {metric} of the blend on {where}: {both.blend_cv_score:.5f} with the adapters, "
              f"{without.blend_cv_score:.5f} without (gain {gain:+.5f})")
    return AdapterGain(gain >= MIN_GAIN, float(gain), float(both.blend_cv_score), float(without.blend_cv_score),
                       metric, scores)


def ravel_pred(pred: np.ndarray) -> np.ndarray:
    return pred[:, 0] if pred.ndim == 2 and pred.shape[1] == 1 else pred


def collapsed(task: Task, y_valid: np.ndarray, valid_pred: np.ndarray) -> str | None:
    """Why a classification fold failed, or None: every held-out row predicted as one class
    although the rows hold several (the fold ended at the majority class, or at another one)."""
    if task not in (Task.BINARY, Task.MULTICLASS):
        return None
    pred = ravel_pred(np.asarray(valid_pred, dtype=float))
    labels = (pred >= 0.5).astype(int) if pred.ndim == 1 else pred.argmax(axis=1)
    y_valid = np.asarray(y_valid)
    if len(np.unique(y_valid)) < 2 or len(np.unique(labels)) > 1:
        return None
    share = float(np.mean(y_valid == labels[0]))
    values, counts = np.unique(y_valid, return_counts=True)
    which = "the majority class" if int(labels[0]) == int(values[counts.argmax()]) else "a minority class"
    return (f"every one of its {len(labels)} held-out rows is predicted as class {int(labels[0])}, {which} "
            f"(accuracy {share:.3f}, the share of that class)")


def retry_learning_rate(learning_rate: float, history: Sequence[dict]) -> tuple[float, str]:
    """The learning rate of a collapsed fold's second try, and why: higher when the training loss
    fell (it learned, too slowly) or there was a single epoch, lower when it did not fall."""
    losses = [h["train_loss"] for h in history if np.isfinite(h.get("train_loss", np.nan))]
    if len(losses) >= 2 and losses[-1] >= losses[0]:
        return learning_rate * RETRY_LR_DOWN, "its training loss did not fall: a lower learning rate"
    return learning_rate * RETRY_LR_UP, "it learned too slowly to leave that class: a higher learning rate"


__all__ = ["AdapterGain", "adapters_gain", "blend_gain", "collapsed", "retry_learning_rate"]
