"""The pipeline as plain functions, one per step: files in, files out.

Why plain functions: every step must be usable from a notebook or a test without Prefect, and
the Prefect tasks (:mod:`lora_tasks.tasks`) stay one call each. Why files named by content hash
(``<kind>-<sha16>.<ext>``): large things (texts, tokens, adapters, predictions) travel between
steps, processes and machines as paths; a name that is a hash of the bytes can never point at
stale content, and two runs that produce the same bytes share one file.

Steps, in order (``run_pipeline`` chains them):

1. :func:`download_data` - Kaggle (or the fake server) -> data folder
2. :func:`prepare_data` - CSVs -> ``prepared-*.json`` (rows as text, labels, ids, format)
3. :func:`plan_training` - profile + auto-config -> ``plan-*.json`` (settings and why)
4. :func:`tokenize_data` - texts -> token ``.npz`` files (the token cache)
5. :func:`train_adapter` - one fold -> adapter ``.safetensors`` + OOF/test ``.npy``;
   :func:`train_baselines` - scikit-learn members on the same folds -> OOF/test ``.npy``
6. :func:`combine` - blend the adapters' fold ensemble with the baselines (weights fit on OOF),
   or one model from merged adapters
7. :func:`write_submission` - test predictions -> ``submission-*.csv`` in Kaggle's format
8. :func:`validate` / :func:`submit_file` / :func:`read_score` - Kaggle I/O
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from lora_tasks.data.competition import TRAINING_SETTINGS

log = logging.getLogger("lora_tasks.pipeline")

PIPELINE_VERSION = 1  # bump when a step's output format changes
DEMO_SLUG = "demo"
#: What a run may set over the auto-configuration and the competition's ``[training]`` recipe.
OVERRIDABLE = (*TRAINING_SETTINGS, "target_transform")
COMBINE_METHODS = ("blend", "merge")

# MLX keeps global state (RNG seed, compiled graphs): two trainings in one process at once
# would interfere. Threads (Prefect's thread runner) therefore train one at a time; processes
# (the process runner) train in parallel.
_MLX_LOCK = threading.RLock()


class PipelineError(RuntimeError):
    """A step cannot run with what it was given; the message names the fix."""


# ------------------------------------------------------------------------------------ files


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_tree(path: str | os.PathLike) -> str:
    """Content hash of a file, or of a folder (relative names and bytes of every file, sorted;
    hidden files such as download manifests skipped: they record dates, not content)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = item.relative_to(path)
        if any(part.startswith(".") for part in rel.parts):
            continue
        digest.update(str(rel).encode() + b"\0" + sha256_file(item).encode() + b"\0")
    return digest.hexdigest()


def _store(tmp: Path, out_dir: Path, kind: str, suffix: str) -> Path:
    """Rename a finished temp file to ``out_dir/<kind>-<sha16><suffix>`` (atomic)."""
    final = out_dir / f"{kind}-{sha256_file(tmp)[:16]}{suffix}"
    os.replace(tmp, final)
    return final


def _tmp_path(out_dir: Path, suffix: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=out_dir)
    os.close(fd)
    return Path(name)


def save_json(payload: Mapping[str, Any], out_dir: str | os.PathLike, kind: str) -> Path:
    """Write canonical JSON (sorted keys, so equal content gives an equal hash) by content hash."""
    tmp = _tmp_path(Path(out_dir), ".json")
    tmp.write_text(json.dumps(payload, sort_keys=True, indent=1, default=_json_default))
    return _store(tmp, Path(out_dir), kind, ".json")


def save_array(array: np.ndarray, out_dir: str | os.PathLike, kind: str) -> Path:
    """Write a ``.npy`` named by the hash of its bytes."""
    tmp = _tmp_path(Path(out_dir), ".npy")
    with open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
    return _store(tmp, Path(out_dir), kind, ".npy")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def load_json(path: str | os.PathLike) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


# ------------------------------------------------------------------------------ 1. download


def competition_slug(name: str, competitions_dir: str | os.PathLike | None = None) -> str:
    """The Kaggle slug of a config name or alias (``house-prices`` -> the long slug)."""
    from lora_tasks.data.competition import find_config_file, read_config_file

    path = find_config_file(name, Path(competitions_dir) if competitions_dir else None)
    return read_config_file(path).get("slug", name) if path else name


def download_data(
    competition: str,
    data_dir: str | os.PathLike,
    endpoint: str | None = None,
    *,
    timeout: float = 60.0,
) -> Path:
    """Download (or confirm up to date) ``competition`` into ``data_dir/<slug>``; return that folder.

    ``endpoint`` is a Kaggle-compatible server's base URL (the fake server); None is kaggle.com.
    """
    from lora_tasks.kaggle_io import KaggleClient, download_competition

    slug = competition_slug(competition)
    return download_competition(slug, data_dir, KaggleClient(endpoint, timeout=timeout))


# ------------------------------------------------------------------------------ 2. prepare


def _subset_rows(frame: pd.DataFrame, max_rows: int | None, seed: int) -> pd.DataFrame:
    if max_rows is None or len(frame) <= max_rows:
        return frame
    return frame.sample(n=int(max_rows), random_state=seed).sort_index()


def head_for(task_type: str) -> str:
    from lora_tasks.auto import head_type_for

    return head_type_for(task_type)


