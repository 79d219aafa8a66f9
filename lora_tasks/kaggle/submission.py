"""Submit a file at most once, and list the submissions Kaggle holds.

Why so careful: a submit costs one of a few daily submissions, and a lost answer (timeout,
dropped connection) looks exactly like a failure. So every submission's description carries
the run id and the file's sha256 (``[run:<id>] [sha256:<hex>]``), and :func:`submit`

* holds an exclusive ``fcntl`` lock on the competition's lock file in ``state_dir``, and one in
  the user's cache folder (:func:`machine_lock_dir`, keyed by competition), while it checks
  and submits: two runs started at once on one machine, in one work dir or in two, cannot both
  upload (the second one finds the first one's submission in the list);
* writes an intent file (per run id, with the sha256) *before* uploading, and on a retry of
  the same run id looks its own submission up instead of submitting again;
* looks in Kaggle's submission list for the same file hash from *any* run (a crashed or
  cancelled earlier run, another machine) and returns that submission instead of uploading;
  ``resubmit=True`` overrides this on purpose;
* turns the client's silent upload failure (``"Could not submit to competition"``, ref 0)
  into :class:`SilentSubmitFailure`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from lora_tasks.hashing import sha256_file as file_sha256

from .client import KaggleClient, call, check_slug
from .errors import (
    KaggleRequestError,
    RetryableKaggleError,
    RunIdConflictError,
    SilentSubmitFailure,
)
from .files import read_json, write_json
from .validate import validate_submission

logger = logging.getLogger(__name__)

UPLOAD_FAILED_MESSAGE = "Could not submit to competition"  # KaggleApi.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE
_RUN_TAG = re.compile(r"\[run:([^\]]+)\]")
_SHA_TAG = re.compile(r"\[sha256:([0-9a-f]{64})\]")


@dataclass
class SubmissionResult:
    """A submission on Kaggle as this run knows it."""

    slug: str
    ref: int
    run_id: str
    description: str
    sha256: str
    status: str = "PENDING"  # PENDING, COMPLETE or ERROR
    public_score: float | None = None
    private_score: float | None = None
    message: str = ""
    reused: bool = False  # True when an existing submission was returned instead of submitting
    error_description: str | None = None


def run_tag(run_id: str) -> str:
    """The marker put in the submission message so a retry can find its own submission."""
    return f"[run:{run_id}]"


def sha_tag(sha256: str) -> str:
    """The marker that lets any later run see that this exact file was already submitted."""
    return f"[sha256:{sha256}]"


def submit(
    slug: str,
    path: str | os.PathLike[str],
    message: str,
    run_id: str,
    state_dir: str | os.PathLike[str],
    client: KaggleClient,
    *,
    sample_submission_path: str | os.PathLike[str] | None = None,
    resubmit: bool = False,
    lock_timeout_s: float = 900.0,
) -> SubmissionResult:
    """Submit ``path`` to ``slug`` at most once per file and return the submission.

    A retry of the same ``run_id`` never submits twice (even with ``resubmit``). Without
    ``resubmit``, a file whose sha256 is already in the account's submission list (from this or
    any earlier run) is not uploaded again: that submission is returned with ``reused=True``.
    ``resubmit=True`` submits the same file again on purpose (a new run id is still needed).
    If ``sample_submission_path`` is given the file is validated first (nothing is written
    or uploaded when it fails). ``lock_timeout_s`` bounds the wait for another run's submit.
    """
    path = Path(path)
    check_slug(slug)
    if sample_submission_path is not None:
        validate_submission(path, sample_submission_path)
    if not re.fullmatch(r"[A-Za-z0-9._:-]{1,80}", run_id):
        raise KaggleRequestError(
            f"run id {run_id!r} must be 1-80 characters of letters, digits, '.', '_', ':' or '-'."
        )
    digest = file_sha256(path)
    description = f"{message.strip()} {run_tag(run_id)} {sha_tag(digest)}".strip()
    state = Path(state_dir)
    intent_path = state / f"submission-{slug}-{run_id}.json"
    with _competition_lock(machine_lock_dir(), slug, lock_timeout_s), _competition_lock(state, slug, lock_timeout_s):
        earlier = _earlier_submission(slug, run_id, digest, intent_path, description, client, resubmit)
        if earlier is not None:
            return earlier
        return _upload(slug, path, run_id, digest, description, intent_path, client)


def machine_lock_dir() -> Path:
    """This user's submit locks, shared by every work dir: ``$XDG_CACHE_HOME/kaggle-lora/locks``
    (default ``~/.cache``). Why not the work dir only: two runs in two work dirs would each hold
    their own lock, both find nothing in the submission list, and both upload the same file."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "kaggle-lora" / "locks"


