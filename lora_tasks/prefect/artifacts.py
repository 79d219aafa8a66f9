"""Artifacts for the Prefect UI: the renderers are plain functions (tested without Prefect); the
flow publishes them, so they appear on every run, also when the tasks were cached."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from lora_tasks.steps.combine import CombineResult
from lora_tasks.steps.plan import Plan
from lora_tasks.steps.train import AdapterResult


def cv_rows(results: Sequence[AdapterResult], label: str = "fold") -> list[dict[str, Any]]:
    """One row per adapter for the CV table artifact and the CLI (``label``: ``fold``, or an
    adapter set's ``lora_expressive fold``)."""
    rows = []
    for r in sorted(results, key=lambda r: r.fold):
        rows.append({
            "adapter": f"{label} {r.fold}" + (f" ({r.seeds} seeds, averaged)" if r.seeds > 1 else ""),
            "train rows": r.n_train,
            "valid rows": r.n_valid,
            "epochs": len(r.history),  # the first seed's; fewer than planned: the time limit or the members decision
            "best epoch": r.best_epoch,
            f"valid {r.metric}": None if r.best_score is None else round(float(r.best_score), 5),
            "seconds": round(r.seconds, 1),
            "samples/s": round(r.samples_per_s, 1),
        })
    return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "(no rows)"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join("" if row.get(c) is None else str(row.get(c)) for c in cols) + " |" for row in rows]
    return "\n".join(lines)


def blend_rows(combined: CombineResult) -> list[dict[str, Any]]:
    """One row per ensemble member (``lora`` = the mean of the fold adapters), then the blend:
    OOF scores under the competition metric and the weights fit on them."""
    col = f"OOF {combined.metric}"
    how = combined.blend_method or ("merged adapters" if combined.method == "merge" else "mean of folds")
    rows = [{"member": name, col: round(score, 5), "weight": round(combined.weights.get(name, 0.0), 4)}
            for name, score in combined.member_scores.items()]
    cut = f", cut at {combined.threshold:.2f}" if combined.threshold is not None else ""
    rows.append({"member": f"blend ({how}{cut})", col: round(combined.oof_score, 5), "weight": None})
    if combined.blend_cv_score is not None:
        fitted = "weights and cut" if combined.blend_method and combined.threshold is not None else (
            "cut" if combined.threshold is not None else "weights")
        rows.append({"member": f"blend, {fitted} fit out-of-fold", col: round(combined.blend_cv_score, 5), "weight": None})
    rows += [{"member": f"no adapters in the blend: {note}", col: None, "weight": None} for note in combined.notes]
    return rows


_BAR = "█"


def learning_curve_markdown(results: Sequence[AdapterResult], width: int = 30) -> str:
    """A learning curve as a markdown table with text bars (no plotting library needed):
    training loss and the validation metric per fold and epoch, bars scaled to the largest loss."""
    rows = [(r.fold, h) for r in sorted(results, key=lambda r: r.fold) for h in r.history]
    if not rows:
        return "No epochs recorded."
    top = max(h["train_loss"] for _, h in rows) or 1.0
    metric = next((k for _, h in rows for k in h if k.startswith("valid_")), None)
    lines = ["### Learning curve", "", f"| fold | epoch | train loss | | {metric or 'valid'} |", "|---|---|---|---|---|"]
    for fold, h in rows:
        bar = _BAR * max(1, round(width * h["train_loss"] / top))
        valid = "" if metric is None or metric not in h else f"{h[metric]:.4f}"
        lines.append(f"| {fold} | {h['epoch']} | {h['train_loss']:.4f} | `{bar}` | {valid} |")
    return "\n".join(lines)


def learning_curve_plot_markdown(results: Sequence[AdapterResult]) -> str:
    """The learning curve as an SVG plot (one line per fold) inlined as a data URI: both Prefect
    UIs (V1 and V2) render it in a markdown artifact, and no file server is needed."""
    from lora_tasks.plots import learning_curve_svg, svg_data_uri

    ordered = sorted(results, key=lambda r: r.fold)
    svg = learning_curve_svg([r.history for r in ordered], [f"fold {r.fold}" for r in ordered])
    return f"### Learning curve\n\n![learning curve: training loss and validation metric per fold]({svg_data_uri(svg)})"


