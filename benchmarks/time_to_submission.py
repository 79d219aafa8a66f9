"""Quality against time: the bare command, from ``kaggle-lora run`` to a checked submission file,
within ``--time-limit`` 5, 15 and 60 minutes, on titanic, house-prices and nlp-getting-started.

    python benchmarks/time_to_submission.py [--competitions titanic,house-prices,nlp-getting-started]
        [--limits 5m,15m,60m] [--peer-limits 5m] [--subset nlp-getting-started:5m=2500] [--no-peer]
        [--force] [--plot-only]

Each trial runs ``kaggle-lora run --competition C --time-limit L --no-submit`` in a fresh work
folder (nothing cached, the cost probe included) against the fake Kaggle server serving
``../shared/datasets``, checks the submission file against the sample submission, and records
the wall time, the blend's out-of-fold score and its nested score (weights fit out of fold).
The anchor is the same command with ``--no-adapters`` (the scikit-learn members' blend alone).
The peer is AutoGluon (``autogluon.tabular``, ``presets="best_quality"``) with the same time
limit, in its own Python (``$KAGGLE_LORA_AUTOGLUON_PYTHON``, default ``/work/ag-venv/bin/python``).

Trials already in ``benchmarks/results/time_to_submission.json`` are kept and skipped (``--force``
runs them again), so the grid can be filled in pieces: ``--limits 60m`` alone takes hours.
The plot (score against wall time per competition, the anchor as a line) goes to
``benchmarks/results/time_to_submission.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _common import PEERS, RESULTS, kaggle_lora_run, kept_trials, row, write_results

from lora_tasks.budget import format_duration, parse_duration
from lora_tasks.kaggle.validate import validate_submission
from lora_tasks.testing.fake_kaggle import FakeKaggleServer, derive_solutions

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
LOGS = Path(__file__).resolve().parents[1] / ".kaggle-lora" / "bench-cache" / "time_to_submission"
NAME = "time_to_submission"
AG_PYTHON = os.environ.get("KAGGLE_LORA_AUTOGLUON_PYTHON", "/work/ag-venv/bin/python")


@dataclass(frozen=True)
class Competition:
    name: str  # as a user types it
    slug: str
    label: str
    id: str
    metric: str
    higher_is_better: bool
    log_target: bool = False


COMPETITIONS = {c.name: c for c in (
    Competition("titanic", "titanic", "Survived", "PassengerId", "accuracy", True),
    Competition("house-prices", "house-prices-advanced-regression-techniques", "SalePrice", "Id", "rmsle", False,
                log_target=True),
    Competition("nlp-getting-started", "nlp-getting-started", "target", "id", "f1", True),
)}


@dataclass(frozen=True)
class Trial:
    """One run: ``system`` is ``kaggle-lora``, ``sklearn-members`` (``--no-adapters``) or ``autogluon``."""

    competition: str
    system: str
    limit_s: float
    wall_s: float
    oof: float | None  # the blend's out-of-fold score (AutoGluon: its best model's validation score)
    nested: float | None  # weights (and cut) fit out of fold; None where the system has no such score
    rows: int | None = None  # a train-row subset, else every row
    checked: bool = False  # the submission file passed validate_submission against the sample
    note: str = ""

    @property
    def key(self) -> tuple[str, str, float, int | None]:
        return (self.competition, self.system, self.limit_s, self.rows)


def sample_submission(comp: Competition) -> Path:
    """The competition's sample submission (titanic calls it ``gender_submission.csv``)."""
    return next(p for p in sorted((DATASETS / comp.slug).glob("*.csv")) if "submission" in p.name.lower())