def prepare_data(
    competition: str,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    max_train_rows: int | None = None,
    seed: int = 0,
) -> Path:
    """Read the competition's CSVs and write ``prepared-*.json``: rows as text, labels, test ids
    and everything the later steps need to know about the competition (task, metric, classes,
    submission format, the sample submission's path).

    Labels: classification targets become class indices (``classes`` keeps the original
    values, in sorted order, so a submission writes them back); regression targets stay raw
    (the target transform is applied by training, chosen in :func:`plan_training`).
    ``max_train_rows`` keeps a seeded sample of the training rows (tests, quick looks).
    """
    from lora_tasks.data.competition import load_competition

    config = load_competition(competition, data_dir=data_dir)
    if config.task_type == "multilabel" or len(config.target_columns) != 1:
        raise PipelineError(
            f"{config.slug} has targets {list(config.target_columns)} ({config.task_type}); the pipeline "
            "handles one target (binary, multiclass or regression). Set `target_columns` to one column."
        )
    target = config.target_column
    train = _subset_rows(config.read_train(), max_train_rows, seed)
    train = train[train[target].notna()]
    test = config.read_test()
    template = config.row_template(train)
    y_raw = train[target]
    if config.task_type in ("binary", "multiclass"):
        classes = list(config.classes or sorted(y_raw.unique().tolist()))
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted(set(y_raw.unique().tolist()) - set(index), key=str)
        if unknown:
            raise PipelineError(f"Target values {unknown[:5]} are not among the classes {classes[:10]}.")
        y = [int(index[v]) for v in y_raw.tolist()]
    else:
        classes = None
        y = [float(v) for v in y_raw.astype(float).tolist()]
    payload = {
        "version": PIPELINE_VERSION,
        "slug": config.slug,
        "task_type": config.task_type,
        "head_type": head_for(config.task_type),
        "num_labels": len(classes) if config.task_type == "multiclass" else 1,
        "metric": config.metric,
        "classes": [_plain(c) for c in classes] if classes is not None else None,
        "id_column": config.id_column,
        "target_column": target,
        "submission": asdict(config.submission),
        "sample_submission": str(config.sample_submission_path),
        "template": template.fingerprint(),
        "n_train_rows_total": int(len(config.read_train())) if max_train_rows else int(len(train)),
        "train_rows": [int(i) for i in train.index],  # positions in train.csv (the baseline reads them)
        "train_texts": template.render_frame(train),
        "y": y,
        "test_texts": template.render_frame(test),
        "test_ids": [_plain(v) for v in test[config.id_column].tolist()],
    }
    return save_json(payload, out_dir, "prepared")


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


# ------------------------------------------------------------------------------ 3. plan


@dataclass
class Plan:
    """What will be trained and why: the settings, the profile it came from, the model."""

    slug: str
    settings: dict[str, Any]
    profile_markdown: str
    model: str  # model id/folder, or "tiny" for the tiny random model
    tiny: bool
    train_metric: str | None  # the metric on the training scale (None: the loss)
    seed: int = 0

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Plan":
        data = load_json(path)
        return cls(**{f.name: data[f.name] for f in fields(cls)})

    @property
    def n_folds(self) -> int:
        return int(self.settings["n_folds"])

    def trains_same_as(self, other: "Plan") -> bool:
        """Whether both plans train the same adapters (their ``reasons`` may differ: an explicit
        preset equal to the chosen one is recorded as an override)."""
        def what(p: "Plan") -> tuple:
            return p.slug, p.model, p.tiny, p.seed, {k: v for k, v in p.settings.items() if k != "reasons"}

        return what(self) == what(other)

    def settings_markdown(self) -> str:
        from lora_tasks.data.autoconfig import TrainSettings

        known = {f.name for f in fields(TrainSettings)}
        return TrainSettings(**{k: v for k, v in self.settings.items() if k in known}).to_markdown()


def _train_metric(metric: str, transform: str) -> str | None:
    """The validation metric in the space the model predicts in. Under log1p, RMSE of log
    values *is* RMSLE; other metrics would be wrong on the transformed scale, so use the loss."""
    if transform == "none":
        return metric
    return "rmse" if metric in ("rmsle", "rmse") else None


def plan_training(
    competition: str,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    model: str | None = None,
    tiny: bool = False,
    overrides: Mapping[str, Any] | None = None,
    max_train_rows: int | None = None,
    seed: int = 0,
) -> Path:
    """Profile the training table with the model's tokenizer, choose settings by the rule table,
    apply ``overrides`` (each recorded in ``reasons``) and write ``plan-*.json``.

    A QLoRA preset (chosen by the memory rule or asked for) trains over a 4-bit base; fewer
    than 2 folds becomes 2 (out-of-fold predictions need a held-out fold).
    """
    from lora_tasks.auto import model_shape
    from lora_tasks.data.autoconfig import apply_settings, auto_configure
    from lora_tasks.data.competition import load_competition
    from lora_tasks.data.profile import profile_competition
    from lora_tasks.data.tokenizer import Tokenizer

    config = load_competition(competition, data_dir=data_dir)
    tokenizer = Tokenizer.from_pretrained(None if tiny else model)
    train = _subset_rows(config.read_train(), max_train_rows, seed)
    profile = profile_competition(config, tokenizer=tokenizer, train=train)
    settings = auto_configure(profile, competition=config, **model_shape(model, tiny))
    unknown = sorted(set(overrides or {}) - set(OVERRIDABLE))
    if unknown:
        raise PipelineError(f"Cannot override {unknown}; overridable settings: {', '.join(OVERRIDABLE)}.")
    apply_settings(settings, overrides or {}, "override")
    if settings.n_folds < 2:
        settings.n_folds = settings.n_adapters = 2
        settings.reasons.append("min_two_folds: out-of-fold predictions need 2+ folds -> 2")
    plan = Plan(
        slug=config.slug,
        settings=settings.to_dict(),
        profile_markdown=profile.to_markdown(),
        model="tiny" if tiny else str(model or "minilm"),
        tiny=bool(tiny),
        train_metric=_train_metric(config.metric, settings.target_transform),
        seed=int(seed),
    )
    return save_json({"version": PIPELINE_VERSION, **asdict(plan)}, out_dir, "plan")


# ------------------------------------------------------------------------------ 4. tokenize


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
    from lora_tasks.data.token_cache import tokenize_cached
    from lora_tasks.data.tokenizer import Tokenizer

    prepared = load_json(prepared_path)
    plan = Plan.load(plan_path)
    tokenizer = Tokenizer.from_pretrained(None if plan.tiny else model)
    max_len = int(plan.settings["max_seq_len"])
    files = []
    for part in ("train_texts", "test_texts"):
        cached = tokenize_cached(prepared[part], tokenizer, max_len=max_len, cache_dir=cache_dir, template=prepared["template"])
        files.append(cached.path)
    return TokenFiles(train=files[0], test=files[1])


def load_dataset(tokens_path: str | os.PathLike, labels: Sequence | np.ndarray | None = None):
    """A :class:`lora_tasks.train.Dataset` from a token cache file."""
    from lora_tasks.train import Dataset

    with np.load(tokens_path) as data:
        ds = Dataset(data["input_ids"], data["attention_mask"], data["token_type_ids"])
    if labels is not None:
        ds.labels = np.asarray(labels)
        if len(ds.labels) != len(ds):
            raise PipelineError(f"{tokens_path} has {len(ds)} rows but there are {len(ds.labels)} labels.")
    return ds


