"""Quality on rows neither tool trained on: the zero-config run against AutoGluon, same time limit.

    python benchmarks/quality.py [--competitions titanic,ghouls-goblins-and-ghosts-boo,...]
        [--limit 20m] [--holdout 0.2] [--no-peer] [--force] [--plot-only] [--pairs-only]

For each shared competition (``../shared/datasets``), a seeded 20% of ``train.csv`` is held out
(stratified on a class target). What is left becomes a new competition, ``holdout-<name>``, laid
out as Kaggle lays it out: ``train.csv``, a ``test.csv`` of the held-out rows without the target
or the train-only columns, the sample submission under its own file name (held-out ids, the
sample's own placeholder values), and the hidden solution the fake Kaggle server scores against.
Its name matches no shipped config, so the run is zero-config: the metric comes from the
listing's ``evaluation_metric`` as on Kaggle.

* **kaggle-lora**: ``kaggle-lora run --competition holdout-<name> --time-limit L --no-submit`` in a
  fresh work folder (nothing cached, the cost probe included).
* **AutoGluon** (``autogluon.tabular``, ``best_quality``, the same limit; one predictor per target,
  the limit split between them), in its own Python (``$KAGGLE_LORA_AUTOGLUON_PYTHON``, default
  ``/work/ag-venv/bin/python``) through ``peers/autogluon_peer.py``.
* **best member**: the best single scikit-learn / gradient-boosting member's out-of-fold score of
  the same run (out of fold, so not on the held-out rows: a guide, not a peer).

Both submissions are scored on the held-out rows by the fake server's own scorer
(:func:`~lora_tasks.testing.fake_kaggle.score_submission`), as Kaggle would. Trials kept in
``benchmarks/results/quality.json`` are skipped unless ``--force``; the figure is ``quality.png``.
Each run's log and submission stay in ``.kaggle-lora/bench-cache/holdout/`` (to read row errors);
with both submissions of a competition kept, its kaggle-lora row gets the paired bootstrap of the
score difference (:func:`paired_bootstrap`): on a few hundred held-out rows, one score against
another says little without it.
A kept trial whose system was renamed (``kaggle-lora (before: <commit>)``) stays in the table
and the figure beside the new one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from _common import PEERS, RESULTS, kaggle_lora_run, kept_trials, row, write_results
from sklearn.model_selection import train_test_split

from lora_tasks.budget import parse_duration
from lora_tasks.steps.estimates import TOLERANCE
from lora_tasks.testing.fake_kaggle import (
    COMPETITION_META_FILE,
    KAGGLE_METRIC_NAMES,
    SOLUTION_FILE_NAME,
    FakeKaggleServer,
    score_submission,
    serve,
)

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
LOGS = Path(__file__).resolve().parents[1] / ".kaggle-lora" / "bench-cache" / "holdout"
NAME = "quality"
AG_PYTHON = os.environ.get("KAGGLE_LORA_AUTOGLUON_PYTHON", "/work/ag-venv/bin/python")
LOWER_IS_BETTER = {"rmse", "rmsle", "mcrmse", "mae", "log_loss", "logloss", "multiclass_logloss"}


@dataclass(frozen=True)
class Competition:
    name: str  # the shared folder
    id: str
    targets: tuple[str, ...]
    metric: str  # a fake_kaggle METRICS name
    classify: bool  # stratify the holdout on the (single) target
    id_is_feature: bool = False  # bike-sharing's id is its datetime


COMPETITIONS = {c.name: c for c in (
    Competition("titanic", "PassengerId", ("Survived",), "accuracy", True),
    Competition("house-prices-advanced-regression-techniques", "Id", ("SalePrice",), "rmsle", False),
    Competition("nlp-getting-started", "id", ("target",), "f1", True),
    Competition("feedback-prize-english-language-learning", "text_id",
                ("cohesion", "syntax", "vocabulary", "phraseology", "grammar", "conventions"), "mcrmse", False),
    Competition("bike-sharing-demand", "datetime", ("count",), "rmsle", False, id_is_feature=True),
    Competition("ghouls-goblins-and-ghosts-boo", "id", ("type",), "accuracy", True),
)}


@dataclass(frozen=True)
class Trial:
    """One system on one competition: its held-out score, wall time and what it said."""

    competition: str
    system: str  # kaggle-lora or autogluon
    limit_s: float
    wall_s: float
    holdout: float | None
    best_member: str = ""
    best_member_oof: float | None = None
    note: str = ""
    #: kaggle-lora's score minus AutoGluon's on bootstrap resamples of the held-out rows (its 5th and
    #: 95th percentiles) and the share of resamples where kaggle-lora scores at least as well
    paired_low: float | None = None
    paired_high: float | None = None
    paired_share: float | None = None
    #: the run's estimates against what it measured (its summary's ``estimates``): part -> measured / estimated
    estimate_ratios: dict[str, float] = dataclasses.field(default_factory=dict)


def sample_name(folder: Path) -> str:
    return next(p.name for p in sorted(folder.glob("*.csv")) if "submission" in p.name.lower())


def build_holdout(comp: Competition, dest: Path, fraction: float, seed: int = 0) -> Path:
    """``dest/holdout-<name>/``: the competition of the kept rows, scored on the held-out ones."""
    src = DATASETS / comp.name
    train = pd.read_csv(src / "train.csv", dtype=str, keep_default_na=False)
    test_columns = list(pd.read_csv(src / "test.csv", nrows=0).columns)
    sample = pd.read_csv(src / sample_name(src), dtype=str, keep_default_na=False)
    strata = train[comp.targets[0]] if comp.classify else None
    kept, held = train_test_split(train, test_size=fraction, random_state=seed, stratify=strata)
    folder = dest / f"holdout-{comp.name}"
    folder.mkdir(parents=True)
    kept.to_csv(folder / "train.csv", index=False)
    held[test_columns].to_csv(folder / "test.csv", index=False)
    placeholder = {c: sample[c].iloc[0] for c in comp.targets}
    pd.DataFrame({comp.id: held[comp.id], **{c: [v] * len(held) for c, v in placeholder.items()}}).to_csv(
        folder / sample_name(src), index=False)
    held[[comp.id, *comp.targets]].to_csv(folder / SOLUTION_FILE_NAME, index=False)
    (folder / COMPETITION_META_FILE).write_text(json.dumps(
        {"metric": comp.metric, "evaluation_metric": KAGGLE_METRIC_NAMES[comp.metric]}))
    return folder


def holdout_score(comp: Competition, submission: Path, folder: Path) -> float:
    frame = pd.read_csv(submission, dtype=str, keep_default_na=False)
    solution = pd.read_csv(folder / SOLUTION_FILE_NAME, dtype=str, keep_default_na=False)
    return float(score_submission(frame, solution, comp.metric))


def submission_copy(comp: Competition, system: str, limit: str) -> Path:
    """Where a trial's submission is kept (beside its log) for row errors and the paired comparison."""
    return LOGS / f"{comp.name}-{system}-{limit}-submission.csv"


