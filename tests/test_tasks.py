"""The Prefect task layer: content-keyed cache keys, vanished-output repair, retry settings,
artifact renderers, and network retries inside a real flow run against the fake server."""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest

from lora_tasks.prefect import artifacts, tasks
from lora_tasks.prefect.manifest import manifest_problem, record_outputs
from lora_tasks.prefect.runners import BLAS_THREAD_VARS, make_task_runner, share_cores
from lora_tasks.steps import (
    DEMO_SLUG,
    AdapterResult,
    CombineResult,
    TokenFiles,
    download_data,
    submit_run,
    train_adapter,
)
from lora_tasks.testing import fake_kaggle as fk
from lora_tasks.testing.demo import build_demo_competition


def test_fingerprint_follows_content_not_path(tmp_path):
    a = tmp_path / "a.csv"
    a.write_text("x,y\n1,2\n")
    b = tmp_path / "elsewhere" / "b.csv"
    b.parent.mkdir()
    shutil.copy(a, b)
    assert tasks.fingerprint(a) == tasks.fingerprint(b)
    b.write_text("x,y\n1,3\n")
    assert tasks.fingerprint(a) != tasks.fingerprint(b)
    assert tasks.fingerprint(tmp_path / "gone.csv").startswith("missing:")
    tokens = TokenFiles(train=a, test=b)
    assert tasks.fingerprint(tokens) == {"train": tasks.fingerprint(a), "test": tasks.fingerprint(b)}


def test_folder_fingerprint_ignores_hidden_manifest(tmp_path):
    (tmp_path / "train.csv").write_text("a\n1\n")
    before = tasks.fingerprint(tmp_path)
    (tmp_path / ".kaggle_download.json").write_text('{"date": "now"}')
    assert tasks.fingerprint(tmp_path) == before
    (tmp_path / "test.csv").write_text("a\n2\n")
    assert tasks.fingerprint(tmp_path) != before


def test_outputs_exist_walks_results(tmp_path):
    f = tmp_path / "x.npy"
    f.write_bytes(b"1")
    assert tasks.outputs_exist(TokenFiles(train=f, test=f))
    assert tasks.outputs_exist([{"a": f}, 3, "text"])
    assert not tasks.outputs_exist(TokenFiles(train=f, test=tmp_path / "gone.npy"))
    (tmp_path / "empty").mkdir()
    assert not tasks.outputs_exist(tmp_path / "empty")


def test_every_task_keeps_its_steps_signature():
    """The tasks are the step functions (same parameters, keyword-only ones included), so the
    orchestration's keyword calls reach the steps unchanged; each step the run executes has one."""
    import ast
    import inspect

    from lora_tasks.steps import orchestrate

    tree = ast.parse(Path(orchestrate.__file__).read_text())
    submitted = {getattr(orchestrate, node.args[0].id) for node in ast.walk(tree) if isinstance(node, ast.Call)
                 and isinstance(node.func, ast.Attribute) and node.func.attr == "submit" and node.args
                 and isinstance(node.args[0], ast.Name)}
    assert len(submitted) == 13 and submitted <= set(tasks.TASKS), submitted - set(tasks.TASKS)
    for step, task_obj in tasks.TASKS.items():
        assert inspect.signature(task_obj.fn) == inspect.signature(step), step.__name__
        assert task_obj.fn.__wrapped__ is step and task_obj.name == tasks.STEP_TASKS[step].name
    plan_task = tasks.TASKS[orchestrate.plan_training]
    with pytest.raises(TypeError):  # model, tiny, ... stay keyword-only, as in plan_training
        plan_task.fn("demo", "data", "out", None, True)