def kaggle_lora_trial(comp: Competition, limit: str, server: FakeKaggleServer, *, no_adapters: bool,
                      rows: int | None) -> Trial:
    """The bare command in a fresh work folder, its output in a log file."""
    system = "sklearn-members" if no_adapters else "kaggle-lora"
    LOGS.mkdir(parents=True, exist_ok=True)
    log_path = LOGS / f"{comp.name}-{system}-{limit}{f'-{rows}rows' if rows else ''}.log"
    extra = (["--no-adapters"] if no_adapters else []) + (["--max-train-rows", str(rows)] if rows else [])
    with kaggle_lora_run(comp.name, limit, server, log_path, *extra) as run:
        if run.summary is None:
            return Trial(comp.name, system, parse_duration(limit), run.wall_s, None, None, rows, note=run.tail)
        summary, wall = run.summary, run.wall_s
        validate_submission(summary["submission_path"], sample_submission(comp))  # raises on any mismatch
    col = f"OOF {summary['metric']}"
    nested = next((r[col] for r in summary["members"] if "fit out-of-fold" in str(r["member"])), None)
    adapters = any(str(r["member"]).startswith("lora") for r in summary["members"])
    note = "" if adapters or no_adapters else "no plan with adapters fit the limit: the members alone"
    return Trial(comp.name, system, parse_duration(limit), wall, float(summary["oof_score"]),
                 None if nested is None else float(nested), rows, checked=True, note=note)


def autogluon_trial(comp: Competition, limit: str, rows: int | None) -> Trial | None:
    """AutoGluon on the same files with the same limit, in its own Python; None without it."""
    if not Path(AG_PYTHON).exists():
        print(f"(no AutoGluon peer: {AG_PYTHON} missing; set KAGGLE_LORA_AUTOGLUON_PYTHON to a Python with "
              "`pip install 'autogluon.tabular[lightgbm,catboost,xgboost]'`)")
        return None
    folder = DATASETS / comp.slug
    with tempfile.TemporaryDirectory(prefix="kl-tts-ag-") as tmp:
        out = Path(tmp) / "submission.csv"
        cmd = [AG_PYTHON, str(PEERS / "autogluon_peer.py"), "--train", str(folder / "train.csv"),
               "--test", str(folder / "test.csv"), "--label", comp.label, "--id", comp.id, "--metric", comp.metric,
               "--time-limit", str(parse_duration(limit)), "--out", str(out)]
        cmd += ["--log-target"] if comp.log_target else []
        cmd += ["--rows", str(rows)] if rows else []
        print(f"$ autogluon {comp.name} --time-limit {limit}", flush=True)
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        LOGS.mkdir(parents=True, exist_ok=True)
        (LOGS / f"{comp.name}-autogluon-{limit}.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            return Trial(comp.name, "autogluon", parse_duration(limit), wall, None, None, rows,
                         note=(done.stderr.strip().splitlines() or ["failed"])[-1])
        result = json.loads(done.stdout.strip().splitlines()[-1])
        validate_submission(out, sample_submission(comp))
    return Trial(comp.name, "autogluon", parse_duration(limit), wall, float(result["score"]), None, rows,
                 checked=True, note=f"best model {result['model']}")


def result_rows(trials: list[Trial]) -> list[dict]:
    """The result table: per trial a score row (nested where there is one, the peer AutoGluon at the
    same limit) and a wall-time row; every row keeps its trial so a later call can add to the grid."""
    peers = {(t.competition, t.limit_s, t.rows): t for t in trials if t.system == "autogluon" and t.oof is not None}
    out = []
    for t in sorted(trials, key=lambda t: (t.competition, t.system, t.limit_s)):
        comp = COMPETITIONS[t.competition]
        label = (f"{t.competition} scikit-learn members alone" if t.system == "sklearn-members" else
                 f"{t.competition} {t.system} {format_duration(t.limit_s)}{f' ({t.rows} rows)' if t.rows else ''}")
        trial = dataclasses.asdict(t)
        if t.oof is None:
            out.append(row(f"{label}: failed", t.wall_s, "s", trial=trial))
            continue
        peer = peers.get((t.competition, t.limit_s, t.rows)) if t.system == "kaggle-lora" else None
        out.append(row(f"{label}: OOF {comp.metric}", t.oof, comp.metric, peer.oof if peer else None,
                       comp.higher_is_better, trial=trial))
        if t.nested is not None:
            out.append(row(f"{label}: nested {comp.metric}", t.nested, comp.metric))
        out.append(row(f"{label}: wall", t.wall_s, "s", peer.wall_s if peer else None, False,
                       within_limit=t.wall_s <= 1.1 * t.limit_s))
    return out


def load_trials() -> list[Trial]:
    return kept_trials(NAME, Trial)


