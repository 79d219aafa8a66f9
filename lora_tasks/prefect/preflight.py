"""Checks made before a run starts work: Kaggle credentials, and who else can write the work dir.

Why before: a deployment run without credentials used to download from cache, tokenize and train
for minutes and then fail at the first Kaggle call; and the result store of the work dir holds
cloudpickle records, which run code when read, so a work dir others can write is a way into every
later run. Neither check loads Prefect or the Kaggle client.
"""

from __future__ import annotations

import logging
import os
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


__all__ = ["MissingCredentialsError", "credentials_found", "credentials_problem", "require_credentials",
           "shared_write_problem", "warn_if_shared"]