def test_cache_key_moves_along_the_repair_chain(tmp_path):
    """A record whose files vanished is skipped for a derived key; a valid one is kept."""
    from prefect.filesystems import LocalFileSystem
    from prefect.results import ResultStore

    results = tmp_path / "results"
    store = ResultStore(result_storage=LocalFileSystem(basepath=str(results)))
    policy = tasks.ContentCache()
    out = tmp_path / "out.npy"
    out.write_bytes(b"data")
    assert policy.usable_key(store, "k0") == "k0"  # nothing stored yet
    store.write(obj=out, key="k0")
    record_outputs(results, out)
    assert policy.usable_key(store, "k0") == "k0"  # stored and its file exists
    out.unlink()
    repaired = policy.usable_key(store, "k0")
    assert repaired != "k0" and repaired == policy.usable_key(store, "k0"), "the repair key is deterministic"
    out.write_bytes(b"data again")
    store.write(obj=out, key=repaired)
    record_outputs(results, out)
    out.unlink()
    assert policy.usable_key(store, "k0") not in ("k0", repaired)


def test_the_manifest_hook_adds_no_info_lines_to_a_runs_log(tmp_path, caplog):
    """Prefect announces every on_completion hook at INFO on its task-run logger; a configured run
    drops those two lines for the manifest hook (they doubled every task's lines) but keeps the
    hook's errors and every other line."""
    from prefect.logging import get_logger

    tasks.configure(tmp_path)
    task_runs = get_logger("task_runs")
    with caplog.at_level(logging.INFO, logger=task_runs.name):
        task_runs.info("Running hook 'record_manifest_hook' in response to entering state 'Completed'")
        task_runs.info("Hook 'record_manifest_hook' finished running successfully")
        task_runs.error("An error was encountered while running hook 'record_manifest_hook'")
        task_runs.info("Finished in state Completed()")
    assert [r.getMessage() for r in caplog.records] == [
        "An error was encountered while running hook 'record_manifest_hook'", "Finished in state Completed()"]


def test_a_cached_result_without_its_manifest_is_not_trusted(tmp_path):
    from prefect.filesystems import LocalFileSystem
    from prefect.results import ResultStore

    results = tmp_path / "results"
    store = ResultStore(result_storage=LocalFileSystem(basepath=str(results)))
    out = tmp_path / "out.npy"
    out.write_bytes(b"data")
    store.write(obj=out, key="k0")
    assert tasks.ContentCache().usable_key(store, "k0") == "k0", "just written: its manifest is on its way"
    old = time.time() - 3600  # an hour-old record without a manifest: its hook never ran
    os.utime(results / "k0", (old, old))
    assert tasks.ContentCache().usable_key(store, "k0") != "k0"
    record_outputs(results, out)
    assert tasks.ContentCache().usable_key(store, "k0") == "k0"


def test_manifest_names_a_missing_changed_or_added_file(tmp_path):
    """Folders are checked file by file (hidden bookkeeping files aside); files by size and sha256."""
    results, folder = tmp_path / "results", tmp_path / "data" / "demo"
    folder.mkdir(parents=True)
    (folder / "train.csv").write_text("a,b\n1,2\n")
    (folder / "test.csv").write_text("a\n1\n")
    (folder / ".kaggle_download.json").write_text("{}")
    adapter = tmp_path / "adapter.safetensors"
    adapter.write_bytes(b"weights")
    result = AdapterResult(fold=0, adapter_path=adapter, oof_path=folder / "train.csv", test_path=folder / "test.csv",
                           n_train=1, n_valid=1, best_epoch=1, best_score=None, metric="accuracy")
    assert manifest_problem(results, folder).startswith("no readable manifest")
    record_outputs(results, folder)
    record_outputs(results, result)
    assert manifest_problem(results, folder) is None and manifest_problem(results, result) is None
    (folder / ".kaggle_download.json").write_text('{"date": "later"}')
    assert manifest_problem(results, folder) is None, "hidden bookkeeping files are not content"
    (folder / "train.csv").unlink()
    assert manifest_problem(results, folder) == f"{folder / 'train.csv'} is missing"
    (folder / "train.csv").write_text("a,b\n1,3\n")  # same size, other bytes
    assert "train.csv changed (sha256" in manifest_problem(results, folder)
    (folder / "train.csv").write_text("a,b\n1,2\n")
    (folder / "extra.csv").write_text("x\n")
    assert "extra.csv was added" in manifest_problem(results, folder)
    adapter.write_bytes(b"weights, truncated later")
    assert manifest_problem(results, result) == f"{adapter} changed (size 7 -> 24 bytes)"
    assert manifest_problem(results, 3) is None, "a result without files needs no manifest"