def paired_bootstrap(comp: Competition, folder: Path, ours: Path, theirs: Path,
                     resamples: int = 400, seed: int = 0) -> tuple[float, float, float]:
    """(5th, 95th percentile of ours minus theirs, share of resamples where ours is at least as good)
    over bootstrap resamples of the held-out rows, each scored by the fake server's scorer.

    Why: a held-out set of 75 rows moves 0.013 accuracy per row, so one score against another says
    little without the spread of the difference over the same resampled rows."""
    import numpy as np

    solution = pd.read_csv(folder / SOLUTION_FILE_NAME, dtype=str, keep_default_na=False)
    key = solution.columns[0]
    subs = [pd.read_csv(p, dtype=str, keep_default_na=False).set_index(key).loc[solution[key]].reset_index()
            for p in (ours, theirs)]
    rng = np.random.default_rng(seed)
    sign = -1.0 if comp.metric in LOWER_IS_BETTER else 1.0

    def score(frame: pd.DataFrame, rows: np.ndarray) -> float:
        picked = frame.iloc[rows].reset_index(drop=True)
        picked[key] = [str(i) for i in range(len(rows))]  # resampled rows repeat: fresh ids
        truth = solution.iloc[rows].reset_index(drop=True)
        truth[key] = picked[key]
        return float(score_submission(picked, truth, comp.metric))

    diffs = []
    for _ in range(resamples):
        rows = rng.integers(0, len(solution), len(solution))
        diffs.append(score(subs[0], rows) - score(subs[1], rows))
    d = np.asarray(diffs)
    return float(np.percentile(d, 5)), float(np.percentile(d, 95)), float(np.mean(sign * d >= 0))