# ------------------------------------------------------------------------------ 5. train


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

    def paths(self) -> list[Path]:
        return [self.adapter_path, self.oof_path, self.test_path]


def transform_target(y: np.ndarray, transform: str) -> np.ndarray:
    if transform == "log1p":
        if np.nanmin(y) <= -1:
            raise PipelineError("target_transform log1p needs targets > -1; use target_transform = 'none'.")
        return np.log1p(y)
    return y


def inverse_transform(pred: np.ndarray, transform: str) -> np.ndarray:
    return np.expm1(pred) if transform == "log1p" else pred


def fold_assignment(prepared: Mapping[str, Any], plan: Plan) -> np.ndarray:
    """Fold index of every train row (stratified for classification), identical in every step."""
    from lora_tasks.cv import make_folds

    return make_folds(np.asarray(prepared["y"]), prepared["head_type"], plan.n_folds, plan.seed)


def _train_config(plan: Plan, fold: int):
    from lora_tasks.train import TrainConfig

    s = plan.settings
    return TrainConfig(
        epochs=int(s["epochs"]),
        batch_size=int(s["batch_size"]),
        learning_rate=float(s["learning_rate"]),
        class_weights=s.get("class_weight"),
        metric=plan.train_metric,
        seed=plan.seed + fold,
    )


def _labels(prepared: Mapping[str, Any], plan: Plan) -> np.ndarray:
    if prepared["head_type"] == "regression":
        return transform_target(np.asarray(prepared["y"], dtype=np.float32), plan.settings["target_transform"]).astype(np.float32)
    return np.asarray(prepared["y"], dtype=np.int32)


def _ravel(pred: np.ndarray) -> np.ndarray:
    return pred[:, 0] if pred.ndim == 2 and pred.shape[1] == 1 else pred


def _from_prefix(net, data, test, cache_dir: Path):  # noqa: ANN001, ANN202 - MLX model and Datasets
    """With adapters on the top layers only: the model seen from its first adapted layer, and
    train/test datasets of the hidden states entering it, computed once and kept on disk under
    their content hash (every fold and every rerun on the same data reuses them). Encoders
    without a layer split (ModernBERT) train the whole stack, with the same top-only adapters."""
    if not hasattr(net, "hidden_before"):
        return net, data, test
    from lora_tasks.prefix_cache import prefix_dataset

    trainee, train_states = prefix_dataset(net, data, cache_dir=cache_dir)
    _, test_states = prefix_dataset(net, test, start=trainee.start, cache_dir=cache_dir)
    return trainee, train_states, test_states


def train_adapter(
    prepared_path: str | os.PathLike,
    plan_path: str | os.PathLike,
    tokens: TokenFiles,
    fold: int,
    out_dir: str | os.PathLike,
    *,
    model: str | None = None,
    progress: Callable[[Any], None] | None = None,
) -> AdapterResult:
    """Train the adapter of ``fold`` on the other folds; write the adapter file and its
    predictions for the held-out rows (OOF) and for the test rows.

    Checkpoints go to ``out_dir/checkpoints/<inputs hash>/``: a killed run, started again with
    the same inputs, resumes after the last finished epoch.
    """
    from lora_tasks.auto import build_model
    from lora_tasks.train import predict, train

    prepared = load_json(prepared_path)
    plan = Plan.load(plan_path)
    if not 0 <= fold < plan.n_folds:
        raise PipelineError(f"fold {fold} does not exist; the plan has {plan.n_folds} folds (0..{plan.n_folds - 1}).")
    out = Path(out_dir)
    folds = fold_assignment(prepared, plan)
    data = load_dataset(tokens.train, _labels(prepared, plan))
    test = load_dataset(tokens.test)
    train_idx, valid_idx = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
    run_key = hashlib.sha256(
        "\0".join([sha256_file(prepared_path), sha256_file(plan_path), sha256_file(tokens.train), str(fold), str(model)]).encode()
    ).hexdigest()[:16]
    cfg = _train_config(plan, fold)
    with _MLX_LOCK:
        net, adapter = build_model(
            prepared["head_type"], plan.settings["preset"], prepared["num_labels"],
            model=None if plan.tiny else model, tiny=plan.tiny, seed=plan.seed + fold, base_seed=plan.seed,
            top_layers=plan.settings.get("top_layers"),
        )
        trainee, data, test = _from_prefix(net, data, test, out / "prefix") if plan.settings.get("top_layers") else (net, data, test)
        net.train()
        result = train(
            trainee, data.subset(train_idx), data.subset(valid_idx), cfg,
            out / "checkpoints" / run_key, progress, name=f"fold {fold}",
        )
        valid_pred = _ravel(predict(trainee, data.subset(valid_idx), cfg.eval_batch_size))
        test_pred = _ravel(predict(trainee, test, cfg.eval_batch_size))
        tmp = _tmp_path(out, ".safetensors")
        adapter.save(tmp)
    adapter_path = _store(tmp, out, "adapter", ".safetensors")
    oof = np.full((len(data),) + valid_pred.shape[1:], np.nan, dtype=np.float32)
    oof[valid_idx] = valid_pred
    return AdapterResult(
        fold=fold,
        adapter_path=adapter_path,
        oof_path=save_array(oof, out, "oof"),
        test_path=save_array(test_pred.astype(np.float32), out, "test"),
        n_train=len(train_idx),
        n_valid=len(valid_idx),
        best_epoch=result.best_epoch,
        best_score=result.best_score,
        metric=result.metric,
        history=result.history,
        seconds=result.seconds,
        samples_per_s=result.samples_per_s,
    )


# ------------------------------------------------------------------------------ 5b. baseline


@dataclass
class BaselineResult:
    """A scikit-learn member trained on the adapters' folds; predictions on the model scale."""

    name: str
    oof_path: Path
    test_path: Path
    oof_score: float  # the competition metric
    metric: str
    seconds: float = 0.0
    dropped_columns: list[str] = field(default_factory=list)

    def paths(self) -> list[Path]:
        return [self.oof_path, self.test_path]