def test_network_retry_options_back_off_with_jitter():
    from lora_tasks.kaggle import prefect_retry_condition

    options = tasks.network_retry_options(2.0)
    assert options["retries"] == tasks.NETWORK_RETRIES and options["retry_jitter_factor"] > 0
    assert options["retry_delay_seconds"](4) == [2.0, 4.0, 8.0, 16.0]
    assert options["retry_condition_fn"] is prefect_retry_condition
    for t in tasks.NETWORK_TASKS:
        assert t.retries == tasks.NETWORK_RETRIES and t.retry_condition_fn is prefect_retry_condition
    assert tasks.TASKS[download_data].cache_expiration is not None


def test_tasks_use_the_project_result_store(tmp_path):
    run = tasks.configure(tmp_path / "w")
    store = run[train_adapter].result_storage
    assert isinstance(store, Path) and store == (tmp_path / "w").resolve() / "results"
    assert isinstance(run[train_adapter].cache_policy, tasks.ContentCache)
    assert run[submit_run].cache_policy is not None and not isinstance(run[submit_run].cache_policy, tasks.ContentCache)
    refreshed = tasks.configure(tmp_path / "w", refresh=True)  # RunOptions.refresh: every cached task runs again
    assert refreshed[train_adapter].refresh_cache and refreshed[download_data].refresh_cache
    assert not run[train_adapter].refresh_cache and not refreshed[submit_run].refresh_cache
    assert tasks.record_manifest_hook in run[download_data].on_completion_hooks
    assert tasks.record_manifest_hook not in run[submit_run].on_completion_hooks


def _result(fold: int, scores: list[float]) -> AdapterResult:
    history = [{"epoch": e + 1, "train_loss": 0.7 - 0.1 * e, "valid_accuracy": s} for e, s in enumerate(scores)]
    return AdapterResult(fold=fold, adapter_path=Path("a"), oof_path=Path("o"), test_path=Path("t"), n_train=80,
                           n_valid=20, best_epoch=len(scores), best_score=max(scores), metric="accuracy",
                           history=history, seconds=1.234, samples_per_s=50.0)


def test_renderers():
    results = [_result(1, [0.6, 0.7]), _result(0, [0.5, 0.8])]
    rows = artifacts.cv_rows(results)
    assert [r["adapter"] for r in rows] == ["fold 0", "fold 1"] and rows[0]["valid accuracy"] == 0.8
    averaged = artifacts.cv_rows([replace(results[0], seeds=2)])
    assert averaged[0]["adapter"] == "fold 1 (2 seeds, averaged)"
    table = artifacts.markdown_table(rows)
    assert table.splitlines()[0].startswith("| adapter |") and len(table.splitlines()) == 4
    curve = artifacts.learning_curve_markdown(results, width=10)
    lines = [line for line in curve.splitlines() if line.startswith("| 0 |") or line.startswith("| 1 |")]
    assert len(lines) == 4
    assert lines[0].count("█") == 10 and lines[1].count("█") < 10, "bars scale with the loss"
    assert "valid_accuracy" in curve and "0.8000" in curve
    assert artifacts.artifact_key("house-prices_2", "CV table") == "house-prices-2-cv-table"


