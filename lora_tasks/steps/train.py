"""Steps 4-5: tokenize the rows once, train one fold's adapter, and the scikit-learn members on
the same folds. Predictions go to content-addressed ``.npy`` files on the model's scale."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from lora_tasks.budget import Deadline, EpochBudget
from lora_tasks.budget.fold import FoldKeeper, MembersCheck
from lora_tasks.data.source import CompetitionSource
from lora_tasks.data.token_cache import tokenize_cached
from lora_tasks.data.tokenizer import Tokenizer
from lora_tasks.hashing import sha256_bytes, sha256_file
from lora_tasks.lifecycle import StopCheck
from lora_tasks.steps.adapter_checks import AdapterGain, adapters_gain, collapsed, retry_learning_rate
from lora_tasks.steps.plan import Plan
from lora_tasks.steps.prepare import Prepared
from lora_tasks.steps.spec import competition_spec
from lora_tasks.steps.store import PipelineError, save_array, store_file, temp_path
from lora_tasks.steps.targets import ROUND_SEED_STEP, fold_assignment, score_predictions, training_labels

# MLX keeps global state (RNG seed, compiled graphs): two trainings in one process at once
# would interfere. Threads (Prefect's thread runner) therefore train one at a time; processes
# (the process runner) train in parallel.
MLX_LOCK = threading.RLock()
log = logging.getLogger("lora_tasks.steps.train")


@dataclass(frozen=True)
class TokenFiles:
    """The token cache files of the train and test rows."""

    train: Path
    test: Path


def tokenize_data(
    prepared_path: str | os.PathLike,
    plan_path: str | os.PathLike,
    cache_dir: str | os.PathLike,
    *,
    model: str | None = None,
) -> TokenFiles:
    """Tokenize train and test texts once (truncated to the plan's ``max_seq_len``) into the
    token cache; a second call with the same texts, tokenizer and length loads the files."""
    prepared = Prepared.load(prepared_path)
    plan = Plan.load(plan_path)
    tokenizer = Tokenizer.from_pretrained(None if plan.tiny else model)
    max_len = int(plan.settings.max_seq_len)
    files = [tokenize_cached(texts, tokenizer, max_len=max_len, cache_dir=cache_dir, template=prepared.template).path
             for texts in (prepared.train_texts, prepared.test_texts)]
    return TokenFiles(train=files[0], test=files[1])


def load_dataset(tokens_path: str | os.PathLike, labels: Sequence | np.ndarray | None = None):
    """A :class:`lora_tasks.training.train.Dataset` from a token cache file."""
    from lora_tasks.training.train import Dataset  # loads MLX: only when a model runs

    with np.load(tokens_path) as data:
        ds = Dataset(data["input_ids"], data["attention_mask"], data["token_type_ids"])
    if labels is not None:
        ds.labels = np.asarray(labels)
        if len(ds.labels) != len(ds):
            raise PipelineError(f"{tokens_path} has {len(ds)} rows but there are {len(ds.labels)} labels.")
    return ds


@dataclass
class AdapterResult:
    """One trained fold: its files and its record. Paths are content-addressed."""

    fold: int
    adapter_path: Path
    oof_path: Path  # train-length array, NaN outside this fold's validation rows
    test_path: Path
    n_train: int
    n_valid: int
    best_epoch: int
    best_score: float | None
    metric: str
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    samples_per_s: float = 0.0
    stopped_for_time: bool = False  # the time budget cut this fold's epochs
    budget_reasons: list[str] = field(default_factory=list)  # the time budget's decisions for this fold
    later_epochs: int | None = None  # the members decision (first fold): epochs of every later fold
    #: the first fold's check of what the adapters add to the members' blend; ``keep_adapters``
    #: False: the later folds are not trained and the members blend alone
    gain: AdapterGain | None = None
    #: why the fold is a failed fold (it ended at the majority class, and so did its retry); None: it learned
    failed: str | None = None
    retried: str | None = None  # why and with which learning rate the fold was trained a second time
    seeds: int = 1  # the seeds its predictions are the mean of (steps.adapter_rounds)

    @property
    def keep_adapters(self) -> bool:
        """Whether the later folds are worth training: not after a failed fold (the adapters'
        member leaves the blend anyway) or a first fold that added nothing to the members' blend."""
        return not self.failed and (self.gain is None or self.gain.keep_adapters)

    def paths(self) -> list[Path]:
        return [self.adapter_path, self.oof_path, self.test_path]


def ravel(pred: np.ndarray) -> np.ndarray:
    """One-output predictions as a vector; class probabilities stay a matrix."""
    return pred[:, 0] if pred.ndim == 2 and pred.shape[1] == 1 else pred


#: A later seed's fold stops after the epoch that would end past the limit less this share of it (the
#: blend and the submission): its seeds were counted to end by 85% of the limit, this guards the rest.
SEED_TAIL_SHARE = 0.05


def _train_config(plan: Plan, seed: int):
    from lora_tasks.training.train import TrainConfig  # loads MLX: only when a model runs

    s = plan.settings
    return TrainConfig(epochs=int(s.epochs), batch_size=int(s.batch_size), learning_rate=float(s.learning_rate),
                       class_weights=s.class_weight, metric=plan.train_metric, seed=seed)


def _from_prefix(net, data, test, cache_dir: Path):
    """With adapters on the top layers only: the model seen from its first adapted layer, and
    train/test datasets of the hidden states entering it, computed once and kept on disk under
    their content hash (every fold and every rerun on the same data reuses them). Encoders
    without a layer split (ModernBERT) train the whole stack, with the same top-only adapters."""
    if not hasattr(net, "hidden_before"):
        return net, data, test
    from lora_tasks.training.prefix_cache import prefix_dataset  # loads MLX

    trainee, train_states = prefix_dataset(net, data, cache_dir=cache_dir)
    _, test_states = prefix_dataset(net, test, start=trainee.start, cache_dir=cache_dir)
    return trainee, train_states, test_states


def epoch_budget(plan: Plan, run_start: float | None) -> EpochBudget | None:
    """The run-time keeper of the plan's time limit, from the run's wall-clock start
    (``time.time()``, the same in every worker process); None without a planned budget."""
    if run_start is None or plan.time_limit_s is None or not plan.epoch_s:
        return None
    return EpochBudget(Deadline(float(plan.time_limit_s), float(run_start)), plan.n_folds, int(plan.settings.epochs),
                       float(plan.epoch_s), float(plan.predict_s or 0.0), float(plan.reserve_s or 0.0))


def members_decide(plan: Plan, members: Sequence[MemberResult], epochs: int | None = None) -> bool:
    """Whether the first fold compares the adapters with ``members`` and so decides the later
    folds (their epochs, or whether they train at all): with members and two folds or more, unless
    the table has free text (the adapters keep their time) and the early-epoch comparison does not
    apply. A runner that trains folds at once waits for fold 0 only then."""
    return bool(members) and plan.n_folds >= 2 and (not plan.has_text or _epochs_decide(plan, members, epochs))


def _epochs_decide(plan: Plan, members: Sequence[MemberResult], epochs: int | None = None) -> bool:
    """Whether fold 0's early epochs are compared with the members (decides the later folds'
    epochs): not with one epoch (``epochs``, default the plan's) or the loss as metric."""
    epochs = int(plan.settings.epochs) if epochs is None else epochs
    return bool(members) and epochs >= 2 and plan.train_metric is not None and plan.n_folds >= 2


def _members_check(plan: Plan, prepared: Prepared, members: Sequence[MemberResult], valid_idx: np.ndarray,
                   epochs: int) -> MembersCheck | None:
    """The best member's score on this fold's held-out rows, on the adapters' validation metric;
    None when :func:`members_decide` says there is nothing to compare."""
    if not _epochs_decide(plan, members, epochs):
        return None
    from lora_tasks.metrics import get_metric  # imports scikit-learn (seconds)

    metric = get_metric(plan.train_metric)
    y = training_labels(prepared, plan)[valid_idx]
    scores = [float(metric(y, np.load(m.oof_path)[valid_idx])) for m in members]
    scores = [s for s in scores if np.isfinite(s)]
    if not scores:
        return None
    best = max(scores) if metric.greater_is_better else min(scores)
    return MembersCheck(best, metric.greater_is_better, plan.train_metric, min(2, epochs - 1), epochs,
                        keeps_epochs=plan.has_text)


def train_adapter(
    prepared_path: str | os.PathLike,
    plan_path: str | os.PathLike,
    tokens: TokenFiles,
    fold: int,
    out_dir: str | os.PathLike,
    *,
    model: str | None = None,
    progress: Callable[[Any], None] | None = None,
    run_start: float | None = None,
    members: Sequence[MemberResult] = (),
    epochs: int | None = None,
    refresh: bool = False,
    round: int = 0,
) -> AdapterResult:
    """Train the adapter of ``fold`` on the other folds; write the adapter file and its
    predictions for the held-out rows (OOF) and for the test rows.

    ``run_start`` (the run's ``time.time()``) with a plan that has a time limit: the fold's
    epochs are decided before it starts and after each epoch (:class:`~lora_tasks.budget.EpochBudget`),
    so a run that falls behind cuts epochs; the fold keeps its best epoch either way.
    ``members`` (the scikit-learn members, already fitted on the same folds): after this fold's
    early epochs its validation score is compared with theirs on the same rows, and the result's
    ``later_epochs`` says how many epochs the later folds deserve (pass it as their ``epochs``).

    Checkpoints go to ``out_dir/checkpoints/<inputs hash>/``: a killed run, started again with
    the same inputs, resumes after the last finished epoch. ``round`` > 0: the fold again with another
    seed (:mod:`lora_tasks.steps.adapter_rounds` averages the rounds), on the same held-out rows; its
    time budget takes it for the run's last fold (:data:`SEED_TAIL_SHARE`). ``refresh`` deletes that fold's
    checkpoints first (``--refresh``: the way out of a corrupt checkpoint). A stop signal
    (:mod:`lora_tasks.lifecycle`) ends the fold after its current step, its checkpoints kept.
    """
    # the model factory and the training engine load MLX: only when a model runs
    from lora_tasks.training.factory import build_model
    from lora_tasks.training.train import predict, train

    prepared = Prepared.load(prepared_path)
    plan = Plan.load(plan_path)
    if not 0 <= fold < plan.n_folds:
        raise PipelineError(f"fold {fold} does not exist; the plan has {plan.n_folds} folds (0..{plan.n_folds - 1}).")
    out = Path(out_dir)
    folds = fold_assignment(prepared, plan)
    data = load_dataset(tokens.train, training_labels(prepared, plan))
    test = load_dataset(tokens.test)
    train_idx, valid_idx = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
    run_key = sha256_bytes("\0".join([sha256_file(prepared_path), sha256_file(plan_path), sha256_file(tokens.train),
                                      str(fold), str(model), *([f"round{round}"] if round else [])]).encode())[:16]
    seed = plan.seed + fold + ROUND_SEED_STEP * round
    name = f"fold {fold}" + (f", seed {round + 1}" if round else "")
    cfg = _train_config(plan, seed)
    budget = epoch_budget(plan, run_start)
    if round and budget is not None:  # a later seed: the run's last fold, ending by the limit less the blend's tail
        budget = replace(budget, n_folds=fold + 1, reserve_s=SEED_TAIL_SHARE * budget.deadline.limit_s)
    if epochs is not None:  # a members decision of the first fold, or a later seed's first
        cfg.epochs = max(1, min(cfg.epochs, int(epochs)))
        budget = budget.with_epochs(cfg.epochs) if budget is not None else None
    keeper = FoldKeeper(fold, budget, _members_check(plan, prepared, members, valid_idx, cfg.epochs))
    checkpoint_dir = out / "checkpoints" / run_key
    if refresh:
        _drop_checkpoints(checkpoint_dir, fold)
    progress = StopCheck(progress, name=name)
    top_layers = plan.settings.top_layers
    y_valid = np.asarray(data.labels)[valid_idx]

    def attempt(cfg, checkpoint_dir: Path):
        net, adapter = build_model(
            prepared.head_type, plan.settings.preset, prepared.num_labels,
            model=None if plan.tiny else model, tiny=plan.tiny, seed=seed, base_seed=plan.seed,
            top_layers=top_layers, compute_dtype=plan.settings.compute_dtype,
        )
        trainee, train_data, test_data = (_from_prefix(net, data, test, out / "prefix") if top_layers
                                          else (net, data, test))
        net.train()
        result = train(trainee, train_data.subset(train_idx), train_data.subset(valid_idx), cfg,
                       checkpoint_dir, keeper.progress(progress), name=name,
                       should_stop=keeper.should_stop)
        valid_pred = ravel(predict(trainee, train_data.subset(valid_idx), cfg.eval_batch_size))
        test_pred = ravel(predict(trainee, test_data, cfg.eval_batch_size))
        return result, valid_pred, test_pred, adapter

    with MLX_LOCK:
        cfg.epochs = keeper.epochs(cfg.epochs)  # decided here: a thread may have waited for the lock
        result, valid_pred, test_pred, adapter = attempt(cfg, checkpoint_dir)
        failed, retried = collapsed(prepared.task, y_valid, valid_pred), None
        if failed:  # a failed fold: once more with another learning rate, from the start
            lr, why = retry_learning_rate(cfg.learning_rate, result.history)
            retried = f"{name} ended at one class ({failed}); {why}: trained again at {lr:.2e}"
            log.warning("%s", retried)
            cfg = replace(cfg, learning_rate=lr)
            result, valid_pred, test_pred, adapter = attempt(cfg, checkpoint_dir / f"retry-{lr:.2e}")
            failed = collapsed(prepared.task, y_valid, valid_pred)
            if failed:
                failed = (f"{name} ended at one class twice ({failed}); the fold is dropped, and with it "
                          "the adapters' member (every row needs an out-of-fold prediction)")
                log.warning("%s", failed)
        tmp = temp_path(out, ".safetensors")
        adapter.save(tmp)
    gain = None
    if members and fold == 0 and members_decide(plan, members) and not failed:
        gain = adapters_gain(prepared, plan, valid_idx, valid_pred, [(m.name, np.load(m.oof_path)) for m in members])
        log.info("fold 0: %s", gain.reason)
        keeper.reasons.append(f"fold 0: {gain.reason}")
    adapter_path = store_file(tmp, out, "adapter", ".safetensors")
    oof = np.full((len(data),) + valid_pred.shape[1:], np.nan, dtype=np.float32)
    oof[valid_idx] = valid_pred
    return AdapterResult(
        fold=fold, adapter_path=adapter_path,
        oof_path=save_array(oof, out, "oof"),
        test_path=save_array(test_pred.astype(np.float32), out, "test"),
        n_train=len(train_idx), n_valid=len(valid_idx),
        best_epoch=result.best_epoch, best_score=result.best_score, metric=result.metric,
        history=result.history, seconds=result.seconds, samples_per_s=result.samples_per_s,
        stopped_for_time=result.stopped_for_time, budget_reasons=keeper.reasons, later_epochs=keeper.later_epochs,
        gain=gain, failed=failed or None, retried=retried,
    )


def _drop_checkpoints(checkpoint_dir: Path, fold: int) -> None:
    """Delete a fold's checkpoint files (refresh: train from the start, even past a corrupt one)."""
    found = sorted(checkpoint_dir.rglob("*.safetensors")) if checkpoint_dir.is_dir() else []  # retries too
    for path in found:
        path.unlink(missing_ok=True)
    if found:
        log.info("fold %d: --refresh: deleted %d checkpoint file(s) in %s; training from the start",
                 fold, len(found), checkpoint_dir)


@dataclass
class MemberResult:
    """A scikit-learn member's out-of-fold and test predictions, on the model scale."""

    name: str
    oof_path: Path
    test_path: Path
    oof_score: float  # the competition metric
    metric: str
    seconds: float = 0.0
    dropped_columns: list[str] = field(default_factory=list)
    rounds: int = 1  # the rounds on new fold splits averaged into these predictions (steps.member_rounds)

    def paths(self) -> list[Path]:
        return [self.oof_path, self.test_path]


def round_tag(round: int) -> str:
    """The file-name tag of a members round (none for the first)."""
    return f"-r{round}" if round else ""


def train_members(
    competition: str | CompetitionSource,
    data_dir: str | os.PathLike,
    prepared_path: str | os.PathLike,
    plan_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    round: int = 0,
) -> list[MemberResult]:
    """Fit the scikit-learn members that suit the table (:func:`lora_tasks.ensemble.members.table_members`:
    HistGradientBoosting and a regularized linear model, or TF-IDF + a linear model for text)
    on the same rows as the adapters and on the same target scale, so the combine step can blend
    them with the adapters row by row; on the plan's member folds (the adapters' own unless the
    budget cut those). The table members train on the plan's generated features
    (:mod:`lora_tasks.features`), target encodings fit inside their folds. ``round`` > 0: another
    round on a new split and seed (:mod:`lora_tasks.steps.member_rounds` averages the rounds)."""
    from lora_tasks.ensemble.members import (
        table_members,  # scikit-learn's estimators load slowly
    )
    from lora_tasks.features import build_features

    start = time.perf_counter()
    prepared = Prepared.load(prepared_path)
    plan = Plan.load(plan_path)
    config = competition_spec(competition, data_dir)
    train = config.read_train()
    rows = prepared.train_rows
    if max(rows, default=-1) >= len(train):
        raise PipelineError(f"{prepared_path} does not match {config.train_path}; run prepare_data on this data again.")
    train = train.iloc[rows].reset_index(drop=True)
    text_columns = config.row_template(train).text_columns
    test = config.read_test()
    # the features step: the plan's generated columns, built once before the members' folds
    generated = build_features(plan.features, train, test) if plan.features and plan.features.features else None
    members = table_members(
        train, training_labels(prepared, plan), fold_assignment(prepared, plan, members=True, round=round),
        prepared.task, test,
        text_columns=tuple(text_columns), exclude=config.excluded_columns, seed=plan.seed + round, generated=generated,
        class_weight=plan.settings.class_weight, only=plan.members,
    )
    shared = (time.perf_counter() - start - sum(m.seconds for m in members)) / max(len(members), 1)
    out = Path(out_dir)
    return [
        MemberResult(
            name=member.name,
            oof_path=save_array(np.asarray(member.oof, dtype=np.float32), out, f"oof-{member.name}{round_tag(round)}"),
            test_path=save_array(np.asarray(member.test, dtype=np.float32), out, f"test-{member.name}{round_tag(round)}"),
            oof_score=score_predictions(member.oof, prepared, plan),
            metric=prepared.metric,
            seconds=member.seconds + max(shared, 0.0),
            dropped_columns=list(member.dropped_columns),
        )
        for member in members
    ]
