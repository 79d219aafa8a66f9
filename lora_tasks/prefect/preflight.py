"""Checks made before a run starts work: Kaggle credentials, who else can write the work dir, and
whether Prefect's local database opens.

Why before: a deployment run without credentials used to download from cache, tokenize and train
for minutes and then fail at the first Kaggle call; and the result store of the work dir holds
cloudpickle records, which run code when read, so a work dir others can write is a way into every
later run. Neither of those checks loads Prefect or the Kaggle client. A damaged Prefect database
made every start of the temporary API server fail, and the run ended, minutes later, with
"Timed out while attempting to connect to ephemeral Prefect API server" and no word of the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import stat
from pathlib import Path

from lora_tasks.kaggle.credentials import (
    TOKEN_VARIABLE,
    kaggle_config_dir,
    missing_credentials_message,
    token_problem,
)
from lora_tasks.steps.download import needs_offline_server

log = logging.getLogger("lora_tasks.preflight")


class MissingCredentialsError(RuntimeError):
    """A run that talks to Kaggle found no usable credentials; the message says what to set."""


def credentials_found() -> bool:
    """Whether any place the Kaggle client reads credentials from is filled (not whether they work)."""
    if os.environ.get(TOKEN_VARIABLE):
        return True
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return True
    token_file = Path(os.path.expanduser("~/.kaggle/access_token"))
    if token_file.is_file() and token_file.stat().st_size > 0:
        return True
    return (kaggle_config_dir() / "kaggle.json").is_file()


def credentials_problem(competition: str, endpoint: str | None) -> str | None:
    """Why a run of ``competition`` cannot talk to Kaggle, or None (the offline demo needs nothing)."""
    if needs_offline_server(competition, endpoint):
        return None
    problem = token_problem()
    if problem is not None:
        return problem
    if not credentials_found():
        return missing_credentials_message()
    return None


def require_credentials(competition: str, endpoint: str | None) -> None:
    """Raise :class:`MissingCredentialsError` now, before any step, if the run cannot reach Kaggle."""
    problem = credentials_problem(competition, endpoint)
    if problem is not None:
        raise MissingCredentialsError(f"{competition}: {problem}")


def shared_write_problem(work_dir: str | os.PathLike) -> str | None:
    """Why ``work_dir`` (or its ``results`` store) is unsafe: writable by the group or by everyone."""
    root = Path(work_dir).expanduser()
    for path in (root, root / "results"):
        try:
            mode = path.stat().st_mode
        except OSError:
            continue
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            who = "everyone" if mode & stat.S_IWOTH else "its group"
            return (f"{path} is writable by {who} (mode {stat.filemode(mode)}). The result store under the work "
                    "dir holds pickled task results, which run code when a rerun reads them: anyone who can "
                    f"write there can run code as you. Fix: chmod go-w {path}, or choose another --work-dir.")
    return None


def warn_if_shared(work_dir: str | os.PathLike) -> str | None:
    """Log :func:`shared_write_problem` as a warning (returned too, for the caller's tests)."""
    problem = shared_write_problem(work_dir)
    if problem is not None:
        log.warning("warning: %s", problem)
    return problem


#: Larger databases are only opened, not checked page by page (the check reads the whole file).
QUICK_CHECK_MAX_BYTES = 256 << 20
#: What Prefect says when its temporary API server never answered (the database is one cause).
EPHEMERAL_TIMEOUT = "ephemeral Prefect API server"


def prefect_database_path() -> Path | None:
    """The SQLite file the temporary Prefect API server of a run opens, or None: a run that talks
    to a server of its own (``PREFECT_API_URL``) or to a database that is not a local SQLite file."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url:
        return None
    url = settings.server.database.connection_url
    text = url.get_secret_value() if url is not None else ""
    if not text.startswith("sqlite") or ":///" not in text or ":memory:" in text:
        return None
    return Path(text.split(":///", 1)[1].split("?", 1)[0]).expanduser()


def reset_advice(path: Path) -> str:
    """How to get past a damaged database, and what that loses and keeps."""
    return (f"Move it away and the next run makes a new one: mv {path} {path}.broken (or, if Prefect can still "
            "open it, `prefect server database reset -y`). That loses only the run history shown in the "
            "Prefect UI; cached task results (<work-dir>/results), checkpoints and downloads are kept.")


def prefect_database_problem(path: Path | None = None) -> str | None:
    """Why the run's Prefect database cannot be opened (naming the file and the fix), or None: it
    opens, it does not exist yet (Prefect creates it), another process holds it (Prefect waits),
    or the run uses a Prefect server of its own."""
    path = path if path is not None else prefect_database_path()
    if path is None or not path.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
            db.execute("SELECT count(*) FROM sqlite_master").fetchall()
            if path.stat().st_size <= QUICK_CHECK_MAX_BYTES:
                found = db.execute("PRAGMA quick_check(1)").fetchone()
                if found and found[0] != "ok":
                    raise sqlite3.DatabaseError(f"quick_check: {found[0]}")
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return None
        return f"The Prefect database {path} cannot be opened ({exc}). " + reset_advice(path)
    except sqlite3.DatabaseError as exc:
        return f"The Prefect database {path} is damaged ({exc}). " + reset_advice(path)
    return None


def _ready(path: Path, blocks: bool) -> bool:
    """Whether Prefect's migrations have run on the database (its alembic version is recorded) and,
    with ``blocks``, its block schemas are registered."""
    if not path.is_file():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
            migrated = db.execute("SELECT count(*) FROM alembic_version").fetchone()[0] > 0
            return migrated and (not blocks or db.execute("SELECT count(*) FROM block_schema").fetchone()[0] > 0)
    except sqlite3.Error:
        return False


def prepare_prefect_database(path: Path | None = None) -> bool:
    """Create the run's Prefect database once, under a lock, before its temporary server starts:
    its tables and its block schemas; True when this call created them.

    Why: each run's temporary API server migrates the database and registers Prefect's block
    schemas when it starts. Two runs started together on a machine without a database both found
    no tables, both ran the migrations, and one server failed ("duplicate column name") and had
    to be started again; with the tables made here, both servers still inserted the same block
    schema at once, and one logged an ERROR with a traceback ("UNIQUE constraint failed:
    block_schema.checksum"). Here the first run creates both while the others wait on the lock,
    and then find them ready: a server finds a registered schema and inserts nothing."""
    from prefect.settings import PREFECT_API_BLOCKS_REGISTER_ON_START

    path = path if path is not None else prefect_database_path()
    blocks = bool(PREFECT_API_BLOCKS_REGISTER_ON_START.value())  # what the server does next when it starts
    if path is None or _ready(path, blocks):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.kaggle-lora.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _ready(path, blocks):
            return False  # another run created it while this one waited
        import asyncio

        from prefect.server.database import provide_database_interface
        from prefect.server.models.block_registration import run_block_auto_registration

        async def migrate() -> None:
            db = provide_database_interface()
            await db.create_db()
            if blocks:
                async with await db.session() as session:
                    await run_block_auto_registration(session=session)
            await (await db.engine()).dispose()

        try:
            asyncio.run(migrate())
        except Exception as exc:  # the server tries again when it starts, and says why if it fails
            log.warning("Could not create the Prefect database %s ahead of the run (%s: %s)", path,
                        type(exc).__name__, exc)
            return False
    return True


def explain_server_timeout(message: str) -> str | None:
    """A hint for Prefect's "Timed out ... ephemeral Prefect API server": the database is one cause."""
    if EPHEMERAL_TIMEOUT not in message:
        return None
    path = prefect_database_path()
    where = f"its database {path}" if path is not None else "its database"
    return (f"Prefect's temporary API server did not start. Its log above says why; if it names {where} "
            f"(\"file is not a database\", \"database disk image is malformed\"): "
            + (reset_advice(path) if path is not None else "reset it with `prefect server database reset -y`.")
            + " On a busy machine, a longer PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS may be all it needs.")


__all__ = ["MissingCredentialsError", "credentials_found", "credentials_problem", "explain_server_timeout",
           "prefect_database_path", "prefect_database_problem", "prepare_prefect_database", "require_credentials",
           "shared_write_problem", "warn_if_shared"]
