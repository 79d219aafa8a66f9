"""A fake Kaggle API server: real HTTP on 127.0.0.1, speaking what the official client speaks.

Why: the Kaggle I/O layer must be tested with the real ``kaggle``/``kagglesdk`` client (its
request shapes, redirects, silent failures and missing retries are the point), and the whole
pipeline must run offline on a fresh machine (the ``demo`` competition). Mocks of the client
would test our assumptions about it instead of the client itself.

What it serves (the subset of ``competitions.CompetitionApiService`` we use, plus
``security.OAuthService/IntrospectToken``), every call a JSON ``POST`` to
``/api/v1/{Service}/{Method}`` (``/v1/...`` is accepted too):

* ``ListDataFiles``; ``DownloadDataFiles`` / ``DownloadDataFile`` (answer 302 to a zip/file built
  on the fly, with Content-Length and Last-Modified);
* ``StartSubmissionUpload`` (``token``, ``createUrl``) then a raw ``PUT`` to ``createUrl``, then
  ``CreateSubmission`` (``message``, ``ref``); ``ListSubmissions`` (score, status).

Competitions are the sub-folders of a data folder. A file named ``solution.csv`` inside one is
hidden (never listed or served) and used for scoring; solutions can also be given explicitly.
Faults are injectable per test with :meth:`FakeKaggleServer.inject`. Request lines in proxy form
(``POST http://localhost/api/v1/... HTTP/1.1``) are accepted, so the ``kaggle`` CLI can reach the
server through ``HTTP_PROXY`` (see :meth:`FakeKaggleServer.client_env`).

Run it as a command: ``python -m lora_tasks.testing.fake_kaggle --data DIR --port N``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import email.utils
import hashlib
import io
import json
import logging
import math
import os
import secrets
import threading
import time
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import unquote, urlsplit

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

SOLUTION_FILE_NAME = "solution.csv"
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
# Scoring
# --------------------------------------------------------------------------------------------


def _rmsle(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    from sklearn.metrics import mean_squared_log_error

    return math.sqrt(mean_squared_log_error(y_true, y_pred))


def _accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(y_true, y_pred))


def _f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred))


def _rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    from sklearn.metrics import mean_squared_error

    return math.sqrt(mean_squared_error(y_true, y_pred))


def _roc_auc(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y_true, y_pred))


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": _accuracy,
    "f1": _f1,
    "rmsle": _rmsle,
    "rmse": _rmse,
    "roc_auc": _roc_auc,
}


def score_submission(submission: pd.DataFrame, solution: pd.DataFrame, metric: str) -> float:
    """Score a submission the way Kaggle does: join on the id column, apply the metric.

    Why a public function: tests compute the expected score independently from the same
    frames, and the error texts here are what a scored-with-ERROR submission reports.
    The id column is the solution's first column; the target is its second.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {sorted(METRICS)}")
    id_col, target_col = solution.columns[0], solution.columns[1]
    if list(submission.columns) != list(solution.columns[:2]):
        raise ValueError(
            f"Submission columns {list(submission.columns)} do not match the expected "
            f"{list(solution.columns[:2])}"
        )
    if len(submission) != len(solution):
        raise ValueError(
            f"Submission has {len(submission)} rows, expected {len(solution)}"
        )
    sub = submission.set_index(submission[id_col].astype(str))[target_col]
    sol = solution.set_index(solution[id_col].astype(str))[target_col]
    if sub.index.has_duplicates or set(sub.index) != set(sol.index):
        raise ValueError(f"Submission {id_col} values do not match the expected ids")
    y_pred = sub.loc[sol.index].to_numpy()
    if pd.isna(y_pred).any():
        raise ValueError(f"Submission has empty values in column {target_col}")
    return METRICS[metric](sol.to_numpy(), y_pred)


