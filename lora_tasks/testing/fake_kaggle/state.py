"""The fake Kaggle server's records and settings: its credentials, fault kinds, stored submissions
(kept in a state file between server processes), and the errors a handler answers with.

Why apart from the server: the HTTP handler (:mod:`.handler`) and the server (:mod:`.server`) both
read these; neither needs the other's module for them.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SOLUTION_FILE_NAME = "solution.csv"
#: Optional hidden file in a competition folder: ``{"metric": ..., "evaluation_metric": ...}``, the
#: scoring metric (a metric name) and the listing's ``evaluationMetric`` text. Why a file:
#: a generated competition (:mod:`lora_tasks.testing.shapes`) carries its own metric, so the
#: server started as a command on that folder scores and lists it right with no flags.
COMPETITION_META_FILE = ".fake-kaggle.json"
DEFAULT_USERNAME = "fake-user"
DEFAULT_KEY = "fake-key-0123456789abcdef"
DEFAULT_TOKEN = "KGAT_fake_token_0123456789abcdef"

#: Scoring metric per competition (Kaggle's own choice for the three shared ones and the demo).
DEFAULT_METRICS: dict[str, str] = {
    "titanic": "accuracy",
    "demo": "accuracy",
    "house-prices-advanced-regression-techniques": "rmsle",
    "nlp-getting-started": "f1",
}

# Fault kinds accepted by FakeKaggleServer.inject.
FAULT_401 = "401"
FAULT_403_RULES = "403-rules"
FAULT_404 = "404"
FAULT_429 = "429"
FAULT_500 = "500"
FAULT_SUBMISSION_LIMIT = "submission-limit"
FAULT_UPLOAD_FAILED = "upload-failed"
FAULT_TRUNCATED_ZIP = "truncated-zip"
FAULT_CUT_CONNECTION = "cut-connection"
FAULT_SLOW = "slow"
FAULT_LOSE_RESPONSE = "lose-response"
FAULT_ZIP_SLIP = "zip-slip"
FAULTS = (
    FAULT_401,
    FAULT_403_RULES,
    FAULT_404,
    FAULT_429,
    FAULT_500,
    FAULT_SUBMISSION_LIMIT,
    FAULT_UPLOAD_FAILED,
    FAULT_TRUNCATED_ZIP,
    FAULT_CUT_CONNECTION,
    FAULT_SLOW,
    FAULT_LOSE_RESPONSE,
    FAULT_ZIP_SLIP,
)

RULES_MESSAGE = (
    "You must accept this competition's rules before you'll be able to download files "
    "or make submissions."
)
LIMIT_MESSAGE = (
    "Submission not allowed:  Your team has used its daily Submission allowance ({limit}) today, "
    "please try again tomorrow UTC."
)


# --------------------------------------------------------------------------------------------
# Server state
# --------------------------------------------------------------------------------------------


@dataclass
class Fault:
    """One injected fault: answer the next ``times`` matching requests with ``kind``."""

    kind: str
    times: int = 1
    method: str | None = None  # RPC method name, or "zip", "file", "upload"; None = any
    retry_after: float = 1.0
    delay: float = 1.0


@dataclass
class StoredSubmission:
    """A submission as the fake server holds it (a test inspects these)."""

    ref: int
    competition: str
    file_name: str
    description: str
    content: bytes
    date: datetime
    status: str = "PENDING"
    public_score: float | None = None
    error_description: str | None = None
    polls_left: int = 0
    metric: str | None = None  # the metric name it was scored with (set when scored)

    def to_api(self) -> dict[str, Any]:
        """The ``ApiSubmission`` JSON shape the client parses."""
        out: dict[str, Any] = {
            "ref": self.ref,
            "totalBytes": len(self.content),
            "date": self.date.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z",
            "description": self.description,
            "fileName": self.file_name,
            "status": self.status,
            "submittedBy": DEFAULT_USERNAME,
            "teamName": DEFAULT_USERNAME,
        }
        if self.status == "COMPLETE" and self.public_score is not None:
            out["publicScore"] = repr(float(self.public_score))
            out["privateScore"] = repr(float(self.public_score))
        if self.error_description:
            out["errorDescription"] = self.error_description
        return out


def load_submissions(path: Path | None) -> list[StoredSubmission]:
    """The submissions a server kept in ``path`` (none when the file does not exist yet)."""
    if path is None or not path.is_file():
        return []
    rows = json.loads(path.read_text())
    return [
        StoredSubmission(**{**row, "content": base64.b64decode(row["content"]),
                            "date": datetime.fromisoformat(row["date"])})
        for row in rows
    ]


def save_submissions(path: Path, submissions: list[StoredSubmission]) -> None:
    """Write ``submissions`` to ``path`` through a unique temporary file and a rename, so a reader
    (the next run's server) never sees half a file."""
    rows = [{**asdict(s), "content": base64.b64encode(s.content).decode(), "date": s.date.isoformat()}
            for s in submissions]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(json.dumps(rows))
    os.replace(tmp, path)


class HttpAnswer(Exception):
    """Raised inside a handler to answer with an error status and Kaggle's JSON error body."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


class DropConnection(Exception):
    """Raised inside a handler to close the socket without answering."""