def train_baselines(
    competition: str,
    data_dir: str | os.PathLike,
    prepared_path: str | os.PathLike,
    plan_path: str | os.PathLike,
    out_dir: str | os.PathLike,
) -> list[BaselineResult]:
    """Fit the scikit-learn members that suit the table (:func:`lora_tasks.sklearn_members.table_members`:
    HistGradientBoosting and a regularized linear model, or TF-IDF + a linear model for text)
    on the same rows and folds as the adapters, on the same target scale, so :func:`combine`
    can blend them with the adapters row by row."""
    import time

    from lora_tasks.data.competition import load_competition
    from lora_tasks.sklearn_members import table_members

    start = time.perf_counter()
    prepared = load_json(prepared_path)
    plan = Plan.load(plan_path)
    config = load_competition(competition, data_dir=data_dir)
    train = config.read_train()
    rows = prepared.get("train_rows")
    if rows is None or max(rows, default=-1) >= len(train):
        raise PipelineError(f"{prepared_path} does not match {config.train_path}; run prepare_data on this data again.")
    train = train.iloc[rows].reset_index(drop=True)
    text_columns = config.row_template(train).text_columns
    members = table_members(
        train, _labels(prepared, plan), fold_assignment(prepared, plan), prepared["head_type"], config.read_test(),
        text_columns=tuple(text_columns), exclude=config.excluded_columns, seed=plan.seed,
    )
    seconds = (time.perf_counter() - start) / len(members)
    out = Path(out_dir)
    return [
        BaselineResult(
            name=member.name,
            oof_path=save_array(np.asarray(member.oof, dtype=np.float32), out, f"oof-{member.name}"),
            test_path=save_array(np.asarray(member.test, dtype=np.float32), out, f"test-{member.name}"),
            oof_score=score_predictions(member.oof, prepared, plan),
            metric=prepared["metric"],
            seconds=seconds,
            dropped_columns=list(member.dropped_columns),
        )
        for member in members
    ]


# ------------------------------------------------------------------------------ 6. combine

#: How the adapters' fold ensemble and the baselines are blended (lora_tasks.ensemble.METHODS).
DEFAULT_BLEND_METHOD = "caruana"
ADAPTERS_MEMBER = "lora"


#: What an adapter set may set for itself (``PRESET@MODEL:epochs=2,lr=1e-3``) -> the short name
#: its member name carries (``lora_balanced_all-mpnet-base-v2_e2``). The folds are the main set's.
SET_SETTINGS: dict[str, str] = {"epochs": "e", "learning_rate": "lr", "max_seq_len": "t", "batch_size": "b",
                                "top_layers": "top"}
_SET_ALIASES = {"lr": "learning_rate", "seq_len": "max_seq_len"}
_SET_SPEC = "PRESET[@MODEL][:KEY=VALUE,...]"


@dataclass(frozen=True)
class AdapterSet:
    """Another set of fold adapters on the same folds, blended as a member of its own: a second
    preset and/or encoder beside the main one (diversity adapters; on the tweets, MiniLM
    ``balanced`` + ``expressive`` + MPNet ``balanced`` + TF-IDF blend to 0.804 F1 against 0.798
    for one set). Written ``PRESET``, ``PRESET@MODEL`` (a model id or folder), each optionally
    followed by ``:KEY=VALUE,...`` with keys from :data:`SET_SETTINGS` (a base-size encoder
    often wants fewer epochs than MiniLM: ``balanced@all-mpnet-base-v2:epochs=2``;
    ``top_layers=all`` adapts every layer). Unset keys follow the main set."""

    preset: str
    model: str | None = None
    settings: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def parse(cls, spec: "str | AdapterSet") -> "AdapterSet":
        if isinstance(spec, AdapterSet):
            return spec
        from lora_tasks.lora.config import PRESETS

        text = str(spec).strip()
        head, colon, tail = text.rpartition(":")
        if not colon or "=" not in tail:  # no settings (a folder may itself hold a colon)
            head, tail = text, ""
        preset, at, model = head.partition("@")
        preset, model = preset.strip(), model.strip()
        if preset not in PRESETS or (at and not model):
            raise PipelineError(f"Adapter set {spec!r}: write {_SET_SPEC}, with PRESET one of "
                                f"{', '.join(PRESETS)} (e.g. 'expressive' or 'balanced@all-mpnet-base-v2:epochs=2').")
        return cls(preset, model or None, _parse_set_settings(spec, tail))

    @property
    def member(self) -> str:
        """Its name in the blend: ``lora_<preset>[_<model name>][_<setting><value>...]``."""
        name = f"{ADAPTERS_MEMBER}_{self.preset}" + (f"_{Path(self.model).name}" if self.model else "")
        return name + "".join(f"_{SET_SETTINGS[k]}{'all' if v is None else v}" for k, v in self.settings)


def _parse_set_settings(spec: object, text: str) -> tuple[tuple[str, Any], ...]:
    """``epochs=2,lr=1e-3`` -> ``(("epochs", 2), ("learning_rate", 0.001))`` in :data:`SET_SETTINGS` order."""
    out: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, eq, value = (x.strip() for x in item.partition("="))
        key = _SET_ALIASES.get(key, key)
        if not eq or key not in SET_SETTINGS or key in out:
            why = "is given twice" if key in out else "is not KEY=VALUE with KEY one of " + ", ".join(SET_SETTINGS)
            raise PipelineError(f"Adapter set {spec!r}: {item!r} {why} (lr and seq_len also work; the folds are "
                                f"always the main set's).")
        try:
            if key == "top_layers" and value.lower() == "all":
                out[key] = None
            else:
                out[key] = float(value) if key == "learning_rate" else int(value)
                if out[key] <= 0:
                    raise ValueError
        except ValueError:
            kind = "a positive number" if key == "learning_rate" else "a positive integer" + (
                " or 'all'" if key == "top_layers" else "")
            raise PipelineError(f"Adapter set {spec!r}: {key} = {value!r} must be {kind}.") from None
    return tuple((k, out[k]) for k in SET_SETTINGS if k in out)


def parse_adapter_sets(specs: Sequence["str | AdapterSet"] | None) -> list[AdapterSet]:
    """``PRESET[@MODEL][:KEY=VALUE,...]`` strings -> :class:`AdapterSet`; two sets may not share a member name."""
    sets = [AdapterSet.parse(s) for s in specs or ()]
    names = [s.member for s in sets]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PipelineError(f"Adapter sets {dupes} are given twice; each set needs its own preset, model or settings.")
    return sets