def derive_solutions(datasets_dir: str | os.PathLike[str], dest: str | os.PathLike[str]) -> dict[str, Path]:
    """Write deterministic stand-in solutions for the three shared competitions.

    Why: Kaggle's real test labels are not public, but the fake server needs *some* solution
    to score against, and tests only need the score to be right for the solution given. These
    are simple rules of the test features (so a baseline scores neither 0 nor 1):
    titanic: survived = female and not third class; house prices: 50 000 + 100 x living area;
    disaster tweets: 1 when the text mentions fire, flood, storm, crash or killed.
    Returns ``{slug: path}`` for :class:`FakeKaggleServer`'s ``solutions``.
    """
    src, out = Path(datasets_dir), Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    test = pd.read_csv(src / "titanic" / "test.csv")
    survived = ((test["Sex"] == "female") & (test["Pclass"] != 3)).astype("int64")
    paths["titanic"] = out / "titanic.csv"
    pd.DataFrame({"PassengerId": test["PassengerId"], "Survived": survived}).to_csv(paths["titanic"], index=False)

    slug = "house-prices-advanced-regression-techniques"
    test = pd.read_csv(src / slug / "test.csv")
    price = 50_000.0 + 100.0 * test["GrLivArea"].fillna(test["GrLivArea"].median())
    paths[slug] = out / f"{slug}.csv"
    pd.DataFrame({"Id": test["Id"], "SalePrice": price}).to_csv(paths[slug], index=False)

    slug = "nlp-getting-started"
    test = pd.read_csv(src / slug / "test.csv")
    words = r"\b(?:fire|flood|storm|crash|killed)"
    target = test["text"].str.contains(words, case=False, regex=True).astype("int64")
    paths[slug] = out / f"{slug}.csv"
    pd.DataFrame({"id": test["id"], "target": target}).to_csv(paths[slug], index=False)
    return paths


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