def kaggle_lora_trial(comp: Competition, folder: Path, limit: str, server: FakeKaggleServer) -> Trial:
    with kaggle_lora_run(folder.name, limit, server, LOGS / f"{comp.name}-kaggle-lora-{limit}.log") as run:
        if run.summary is None:
            return Trial(comp.name, "kaggle-lora", parse_duration(limit), run.wall_s, None, note=run.tail)
        summary, wall = run.summary, run.wall_s
        submission = Path(summary["submission_path"])
        shutil.copyfile(submission, submission_copy(comp, "kaggle-lora", limit))
        score = holdout_score(comp, submission, folder)
    best, best_oof = best_member(summary, comp.metric in LOWER_IS_BETTER)
    ratios = {str(e["part"]): float(e["measured / estimated"]) for e in summary.get("estimates", [])}
    return Trial(comp.name, "kaggle-lora", parse_duration(limit), wall, score, best, best_oof, estimate_ratios=ratios)


def best_member(summary: dict, lower_is_better: bool) -> tuple[str, float | None]:
    """The best single member of the run's blend table, by its out-of-fold score."""
    col = f"OOF {summary['metric']}"
    singles = [(str(r["member"]), float(r[col])) for r in summary.get("members", [])
               if col in r and r[col] is not None and "blend" not in str(r["member"]) and "fit" not in str(r["member"])]
    if not singles:
        return "", None
    return min(singles, key=lambda m: m[1]) if lower_is_better else max(singles, key=lambda m: m[1])


def autogluon_trial(comp: Competition, folder: Path, limit: str) -> Trial | None:
    if not Path(AG_PYTHON).exists():
        print(f"(no AutoGluon peer: {AG_PYTHON} missing; set KAGGLE_LORA_AUTOGLUON_PYTHON to a Python with "
              "`pip install 'autogluon.tabular[lightgbm,catboost]'`)")
        return None
    with tempfile.TemporaryDirectory(prefix="kl-holdout-ag-") as tmp:
        out = Path(tmp) / "submission.csv"
        cmd = [AG_PYTHON, str(PEERS / "autogluon_peer.py"), "--train", str(folder / "train.csv"),
               "--test", str(folder / "test.csv"), "--label", ",".join(comp.targets), "--id", comp.id,
               "--metric", comp.metric, "--time-limit", str(parse_duration(limit)), "--out", str(out)]
        cmd += ["--log-target"] if comp.metric == "rmsle" else []
        cmd += ["--id-is-feature"] if comp.id_is_feature else []
        print(f"$ autogluon {comp.name} --time-limit {limit}", flush=True)
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        LOGS.mkdir(parents=True, exist_ok=True)
        (LOGS / f"{comp.name}-autogluon-{limit}.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            return Trial(comp.name, "autogluon", parse_duration(limit), wall, None,
                         note=(done.stderr.strip().splitlines() or ["failed"])[-1])
        result = json.loads(done.stdout.strip().splitlines()[-1])
        shutil.copyfile(out, submission_copy(comp, "autogluon", limit))
        score = holdout_score(comp, out, folder)
    return Trial(comp.name, "autogluon", parse_duration(limit), wall, score, note=f"best model {result['model']}")


