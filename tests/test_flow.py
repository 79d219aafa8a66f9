"""The kaggle-lora flow for real: Prefect's test harness, the real kaggle client against the fake
Kaggle server, a tiny random model with the real MiniLM tokenizer.

One harness for the session (conftest; its server start costs ~10 s). Checked: a scored submission whose
score equals the server's own scoring; a rerun in a new process is Cached in every task and
trains nothing; a vanished output file is recomputed; 429/500/failed-upload/lost-answer faults
are retried inside real flow runs and the submission is never duplicated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lora_tasks.options import RunOptions
from lora_tasks.prefect.flow import kaggle_lora
from lora_tasks.steps import PipelineError
from lora_tasks.testing import fake_kaggle as fk

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
# subprocesses run this checkout's package, whichever copy is installed
SUBPROCESS_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}

FAST = dict(tiny=True, epochs=1, max_seq_len=64, retry_delay_s=0.05, score_poll_s=0.05)


def run_flow(**given):
    """The flow with the RunOptions of ``given`` (its one parameter)."""
    return kaggle_lora(RunOptions(**given))


@pytest.fixture(scope="module")
def demo_run(harness, fake_creds, demo_server, tmp_path_factory):
    server, _ = demo_server
    work = tmp_path_factory.mktemp("work")
    summary = run_flow(competition="demo", kaggle_endpoint=server.url, work_dir=str(work), **FAST)
    return summary, work


def _artifact_files(work: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (work / "artifacts").glob("*") if p.is_file()}


def test_demo_flow_submits_and_reads_the_servers_score(demo_run, demo_server):
    summary, work = demo_run
    server, served = demo_server
    assert summary.submitted and len(server.submissions) == 1
    stored = server.submissions[0]
    assert f"[run:{summary.run_id}]" in stored.description
    sub = pd.read_csv(summary.submission_path)
    expected = fk.score_submission(sub, pd.read_csv(served / "demo" / "solution.csv"), "accuracy")
    assert summary.public_score == pytest.approx(expected) == pytest.approx(stored.public_score)
    assert stored.content == Path(summary.submission_path).read_bytes()
    # fold 1 trains unless fold 0 failed or added nothing to the members' blend
    assert [row["adapter"] for row in summary.cv] in (["fold 0", "fold 1"], ["fold 0"])
    assert set(summary.task_states.values()) == {"Completed"} and "train-members" in summary.task_states
    members = {row["member"]: row for row in summary.members}
    # the tiny random encoder may end at the majority class: then its adapters leave the blend, saying why
    blended = [m for m in ("lora", "lightgbm", "catboost", "hist_gbm", "extra_trees", "linear") if m in members]
    dropped = [m for m in members if m.startswith("no adapters in the blend:")]
    assert {"hist_gbm", "linear", "lightgbm", "catboost"} <= set(blended), summary.members
    assert ("lora" in blended) != bool(dropped), summary.members
    blend_row = next(m for m in members if m.startswith("blend (") and m.endswith(")"))
    assert blend_row in ("blend (caruana)", "blend (stacking)")
    if blend_row == "blend (caruana)":
        weights = [members[m]["weight"] for m in blended]
        assert sum(weights) == pytest.approx(1.0, abs=1e-3) and min(weights) >= 0
    assert members[blend_row]["OOF accuracy"] == pytest.approx(summary.oof_score, abs=1e-5)
    assert (work / "results").is_dir() and any((work / "results").iterdir()), "results persist in the project store"


def test_rerun_in_a_new_process_is_cached_and_trains_nothing(demo_run, demo_server):
    from prefect.settings import PREFECT_API_URL

    summary, work = demo_run
    server, _ = demo_server
    before = _artifact_files(work)
    out = work / "rerun.json"
    env = {**SUBPROCESS_ENV, "PREFECT_API_URL": PREFECT_API_URL.value()}
    cmd = [sys.executable, str(REPO / "flows" / "submit.py"), "--competition", "demo", "--tiny", "--epochs", "1",
           "--max-seq-len", "64", "--work-dir", str(work), "--kaggle-endpoint", server.url, "--no-submit",
           "--json-out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rerun = json.loads(out.read_text())
    assert rerun["task_states"] and set(rerun["task_states"].values()) == {"Cached"}, rerun["task_states"]
    folds = len(summary.cv)  # 1 when fold 0 failed or added nothing to the members' blend
    assert all(f"train-fold-{k}" in rerun["task_states"] for k in range(folds))
    assert rerun["submission_path"] == summary.submission_path and rerun["oof_score"] == summary.oof_score
    assert _artifact_files(work) == before, "a cached rerun writes no new adapter or prediction file"
    assert f"Cross-validation (demo, {folds} adapters)" in proc.stdout
    assert f"{len(rerun['task_states'])} cached" in proc.stdout
    assert "Ensemble (out-of-fold):" in proc.stdout and "hist_gbm" in proc.stdout


def test_a_vanished_output_is_recomputed(demo_run, demo_server):
    summary, work = demo_run
    server, _ = demo_server
    submission = Path(summary.submission_path)
    submission.unlink()
    again = run_flow(competition="demo", kaggle_endpoint=server.url, work_dir=str(work), submit=False, **FAST)
    assert again.task_states["write-submission"] == "Completed", again.task_states
    assert again.task_states["train-fold-0"] == "Cached" and again.task_states["combine"] == "Cached"
    assert submission.is_file() and again.submission_path == summary.submission_path
    third = run_flow(competition="demo", kaggle_endpoint=server.url, work_dir=str(work), submit=False, **FAST)
    assert set(third.task_states.values()) == {"Cached"}, "the repaired result is cached in turn"


@pytest.mark.skipif(not DATASETS.is_dir(), reason=f"shared datasets missing at {DATASETS}")
def test_titanic_subset_survives_faults_without_duplicate_submission(harness, fake_creds, tmp_path):
    solutions = fk.derive_solutions(DATASETS, tmp_path / "solutions")
    with fk.serve(DATASETS, solutions, pending_polls=1) as server:
        server.inject(fk.FAULT_429, times=1, method="ListDataFiles", retry_after=0.05)
        server.inject(fk.FAULT_500, times=1, method="zip")
        server.inject(fk.FAULT_UPLOAD_FAILED, times=1, method="upload")
        server.inject(fk.FAULT_LOSE_RESPONSE, times=1, method="CreateSubmission")
        server.inject(fk.FAULT_500, times=1, method="ListSubmissions")
        summary = run_flow(
            competition="titanic", kaggle_endpoint=server.url, work_dir=str(tmp_path / "work"),
            max_train_rows=160, folds=2, combine="merge", **FAST,
        )
        calls = [route for _, route in server.requests]
        assert len(server.submissions) == 1, "retries must never submit twice"
        assert summary.reused, "the lost answer was recovered by finding the run's own submission"
        assert calls.count("ListDataFiles") >= 2 and calls.count("zip") >= 2
        assert calls.count("upload") >= 2 and calls.count("CreateSubmission") >= 1
    sub = pd.read_csv(summary.submission_path)
    assert list(sub.columns) == ["PassengerId", "Survived"] and len(sub) == 418
    expected = fk.score_submission(sub, pd.read_csv(solutions["titanic"]), "accuracy")
    assert summary.public_score == pytest.approx(expected)
    assert summary.combine == "merge" and summary.slug == "titanic"


def test_a_modernbert_folder_runs_the_whole_flow(harness, fake_creds, demo_server, tmp_path, fixtures_dir):
    """--model with a ModernBERT folder: its tokenizer, LoRA on the fused Wqkv, merged into one
    model, submitted and scored (the tiny committed ModernBERT checkpoint)."""
    import mlx.core as mx

    server, served = demo_server
    folder = fixtures_dir / "modernbert_tiny"
    fast = {k: v for k, v in FAST.items() if k != "tiny"}
    summary = run_flow(competition="demo", kaggle_endpoint=server.url, work_dir=str(tmp_path / "work"),
                          model=str(folder), combine="merge", max_train_rows=120, **fast)
    assert summary.submitted and summary.public_score is not None and summary.combine == "merge"
    sub = pd.read_csv(summary.submission_path)
    assert summary.public_score == pytest.approx(
        fk.score_submission(sub, pd.read_csv(served / "demo" / "solution.csv"), "accuracy"))
    plans = list((tmp_path / "work" / "artifacts").glob("plan-*.json"))
    assert [json.loads(p.read_text())["model"] for p in plans] == [str(folder)]
    adapters = sorted((tmp_path / "work" / "artifacts").glob("adapter-*.safetensors"))
    assert len(adapters) == 2
    keys = list(mx.load(str(adapters[0])))
    assert any(".attn.Wqkv." in k for k in keys), keys[:5]
    assert not any(".attention.self.query" in k for k in keys), "a ModernBERT adapter has no BERT paths"


def test_an_mpnet_folder_trains_top_layers_from_the_prefix_in_the_flow(harness, fake_creds, demo_server, tmp_path,
                                                                       fixtures_dir):
    """--model with an MPNet folder and --top-layers 1: its tokenizer (pad id 1), the relative
    position bias through the frozen-prefix cache, adapters on the top layer only, blended and scored."""
    import mlx.core as mx

    server, served = demo_server
    folder = fixtures_dir / "mpnet_tiny"
    fast = {k: v for k, v in FAST.items() if k != "tiny"}
    summary = run_flow(competition="demo", kaggle_endpoint=server.url, work_dir=str(tmp_path / "work"),
                          model=str(folder), top_layers=1, max_train_rows=120, **fast)
    assert summary.submitted and summary.public_score is not None and summary.combine == "blend"
    sub = pd.read_csv(summary.submission_path)
    assert summary.public_score == pytest.approx(
        fk.score_submission(sub, pd.read_csv(served / "demo" / "solution.csv"), "accuracy"))
    assert list((tmp_path / "work").rglob("prefix-*.npy")), "the frozen layers ran once into the prefix cache"
    adapters = sorted((tmp_path / "work" / "artifacts").glob("adapter-*.safetensors"))
    keys = [k for k in mx.load(str(adapters[0])) if ".lora_" in k]
    assert keys and all(".encoder.layer.2." in k for k in keys), keys[:5]


def test_adapter_sets_of_other_encoders_and_presets_blend_as_members(harness, fake_creds, demo_server, tmp_path,
                                                                     fixtures_dir, monkeypatch):
    """The main set on a DistilBERT folder, a second set (``expressive@<RoBERTa folder>:lr=...``,
    from the competition config's ``[training]`` recipe) with its own tokenizer (pad id 1), preset
    and learning rate on the same folds: both blended as members, scored. A copy of the main set
    is refused before anything trains."""
    from lora_tasks.data.competition import default_competitions_dir

    server, served = demo_server
    roberta, distilbert = fixtures_dir / "roberta_tiny", str(fixtures_dir / "distilbert_tiny")
    configs = tmp_path / "competitions"
    configs.mkdir()
    (configs / "demo.toml").write_text((default_competitions_dir() / "demo.toml").read_text()
                                       + f'adapter_sets = ["expressive@{roberta}:lr=4e-3"]\n')
    monkeypatch.setenv("KAGGLE_LORA_COMPETITIONS_DIR", str(configs))
    fast = {k: v for k, v in FAST.items() if k != "tiny"}
    summary = run_flow(competition="demo", kaggle_endpoint=server.url, work_dir=str(tmp_path / "work"),
                          model=distilbert, max_train_rows=120, **fast)
    assert summary.submitted and summary.public_score == pytest.approx(
        fk.score_submission(pd.read_csv(summary.submission_path), pd.read_csv(served / "demo" / "solution.csv"),
                            "accuracy"))
    members = {m["member"] for m in summary.members}
    assert {"hist_gbm", "linear"} <= members, summary.members
    # each adapter set is blended, or (tiny encoders may end at the majority class) left out with the reason
    notes = " ".join(m for m in members if m.startswith("no adapters in the blend:"))
    assert "lora" in members or "fold 0 ended at one class" in notes or "adapters stop" in notes
    assert "lora_expressive_roberta_tiny_lr0.004" in members or "adapter set lora_expressive_roberta_tiny" in notes
    set_folds = ["lora_expressive_roberta_tiny_lr0.004 fold 0", "lora_expressive_roberta_tiny_lr0.004 fold 1"]
    assert [r["adapter"] for r in summary.cv] in (["fold 0", "fold 1", *set_folds], ["fold 0", *set_folds])
    assert {"train-lora_expressive_roberta_tiny_lr0.004-fold-0", "train-lora_expressive_roberta_tiny_lr0.004-fold-1",
            "tokenize-lora_expressive_roberta_tiny_lr0.004"} <= set(summary.task_states)
    plans = [json.loads(p.read_text()) for p in (tmp_path / "work" / "artifacts").glob("plan-*.json")]
    settings = {p["model"]: p["settings"] for p in plans}
    assert len(plans) == 2 and (settings[str(roberta)]["preset"], settings[str(roberta)]["learning_rate"]) == (
        "expressive", 4e-3)
    assert settings[distilbert]["learning_rate"] != 4e-3  # the main set keeps its own rate
    assert {p["settings"]["n_folds"] for p in plans} == {2}  # one set of folds for every member
    adapters = set((tmp_path / "work" / "artifacts").glob("adapter-*"))
    with pytest.raises(PipelineError, match="trains exactly what the main set trains"):
        run_flow(competition="demo", kaggle_endpoint=server.url, work_dir=str(tmp_path / "work"), model=distilbert,
                    adapter_sets=[f"{settings[distilbert]['preset']}@{distilbert}"], max_train_rows=120, **fast)
    assert set((tmp_path / "work" / "artifacts").glob("adapter-*")) == adapters  # refused before training
    merged = run_flow(competition="demo", kaggle_endpoint=server.url, work_dir=str(tmp_path / "work"),
                         model=distilbert, max_train_rows=120, combine="merge", submit=False, **fast)
    assert merged.combine == "merge" and [r["adapter"] for r in merged.cv] == ["fold 0", "fold 1"]  # recipe set left out
    # the same main folds (fold 0's file is the first run's; fold 1 trains here when the first run
    # stopped after fold 0: merge has no members to compare with)
    assert adapters <= set((tmp_path / "work" / "artifacts").glob("adapter-*"))
    with pytest.raises(ValueError, match="need combine='blend'"):
        run_flow(competition="demo", kaggle_endpoint=server.url, work_dir=str(tmp_path / "w2"), combine="merge",
                    adapter_sets=["expressive"], **FAST)


def test_cli_reports_a_failure_clearly(tmp_path):
    """No server at the endpoint: the CLI exits non-zero with one clear line (no traceback dump)."""
    env = {**SUBPROCESS_ENV, "KAGGLE_USERNAME": fk.DEFAULT_USERNAME, "KAGGLE_KEY": fk.DEFAULT_KEY,
           "KAGGLE_CONFIG_DIR": str(tmp_path)}
    cmd = [sys.executable, str(REPO / "flows" / "submit.py"), "--competition", "no-such-competition", "--tiny",
           "--work-dir", str(tmp_path / "w"), "--kaggle-endpoint", "http://127.0.0.1:9", "--retry-delay", "0.01"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 1
    assert "kaggle-lora failed: KaggleConnectionError" in proc.stderr


def test_help_lists_the_options():
    proc = subprocess.run([sys.executable, str(REPO / "flows" / "submit.py"), "--help"], capture_output=True, text=True,
                          timeout=60, env=SUBPROCESS_ENV)
    assert proc.returncode == 0
    for option in ("--competition", "--no-submit", "--model", "--folds", "--adapters", "--refresh", "--top-layers", "--combine", "--blend-method", "--no-members",
                   "--data-dir", "--kaggle-endpoint", "--task-runner", "--adapter-set", "--no-adapter-sets"):
        assert option in proc.stdout


def test_cli_plan_shows_what_would_be_trained_and_trains_nothing(tmp_path):
    """``--plan``: the profile and each adapter set's settings with their reasons (the rules, the
    competition's recipe, the options), in seconds, without Prefect or training."""
    cmd = [sys.executable, str(REPO / "flows" / "submit.py"), "--competition", "demo", "--plan", "--work-dir",
           str(tmp_path / "w"), "--epochs", "1", "--adapter-set", "expressive:epochs=2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=SUBPROCESS_ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "### Data profile: demo" in out and "Nothing trained (--plan)" in out
    assert "Adapter set `lora` (minilm; 2 folds)" in out and "Adapter set `lora_expressive_e2`" in out
    assert "- config: max_seq_len = 64 ([training] of demo.toml)" in out and "- override: epochs = 1" in out
    assert "- override: epochs = 2" in out  # the set's own epochs, after the run's
    artifacts = tmp_path / "w" / "artifacts"
    assert len(list(artifacts.glob("plan-*.json"))) == 2
    assert not list(artifacts.glob("adapter-*")) and not (tmp_path / "w" / "results").exists()
    bad = subprocess.run(cmd[:-2] + ["--adapter-set", "efficient"], capture_output=True, text=True, timeout=300,
                         env=SUBPROCESS_ENV)
    assert bad.returncode == 1 and "trains exactly what the main set trains" in bad.stderr  # demo's main is efficient


def test_cli_parses_recipe_options(capsys):
    from lora_tasks.cli import build_run_parser, options_from_args

    parser = build_run_parser()

    def options(*argv):
        return options_from_args(parser.parse_args(["--competition", "t", *argv]), parser)

    got = options("--top-layers", "all", "--adapter-set", "expressive:epochs=2")
    assert (got.top_layers, got.adapter_sets) == ("all", ["expressive:epochs=2"])
    got = options("--top-layers", "2")
    assert (got.top_layers, got.adapter_sets) == (2, None)  # None: the config's recipe decides
    assert options("--no-adapter-sets").adapter_sets == []
    with pytest.raises(SystemExit):  # RunOptions' rule, the one the [training] table uses
        options("--top-layers", "0")
    assert "top_layers: Value error, 0: give a positive number of layers, or 'all'" in capsys.readouterr().err