def recipe_adapter_sets(competition: str, data_dir: str | os.PathLike | None) -> list[AdapterSet]:
    """The adapter sets of the competition's ``[training]`` recipe (none without one); a bad spec
    names the config file."""
    from lora_tasks.data.competition import load_competition

    config = load_competition(competition, data_dir=data_dir)
    try:
        return parse_adapter_sets(config.training.get("adapter_sets", ()))
    except PipelineError as exc:
        raise PipelineError(f"{config.config_path}: [training] adapter_sets: {exc}") from None


def adapter_set_overrides(overrides: Mapping[str, Any], adapter_set: AdapterSet, n_folds: int) -> dict[str, Any]:
    """The main plan's overrides with the set's preset and settings, on the main plan's folds (the
    blend fits its weights on out-of-fold rows, so every member must hold out the same rows).
    ``top_layers=all`` drops the main set's top_layers (no override: LoRA on every layer)."""
    out = {**overrides, "preset": adapter_set.preset, "n_folds": n_folds, **dict(adapter_set.settings)}
    return {k: v for k, v in out.items() if v is not None}


def check_adapter_set(main_plan: str | os.PathLike, set_plan: str | os.PathLike, adapter_set: AdapterSet) -> None:
    """Refuse a set that would train exactly what the main set trains (same model, settings and
    seed): a copy of the main member adds nothing to the blend but its training time."""
    a, b = Plan.load(main_plan), Plan.load(set_plan)
    if a.trains_same_as(b):
        raise PipelineError(
            f"Adapter set {adapter_set.member!r} trains exactly what the main set trains ({b.model}, preset "
            f"{b.settings['preset']!r}, {b.settings['epochs']} epochs, lr {b.settings['learning_rate']}); give it "
            f"another preset, model or settings (e.g. {adapter_set.preset}@MODEL or :epochs=N), or drop it.")


@dataclass
class CombineResult:
    """Test predictions of the ensemble (model scale), the assembled OOF and its score.

    ``weights``: each member's share of the blend (``lora`` is the mean of the fold adapters;
    with ``merge``, or without baselines, it has weight 1). ``member_scores``: each member's
    OOF score under the competition metric. ``blend_cv_score``: the blending procedure itself
    fit on the other folds and scored on each held-out fold, so optimistic weights show.
    ``threshold``: the cut of P(class 1) fit on the OOF rows (``[submission] threshold = "auto"``
    with F1), which ``oof_score`` and the submission use; None when the configured cut holds.
    """

    method: str
    test_path: Path
    oof_path: Path
    oof_score: float
    metric: str
    weights: dict[str, float]
    fold_scores: list[float]
    member_scores: dict[str, float] = field(default_factory=dict)
    blend_method: str | None = None
    blend_cv_score: float | None = None
    threshold: float | None = None


def label_threshold(prepared: Mapping[str, Any], threshold: float | None = None) -> float:
    """The cut of P(class 1) for labels: ``threshold`` when one was tuned, else the configured one."""
    from lora_tasks.thresholds import fixed_threshold

    return fixed_threshold(prepared["submission"]["threshold"]) if threshold is None else float(threshold)


def to_metric_scale(pred: np.ndarray, prepared: Mapping[str, Any], plan: Plan,
                    threshold: float | None = None) -> np.ndarray:
    """Model outputs -> what the competition metric wants (labels, probabilities or values)."""
    from lora_tasks.metrics import get_metric, to_labels

    values = inverse_transform(pred, plan.settings["target_transform"])
    needs = get_metric(prepared["metric"]).needs
    if prepared["head_type"] == "regression" or needs != "labels":
        return values
    return to_labels(values, label_threshold(prepared, threshold))


def score_predictions(pred: np.ndarray, prepared: Mapping[str, Any], plan: Plan,
                      threshold: float | None = None) -> float:
    """The competition metric of model-scale predictions against the prepared labels."""
    from lora_tasks.metrics import get_metric

    y = np.asarray(prepared["y"])
    return float(get_metric(prepared["metric"])(y, to_metric_scale(pred, prepared, plan, threshold)))


def tunes_label_cut(prepared: Mapping[str, Any], plan: Plan) -> bool:
    """Whether combine fits the label cut on OOF rows (see :mod:`lora_tasks.thresholds`)."""
    from lora_tasks.thresholds import tunes_threshold

    binary = prepared["head_type"] == "binary_classification" and plan.settings["target_transform"] == "none"
    return tunes_threshold(prepared["submission"]["threshold"], prepared["metric"], binary)


def blend_metric(prepared: Mapping[str, Any], plan: Plan) -> str:
    """The metric blend weights are fit for, on the model scale: the competition metric, or
    under a target transform the training metric (RMSE of log1p values is RMSLE), else RMSE."""
    if plan.settings["target_transform"] == "none":
        return prepared["metric"]
    return plan.train_metric or "rmse"


def _fold_ensemble(results: Sequence[AdapterResult]) -> tuple[np.ndarray, list[AdapterResult]]:
    """Every train row's prediction by the fold adapter that did not see it."""
    ordered = sorted(results, key=lambda r: r.fold)
    oof = None
    for r in ordered:
        part = np.load(r.oof_path)
        oof = part if oof is None else np.where(np.isnan(part), oof, part)
    if np.isnan(oof).any():
        missing = int(np.isnan(oof).reshape(len(oof), -1).any(axis=1).sum())
        raise PipelineError(f"{missing} train rows have no out-of-fold prediction; pass the results of every fold.")
    return oof, ordered