@contextlib.contextmanager
def _competition_lock(state: Path, slug: str, timeout_s: float) -> Iterator[None]:
    """Exclusive ``flock`` on ``state/submission-<slug>.lock`` (released when the process dies)."""
    state.mkdir(parents=True, exist_ok=True)
    with open(state / f"submission-{slug}.lock", "a+") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RetryableKaggleError(
                        f"submitting for competition '{slug}': another run held the submit lock "
                        f"{handle.name} for over {timeout_s:g} s. Retry when it has finished."
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _earlier_submission(
    slug: str,
    run_id: str,
    digest: str,
    intent_path: Path,
    description: str,
    client: KaggleClient,
    resubmit: bool,
) -> SubmissionResult | None:
    """The submission that makes uploading ``digest`` again a duplicate, or None."""
    intent = read_json(intent_path)
    if intent is not None and intent.get("sha256") != digest:
        raise RunIdConflictError(
            f"run id {run_id!r} already submitted a different file to '{slug}' "
            f"(intent {intent_path}). Use a new run id for a new submission."
        )
    if intent is None and resubmit:
        return None
    listed = list_submissions(slug, client)
    found = next((s for s in listed if run_tag(run_id) in s.description), None)
    if found is None and not resubmit:
        found = next((s for s in listed if s.sha256 == digest), None)
        if found is not None:
            logger.warning(
                "This file (sha256 %s) was already submitted to %s as ref %s by run %s; not "
                "submitting it again (pass resubmit=True to submit it on purpose).",
                digest[:12], slug, found.ref, found.run_id or "?",
            )
    if found is not None:
        logger.info("Run %s: submission %s on %s already holds this file; not submitting again", run_id, found.ref, slug)
        found.sha256, found.reused = digest, True
        write_json(intent_path, {**(intent or _intent(slug, run_id, digest, description)), "ref": found.ref, "state": "submitted"})
        return found
    recorded = [intent] if intent is not None else ([] if resubmit else _intents_with(intent_path.parent, slug, digest))
    for record in recorded:
        if record.get("ref"):
            # Recorded as submitted but beyond the listed page: trust the record, never resubmit.
            return SubmissionResult(
                slug=slug, ref=int(record["ref"]), run_id=str(record.get("run_id", run_id)),
                description=str(record.get("description", description)), sha256=digest, reused=True,
            )
    return None


def _intents_with(state: Path, slug: str, digest: str) -> list[dict[str, Any]]:
    records = (read_json(p) for p in sorted(state.glob(f"submission-{slug}-*.json")))
    return [r for r in records if r is not None and r.get("sha256") == digest and r.get("slug") == slug]


def _intent(slug: str, run_id: str, digest: str, description: str) -> dict[str, Any]:
    return {
        "slug": slug,
        "run_id": run_id,
        "sha256": digest,
        "description": description,
        "created": datetime.now(timezone.utc).isoformat(),
        "state": "uploading",
    }


def _upload(
    slug: str, path: Path, run_id: str, digest: str, description: str, intent_path: Path, client: KaggleClient
) -> SubmissionResult:
    intent = {**_intent(slug, run_id, digest, description), "file": str(path.resolve())}
    write_json(intent_path, intent)
    response = call(
        slug,
        "submitting",
        lambda: client.api.competition_submit(str(path), description, slug, quiet=True),
        idempotent=False,
    )
    server_message = str(getattr(response, "message", "") or "")
    ref = int(getattr(response, "ref", 0) or 0)
    if server_message.startswith(UPLOAD_FAILED_MESSAGE) or ref == 0:
        found = find_submission(slug, run_id, client) if not server_message.startswith(UPLOAD_FAILED_MESSAGE) else None
        if found is None:
            raise SilentSubmitFailure(
                f"submitting for competition '{slug}': the client answered {server_message!r} "
                f"with ref {ref}: the file upload failed and nothing was submitted. Retry; the "
                "run id prevents a duplicate."
            )
        ref = found.ref
    write_json(intent_path, {**intent, "ref": ref, "state": "submitted"})
    logger.info("Submitted %s to %s as ref %s (run %s)", path.name, slug, ref, run_id)
    return SubmissionResult(
        slug=slug, ref=ref, run_id=run_id, description=description, sha256=digest, message=server_message
    )


def list_submissions(slug: str, client: KaggleClient, *, page_size: int = 100) -> list[SubmissionResult]:
    """The account's most recent submissions to ``slug`` (newest first)."""
    check_slug(slug)
    items = call(
        slug,
        "listing submissions",
        lambda: client.api.competition_submissions(slug, page_size=page_size, page_number=1),
    )
    return [_to_result(slug, item) for item in items or [] if item is not None]


def find_submission(slug: str, run_id: str, client: KaggleClient) -> SubmissionResult | None:
    """The submission whose message carries ``run_id``'s tag, or None (looked up on Kaggle)."""
    tag = run_tag(run_id)
    return next((item for item in list_submissions(slug, client) if tag in item.description), None)


def find_submission_by_sha(slug: str, sha256: str, client: KaggleClient) -> SubmissionResult | None:
    """The newest submission whose message carries this file hash, or None (looked up on Kaggle)."""
    return next((item for item in list_submissions(slug, client) if item.sha256 == sha256), None)


def _to_result(slug: str, item: Any) -> SubmissionResult:
    description = str(item.description or "")
    run = _RUN_TAG.search(description)
    sha = _SHA_TAG.search(description)
    status = getattr(item.status, "name", str(item.status))
    return SubmissionResult(
        slug=slug,
        ref=int(item.ref or 0),
        run_id=run.group(1) if run else "",
        description=description,
        sha256=sha.group(1) if sha else "",
        status=status,
        public_score=_to_float(item.public_score),
        private_score=_to_float(item.private_score),
        error_description=item.error_description or None,
    )


def _to_float(value: Any) -> float | None:
    if value in (None, ""):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
