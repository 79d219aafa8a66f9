"""Quality: K-fold CV of LoRA adapters (one per fold; each competition's ``[training]`` recipe
over the auto-selected settings, as the flow trains them) on the real shared competitions,
beside scikit-learn anchors on the same folds, with wall time.

    python benchmarks/adapters_cv.py [--competitions titanic,house-prices,nlp-getting-started]
        [--folds 5] [--rows N] [--epochs E] [--top-layers L|all] [--dropout P] [--max-len T] [--model ID]
        [--name NAME] [--also SETTINGS_KEY,...]

Each competition gives: each scikit-learn member's OOF score (the first is the issue's anchor),
the LoRA adapters' OOF score, and Caruana blends (the flow's default combine) of the scikit-learn
members alone and with the adapters, scored nested out-of-fold. The adapters' OOF predictions
are kept under ``.kaggle-lora/bench-cache/oof`` by their settings: a rerun re-blends only.

``--top-layers L`` adapts only the top L encoder layers and trains from the frozen-prefix cache
(the lower layers run once for all folds and epochs); ``all`` adapts every layer whatever the
recipe says. ``--rows`` subsamples train rows for a
quick run. Anchors: HistGradientBoosting with ordinal encoding (tabular), TF-IDF with logistic or
ridge regression (text), from :mod:`lora_tasks.ensemble.members`. ``--also`` adds the kept OOF
predictions of other adapter settings (file stems under the cache, same rows and folds) as more
members of the blends: a diversity ensemble of adapters trained with different settings.

Every fold checkpoints each epoch under ``.kaggle-lora/bench-cache/ckpt/<settings>``: a run that is
stopped (a base-size encoder on every layer takes hours on two cores) resumes where it was on the
next call with the same arguments; the checkpoints are removed once the OOF predictions are kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import time
from pathlib import Path

import numpy as np
from _common import row, write_results

import lora_tasks
from lora_tasks.data.autoconfig import auto_configure
from lora_tasks.data.competition import load_competition
from lora_tasks.data.profile import profile_competition
from lora_tasks.data.token_cache import tokenize_cached
from lora_tasks.data.tokenizer import Tokenizer
from lora_tasks.ensemble.blend import blend
from lora_tasks.ensemble.thresholds import nested_threshold_score, tunes_threshold
from lora_tasks.hub import resolve_model_dir
from lora_tasks.metrics import get_metric
from lora_tasks.models.encoder import read_model_config
from lora_tasks.progress import LogProgress
from lora_tasks.training.cv import cross_validate, make_folds
from lora_tasks.training.factory import create_bert_with_lora
from lora_tasks.training.precision import compute_dtype_choice
from lora_tasks.training.train import Dataset, TrainConfig

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
CACHE = Path(__file__).resolve().parents[1] / ".kaggle-lora" / "bench-cache"
HEADS = {"binary": "binary_classification", "multiclass": "multiclass_classification", "regression": "regression"}
SLUGS = {"house-prices": "house-prices-advanced-regression-techniques"}


def run_competition(name: str, args: argparse.Namespace, tok: Tokenizer) -> list[dict]:
    slug = SLUGS.get(name, name)
    cfg = load_competition(slug, data_dir=DATASETS / slug)
    train_df = cfg.read_train()
    if args.rows and args.rows < len(train_df):
        train_df = train_df.sample(n=args.rows, random_state=0).reset_index(drop=True)
    profile = profile_competition(cfg, tokenizer=tok, train=train_df)
    settings = auto_configure(profile, competition=cfg)
    epochs = args.epochs or settings.epochs
    # the competition's [training] recipe unless given; "all" (0 below) adapts every layer
    top = 0 if args.top_layers == "all" else int(args.top_layers or settings.top_layers or 0)
    max_len = args.max_len or settings.max_seq_len
    metric = get_metric(cfg.metric)
    y_raw = train_df[cfg.target_column].to_numpy()
    log1p = cfg.submission.target_transform == "log1p"
    y = np.log1p(y_raw).astype(np.float32) if log1p else y_raw
    head = HEADS[cfg.task_type]
    folds = make_folds(y, head, args.folds, seed=0)
    print(f"\n== {slug}: {len(train_df)} rows, {cfg.task_type}, metric {cfg.metric}; settings (after the "
          f"options): preset {args.preset or settings.preset}, max_len {max_len}, batch {settings.batch_size}, "
          f"epochs {epochs}, lr {args.lr or settings.learning_rate}, top layers {top or 'all'}")

    def score(pred: np.ndarray) -> float:
        return float(metric(y_raw, np.expm1(pred) if log1p else pred))

    rows: list[dict] = []
    anchor_score = None
    from lora_tasks.ensemble import members as sklearn_members

    t = time.perf_counter()
    # the flow's scikit-learn members: TF-IDF + linear for text; HistGradientBoosting and a linear model for tables
    anchors = sklearn_members.table_members(train_df, y_raw, folds, cfg.task_type, text_columns=tuple(cfg.text_columns),
                                            exclude=tuple(cfg.excluded_columns), metric=cfg.metric, log_target=log1p)
    anchor_wall = round((time.perf_counter() - t) / len(anchors), 1)
    for anchor in anchors:
        rows.append(row(f"{name} sklearn {anchor.name} {cfg.metric}", float(metric(y_raw, anchor.oof)), cfg.metric,
                        wall_s=anchor_wall))
    anchor_score = rows[0]["value"]  # the first member (HistGB, or TF-IDF for text) is the anchor

    template = cfg.row_template(train_df)
    texts = template.render_frame(train_df)
    enc = tokenize_cached(texts, tok, max_len=max_len, cache_dir=CACHE / "tokens",
                          template=template.fingerprint()).encoded
    labels = y.astype(np.float32) if head == "regression" else y.astype(np.int32)
    data = Dataset.from_encoded(enc, labels)
    # the top-layer runs train without LoRA dropout (as the flow's prefix path does); else the preset's
    overrides = {"dropout": 0.0} if top else {}
    if args.dropout is not None:
        overrides["dropout"] = args.dropout
    if top:
        n_layers = read_model_config(resolve_model_dir(args.model)).num_hidden_layers
        overrides["layers_to_transform"] = tuple(range(n_layers - top, n_layers))
    preset = args.preset or ("balanced" if settings.preset.startswith("qlora") else settings.preset)

    by_dtype: dict[str, dict[str, float]] = {}  # dtype -> row name (without the dtype) -> value
    for dtype in args.compute_dtypes.split(","):
        tag = "" if args.compute_dtypes == "float32" else f" {dtype}"
        start = len(rows)

        def make_model(k: int, dtype: str = dtype):  # called within this iteration
            model, _ = create_bert_with_lora(head, preset, 1, model=args.model, seed=k, compute_dtype=dtype,
                                             **overrides)
            if top:
                from lora_tasks.training.prefix_cache import FromPrefix, first_adapted_layer

                return FromPrefix(model, first_adapted_layer(model))
            return model

        train_data = data
        if top:
            from lora_tasks.training.prefix_cache import prefix_dataset

            t = time.perf_counter()
            base, _ = create_bert_with_lora(head, preset, 1, model=args.model, seed=0, compute_dtype=dtype,
                                            **overrides)
            _, train_data = prefix_dataset(base, data, cache_dir=CACHE / "prefix")
            print(f"prefix states computed in {time.perf_counter() - t:.1f} s")
        tcfg = TrainConfig(epochs=epochs, batch_size=settings.batch_size, learning_rate=args.lr or settings.learning_rate,
                           metric=None if head == "regression" else cfg.metric,
                           class_weights=settings.class_weight, early_stopping_patience=None)
        # LoRA OOF predictions are kept by their settings, so a rerun only re-blends (--retrain to refit)
        key = (f"{slug}-{preset}-e{epochs}-t{max_len}-top{top}-lr{tcfg.learning_rate}-n{len(train_df)}-k{args.folds}"
               f"-tpl{template.fingerprint()[:8]}" + (f"-m{Path(args.model).name}" if args.model else "")
               + (f"-d{args.dropout:g}" if args.dropout is not None else "")
               + ("" if dtype == "float32" else f"-{dtype}"))
        oof_file = CACHE / "oof" / f"{key}.npz"
        if oof_file.exists() and not args.retrain:
            saved = np.load(oof_file)
            oof, wall = saved["oof"], float(saved["wall"])
            best_epochs = saved["best_epochs"].tolist() if "best_epochs" in saved else None
            print(f"LoRA OOF from {oof_file} (trained in {wall:.0f} s)")
        else:
            t = time.perf_counter()
            ckpt_root = CACHE / "ckpt" / key  # a stopped run resumes from each fold's last finished epoch
            res = cross_validate(make_model, train_data, None, cfg=tcfg, folds=folds,
                                 checkpoint_root=ckpt_root, progress=LogProgress(every_s=120), name=f"{name} fold")
            # training time of every epoch, also those of earlier calls that this one resumed from
            wall = sum(h["seconds"] for r in res.fold_results for h in r.history)
            print(f"{len(res.fold_results)} folds trained ({wall:.0f} s of epochs; this call {time.perf_counter() - t:.0f} s)")
            oof = res.oof
            best_epochs = [r.best_epoch for r in res.fold_results]
            oof_file.parent.mkdir(parents=True, exist_ok=True)
            np.savez(oof_file.with_suffix(".tmp.npz"), oof=oof, wall=wall, best_epochs=np.asarray(best_epochs))
            oof_file.with_suffix(".tmp.npz").replace(oof_file)
            shutil.rmtree(ckpt_root, ignore_errors=True)
        ours = score(oof)
        rows.append(row(f"{name} lora{tag} {preset} {args.folds}-fold {cfg.metric}", ours, cfg.metric, anchor_score,
                        higher_is_better=metric.greater_is_better, wall_s=round(wall, 1), rows=len(train_df),
                        epochs=epochs, top_layers=top or "all", max_seq_len=max_len,
                        # each fold keeps its best epoch by its own validation score (as the flow does):
                        # an epoch other than the last means the OOF score includes that choice
                        best_epochs=best_epochs,
                        settings=dataclasses.asdict(settings) | {"reasons": None}))

        # The flow's default combine: the adapters blended with the anchor by Caruana selection on
        # OOF rows, on the training scale (log1p prices). The honest number is the nested one: the
        # selection fit on the other folds, scored on each held-out fold.
        blend_metric = "rmse" if log1p else cfg.metric
        lora_oof = oof[:, 0] if oof.ndim == 2 and oof.shape[1] == 1 else oof
        members = {a.name: np.log1p(np.clip(a.oof, 0, None)) if log1p else a.oof for a in anchors}
        # F1 (threshold "auto"): the flow also fits the label cut on OOF rows; nested like the weights
        tune = tunes_threshold(cfg.submission.threshold, cfg.metric, cfg.task_type == "binary")
        if tune:
            rows.append(row(f"{name} lora{tag} {preset} {args.folds}-fold, cut fit out-of-fold (nested) {cfg.metric}",
                            nested_threshold_score(metric, y, lora_oof, folds), cfg.metric, anchor_score,
                            higher_is_better=metric.greater_is_better))
        adapters = {"lora": lora_oof}
        for i, other in enumerate(k.strip() for k in args.also.split(",") if k.strip()):
            path = CACHE / "oof" / f"{other}.npz"
            if not path.exists():
                raise SystemExit(f"--also {other}: no kept OOF predictions at {path}; run those settings first.")
            kept = np.load(path)
            extra = kept["oof"][:, 0] if kept["oof"].ndim == 2 and kept["oof"].shape[1] == 1 else kept["oof"]
            adapters[f"lora_{i + 2}"] = extra
            rows.append(row(f"{name} lora_{i + 2} ({other}) {cfg.metric}", score(extra), cfg.metric, anchor_score,
                            higher_is_better=metric.greater_is_better, wall_s=round(float(kept["wall"]), 1)))
        candidates = ([members] if len(members) > 1 else []) + [{"lora": lora_oof, **members}]
        if len(adapters) > 1:
            candidates += [adapters, {**adapters, **members}]
        for chosen in candidates:
            blended = blend("caruana", chosen, None, y, blend_metric, folds, tune_threshold=tune)
            extra = {"threshold": blended.threshold} if tune else {}
            rows.append(row(f"{name} blend{tag} {'+'.join(chosen)} (caruana, nested) {cfg.metric}", blended.report.blend_cv_score,
                            cfg.metric, anchor_score, higher_is_better=metric.greater_is_better,
                            in_sample=round(blended.report.blend_score if tune else score(blended.oof_pred), 4),
                            weights={k: round(v, 3) for k, v in blended.weights.items()}, **extra))
        by_dtype[dtype] = {r["name"].replace(tag, ""): r["value"] for r in rows[start:]}
    if len(by_dtype) > 1:  # each later dtype against the first, row by row (the same folds and members)
        first, *others = by_dtype
        for other in others:
            for key, value in by_dtype[other].items():
                ref = by_dtype[first].get(key)
                if ref is not None:
                    rows.append(row(f"{key} {other} - {first}", value - ref, cfg.metric,
                                    within_0_005=abs(value - ref) <= 0.005,
                                    compute_dtype=compute_dtype_choice(other).summary()))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--competitions", default="titanic,house-prices,nlp-getting-started")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--rows", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=0)
    ap.add_argument("--lr", type=float, default=0.0)
    ap.add_argument("--max-len", type=int, default=0, help="token limit per row (default: auto-configured)")
    ap.add_argument("--preset", default="")
    ap.add_argument("--top-layers", default="", help="N or all (default: the competition's [training] top_layers)")
    ap.add_argument("--dropout", type=float, default=None, help="LoRA dropout (default: the preset's; 0 with --top-layers)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--name", default="adapters_cv")
    ap.add_argument("--also", default="", help="kept OOF settings keys (cache file stems) to blend in as more adapters")
    ap.add_argument("--compute-dtypes", default="float32",
                    help="float32, bfloat16 or both (float32,bfloat16: the same folds, and each row's difference)")
    ap.add_argument("--retrain", action="store_true", help="train the adapters even when their OOF predictions are kept")
    args = ap.parse_args()
    # each fold's epochs, and a line every two minutes inside long ones (output often goes to a file)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("lora_tasks").setLevel(logging.INFO)
    print(lora_tasks.blas_info().summary())
    tok = Tokenizer.from_pretrained(args.model)
    rows: list[dict] = []
    for name in args.competitions.split(","):
        rows += run_competition(name.strip(), args, tok)
        write_results(args.name, rows)


if __name__ == "__main__":
    main()
