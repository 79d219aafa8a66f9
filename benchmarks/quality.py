"""Quality on rows neither tool trained on: the zero-config run against AutoGluon, same time limit.

    python benchmarks/quality.py [--competitions titanic,ghouls-goblins-and-ghosts-boo,...]
        [--limit 20m] [--holdout 0.2] [--splits 1] [--no-peer] [--force] [--plot-only] [--pairs-only]

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
another says little without it. ``--splits K`` holds out K different seeded 20% (split 0 is the
default one) and runs both tools on each: on a small table one split's rows move the score by more
than the tools differ, so the mean over the splits, and a bootstrap of the mean difference
(resampled within each split), are the comparison.
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

import numpy as np
from _common import PEERS, RESULTS, kaggle_lora_run, kept_trials, row, write_results
from _holdout import (
    COMPETITIONS,
    LOWER_IS_BETTER,
    Competition,
    bootstrap_summary,
    build_holdout,
    holdout_score,
    paired_bootstrap,
    paired_diffs,
)

from lora_tasks.budget import parse_duration
from lora_tasks.steps.estimates import TOLERANCE
from lora_tasks.testing.fake_kaggle import (
    FakeKaggleServer,
    serve,
)

LOGS = Path(__file__).resolve().parents[1] / ".kaggle-lora" / "bench-cache" / "holdout"
NAME = "quality"
AG_PYTHON = os.environ.get("KAGGLE_LORA_AUTOGLUON_PYTHON", "/work/ag-venv/bin/python")


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
    #: which seeded held-out split (``--splits``): 0 is the default one
    split: int = 0
    #: the share of train.csv held out (``--holdout``): with ``split``, the held-out rows
    fraction: float = 0.2

    @property
    def key(self) -> tuple[str, str, float, int]:
        return self.competition, self.system, self.limit_s, self.split


def split_tag(split: int) -> str:
    """The suffix of a split's files and row names (none for split 0, so earlier results keep their names)."""
    return f"-split{split}" if split else ""


def submission_copy(comp: Competition, system: str, limit: str, split: int = 0) -> Path:
    """Where a trial's submission is kept (beside its log) for row errors and the paired comparison."""
    return LOGS / f"{comp.name}-{system}-{limit}{split_tag(split)}-submission.csv"


def kaggle_lora_trial(comp: Competition, folder: Path, limit: str, server: FakeKaggleServer, split: int = 0) -> Trial:
    log = LOGS / f"{comp.name}-kaggle-lora-{limit}{split_tag(split)}.log"
    with kaggle_lora_run(folder.name, limit, server, log) as run:
        if run.summary is None:
            return Trial(comp.name, "kaggle-lora", parse_duration(limit), run.wall_s, None, note=run.tail, split=split)
        summary, wall = run.summary, run.wall_s
        submission = Path(summary["submission_path"])
        shutil.copyfile(submission, submission_copy(comp, "kaggle-lora", limit, split))
        score = holdout_score(comp, submission, folder)
    best, best_oof = best_member(summary, comp.metric in LOWER_IS_BETTER)
    ratios = {str(e["part"]): float(e["measured / estimated"]) for e in summary.get("estimates", [])}
    return Trial(comp.name, "kaggle-lora", parse_duration(limit), wall, score, best, best_oof, estimate_ratios=ratios,
                 split=split)


def best_member(summary: dict, lower_is_better: bool) -> tuple[str, float | None]:
    """The best single member of the run's blend table, by its out-of-fold score."""
    col = f"OOF {summary['metric']}"
    singles = [(str(r["member"]), float(r[col])) for r in summary.get("members", [])
               if col in r and r[col] is not None and "blend" not in str(r["member"]) and "fit" not in str(r["member"])]
    if not singles:
        return "", None
    return min(singles, key=lambda m: m[1]) if lower_is_better else max(singles, key=lambda m: m[1])


def autogluon_trial(comp: Competition, folder: Path, limit: str, split: int = 0) -> Trial | None:
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
        (LOGS / f"{comp.name}-autogluon-{limit}{split_tag(split)}.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            return Trial(comp.name, "autogluon", parse_duration(limit), wall, None,
                         note=(done.stderr.strip().splitlines() or ["failed"])[-1], split=split)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        shutil.copyfile(out, submission_copy(comp, "autogluon", limit, split))
        score = holdout_score(comp, out, folder)
    return Trial(comp.name, "autogluon", parse_duration(limit), wall, score, note=f"best model {result['model']}",
                 split=split)