def result_rows(trials: list[Trial]) -> list[dict]:
    """A held-out score row per trial (kaggle-lora's with AutoGluon's at the same limit as the peer)
    and a wall-time row; each row keeps its trial so a later call can add to the table."""
    peers = {(t.competition, t.limit_s): t for t in trials if t.system == "autogluon" and t.holdout is not None}
    out = []
    for t in sorted(trials, key=lambda t: (t.competition, t.system, t.limit_s)):
        comp = COMPETITIONS[t.competition]
        label = f"{t.competition} {t.system} {t.limit_s / 60:g}m"
        trial = dataclasses.asdict(t)
        if t.holdout is None:
            out.append(row(f"{label}: failed", t.wall_s, "s", trial=trial))
            continue
        peer = peers.get((t.competition, t.limit_s)) if t.system.startswith("kaggle-lora") else None
        out.append(row(f"{label}: held-out {comp.metric}", t.holdout, comp.metric, peer.holdout if peer else None,
                       comp.metric not in LOWER_IS_BETTER, trial=trial))
        if t.paired_low is not None and peer is not None:
            out.append(row(f"{label}: held-out {comp.metric} minus autogluon's, bootstrap 90% interval",
                           t.holdout - peer.holdout if peer else None, comp.metric, low=t.paired_low,
                           high=t.paired_high, share_at_least_as_good=t.paired_share))
        out.append(row(f"{label}: wall", t.wall_s, "s", peer.wall_s if peer else None, False,
                       within_limit=t.wall_s <= 1.1 * t.limit_s))
        out += [row(f"{label}: estimate of {part}, measured / estimated", ratio, "ratio", within_tolerance=abs(ratio - 1) <= TOLERANCE)
                for part, ratio in t.estimate_ratios.items()]
    return out


def plot(trials: list[Trial]) -> Path:
    """Held-out score per competition: each kaggle-lora trial (an earlier code's too, named by its
    system), AutoGluon at the same limit, and the run's best single member (out of fold: a guide)."""
    import matplotlib  # only for the figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comps = [c for c in COMPETITIONS.values() if any(t.competition == c.name and t.holdout is not None for t in trials)]
    fig, axes = plt.subplots(1, len(comps), figsize=(3.6 * len(comps), 4), squeeze=False)
    for ax, comp in zip(axes[0], comps, strict=True):
        mine = sorted((t for t in trials if t.competition == comp.name and t.holdout is not None),
                      key=lambda t: (t.system != "autogluon", t.system))
        labels = [f"{t.system}\n{t.limit_s / 60:g} min, {t.wall_s / 60:.1f} used" for t in mine]
        colors = ["tab:grey" if t.system == "autogluon" else "tab:blue" for t in mine]
        ax.bar(range(len(mine)), [t.holdout for t in mine], color=colors)
        for i, t in enumerate(mine):
            ax.annotate(f"{t.holdout:.4f}", (i, t.holdout), ha="center", va="bottom", fontsize=8)
            if t.best_member_oof is not None:
                ax.plot(i, t.best_member_oof, "k_", markersize=18)
        values = [t.holdout for t in mine] + [t.best_member_oof for t in mine if t.best_member_oof is not None]
        span = max(values) - min(values)
        ax.set_ylim(min(values) - span - 0.01, max(values) + span + 0.01)
        ax.set_xticks(range(len(mine)), labels, fontsize=7)
        ax.set_title(comp.name, fontsize=9)
        ax.set_ylabel(f"held-out {comp.metric} ({'lower' if comp.metric in LOWER_IS_BETTER else 'higher'} is better)")
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("Held-out score, zero-config kaggle-lora and AutoGluon at the same limit "
                 "(dash: the run's best single member, out of fold)", fontsize=10)
    fig.tight_layout()
    path = RESULTS / f"{NAME}.png"
    fig.savefig(path, dpi=110)
    return path