def test_the_settings_artifact_gets_the_decisions_made_after_the_plan(tmp_path):
    """Fold 0's members decision (with its measured gain), a retried fold and a dropped one join
    the plan's settings artifact once the folds have trained."""
    from dataclasses import replace

    from lora_tasks.steps.adapter_checks import AdapterGain
    from lora_tasks.steps.plan import Plan

    gain = AdapterGain(False, 0.0, 0.78, 0.78, "accuracy", "adapters stop: nested accuracy ... (gain +0.00000)")
    first = replace(_result(0, [0.6]), gain=gain, retried="fold 0 ended at one class (...); trained again at 3.00e-03")
    second = replace(_result(1, [0.5]), failed="every one of its 20 held-out rows is predicted as class 0")
    decisions = artifacts.run_decisions([second, first])
    assert decisions == ["fold 0 ended at one class (...); trained again at 3.00e-03",
                         "fold 0: adapters stop: nested accuracy ... (gain +0.00000)",
                         "fold 1 dropped: every one of its 20 held-out rows is predicted as class 0"]
    assert artifacts.run_decisions([_result(0, [0.6])]) == []
    from lora_tasks import steps
    from lora_tasks.testing.demo import build_demo_competition

    data = build_demo_competition(tmp_path / "served")
    plan = Plan.load(steps.plan_training("demo", data, tmp_path / "out", tiny=True, max_train_rows=60))
    text = artifacts.settings_markdown(plan, decisions)
    assert text.startswith("### Settings") and "### Decided during the run" in text and "- fold 0: adapters stop" in text
    assert "Decided during the run" not in artifacts.settings_markdown(plan)


def test_blend_rows_show_the_tuned_cut():
    combined = CombineResult("blend", Path("t.npy"), Path("o.npy"), 0.81, "f1", {"lora": 0.6, "tfidf": 0.4}, [0.8],
                               {"lora": 0.79, "tfidf": 0.75}, "caruana", 0.805, threshold=0.42)
    rows = artifacts.blend_rows(combined)
    assert [r["member"] for r in rows] == ["lora", "tfidf", "blend (caruana, cut at 0.42)",
                                           "blend, weights and cut fit out-of-fold"]
    assert rows[2]["OOF f1"] == 0.81 and rows[3]["OOF f1"] == 0.805
    plain = CombineResult("blend", Path("t.npy"), Path("o.npy"), 0.8, "accuracy", {"lora": 1.0}, [0.8], {"lora": 0.8})
    assert [r["member"] for r in artifacts.blend_rows(plain)] == ["lora", "blend (mean of folds)"]


def test_dask_runner_is_built_or_a_clear_error(monkeypatch):
    """Without prefect-dask: a clear error naming the fix. With it: a DaskTaskRunner for a local
    cluster sized for this machine, or for a given scheduler address, whose copy (the flow engine
    runs a duplicate) keeps the settings and the one-API behaviour."""
    import sys


    for var in BLAS_THREAD_VARS:  # what the runners set for their workers is undone after the test
        monkeypatch.setenv(var, "0")
        monkeypatch.delenv(var)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        with pytest.raises(SystemExit, match="pip install prefect-dask"):
            make_task_runner("dask")
    else:
        local = make_task_runner("dask", max_workers=3)
        assert isinstance(local, DaskTaskRunner) and local.address is None
        assert local.cluster_kwargs == {"n_workers": 3, "threads_per_worker": 1, "processes": True}
        assert make_task_runner("dask").cluster_kwargs["n_workers"] == min(2, os.cpu_count() or 1)
        remote = make_task_runner("dask", address="tcp://10.0.0.5:8786")
        assert remote.address == "tcp://10.0.0.5:8786" and remote.cluster_kwargs == {}
        copy = remote.duplicate()
        assert type(copy) is type(remote) and copy == remote and copy is not remote
        monkeypatch.setitem(sys.modules, "prefect_dask", None)  # as if not installed: import fails
        with pytest.raises(SystemExit, match="pip install prefect-dask"):
            make_task_runner("dask")
    assert type(make_task_runner("process")).__name__ == "ProcessPoolTaskRunner"
    with pytest.raises(ValueError, match="thread, process, dask"):
        make_task_runner("ray")