def result_rows(trials: list[Trial]) -> list[dict]:
    """A held-out score row per trial (kaggle-lora's with AutoGluon's at the same limit as the peer)
    and a wall-time row; each row keeps its trial so a later call can add to the table."""
    peers = {(t.competition, t.limit_s, t.split): t for t in trials if t.system == "autogluon" and t.holdout is not None}
    out = []
    for t in sorted(trials, key=lambda t: (t.competition, t.system, t.limit_s, t.split)):
        comp = COMPETITIONS[t.competition]
        label = f"{t.competition} {t.system} {t.limit_s / 60:g}m" + (f" split {t.split}" if t.split else "")
        trial = dataclasses.asdict(t)
        if t.holdout is None:
            out.append(row(f"{label}: failed", t.wall_s, "s", trial=trial))
            continue
        peer = peers.get((t.competition, t.limit_s, t.split)) if t.system.startswith("kaggle-lora") else None
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
    return out + split_rows(trials)


def split_pairs(trials: list[Trial]) -> dict[tuple[str, float], list[tuple[Trial, Trial]]]:
    """Per (competition, limit): the (kaggle-lora, AutoGluon) trials of every split both scored, when
    there are two splits or more."""
    scored = {t.key: t for t in trials if t.holdout is not None}
    pairs: dict[tuple[str, float], list[tuple[Trial, Trial]]] = {}
    for (comp, system, limit_s, split), t in sorted(scored.items()):
        peer = scored.get((comp, "autogluon", limit_s, split))
        if system == "kaggle-lora" and peer is not None:
            pairs.setdefault((comp, limit_s), []).append((t, peer))
    return {k: v for k, v in pairs.items() if len(v) > 1}


def split_rows(trials: list[Trial]) -> list[dict]:
    """For a competition run on several splits: each tool's mean held-out score over the splits both
    scored, and the bootstrap of the mean difference (each split's rows resampled on their own, the
    splits' differences averaged), from the kept submissions."""
    out = []
    for (name, limit_s), pairs in split_pairs(trials).items():
        comp = COMPETITIONS[name]
        ours, theirs = (float(np.mean([p[i].holdout for p in pairs])) for i in (0, 1))
        label = f"{name} kaggle-lora {limit_s / 60:g}m: mean held-out {comp.metric} over {len(pairs)} splits"
        wins = sum((a.holdout <= b.holdout) if comp.metric in LOWER_IS_BETTER else (a.holdout >= b.holdout)
                   for a, b in pairs)
        out.append(row(label, ours, comp.metric, theirs, comp.metric not in LOWER_IS_BETTER,
                       splits=[p[0].split for p in pairs], at_least_as_good_on=wins))
        pooled = pooled_bootstrap(comp, [p[0] for p in pairs])
        if pooled is not None:
            low, high, share = pooled
            out.append(row(f"{label}, minus autogluon's, bootstrap 90% interval", ours - theirs, comp.metric,
                           low=low, high=high, share_at_least_as_good=share))
    return out


def pooled_bootstrap(comp: Competition, ours: list[Trial]) -> tuple[float, float, float] | None:
    """:func:`bootstrap_summary` of the splits' paired differences averaged resample by resample
    (None when a kept submission is missing). The held-out folders are built again: they are seeded."""
    with tempfile.TemporaryDirectory(prefix="kl-holdout-pool-") as tmp:
        diffs = []
        for t in ours:
            mine, peer = (submission_copy(comp, s, f"{t.limit_s / 60:g}m", t.split) for s in ("kaggle-lora", "autogluon"))
            if not (mine.exists() and peer.exists()):
                return None
            folder = build_holdout(comp, Path(tmp) / f"split{t.split}", t.fraction, seed=t.split)
            diffs.append(paired_diffs(comp, folder, mine, peer, seed=t.split))
    return bootstrap_summary(comp, np.mean(diffs, axis=0))


def plot(trials: list[Trial]) -> Path:
    """Held-out score per competition: each kaggle-lora system (an earlier code's too, named by its
    system), AutoGluon at the same limit, and the run's best single member (out of fold: a guide).
    A system run on several splits is one bar, its mean, with each split's score as a dot."""
    import matplotlib  # only for the figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comps = [c for c in COMPETITIONS.values() if any(t.competition == c.name and t.holdout is not None for t in trials)]
    bars = max(len({(t.system, t.limit_s) for t in trials if t.competition == c.name}) for c in comps)
    # wide enough for each bar's two-line label: several limits and the "before" runs sit side by side
    fig, axes = plt.subplots(1, len(comps), figsize=(max(3.6, 1.1 * bars) * len(comps), 4.4), squeeze=False)
    for ax, comp in zip(axes[0], comps, strict=True):
        groups: dict[tuple[str, float], list[Trial]] = {}
        for t in sorted((t for t in trials if t.competition == comp.name and t.holdout is not None),
                        key=lambda t: (t.system != "autogluon", t.system, t.limit_s, t.split)):
            groups.setdefault((t.system, t.limit_s), []).append(t)
        labels, values = [], []
        for i, ((system, limit_s), mine) in enumerate(groups.items()):
            mean = float(np.mean([t.holdout for t in mine]))
            wall = float(np.mean([t.wall_s for t in mine])) / 60
            split_note = f"\nmean of {len(mine)} splits" if len(mine) > 1 else ""
            labels.append(f"{system}\n{limit_s / 60:g} min, {wall:.1f} used{split_note}")
            ax.bar(i, mean, color="tab:grey" if system == "autogluon" else "tab:blue")
            ax.annotate(f"{mean:.4f}", (i, mean), ha="center", va="bottom", fontsize=8)
            if len(mine) > 1:
                ax.plot([i] * len(mine), [t.holdout for t in mine], "k.", markersize=5)
            oofs = [t.best_member_oof for t in mine if t.best_member_oof is not None]
            if oofs:
                ax.plot(i, float(np.mean(oofs)), "k_", markersize=18)
            values += [t.holdout for t in mine] + oofs
        span = max(values) - min(values)
        ax.set_ylim(min(values) - span - 0.01, max(values) + span + 0.01)
        ax.set_xticks(range(len(labels)), labels, fontsize=7)
        ax.set_title(comp.name, fontsize=9)
        ax.set_ylabel(f"held-out {comp.metric} ({'lower' if comp.metric in LOWER_IS_BETTER else 'higher'} is better)")
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("Held-out score, zero-config kaggle-lora and AutoGluon at the same limit "
                 "(dash: the run's best single member, out of fold; dots: each split's score)", fontsize=10)
    fig.tight_layout()
    path = RESULTS / f"{NAME}.png"
    fig.savefig(path, dpi=110)
    return path