def combine(
    prepared_path: str | os.PathLike,
    plan_path: str | os.PathLike,
    results: Sequence[AdapterResult],
    out_dir: str | os.PathLike,
    *,
    method: str = "blend",
    tokens: TokenFiles | None = None,
    model: str | None = None,
    baselines: Sequence[BaselineResult] = (),
    blend_method: str = DEFAULT_BLEND_METHOD,
    adapter_sets: Mapping[str, Sequence[AdapterResult]] | None = None,
) -> CombineResult:
    """Combine the fold adapters (and, with ``blend``, the baselines) into test predictions.

    The fold adapters form one member, ``lora``: each train row is predicted by the adapter
    that held it out, each test row by the mean of all folds (fold models are equals: each saw
    (K-1)/K of the rows, so there is nothing to weigh between them). ``blend`` then blends that
    member with the ``baselines`` by ``blend_method`` (:func:`lora_tasks.ensemble.blend`, fit on
    OOF rows only). ``merge``: average the adapters' weight updates (and heads) into one plain
    model and predict the test rows once (one forward pass at inference instead of K; needs
    ``tokens``); baselines do not enter a merged model. With ``[submission] threshold = "auto"``
    and F1, the cut of the combined P(class 1) is fit on the OOF rows (``CombineResult.threshold``).
    ``adapter_sets``: more fold-adapter sets on the same folds (:class:`AdapterSet`), by member
    name; each is a member like ``lora`` (its folds' OOF rows, the mean of its folds on test).
    """
    adapter_sets = dict(adapter_sets or {})
    if method not in COMBINE_METHODS:
        raise PipelineError(f"combine method {method!r}; use one of {', '.join(COMBINE_METHODS)}.")
    if not results:
        raise PipelineError("No adapters to combine; train at least one fold.")
    if method == "merge" and baselines:
        raise PipelineError("combine(method='merge') builds one model from the adapters; baselines only blend. "
                            "Drop the baselines or use method='blend'.")
    if method == "merge" and adapter_sets:
        raise PipelineError("combine(method='merge') merges one set of adapters; adapter sets of other presets or "
                            "encoders only blend. Drop the adapter sets or use method='blend'.")
    prepared = load_json(prepared_path)
    plan = Plan.load(plan_path)
    oof, ordered = _fold_ensemble(results)
    fold_weights = [1.0 / len(ordered)] * len(ordered)
    scores = {ADAPTERS_MEMBER: score_predictions(oof, prepared, plan)}
    weights, used_blend, cv_score, cut = {ADAPTERS_MEMBER: 1.0}, None, None, None
    tune = tunes_label_cut(prepared, plan)
    if method == "merge":
        if tokens is None:
            raise PipelineError("combine(method='merge') predicts the test rows again; pass tokens=TokenFiles(...).")
        test = merged_predict(prepared, plan, [r.adapter_path for r in ordered], fold_weights, tokens.test, model=model)
    else:
        test = sum(w * np.load(r.test_path) for w, r in zip(fold_weights, ordered))
    if baselines or adapter_sets:
        from lora_tasks.ensemble import blend

        members_oof, members_test = {ADAPTERS_MEMBER: oof}, {ADAPTERS_MEMBER: test}
        for name, set_results in adapter_sets.items():
            if name in members_oof:
                raise PipelineError(f"Two members are named {name!r}; give each adapter set its own name.")
            members_oof[name], set_ordered = _fold_ensemble(set_results)
            members_test[name] = np.mean([np.load(r.test_path) for r in set_ordered], axis=0)
            scores[name] = score_predictions(members_oof[name], prepared, plan)
        for b in baselines:
            if b.name in members_oof:
                raise PipelineError(f"Two members are named {b.name!r}; give each baseline its own name.")
            members_oof[b.name], members_test[b.name] = np.load(b.oof_path), np.load(b.test_path)
            scores[b.name] = float(b.oof_score)
        blended = blend(blend_method, members_oof, members_test, _labels(prepared, plan), blend_metric(prepared, plan),
                        fold_assignment(prepared, plan), seed=plan.seed, tune_threshold=tune)
        oof, test, weights = blended.oof_pred, blended.test_pred, blended.weights
        used_blend, cv_score, cut = blend_method, blended.report.blend_cv_score, blended.threshold
    elif tune:
        from lora_tasks.thresholds import best_threshold, nested_threshold_score

        y, folds = _labels(prepared, plan), fold_assignment(prepared, plan)
        cut = best_threshold(prepared["metric"], y, oof)
        cv_score = nested_threshold_score(prepared["metric"], y, oof, folds)
    out = Path(out_dir)
    return CombineResult(
        method=method,
        test_path=save_array(np.asarray(test, dtype=np.float32), out, f"ensemble-{method}"),
        oof_path=save_array(np.asarray(oof, dtype=np.float32), out, "oof-all"),
        oof_score=score_predictions(oof, prepared, plan, cut),
        metric=prepared["metric"],
        weights={k: float(v) for k, v in weights.items()},
        fold_scores=[float(r.best_score) if r.best_score is not None else float("nan") for r in ordered],
        member_scores=scores,
        blend_method=used_blend,
        blend_cv_score=cv_score,
        threshold=cut,
    )