def plot(trials: list[Trial]) -> Path:
    """Score against wall time, a panel per competition; the scikit-learn members' blend as a line."""
    import matplotlib  # only for the figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comps = [c for c in COMPETITIONS.values() if any(t.competition == c.name for t in trials)]
    fig, axes = plt.subplots(1, len(comps), figsize=(5 * len(comps), 4), squeeze=False)
    for ax, comp in zip(axes[0], comps, strict=True):
        mine = [t for t in trials if t.competition == comp.name and t.oof is not None]
        for system, style in (("kaggle-lora", "o-"), ("autogluon", "s--")):
            pts = sorted((t for t in mine if t.system == system), key=lambda t: t.limit_s)
            if not pts:
                continue
            ys = [t.nested if t.nested is not None else t.oof for t in pts]
            ax.plot([t.wall_s / 60 for t in pts], ys, style, label=system + (" (nested)" if system == "kaggle-lora"
                                                                              else " (its validation)"))
            for t, y in zip(pts, ys, strict=True):
                ax.annotate(f"{format_duration(t.limit_s)}{'*' if t.rows else ''}", (t.wall_s / 60, y),
                            textcoords="offset points", xytext=(4, 4), fontsize=8)
        for t in (t for t in mine if t.system == "sklearn-members"):
            ax.axhline(t.nested if t.nested is not None else t.oof, color="grey", linestyle=":",
                       label=f"scikit-learn members ({t.wall_s:.0f} s)")
        ax.set_title(comp.name)
        ax.set_xlabel("wall time (min), 2 CPU cores")
        ax.set_ylabel(f"{comp.metric} ({'higher' if comp.higher_is_better else 'lower'} is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Score against wall time, --time-limit 5/15/60 min (* = a train-row subset)", fontsize=10)
    fig.tight_layout()
    path = RESULTS / f"{NAME}.png"
    fig.savefig(path, dpi=110)
    return path


def parse_subsets(items: list[str]) -> dict[tuple[str, float], int]:
    """``competition:limit=rows`` -> ``{(competition, limit_s): rows}``."""
    out = {}
    for item in items:
        where, rows = item.split("=", 1)
        comp, limit = where.split(":", 1)
        out[(comp, parse_duration(limit))] = int(rows)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--competitions", default=",".join(COMPETITIONS))
    p.add_argument("--limits", default="5m,15m,60m")
    p.add_argument("--subset", action="append", default=["nlp-getting-started:5m=2500"],
                   metavar="COMPETITION:LIMIT=ROWS", help="train on a seeded row subset at that limit")
    p.add_argument("--peer-limits", default=None, help="limits AutoGluon runs at (default: --limits)")
    p.add_argument("--no-peer", action="store_true", help="skip AutoGluon")
    p.add_argument("--force", action="store_true", help="run trials already in the result file again")
    p.add_argument("--plot-only", action="store_true")
    args = p.parse_args()
    trials = load_trials()
    subsets = parse_subsets(args.subset)
    peer_limits = (args.peer_limits or args.limits).split(",")
    if not args.plot_only:
        done = {t.key for t in trials if t.oof is not None}
        solutions = derive_solutions(DATASETS, Path(tempfile.mkdtemp(prefix="kl-tts-solutions-")))
        server = FakeKaggleServer(DATASETS, solutions).start()
        try:
            for name in args.competitions.split(","):
                comp = COMPETITIONS[name]
                todo = [("sklearn-members", "5m", None)] + [
                    (system, limit, subsets.get((name, parse_duration(limit))))
                    for limit in args.limits.split(",") for system in ("kaggle-lora", "autogluon")
                    if system == "kaggle-lora" or (not args.no_peer and limit in peer_limits)]
                for system, limit, rows in todo:
                    if (name, system, parse_duration(limit), rows) in done and not args.force:
                        continue
                    trial = (autogluon_trial(comp, limit, rows) if system == "autogluon" else
                             kaggle_lora_trial(comp, limit, server, no_adapters=system == "sklearn-members",
                                               rows=rows))
                    if trial is None:
                        continue
                    trials = [t for t in trials if t.key != trial.key] + [trial]
                    print(f"  -> {trial}", flush=True)
                    write_results(NAME, result_rows(trials))  # after every trial: a stopped run keeps the rest
        finally:
            server.stop()
    write_results(NAME, result_rows(trials))
    print(f"plot: {plot(trials)}")


if __name__ == "__main__":
    main()