def test_local_worker_processes_share_the_cores_for_blas(monkeypatch):
    """Two fold-training processes on two cores with a full BLAS pool each ran at 0.7x of
    sequential training (benchmarks/ensemble.py); the process runner gives each its share."""


    for var in BLAS_THREAD_VARS:
        monkeypatch.setenv(var, "0")
        monkeypatch.delenv(var)
    cores = os.cpu_count() or 1
    assert type(make_task_runner("process", max_workers=2)).__name__ == "ProcessPoolTaskRunner"
    assert {var: os.environ[var] for var in BLAS_THREAD_VARS} == dict.fromkeys(BLAS_THREAD_VARS, str(max(1, cores // 2)))
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")  # a value the user set wins
    assert share_cores(8)["OPENBLAS_NUM_THREADS"] == "3"


def test_download_task_retries_transient_errors_only(harness, tmp_path, monkeypatch):
    """Inside real flow runs: 500 then 429 are retried to success; a 404 is not retried."""
    from prefect import flow

    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("KAGGLE_USERNAME", fk.DEFAULT_USERNAME)
    monkeypatch.setenv("KAGGLE_KEY", fk.DEFAULT_KEY)
    monkeypatch.delenv("KAGGLE_API_TOKEN", raising=False)
    served = tmp_path / "served"
    build_demo_competition(served)
    run = tasks.configure(tmp_path / "work", retry_delay_s=0.02)

    @flow
    def fetch(endpoint: str, dest: str) -> Path:
        return run[download_data](competition=DEMO_SLUG, data_dir=Path(dest), endpoint=endpoint)

    with fk.serve(served) as server:
        server.inject(fk.FAULT_500, times=1, method="ListDataFiles")
        server.inject(fk.FAULT_429, times=1, method="ListDataFiles", retry_after=0.01)
        folder = fetch(server.url, str(tmp_path / "data"))
        assert (folder / "train.csv").is_file()
        assert [r for _, r in server.requests].count("ListDataFiles") == 3
        server.requests.clear()
        server.inject(fk.FAULT_404, times=5, method="ListDataFiles")
        from lora_tasks.kaggle import NotFoundError

        with pytest.raises(NotFoundError):
            fetch(server.url, str(tmp_path / "other"))
        assert [r for _, r in server.requests].count("ListDataFiles") == 1, "fatal errors are not retried"


def test_cache_key_covers_the_package_source_and_library_versions(tmp_path, monkeypatch):
    """An edited helper anywhere in lora_tasks (a copy of the package here) changes every task's
    cache key, so a rerun is not served results computed by the old code."""
    import lora_tasks
    from lora_tasks.prefect import code_version

    copy = tmp_path / "lora_tasks"
    shutil.copytree(Path(lora_tasks.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    before = code_version.package_source_hash(copy)
    assert before == code_version.package_source_hash(copy), "the hash is stable"
    helper = copy / "steps" / "targets.py"
    helper.write_text(helper.read_text() + "\n# an edited helper\n")
    after = code_version.package_source_hash(copy)
    assert after != before
    versions = code_version.library_versions()
    assert {"mlx", "numpy", "scikit-learn", "tokenizers", "safetensors"} <= set(versions)
    import numpy

    assert versions["numpy"] == numpy.__version__

    policy = tasks.ContentCache()
    inputs = {"x": 1}
    monkeypatch.setattr(tasks, "code_version", lambda: before)
    key_before = policy.compute_key(None, inputs, {})
    assert key_before == policy.compute_key(None, inputs, {})
    monkeypatch.setattr(tasks, "code_version", lambda: after)
    assert policy.compute_key(None, inputs, {}) != key_before