def merged_predict(
    prepared: Mapping[str, Any],
    plan: Plan,
    adapter_paths: Sequence[Path],
    weights: Sequence[float],
    test_tokens: str | os.PathLike,
    *,
    model: str | None = None,
) -> np.ndarray:
    """Fuse each adapter into its layers' weights, average the fused weights (and the heads)
    with ``weights``, put plain ``nn.Linear`` layers with those weights into the model and
    predict: one model whose every layer is the ensemble's mean layer."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten, tree_unflatten

    from lora_tasks.auto import build_model
    from lora_tasks.train import predict

    with _MLX_LOCK:
        net, adapter = build_model(
            prepared["head_type"], plan.settings["preset"], prepared["num_labels"],
            model=None if plan.tiny else model, tiny=plan.tiny, seed=plan.seed,
            top_layers=plan.settings.get("top_layers"),
        )
        sums: dict[str, mx.array] = {}
        head_sums: dict[str, mx.array] = {}
        for w, path in zip(weights, adapter_paths):
            adapter.load(path)
            for name, layer in adapter.layers.items():
                fused = layer.fuse().weight * w
                sums[name] = fused if name not in sums else sums[name] + fused
            for key, value in tree_flatten(net.head.parameters()):
                head_sums[key] = value * w if key not in head_sums else head_sums[key] + value * w
        modules = dict(net.named_modules())
        for name, layer in adapter.layers.items():
            plain = nn.Linear(*reversed(sums[name].shape), bias="bias" in layer.linear)
            plain.weight = sums[name]
            if "bias" in layer.linear:
                plain.bias = layer.linear.bias
            parent_name, _, child = name.rpartition(".")
            parent = modules[parent_name]
            if isinstance(parent, list):
                parent[int(child)] = plain
            else:
                parent[child] = plain
        net.head.update(tree_unflatten(list(head_sums.items())))
        net.eval()
        return _ravel(predict(net, load_dataset(test_tokens)))


# ------------------------------------------------------------------------------ 7. submission


def submission_frame(test_pred: np.ndarray, prepared: Mapping[str, Any], plan: Plan,
                     threshold: float | None = None) -> pd.DataFrame:
    """Test predictions (model scale) -> the submission table in the competition's format:
    inverse target transform, probabilities or labels (cut at ``threshold``, the tuned one from
    :func:`combine`, else the configured one; original class values), the id column and the
    declared dtype."""
    from lora_tasks.metrics import to_labels

    fmt = prepared["submission"]
    columns = list(fmt["columns"]) or [prepared["id_column"], prepared["target_column"]]
    id_col = prepared["id_column"]
    values = inverse_transform(np.asarray(test_pred, dtype=np.float64), plan.settings["target_transform"])
    frame = pd.DataFrame({id_col: prepared["test_ids"]})
    value_cols = [c for c in columns if c != id_col]
    classes = prepared["classes"]
    if fmt["prediction"] == "values":
        frame[value_cols[0]] = values
    elif fmt["prediction"] == "probabilities":
        if values.ndim == 1:
            frame[value_cols[0]] = values
        else:
            if len(value_cols) != values.shape[1]:
                raise PipelineError(
                    f"{values.shape[1]} class probabilities but submission columns {value_cols}; set "
                    "[submission] columns to the id and one column per class."
                )
            for j, col in enumerate(value_cols):
                frame[col] = values[:, j]
    else:
        labels = to_labels(values, label_threshold(prepared, threshold))
        frame[value_cols[0]] = [classes[int(i)] for i in labels] if classes else labels
    dtype = fmt["dtype"]
    for col in value_cols:
        if dtype == "int":
            frame[col] = np.round(frame[col].astype(float)).astype("int64")
        elif dtype == "float":
            frame[col] = frame[col].astype(float)
        else:
            frame[col] = frame[col].astype(str)
    return frame[[id_col, *value_cols]] if columns[0] == id_col else frame[columns]


def write_submission(
    prepared_path: str | os.PathLike,
    plan_path: str | os.PathLike,
    test_pred_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    threshold: float | None = None,
) -> Path:
    """Write ``submission-*.csv`` from the ensemble's test predictions (see :func:`submission_frame`;
    ``threshold``: :attr:`CombineResult.threshold`)."""
    prepared = load_json(prepared_path)
    frame = submission_frame(np.load(test_pred_path), prepared, Plan.load(plan_path), threshold)
    tmp = _tmp_path(Path(out_dir), ".csv")
    frame.to_csv(tmp, index=False, lineterminator="\n", float_format="%.8g")
    return _store(tmp, Path(out_dir), "submission", ".csv")


# ------------------------------------------------------------------------------ 8. Kaggle


def validate(submission_path: str | os.PathLike, prepared_path: str | os.PathLike):
    """Check the file against the sample submission before anything is uploaded."""
    from lora_tasks.kaggle_io import validate_submission

    prepared = load_json(prepared_path)
    fmt = prepared["submission"]
    value_cols = [c for c in fmt["columns"] if c != prepared["id_column"]]
    return validate_submission(
        submission_path, prepared["sample_submission"], id_column=prepared["id_column"],
        dtypes={c: fmt["dtype"] for c in value_cols},
    )


def submission_run_id(run_key: str, submission_path: str | os.PathLike) -> str:
    """A run id that is the same on every retry of one flow run and differs between files:
    ``<run key>-<sha12 of the file>`` (kaggle_io.submit submits at most once per run id)."""
    key = "".join(ch for ch in str(run_key) if ch.isalnum() or ch in "-_.")[:40] or "local"
    return f"{key}-{sha256_file(submission_path)[:12]}"


def submit_file(
    competition: str,
    submission_path: str | os.PathLike,
    message: str,
    run_id: str,
    state_dir: str | os.PathLike,
    endpoint: str | None = None,
):
    """Submit once per ``run_id`` (see :func:`lora_tasks.kaggle_io.submit`)."""
    from lora_tasks.kaggle_io import KaggleClient, submit

    slug = competition_slug(competition)
    return submit(slug, submission_path, message, run_id, state_dir, KaggleClient(endpoint))


def submit_run(
    competition: str,
    submission_path: str | os.PathLike,
    message: str,
    run_key: str,
    state_dir: str | os.PathLike,
    endpoint: str | None = None,
):
    """Submit under the run id :func:`submission_run_id` derives from ``run_key`` and the file:
    retries of one run reuse it (never a second submission), another file or run gets a new one."""
    run_id = submission_run_id(run_key, submission_path)
    return submit_file(competition, submission_path, message, run_id, state_dir, endpoint)


def read_score(
    competition: str,
    ref: int,
    endpoint: str | None = None,
    *,
    timeout_s: float = 900.0,
    poll_s: float = 10.0,
):
    """Wait (bounded) for Kaggle to score submission ``ref``; returns it with ``public_score``."""
    from lora_tasks.kaggle_io import KaggleClient, wait_for_score

    return wait_for_score(competition_slug(competition), ref, KaggleClient(endpoint), timeout_s=timeout_s, poll_s=poll_s)


@contextlib.contextmanager
def offline_kaggle(work_dir: str | os.PathLike) -> Iterator[str]:
    """Serve the offline ``demo`` competition from an in-process fake Kaggle server; yield its URL.

    Why here: a fresh machine without an account must run the whole flow (download, submit,
    score) through the real client. The fake server accepts only its own token, so for the
    duration the process's Kaggle credentials are the fake ones (``KAGGLE_API_TOKEN`` wins over
    every other source, so a real token is never sent to it); the previous values are restored.
    """
    from lora_tasks.testing.demo import build_demo_competition
    from lora_tasks.testing.fake_kaggle import DEFAULT_TOKEN, serve

    served = Path(work_dir) / "fake-kaggle"
    build_demo_competition(served)
    saved = os.environ.get("KAGGLE_API_TOKEN")
    os.environ["KAGGLE_API_TOKEN"] = DEFAULT_TOKEN
    try:
        with serve(served, pending_polls=1) as server:
            log.info("Offline demo: fake Kaggle server at %s", server.url)
            yield server.url
    finally:
        if saved is None:
            os.environ.pop("KAGGLE_API_TOKEN", None)
        else:
            os.environ["KAGGLE_API_TOKEN"] = saved


# ------------------------------------------------------------------------------ run it all


@dataclass
class PipelineResult:
    """Everything a run produced, by path, plus the scores."""

    data_dir: Path
    prepared_path: Path
    plan_path: Path
    tokens: TokenFiles
    adapters: list[AdapterResult]
    combined: CombineResult
    submission_path: Path
    submission: Any = None  # kaggle_io.SubmissionResult when submitted
    public_score: float | None = None


def given_overrides(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """The settings a caller actually gave (None: not given; the competition's ``[training]``
    recipe and the auto-configuration decide)."""
    return {k: v for k, v in (overrides or {}).items() if v is not None}


def plan_adapter_sets(competition: str, folder: str | os.PathLike, artifacts: str | os.PathLike,
                      main_plan: str | os.PathLike, sets: Sequence[AdapterSet], *, model: str | None = None,
                      tiny: bool = False, overrides: Mapping[str, Any] | None = None,
                      max_train_rows: int | None = None) -> dict[AdapterSet, Path]:
    """The plan of every extra adapter set, on the main plan's folds, each checked against the main
    set (before any training, so a refused set costs nothing)."""
    n_folds = Plan.load(main_plan).n_folds
    plans = {}
    for s in sets:
        plans[s] = plan_training(competition, folder, artifacts, model=s.model or model, tiny=tiny,
                                 max_train_rows=max_train_rows,
                                 overrides=adapter_set_overrides(given_overrides(overrides), s, n_folds))
        check_adapter_set(main_plan, plans[s], s)
    return plans


def plan_run(
    competition: str,
    work_dir: str | os.PathLike = ".kaggle-lora",
    *,
    data_dir: str | os.PathLike | None = None,
    endpoint: str | None = None,
    model: str | None = None,
    tiny: bool = False,
    overrides: Mapping[str, Any] | None = None,
    max_train_rows: int | None = None,
    adapter_sets: Sequence[str | AdapterSet] | None = None,
) -> dict[str, Path]:
    """What a run would train, without training: download, profile, configure and plan the main
    set and every adapter set (the recipe's when ``adapter_sets`` is None). Returns
    ``{member name: plan file}``, the main set first (``lora``). The same plan files a run then
    uses, so the run after a look costs no extra profiling."""
    work = Path(work_dir)
    folder = download_data(competition, Path(data_dir) if data_dir is not None else work / "data", endpoint)
    sets = parse_adapter_sets(adapter_sets) if adapter_sets is not None else recipe_adapter_sets(competition, folder)
    artifacts = work / "artifacts"
    chosen = given_overrides(overrides)
    plan = plan_training(competition, folder, artifacts, model=model, tiny=tiny, overrides=chosen,
                         max_train_rows=max_train_rows)
    extra = plan_adapter_sets(competition, folder, artifacts, plan, sets, model=model, tiny=tiny, overrides=chosen,
                              max_train_rows=max_train_rows)
    return {ADAPTERS_MEMBER: plan, **{s.member: path for s, path in extra.items()}}


def run_pipeline(
    competition: str,
    work_dir: str | os.PathLike = ".kaggle-lora",
    *,
    data_dir: str | os.PathLike | None = None,
    endpoint: str | None = None,
    download: bool = True,
    model: str | None = None,
    tiny: bool = False,
    overrides: Mapping[str, Any] | None = None,
    combine_method: str = "blend",
    baseline: bool = True,
    blend_method: str = DEFAULT_BLEND_METHOD,
    max_train_rows: int | None = None,
    submit: bool = False,
    message: str = "kaggle-lora",
    run_key: str = "local",
    progress: Callable[[Any], None] | None = None,
    adapter_sets: Sequence[str | AdapterSet] | None = None,
) -> PipelineResult:
    """Every step in order, without Prefect: what the ``kaggle-lora`` flow does, in one process.

    ``work_dir`` holds ``data/`` (downloads, unless ``data_dir`` is given), ``artifacts/`` (the
    content-addressed files) and ``tokens/`` (the token cache). ``baseline``: blend a
    scikit-learn member trained on the same folds (only with ``combine_method="blend"``).
    ``adapter_sets``: more adapter sets (``"expressive"``, ``"balanced@all-mpnet-base-v2:epochs=2"``),
    each trained on the same folds and blended as its own member; None: the competition's
    ``[training] adapter_sets`` (left out with ``combine_method="merge"``: sets only blend).
    """
    sets = parse_adapter_sets(adapter_sets)
    if sets and combine_method != "blend":
        raise PipelineError("Adapter sets blend as members of their own; they need combine_method='blend'.")
    work = Path(work_dir)
    data_root = Path(data_dir) if data_dir is not None else work / "data"
    folder = download_data(competition, data_root, endpoint) if download else data_root
    if adapter_sets is None and combine_method == "blend":
        sets = recipe_adapter_sets(competition, folder)
    artifacts = work / "artifacts"
    prepared = prepare_data(competition, folder, artifacts, max_train_rows=max_train_rows)
    chosen = given_overrides(overrides)
    plan = plan_training(competition, folder, artifacts, model=model, tiny=tiny, overrides=chosen,
                         max_train_rows=max_train_rows)
    n_folds = Plan.load(plan).n_folds

    def train_set(set_model: str | None, set_plan: Path) -> tuple[TokenFiles, list[AdapterResult]]:
        set_tokens = tokenize_data(prepared, set_plan, work / "tokens", model=set_model)
        return set_tokens, [train_adapter(prepared, set_plan, set_tokens, k, artifacts, model=set_model,
                                          progress=progress) for k in range(n_folds)]

    set_plans = plan_adapter_sets(competition, folder, artifacts, plan, sets, model=model, tiny=tiny,
                                  overrides=chosen, max_train_rows=max_train_rows)
    tokens, results = train_set(model, plan)
    extra = {s.member: train_set(s.model or model, set_plan)[1] for s, set_plan in set_plans.items()}
    baselines = train_baselines(competition, folder, prepared, plan, artifacts) if baseline and combine_method == "blend" else []
    combined = combine(prepared, plan, results, artifacts, method=combine_method, tokens=tokens, model=model,
                       baselines=baselines, blend_method=blend_method, adapter_sets=extra)
    submission_path = write_submission(prepared, plan, combined.test_path, artifacts, combined.threshold)
    validate(submission_path, prepared)
    out = PipelineResult(folder, prepared, plan, tokens, results, combined, submission_path)
    if submit:
        out.submission = submit_file(
            competition, submission_path, message, submission_run_id(run_key, submission_path), work / "state", endpoint
        )
        scored = read_score(competition, out.submission.ref, endpoint, poll_s=2.0)
        out.public_score = scored.public_score
    return out