def submission_markdown(check: Any, submission: Any = None, scored: Any = None) -> str:
    """What was checked and what Kaggle said, for the submission artifact."""
    lines = ["### Submission", "", "| | |", "|---|---|", f"| file | `{check.path}` |", f"| rows | {check.rows} |",
             f"| columns | {', '.join(check.columns)} |", f"| sha256 | `{check.sha256[:16]}...` |", "| check | passed |"]
    if submission is not None:
        lines += [f"| Kaggle ref | {submission.ref} |", f"| run id | `{submission.run_id}` |",
                  f"| reused (retry found it) | {submission.reused} |"]
    if scored is not None:
        lines += [f"| status | {scored.status} |", f"| public score | {scored.public_score} |"]
    return "\n".join(lines)


def artifact_key(slug: str, what: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    raw = f"{slug}-{what}".lower()
    return "".join(ch if ch.isalnum() else "-" for ch in raw).strip("-")[:100]


def run_decisions(results: Sequence[AdapterResult]) -> list[str]:
    """What the run decided once training had started, fold by fold: a fold trained again at
    another learning rate, a fold dropped at one class, and fold 0's members decision with its
    measured gain (whether the later folds trained or the members blended alone)."""
    lines = []
    for r in sorted(results, key=lambda r: r.fold):
        if r.retried:
            lines.append(r.retried)
        if r.failed:
            lines.append(f"fold {r.fold} dropped: {r.failed}")
        if r.gain is not None:
            lines.append(f"fold {r.fold}: {r.gain.reason}")
    return lines


def settings_markdown(plan: Plan, decisions: Sequence[str] = ()) -> str:
    """The plan's settings artifact; ``decisions``: what the run decided after the plan
    (:func:`run_decisions`), appended when training has run."""
    text = f"### Settings ({plan.model})\n\n" + plan.settings_markdown()
    if decisions:
        text += "\n\n### Decided during the run\n\n" + "\n".join(f"- {d}" for d in decisions)
    return text


def publish_settings(plan: Plan, decisions: Sequence[str] = ()) -> None:
    """The settings artifact; published again with the run's ``decisions`` once the folds have
    trained, which makes a new version of it (the UI shows the latest)."""
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(key=artifact_key(plan.slug, "settings"), markdown=settings_markdown(plan, decisions),
                             description="Preset and training settings, the rules that chose them, and what "
                                         "the run decided after")


def publish_plan(plan_path: Path) -> None:
    from prefect.artifacts import create_markdown_artifact

    plan = Plan.load(plan_path)
    create_markdown_artifact(key=artifact_key(plan.slug, "data-profile"), markdown=plan.profile_markdown,
                             description="What the pipeline saw in train.csv")
    publish_settings(plan)
    if plan.features is not None:
        create_markdown_artifact(key=artifact_key(plan.slug, "features"), markdown=plan.features_markdown(),
                                 description="Features the table members get without a config, and why")


def publish_training(slug: str, results: Sequence[AdapterResult], combined: CombineResult,
                     cv: list[dict[str, Any]] | None = None) -> None:
    """The CV table (``cv``: rows of every adapter set; default the main set's), the blend table
    and the learning curves of the main set's folds."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    create_table_artifact(key=artifact_key(slug, "cv"), table=cv or cv_rows(results), description="Per-adapter CV metrics")
    create_table_artifact(key=artifact_key(slug, "blend"), table=blend_rows(combined),
                          description="Ensemble members: OOF score and blend weight")
    create_markdown_artifact(key=artifact_key(slug, "learning-curve"), markdown=learning_curve_markdown(results),
                             description="Training loss and validation metric per epoch")
    create_markdown_artifact(key=artifact_key(slug, "learning-curve-plot"), markdown=learning_curve_plot_markdown(results),
                             description="Learning curve plot: training loss and validation metric per fold and epoch")


def publish_submission(slug: str, check: Any, submission: Any = None, scored: Any = None) -> None:
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(key=artifact_key(slug, "submission"), markdown=submission_markdown(check, submission, scored),
                             description="Submission check, Kaggle ref and score")


def run_cv_rows(results: Sequence[AdapterResult], set_results: dict[str, Sequence[AdapterResult]]) -> list[dict[str, Any]]:
    """The CV rows of the main set's folds, then of every adapter set's (``<set> fold k``)."""
    return cv_rows(results) + [row for name, rs in set_results.items() for row in cv_rows(rs, f"{name} fold")]