def with_pairs(trials: list[Trial], comp: Competition, folder: Path, limit: str, split: int = 0) -> list[Trial]:
    """The kaggle-lora trial of ``comp`` at ``limit`` on ``split`` with its paired bootstrap against
    AutoGluon's, once both submissions of this session are kept."""
    ours, theirs = (submission_copy(comp, s, limit, split) for s in ("kaggle-lora", "autogluon"))
    limit_s = parse_duration(limit)
    done = {t.system for t in trials
            if (t.competition, t.limit_s, t.split) == (comp.name, limit_s, split) and t.holdout is not None}
    if not (ours.exists() and theirs.exists() and {"kaggle-lora", "autogluon"} <= done):
        return trials
    low, high, share = paired_bootstrap(comp, folder, ours, theirs)
    return [dataclasses.replace(t, paired_low=low, paired_high=high, paired_share=share)
            if t.key == (comp.name, "kaggle-lora", limit_s, split) else t for t in trials]


def load_trials() -> list[Trial]:
    return kept_trials(NAME, Trial)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--competitions", default=",".join(COMPETITIONS))
    p.add_argument("--limit", default="20m", help="the time limit of both tools (the run's default is 20m)")
    p.add_argument("--holdout", type=float, default=0.2, help="the fraction of train.csv held out")
    p.add_argument("--splits", type=int, default=1,
                   help="run each tool on this many seeded held-out splits (0, 1, ...): on a small table the mean "
                        "over splits is the comparison")
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
    if args.splits < 1:
        raise SystemExit(f"--splits is how many held-out splits to run; pass 1 or more, not {args.splits}")
    trials = load_trials()
    splits = range(args.splits)
    if args.pairs_only:
        served = Path(tempfile.mkdtemp(prefix="kl-holdout-pairs-"))
        try:
            for n, k in ((n, k) for n in names for k in splits):
                folder = build_holdout(COMPETITIONS[n], served / f"split{k}", args.holdout, seed=k)
                trials = with_pairs(trials, COMPETITIONS[n], folder, args.limit, k)
        finally:
            shutil.rmtree(served, ignore_errors=True)
        print(f"wrote {write_results(NAME, result_rows(trials))}")
        return
    done = {t.key for t in trials}
    limit_s = parse_duration(args.limit)
    systems = ["kaggle-lora"] + ([] if args.no_peer else ["autogluon"])
    for k in splits:  # one fake server per split: each split's competition has the same name
        served = Path(tempfile.mkdtemp(prefix=f"kl-holdout-served-{k}-"))
        try:
            folders = {n: build_holdout(COMPETITIONS[n], served, args.holdout, seed=k) for n in names}
            with serve(served, pending_polls=0) as server:
                for n, system in ((n, s) for n in names for s in systems):
                    if (n, system, limit_s, k) in done and not args.force:
                        continue
                    comp = COMPETITIONS[n]
                    trial = (kaggle_lora_trial(comp, folders[n], args.limit, server, k) if system == "kaggle-lora"
                             else autogluon_trial(comp, folders[n], args.limit, k))
                    if trial is not None:
                        trial = dataclasses.replace(trial, fraction=args.holdout)
                        trials = [t for t in trials if t.key != trial.key] + [trial]
                        trials = with_pairs(trials, comp, folders[n], args.limit, k)
                        write_results(NAME, result_rows(trials))  # after every trial: a stopped run keeps its work
                        plot(trials)
        finally:
            shutil.rmtree(served, ignore_errors=True)


if __name__ == "__main__":
    main()
