"""Checks before a run (issue 22 items 7 and 9): a run that needs Kaggle and has no credentials
fails before any step with what to set, ``kaggle-lora serve`` warns at start, and a work dir that
others can write is named with the fix."""

from __future__ import annotations

import logging
import os

import pytest

from lora_tasks.prefect import preflight
from lora_tasks.prefect.serve import credentials_warning

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


@pytest.fixture
def no_creds(tmp_path, monkeypatch):
    """An empty home and config dir, and none of the credential variables."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / ".kaggle"))
    for name in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    return home


def test_credentials_problem_names_what_to_set(no_creds, monkeypatch):
    assert preflight.credentials_problem("demo", None) is None, "the offline demo needs no account"
    problem = preflight.credentials_problem("titanic", None)
    assert problem and "No Kaggle credentials found" in problem and "KAGGLE_API_TOKEN" in problem
    assert preflight.credentials_problem("demo", "http://127.0.0.1:9") == problem, "a given server needs them too"
    monkeypatch.setenv("KAGGLE_API_TOKEN", "not a token")
    assert "not a valid Kaggle API token" in preflight.credentials_problem("titanic", None)
    monkeypatch.delenv("KAGGLE_API_TOKEN")
    (no_creds / ".kaggle").mkdir()
    (no_creds / ".kaggle" / "kaggle.json").write_text('{"username": "u", "key": "k"}')
    assert preflight.credentials_problem("titanic", None) is None
    with pytest.raises(preflight.MissingCredentialsError, match="titanic"):
        (no_creds / ".kaggle" / "kaggle.json").unlink()
        preflight.require_credentials("titanic", None)


def test_serve_warns_at_start_without_credentials(no_creds, monkeypatch):
    assert credentials_warning(["demo"]) is None
    warning = credentials_warning(["demo", "titanic", "nlp-getting-started"])
    assert warning.startswith("warning: the runs of titanic, nlp-getting-started will fail")
    assert "KAGGLE_API_TOKEN" in warning
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "0123456789abcdef")
    assert credentials_warning(["demo", "titanic"]) is None


def test_a_run_without_credentials_fails_before_any_step(harness, no_creds, tmp_path):
    """The flow a deployment runs: failed in its first step-free seconds, no task run at all."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from lora_tasks.options import RunOptions
    from lora_tasks.prefect.flow import kaggle_lora

    state = kaggle_lora(RunOptions(competition="titanic", work_dir=str(tmp_path / "work"), tiny=True),
                        return_state=True)
    assert state.is_failed()
    with pytest.raises(preflight.MissingCredentialsError, match="export KAGGLE_API_TOKEN"):
        state.result()
    with get_client(sync_client=True) as api:
        runs = api.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    assert runs == [], [r.name for r in runs]
    assert not (tmp_path / "work" / "data").exists(), "nothing was downloaded"


def test_shared_work_dir_is_named_with_the_fix(tmp_path, caplog):
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    work.chmod(0o700)
    assert preflight.warn_if_shared(work) is None
    (work / "results").mkdir()
    (work / "results").chmod(0o775)
    problem = preflight.shared_write_problem(work)
    assert problem and "results is writable by its group" in problem and "chmod go-w" in problem
    (work / "results").chmod(0o700)
    work.chmod(0o777)
    with caplog.at_level(logging.WARNING, logger="lora_tasks"):
        assert "writable by everyone" in preflight.warn_if_shared(work)
    assert "pickled task results" in caplog.text
    assert preflight.shared_write_problem(tmp_path / "not-made-yet") is None


# ---- a Prefect database that cannot be opened (issue 35 item 8) --------------------------------


def _garbage(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(20000))
    return path


def test_a_damaged_prefect_database_is_named_with_the_fix(tmp_path):
    import sqlite3

    broken = _garbage(tmp_path / "prefect.db")
    problem = preflight.prefect_database_problem(broken)
    assert problem is not None and str(broken) in problem and "file is not a database" in problem
    assert f"mv {broken} {broken}.broken" in problem and "kept" in problem
    good = tmp_path / "good.db"
    with sqlite3.connect(good) as db:
        db.execute("CREATE TABLE t (x)")
    assert preflight.prefect_database_problem(good) is None
    assert preflight.prefect_database_problem(tmp_path / "not-yet.db") is None, "Prefect creates it"
    # a valid header over damaged pages: the page check finds it
    with sqlite3.connect(tmp_path / "pages.db") as db:
        db.execute("CREATE TABLE t (x)")
        db.executemany("INSERT INTO t VALUES (?)", [("x" * 500,)] * 200)
    raw = bytearray((tmp_path / "pages.db").read_bytes())
    raw[4096 * 2: 4096 * 2 + 2000] = os.urandom(2000)
    (tmp_path / "pages.db").write_bytes(bytes(raw))
    assert "is damaged" in (preflight.prefect_database_problem(tmp_path / "pages.db") or "")


def test_a_run_with_a_damaged_prefect_database_says_so_before_starting(tmp_path):
    """Before: the temporary API server failed to start again and again, and the run ended minutes
    later with "Timed out while attempting to connect to ephemeral Prefect API server"."""
    import subprocess
    import sys

    home = tmp_path / "prefect-home"
    broken = _garbage(home / "prefect.db")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-m", "lora_tasks.cli", "run", "--competition", "demo", "--tiny",
                           "--no-submit", "--work-dir", str(tmp_path / "work")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 1, done.stderr[-3000:]
    assert f"The Prefect database {broken} is damaged" in done.stderr
    assert f"mv {broken} {broken}.broken" in done.stderr
    assert "Timed out" not in done.stderr and "Starting temporary server" not in done.stderr + done.stdout
    assert broken.read_bytes() and not (tmp_path / "work" / "results").exists(), "nothing touched, nothing started"


def test_the_prefect_database_is_made_with_its_block_schemas_before_any_server_starts(tmp_path):
    """Two runs' temporary servers started together both inserted the same block schema, and one
    logged an ERROR with a traceback ("UNIQUE constraint failed: block_schema.checksum"): the
    database is now made once, under a lock, with the tables and the block schemas a server
    registers when it starts, so neither server inserts one."""
    import sqlite3
    import subprocess
    import sys

    home = tmp_path / "prefect-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    code = "from lora_tasks.prefect.preflight import prepare_prefect_database as p; print(p())"

    def prepare() -> str:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.strip().splitlines()[-1]

    assert prepare() == "True"
    with sqlite3.connect(home / "prefect.db") as db:
        schemas = db.execute("SELECT count(*) FROM block_schema").fetchone()[0]
        names = {r[0] for r in db.execute("SELECT slug FROM block_type")}
    assert schemas > 0 and {"secret", "local-file-system"} <= names, (schemas, sorted(names)[:10])
    assert prepare() == "False", "a ready database is left as it is"
    # a user who turned the servers' block registration off: the tables alone make it ready
    home2 = tmp_path / "prefect-home-no-blocks"
    env.update(PREFECT_HOME=str(home2), PREFECT_API_BLOCKS_REGISTER_ON_START="false")
    assert prepare() == "True" and prepare() == "False"
    with sqlite3.connect(home2 / "prefect.db") as db:
        assert db.execute("SELECT count(*) FROM block_schema").fetchone()[0] == 0