def with_pairs(trials: list[Trial], comp: Competition, folder: Path, limit: str) -> list[Trial]:
    """The kaggle-lora trial of ``comp`` at ``limit`` with its paired bootstrap against AutoGluon's,
    once both submissions of this session are kept."""
    ours, theirs = submission_copy(comp, "kaggle-lora", limit), submission_copy(comp, "autogluon", limit)
    limit_s = parse_duration(limit)
    done = {t.system for t in trials if t.competition == comp.name and t.limit_s == limit_s and t.holdout is not None}
    if not (ours.exists() and theirs.exists() and {"kaggle-lora", "autogluon"} <= done):
        return trials
    low, high, share = paired_bootstrap(comp, folder, ours, theirs)
    return [dataclasses.replace(t, paired_low=low, paired_high=high, paired_share=share)
            if (t.competition, t.system, t.limit_s) == (comp.name, "kaggle-lora", limit_s) else t for t in trials]


def load_trials() -> list[Trial]:
    return kept_trials(NAME, Trial)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--competitions", default=",".join(COMPETITIONS))
    p.add_argument("--limit", default="20m", help="the time limit of both tools (the run's default is 20m)")
    p.add_argument("--holdout", type=float, default=0.2, help="the fraction of train.csv held out")
    p.add_argument("--no-peer", action="store_true", help="kaggle-lora only")
    p.add_argument("--force", action="store_true", help="run trials already in the results again")
    p.add_argument("--plot-only", action="store_true", help="draw quality.png from the kept results")
    p.add_argument("--pairs-only", action="store_true",
                   help="the paired bootstrap of the kept trials from their kept submissions, nothing run")
    args = p.parse_args()
    if args.plot_only:
        print(f"wrote {plot(load_trials())}")
        return
    names = [c.strip() for c in args.competitions.split(",") if c.strip()]
    unknown = sorted(set(names) - set(COMPETITIONS))
    if unknown:
        raise SystemExit(f"unknown competitions {unknown}; known: {sorted(COMPETITIONS)}")
    trials = load_trials()
    if args.pairs_only:
        served = Path(tempfile.mkdtemp(prefix="kl-holdout-pairs-"))
        try:
            for n in names:
                trials = with_pairs(trials, COMPETITIONS[n], build_holdout(COMPETITIONS[n], served, args.holdout),
                                    args.limit)
        finally:
            shutil.rmtree(served, ignore_errors=True)
        print(f"wrote {write_results(NAME, result_rows(trials))}")
        return
    done = {(t.competition, t.system, t.limit_s) for t in trials}
    limit_s = parse_duration(args.limit)
    served = Path(tempfile.mkdtemp(prefix="kl-holdout-served-"))
    try:
        folders = {n: build_holdout(COMPETITIONS[n], served, args.holdout) for n in names}
        with serve(served, pending_polls=0) as server:
            for n in names:
                comp = COMPETITIONS[n]
                systems = ["kaggle-lora"] + ([] if args.no_peer else ["autogluon"])
                for system in systems:
                    if (n, system, limit_s) in done and not args.force:
                        continue
                    trial = (kaggle_lora_trial(comp, folders[n], args.limit, server) if system == "kaggle-lora"
                             else autogluon_trial(comp, folders[n], args.limit))
                    if trial is not None:
                        trials = [t for t in trials if (t.competition, t.system, t.limit_s) != (n, system, limit_s)]
                        trials.append(trial)
                        trials = with_pairs(trials, comp, folders[n], args.limit)
                        write_results(NAME, result_rows(trials))  # after every trial: a stopped run keeps its work
                        plot(trials)
    finally:
        shutil.rmtree(served, ignore_errors=True)


if __name__ == "__main__":
    main()