class _HttpAnswer(Exception):
    """Raised inside a handler to answer with an error status and Kaggle's JSON error body."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


class _DropConnection(Exception):
    """Raised inside a handler to close the socket without answering."""


class FakeKaggleServer:
    """A threaded HTTP server that behaves like the Kaggle API for one or more competitions.

    Args:
        data_dir: folder whose sub-folders are competitions (``<data_dir>/<slug>/*.csv``).
        solutions: ``{slug: path}`` of hidden solution CSVs (id column, target column); a
            ``solution.csv`` inside a competition folder is used when a slug is not given here.
        metrics: ``{slug: metric}`` overriding :data:`DEFAULT_METRICS` (``accuracy``, ``f1``,
            ``rmsle``, ``rmse``, ``roc_auc``); unknown slugs score with accuracy.
        username, key: accepted Basic credentials; token: accepted Bearer token.
        port: 0 picks a free port.
        pending_polls: how many ``ListSubmissions`` answers show a new submission as PENDING
            before it is scored, so callers really exercise their polling.
        daily_limit: submissions allowed per competition before the limit error (None = no limit).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        solutions: Mapping[str, str | os.PathLike[str]] | None = None,
        *,
        metrics: Mapping[str, str] | None = None,
        username: str = DEFAULT_USERNAME,
        key: str = DEFAULT_KEY,
        token: str = DEFAULT_TOKEN,
        host: str = "127.0.0.1",
        port: int = 0,
        pending_polls: int = 1,
        daily_limit: int | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        if not self.data_dir.is_dir():
            raise FileNotFoundError(f"fake Kaggle data folder {self.data_dir} does not exist")
        self.solutions = {k: Path(v) for k, v in (solutions or {}).items()}
        self.metrics = {**DEFAULT_METRICS, **(metrics or {})}
        self.username = username
        self.key = key
        self.token = token
        self.pending_polls = pending_polls
        self.daily_limit = daily_limit
        self.submissions: list[StoredSubmission] = []
        self.requests: list[tuple[str, str]] = []  # (HTTP method, route) in arrival order
        self._uploads: dict[str, bytes] = {}
        self._pending_uploads: dict[str, str] = {}  # token -> file name
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer((host, port), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (the client appends ``/api/v1/...``)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FakeKaggleServer":
        """Serve in a daemon thread; returns self so ``server = FakeKaggleServer(...).start()``."""
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port (slow-answer faults are cut short)."""
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def serve_forever(self) -> None:
        """Serve in the calling thread (the command-line entry point)."""
        self._httpd.serve_forever()

    # -- test controls -----------------------------------------------------------------------

    def inject(
        self,
        fault: str,
        times: int = 1,
        *,
        method: str | None = None,
        retry_after: float = 1.0,
        delay: float = 1.0,
    ) -> None:
        """Make the next ``times`` requests matching ``method`` fail with ``fault``.

        ``method`` is an RPC name (``"CreateSubmission"``), or ``"zip"`` / ``"file"`` for the
        download GETs, or ``"upload"`` for the blob PUT; None matches any request the fault
        applies to. Kinds: see :data:`FAULTS`. ``lose-response`` performs the request (e.g.
        stores the submission) and then closes the connection without answering.
        """
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {FAULTS}")
        with self._lock:
            self._faults.append(
                Fault(fault, times=times, method=method, retry_after=retry_after, delay=delay)
            )

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def client_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for running the ``kaggle`` CLI in a subprocess against this server.

        The CLI cannot be given an endpoint, but with ``KAGGLE_API_ENVIRONMENT=LOCALHOST`` it
        calls ``http://localhost/api/v1/...``; ``HTTP_PROXY`` routes that here (this server
        accepts proxy-form request lines) and ``NO_PROXY`` must be unset or localhost would
        bypass the proxy. Credentials are this fake server's, never a real user's.
        """
        env = dict(os.environ if base is None else base)
        for name in ("NO_PROXY", "no_proxy", "KAGGLE_API_TOKEN", "HTTPS_PROXY", "https_proxy"):
            env.pop(name, None)
        env.update(
            {
                "KAGGLE_API_ENVIRONMENT": "LOCALHOST",
                "HTTP_PROXY": self.url,
                "http_proxy": self.url,
                "KAGGLE_USERNAME": self.username,
                "KAGGLE_KEY": self.key,
            }
        )
        return env

    def submissions_for(self, slug: str) -> list[StoredSubmission]:
        with self._lock:
            return [s for s in self.submissions if s.competition == slug]

    # -- internals used by the handler ------------------------------------------------------

    def _take_fault(self, route: str, applicable: tuple[str, ...]) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.kind in applicable and fault.method in (None, route):
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _competition_dir(self, slug: str) -> Path:
        if not slug or "/" in slug or slug.startswith("."):
            raise _HttpAnswer(404, f"Competition '{slug}' not found")
        path = self.data_dir / slug
        if not path.is_dir():
            raise _HttpAnswer(404, f"Competition '{slug}' not found")
        return path

    def _public_files(self, slug: str) -> list[Path]:
        root = self._competition_dir(slug)
        return sorted(
            p
            for p in root.iterdir()
            if p.is_file() and p.name != SOLUTION_FILE_NAME and not p.name.startswith(".")
        )

    def _solution_path(self, slug: str) -> Path | None:
        if slug in self.solutions:
            return self.solutions[slug]
        candidate = self.data_dir / slug / SOLUTION_FILE_NAME
        return candidate if candidate.is_file() else None

    def _build_zip(self, slug: str) -> tuple[bytes, float]:
        files = self._public_files(slug)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in files:
                archive.write(path, arcname=path.name)
        newest = max((p.stat().st_mtime for p in files), default=time.time())
        return buffer.getvalue(), newest

    def _score(self, submission: StoredSubmission) -> None:
        solution_path = self._solution_path(submission.competition)
        if solution_path is None:
            submission.status = "ERROR"
            submission.error_description = "No solution file on the fake server for this competition"
            return
        metric = self.metrics.get(submission.competition, "accuracy")
        try:
            frame = pd.read_csv(io.BytesIO(submission.content))
            solution = pd.read_csv(solution_path)
            submission.public_score = score_submission(frame, solution, metric)
            submission.status = "COMPLETE"
        except Exception as exc:  # any parse/metric problem is a scoring ERROR, as on Kaggle
            submission.status = "ERROR"
            submission.error_description = str(exc)


def _make_handler(server: FakeKaggleServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_FakeKaggleHandler):
        fake = server

    return Handler


class _FakeKaggleHandler(BaseHTTPRequestHandler):
    fake: FakeKaggleServer
    server_version = "FakeKaggle/1.0"
    protocol_version = "HTTP/1.0"

    # Quiet: the default handler prints every request to stderr.
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        logger.debug("fake kaggle: " + format, *args)

    # -- plumbing ----------------------------------------------------------------------------

    @property
    def _route(self) -> str:
        # Proxy-form request lines carry an absolute URL; origin-form ones a path.
        return unquote(urlsplit(self.path).path)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
        declared_length: int | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header(
            "Content-Length", str(len(body) if declared_length is None else declared_length)
        )
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, payload: Mapping[str, Any], status: int = 200) -> None:
        self._send(status, json.dumps(payload).encode())

    def _send_error_json(self, error: _HttpAnswer) -> None:
        body = json.dumps({"code": error.status, "message": error.message}).encode()
        self._send(error.status, body, headers=error.headers)

    def _authenticated_user(self) -> str | None:
        header = self.headers.get("Authorization") or ""
        if header.startswith("Basic "):
            try:
                user, _, key = base64.b64decode(header[6:]).decode().partition(":")
            except Exception:
                return None
            if secrets.compare_digest(user, self.fake.username) and secrets.compare_digest(
                key, self.fake.key
            ):
                return user
        if header.startswith("Bearer "):
            if secrets.compare_digest(header[7:], self.fake.token):
                return self.fake.username
        return None

    def _apply_common_fault(self, route_name: str, extra: tuple[str, ...] = ()) -> None:
        kinds = (
            FAULT_401,
            FAULT_403_RULES,
            FAULT_404,
            FAULT_429,
            FAULT_500,
            FAULT_SLOW,
            FAULT_CUT_CONNECTION,
        ) + extra
        fault = self.fake._take_fault(route_name, kinds)
        if fault is None:
            return
        if fault.kind == FAULT_401:
            raise _HttpAnswer(401, "Unauthenticated")
        if fault.kind == FAULT_403_RULES:
            raise _HttpAnswer(403, RULES_MESSAGE)
        if fault.kind == FAULT_404:
            raise _HttpAnswer(404, "Not found")
        if fault.kind == FAULT_429:
            raise _HttpAnswer(
                429, "Too many requests", {"Retry-After": _format_retry_after(fault.retry_after)}
            )
        if fault.kind == FAULT_500:
            raise _HttpAnswer(500, "Internal server error")
        if fault.kind == FAULT_SLOW:
            self.fake._stopping.wait(fault.delay)
            return
        if fault.kind == FAULT_CUT_CONNECTION:
            raise _DropConnection()
        if fault.kind == FAULT_SUBMISSION_LIMIT:
            raise _HttpAnswer(400, LIMIT_MESSAGE.format(limit=self.fake.daily_limit or 5))
        if fault.kind == FAULT_UPLOAD_FAILED:
            raise _HttpAnswer(500, "upload failed")
        # lose-response and truncated-zip are applied by the route itself.
        self._pending_fault = fault

    def _dispatch(self, handler: Callable[[], None]) -> None:
        self._pending_fault: Fault | None = None
        try:
            handler()
        except _HttpAnswer as error:
            self._send_error_json(error)
        except _DropConnection:
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # never kill the server thread; answer 500 like Kaggle would
            logger.exception("fake kaggle handler failed")
            with contextlib.suppress(Exception):
                self._send_error_json(_HttpAnswer(500, f"fake server error: {exc}"))

    # -- HTTP verbs --------------------------------------------------------------------------

    def do_POST(self) -> None:
        self._dispatch(self._handle_rpc)

    def do_GET(self) -> None:
        self._dispatch(self._handle_get)

    def do_PUT(self) -> None:
        self._dispatch(self._handle_put)

    # -- RPC ---------------------------------------------------------------------------------

    def _handle_rpc(self) -> None:
        route = self._route
        parts = [p for p in route.split("/") if p]
        if parts[:1] == ["api"]:
            parts = parts[1:]
        if len(parts) != 3 or parts[0] != "v1":
            raise _HttpAnswer(404, f"No route {route}")
        service, method = parts[1], parts[2]
        with self.fake._lock:
            self.fake.requests.append(("POST", method))
        body = self._read_body()
        try:
            request = json.loads(body or b"{}")
        except json.JSONDecodeError:
            raise _HttpAnswer(400, "Request body is not JSON")

        if service == "security.OAuthService" and method == "IntrospectToken":
            self._apply_common_fault(method)
            active = secrets.compare_digest(str(request.get("token", "")), self.fake.token)
            self._send_json(
                {"active": active, "username": self.fake.username if active else ""}
            )
            return
        if service != "competitions.CompetitionApiService":
            raise _HttpAnswer(404, f"Unknown service {service}")
        if self._authenticated_user() is None:
            raise _HttpAnswer(401, "Unauthenticated")
        extra = (FAULT_SUBMISSION_LIMIT, FAULT_LOSE_RESPONSE)
        self._apply_common_fault(method, extra)
        slug = str(request.get("competitionName") or "")
        handlers: dict[str, Callable[[str, dict[str, Any]], dict[str, Any] | None]] = {
            "ListDataFiles": self._list_data_files,
            "DownloadDataFiles": self._download_data_files,
            "DownloadDataFile": self._download_data_file,
            "StartSubmissionUpload": self._start_submission_upload,
            "CreateSubmission": self._create_submission,
            "ListSubmissions": self._list_submissions,
        }
        if method not in handlers:
            raise _HttpAnswer(404, f"Method {method} is not implemented by the fake server")
        answer = handlers[method](slug, request)
        if self._pending_fault is not None and self._pending_fault.kind == FAULT_LOSE_RESPONSE:
            raise _DropConnection()
        if answer is not None:
            self._send_json(answer)

    def _list_data_files(self, slug: str, request: dict[str, Any]) -> dict[str, Any]:
        files = []
        for path in self.fake._public_files(slug):
            stat = path.stat()
            created = datetime.fromtimestamp(stat.st_mtime, tz=timezone.utc).replace(tzinfo=None)
            files.append(
                {
                    "ref": path.name,
                    "name": path.name,
                    "totalBytes": stat.st_size,
                    "creationDate": created.isoformat(timespec="milliseconds") + "Z",
                    "url": f"{self.fake.url}/files/{slug}/{path.name}",
                }
            )
        return {"files": files, "nextPageToken": ""}

    def _download_data_files(self, slug: str, request: dict[str, Any]) -> None:
        self.fake._competition_dir(slug)
        self._redirect(f"{self.fake.url}/files/{slug}.zip")

    def _download_data_file(self, slug: str, request: dict[str, Any]) -> None:
        name = str(request.get("fileName") or "")
        if name not in {p.name for p in self.fake._public_files(slug)}:
            raise _HttpAnswer(404, f"File '{name}' not found in competition '{slug}'")
        self._redirect(f"{self.fake.url}/files/{slug}/{name}")

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _start_submission_upload(self, slug: str, request: dict[str, Any]) -> dict[str, Any]:
        self.fake._competition_dir(slug)
        token = secrets.token_hex(12)
        with self.fake._lock:
            self.fake._pending_uploads[token] = str(request.get("fileName") or "submission.csv")
        return {"token": token, "createUrl": f"{self.fake.url}/upload/{token}"}

    def _create_submission(self, slug: str, request: dict[str, Any]) -> dict[str, Any]:
        self.fake._competition_dir(slug)
        token = str(request.get("blobFileTokens") or "")
        with self.fake._lock:
            content = self.fake._uploads.pop(token, None)
            file_name = self.fake._pending_uploads.pop(token, "submission.csv")
            if content is None:
                raise _HttpAnswer(400, "Blob file token is invalid or the upload was not completed")
            limit = self.fake.daily_limit
            if limit is not None and len(
                [s for s in self.fake.submissions if s.competition == slug]
            ) >= limit:
                raise _HttpAnswer(400, LIMIT_MESSAGE.format(limit=limit))
            submission = StoredSubmission(
                ref=100_000 + len(self.fake.submissions) + 1,
                competition=slug,
                file_name=file_name,
                description=str(request.get("submissionDescription") or ""),
                content=content,
                date=datetime.now(timezone.utc),
                polls_left=self.fake.pending_polls,
            )
            self.fake.submissions.append(submission)
        return {"message": "Successfully submitted to " + slug, "ref": submission.ref}

    def _list_submissions(self, slug: str, request: dict[str, Any]) -> dict[str, Any]:
        self.fake._competition_dir(slug)
        with self.fake._lock:
            mine = [s for s in self.fake.submissions if s.competition == slug]
            for submission in mine:
                if submission.status == "PENDING":
                    if submission.polls_left > 0:
                        submission.polls_left -= 1
                    else:
                        self.fake._score(submission)
            newest_first = sorted(mine, key=lambda s: (s.date, s.ref), reverse=True)
            page_size = int(request.get("pageSize") or 20)
            return {
                "submissions": [s.to_api() for s in newest_first[:page_size]],
                "nextPageToken": "",
            }

    # -- downloads (the redirect targets) -------------------------------------------------

    def _handle_get(self) -> None:
        parts = [p for p in self._route.split("/") if p]
        if len(parts) == 2 and parts[0] == "files" and parts[1].endswith(".zip"):
            self._serve_zip(parts[1][: -len(".zip")])
            return
        if len(parts) == 3 and parts[0] == "files":
            self._serve_file(parts[1], parts[2])
            return
        raise _HttpAnswer(404, f"No route {self._route}")

    def _serve_zip(self, slug: str) -> None:
        with self.fake._lock:
            self.fake.requests.append(("GET", "zip"))
        self._apply_common_fault("zip", (FAULT_TRUNCATED_ZIP,))
        payload, newest = self.fake._build_zip(slug)
        headers = {
            "Last-Modified": email.utils.formatdate(newest, usegmt=True),
            "Content-Disposition": f'attachment; filename="{slug}.zip"',
            "ETag": '"' + hashlib.sha256(payload).hexdigest()[:32] + '"',
        }
        fault = self._pending_fault
        if fault is not None and fault.kind == FAULT_TRUNCATED_ZIP:
            # An honest-looking answer whose zip lost its tail (central directory included).
            self._send(200, payload[: len(payload) // 2], "application/zip", headers)
            return
        if fault is not None and fault.kind == FAULT_CUT_CONNECTION:
            self._send(200, payload[: len(payload) // 2], "application/zip", headers, len(payload))
            raise _DropConnection()
        self._send(200, payload, "application/zip", headers)

    def _serve_file(self, slug: str, name: str) -> None:
        with self.fake._lock:
            self.fake.requests.append(("GET", "file"))
        self._apply_common_fault("file")
        files = {p.name: p for p in self.fake._public_files(slug)}
        if name not in files:
            raise _HttpAnswer(404, f"File '{name}' not found")
        path = files[name]
        headers = {"Last-Modified": email.utils.formatdate(path.stat().st_mtime, usegmt=True)}
        self._send(200, path.read_bytes(), "text/csv", headers)

    # -- uploads ---------------------------------------------------------------------------

    def _handle_put(self) -> None:
        parts = [p for p in self._route.split("/") if p]
        with self.fake._lock:
            self.fake.requests.append(("PUT", "upload"))
        if len(parts) != 2 or parts[0] != "upload":
            raise _HttpAnswer(404, f"No route {self._route}")
        body = self._read_body()
        self._apply_common_fault("upload", (FAULT_UPLOAD_FAILED,))
        token = parts[1]
        with self.fake._lock:
            if token not in self.fake._pending_uploads:
                raise _HttpAnswer(404, "Upload URL expired or unknown")
            self.fake._uploads[token] = body
        self._send_json({}, status=200)


def _format_retry_after(seconds: float) -> str:
    # RFC 9110 allows only whole seconds; keep fractions so tests stay fast (clients parse float).
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


@contextlib.contextmanager
def serve(
    data_dir: str | os.PathLike[str],
    solutions: Mapping[str, str | os.PathLike[str]] | None = None,
    **kwargs: Any,
) -> Iterator[FakeKaggleServer]:
    """Run a :class:`FakeKaggleServer` for the duration of a ``with`` block.

    Why: tests and the offline demo need a server that is started on a free port and always
    stopped, even when the body fails. Keyword arguments go to :class:`FakeKaggleServer`.
    """
    server = FakeKaggleServer(data_dir, solutions, **kwargs).start()
    try:
        yield server
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: serve a data folder until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m lora_tasks.testing.fake_kaggle",
        description="Serve competitions from a data folder with the Kaggle API's wire protocol.",
    )
    parser.add_argument("--data", required=True, help="folder whose sub-folders are competitions")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = any free)")
    parser.add_argument(
        "--solution",
        action="append",
        default=[],
        metavar="SLUG=PATH",
        help="hidden solution CSV used to score a competition (repeatable)",
    )
    parser.add_argument(
        "--metric", action="append", default=[], metavar="SLUG=METRIC", help="scoring metric"
    )
    parser.add_argument("--username", default=DEFAULT_USERNAME)
    parser.add_argument("--key", default=DEFAULT_KEY)
    args = parser.parse_args(argv)
    solutions = dict(item.split("=", 1) for item in args.solution)
    metrics = dict(item.split("=", 1) for item in args.metric)
    server = FakeKaggleServer(
        args.data,
        solutions,
        metrics=metrics,
        username=args.username,
        key=args.key,
        port=args.port,
    )
    print(f"Fake Kaggle serving {server.data_dir} at {server.url}", flush=True)
    print(
        "In-process: KaggleClient(endpoint=URL). CLI: KAGGLE_API_ENVIRONMENT=LOCALHOST "
        f"HTTP_PROXY={server.url} KAGGLE_USERNAME={args.username} KAGGLE_KEY=<key>",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server._httpd.server_close()


if __name__ == "__main__":
    main()
