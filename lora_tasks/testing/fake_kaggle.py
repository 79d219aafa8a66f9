"""A fake Kaggle API server: real HTTP on 127.0.0.1, speaking what the official client speaks.

Why: the Kaggle I/O layer must be tested with the real ``kaggle``/``kagglesdk`` client (its
request shapes, redirects, silent failures and missing retries are the point), and the whole
pipeline must run offline on a fresh machine (the ``demo`` competition). Mocks of the client
would test our assumptions about it instead of the client itself.

What it serves (the subset of ``competitions.CompetitionApiService`` we use, plus
``security.OAuthService/IntrospectToken``), every call a JSON ``POST`` to
``/api/v1/{Service}/{Method}`` (``/v1/...`` is accepted too):

* ``ListCompetitions`` (``search``; each competition's ``evaluationMetric``, as Kaggle names it);
* ``ListDataFiles``; ``DownloadDataFiles`` / ``DownloadDataFile`` (answer 302 to a zip/file built
  on the fly, with Content-Length and Last-Modified);
* ``StartSubmissionUpload`` (``token``, ``createUrl``) then a raw ``PUT`` to ``createUrl``, then
  ``CreateSubmission`` (``message``, ``ref``); ``ListSubmissions`` (score, status).

Competitions are the sub-folders of a data folder; their files are served with paths relative
to it (a competition whose files sit in ``data/`` lists and zips ``data/train.csv``). A file named
``solution.csv`` at the top of one is hidden (never listed or served) and used for scoring;
solutions can also be given explicitly.
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
import os
import secrets
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from lora_tasks.metrics import get_metric

logger = logging.getLogger(__name__)

SOLUTION_FILE_NAME = "solution.csv"
#: Optional hidden file in a competition folder: ``{"metric": ..., "evaluation_metric": ...}``, the
#: scoring metric (a :data:`METRICS` name) and the listing's ``evaluationMetric`` text. Why a file:
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
# Scoring
# --------------------------------------------------------------------------------------------


def _numbers(frame: pd.DataFrame) -> np.ndarray:
    """Raw text to floats; a non-number fails the scoring, as on Kaggle."""
    try:
        return frame.apply(lambda col: pd.to_numeric(col, errors="raise")).to_numpy(dtype=float)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"Submission values must be numbers: {exc}") from None


def _positive_label(labels: np.ndarray) -> str:
    for word in ("1", "True", "true", "TRUE", "yes", "Yes"):
        if word in set(labels):
            return word
    return max(set(labels))


def _accuracy(truth: pd.DataFrame, pred: pd.DataFrame) -> float:
    return get_metric("accuracy").fn(truth.iloc[:, 0].to_numpy(), pred.iloc[:, 0].to_numpy())


def _f1(truth: pd.DataFrame, pred: pd.DataFrame) -> float:
    y_true, y_pred = truth.iloc[:, 0].to_numpy(), pred.iloc[:, 0].to_numpy()
    if len(set(y_true)) > 2:
        return float(skm.f1_score(y_true, y_pred, average="macro", zero_division=0))
    positive = _positive_label(y_true)
    return get_metric("f1").fn((y_true == positive).astype(int), (y_pred == positive).astype(int))


def _mcc(truth: pd.DataFrame, pred: pd.DataFrame) -> float:
    return float(skm.matthews_corrcoef(truth.iloc[:, 0].to_numpy(), pred.iloc[:, 0].to_numpy()))


def _qwk(truth: pd.DataFrame, pred: pd.DataFrame) -> float:
    y_true, y_pred = _numbers(truth)[:, 0], _numbers(pred)[:, 0]
    if not np.array_equal(y_pred, np.round(y_pred)):
        raise ValueError("Quadratic weighted kappa needs integer ratings")
    return float(skm.cohen_kappa_score(y_true.astype(int), y_pred.astype(int), weights="quadratic"))


def _values(name: str) -> Callable[[pd.DataFrame, pd.DataFrame], float]:
    """A metric of numbers; with several target columns, the mean of its per-column scores
    (Kaggle's "mean columnwise" metrics: each column scored on its own, then averaged)."""

    def scorer(truth: pd.DataFrame, pred: pd.DataFrame) -> float:
        y_true, y_pred = _numbers(truth), _numbers(pred)
        fn = get_metric(name).fn
        return float(np.mean([fn(y_true[:, j], y_pred[:, j]) for j in range(y_true.shape[1])]))

    return scorer


def _logloss(truth: pd.DataFrame, pred: pd.DataFrame) -> float:
    """One column: binary log loss of P(1). Several: Kaggle's "Multiclass Loss" of one-hot
    solution columns, each submitted row rescaled to sum 1 after clipping at 1e-15."""
    if truth.shape[1] == 1:
        return _values("log_loss")(truth, pred)
    onehot, probs = _numbers(truth), np.clip(_numbers(pred), 1e-15, 1 - 1e-15)
    if not np.all(onehot.sum(axis=1) == 1):
        raise ValueError("Multiclass loss needs a one-hot solution: exactly one 1 per row")
    probs = probs / probs.sum(axis=1, keepdims=True)
    return float(skm.log_loss(np.argmax(onehot, axis=1), probs, labels=np.arange(onehot.shape[1])))


def _mean_columnwise_auc(truth: pd.DataFrame, pred: pd.DataFrame) -> float:
    y_true, y_prob = _numbers(truth), _numbers(pred)
    return float(np.mean([skm.roc_auc_score(y_true[:, j], y_prob[:, j]) for j in range(y_true.shape[1])]))


#: Scoring functions by name; each takes the solution's and the submission's target columns as
#: raw text aligned by id (label metrics compare the spelling exactly, as Kaggle does). The
#: names of :mod:`lora_tasks.metrics` are accepted too (``log_loss``, ``mean_columnwise_roc_auc``,
#: ``mcrmse``), so a shape's expected metric can be given as is. With several solution columns,
#: number metrics score each column and average (mean columnwise RMSE / AUC), and log loss reads
#: the columns as one-hot classes (Kaggle's "Multiclass Loss").
METRICS: dict[str, Callable[[pd.DataFrame, pd.DataFrame], float]] = {
    "accuracy": _accuracy,
    "f1": _f1,
    "mcc": _mcc,
    "qwk": _qwk,
    "rmse": _values("rmse"),
    "mcrmse": _values("rmse"),
    "mean_columnwise_rmse": _values("rmse"),
    "rmsle": _values("rmsle"),
    "mae": _values("mae"),
    "auc": _values("roc_auc"),
    "roc_auc": _values("roc_auc"),
    "logloss": _logloss,
    "log_loss": _logloss,
    "multiclass_logloss": _logloss,
    "mean_columnwise_auc": _mean_columnwise_auc,
    "mean_columnwise_roc_auc": _mean_columnwise_auc,
}

#: What Kaggle's competition listing calls each metric (its ``evaluation_metric`` text).
KAGGLE_METRIC_NAMES: dict[str, str] = {
    "accuracy": "Categorization Accuracy",
    "f1": "F1 Score",
    "mcc": "Matthews Correlation Coefficient",
    "qwk": "Quadratic Weighted Kappa",
    "rmse": "Root Mean Squared Error",
    "mcrmse": "Mean Columnwise Root Mean Squared Error",
    "mean_columnwise_rmse": "Mean Columnwise Root Mean Squared Error",
    "rmsle": "Root Mean Squared Logarithmic Error",
    "mae": "Mean Absolute Error",
    "auc": "Area Under Receiver Operating Characteristic Curve",
    "roc_auc": "Area Under Receiver Operating Characteristic Curve",
    "logloss": "Log Loss",
    "log_loss": "Log Loss",
    "multiclass_logloss": "Multiclass Loss",
    "mean_columnwise_auc": "Mean Columnwise Area Under Receiver Operating Characteristic Curve",
    "mean_columnwise_roc_auc": "Mean Columnwise Area Under Receiver Operating Characteristic Curve",
}


def score_submission(submission: pd.DataFrame, solution: pd.DataFrame, metric: str) -> float:
    """Score a submission the way Kaggle does: align on the id column, apply the metric.

    Why a public function: tests compute the expected score independently from the same
    frames, and the error texts here are what a scored-with-ERROR submission reports.
    The id column is the solution's first column; every other column (except Kaggle's
    ``Usage``) is a target the submission must have, in the same order. Values are compared
    as text, so ``1`` and ``1.0`` or ``True`` and ``1`` are different labels.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {sorted(METRICS)}")
    solution = solution.drop(columns=[c for c in solution.columns if c == "Usage"])
    id_col, targets = solution.columns[0], list(solution.columns[1:])
    if list(submission.columns) != list(solution.columns):
        raise ValueError(
            f"Submission columns {list(submission.columns)} do not match the expected "
            f"{list(solution.columns)}"
        )
    if len(submission) != len(solution):
        raise ValueError(f"Submission has {len(submission)} rows, expected {len(solution)}")
    sub = submission.astype(str).set_index(id_col)
    sol = solution.astype(str).set_index(id_col)
    if sub.index.has_duplicates or set(sub.index) != set(sol.index):
        raise ValueError(f"Submission {id_col} values do not match the expected ids")
    pred = sub.loc[sol.index, targets]
    empty = pred.apply(lambda col: col.str.strip().str.lower().isin({"", "nan"})).to_numpy()
    if empty.any():
        raise ValueError(f"Submission has empty values in column {targets[int(np.argmax(empty.any(axis=0)))]}")
    return METRICS[metric](sol[targets], pred)


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
    metric: str | None = None  # the METRICS name it was scored with (set when scored)

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
        metrics: ``{slug: metric}``, a name of :data:`METRICS` (``accuracy``, ``f1``, ``mcc``,
            ``qwk``, ``rmse``, ``rmsle``, ``mae``, ``roc_auc``, ``log_loss``, ``mcrmse``,
            ``mean_columnwise_roc_auc``, ...), overriding the folder's
            :data:`COMPETITION_META_FILE` and :data:`DEFAULT_METRICS`; other slugs score with accuracy.
        evaluation_metrics: ``{slug: text}`` overriding the ``evaluationMetric`` the competition
            listing shows (by default the folder's :data:`COMPETITION_META_FILE`, else Kaggle's
            name of the scoring metric, :data:`KAGGLE_METRIC_NAMES`); ``None`` or ``""`` lists the
            competition without it.
        username, key: accepted Basic credentials; token: accepted Bearer token.
        port: 0 picks a free port.
        pending_polls: how many ``ListSubmissions`` answers show a new submission as PENDING
            before it is scored, so callers really exercise their polling.
        daily_limit: submissions allowed per competition before the limit error (None = no limit).
        state_file: where the submissions are kept between server processes (None: in memory only).
            Kaggle remembers a user's submissions; the offline demo's server, started anew by each
            run, must too, or a rerun's recorded submission would be unknown to it.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        solutions: Mapping[str, str | os.PathLike[str]] | None = None,
        *,
        metrics: Mapping[str, str] | None = None,
        evaluation_metrics: Mapping[str, str | None] | None = None,
        username: str = DEFAULT_USERNAME,
        key: str = DEFAULT_KEY,
        token: str = DEFAULT_TOKEN,
        host: str = "127.0.0.1",
        port: int = 0,
        pending_polls: int = 1,
        daily_limit: int | None = None,
        state_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        if not self.data_dir.is_dir():
            raise FileNotFoundError(f"fake Kaggle data folder {self.data_dir} does not exist")
        self.solutions = {k: Path(v) for k, v in (solutions or {}).items()}
        self.given_metrics = dict(metrics or {})
        unknown = sorted({m for m in self.given_metrics.values() if m not in METRICS})
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; known: {sorted(METRICS)}")
        self.evaluation_metrics = dict(evaluation_metrics or {})
        self.username = username
        self.key = key
        self.token = token
        self.pending_polls = pending_polls
        self.daily_limit = daily_limit
        self.state_file = Path(state_file) if state_file is not None else None
        self.submissions: list[StoredSubmission] = load_submissions(self.state_file)
        self.requests: list[tuple[str, str]] = []  # (HTTP method, route) in arrival order
        self.request_log: list[tuple[float, str, str]] = []  # (time.monotonic(), method, route)
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

    def start(self) -> FakeKaggleServer:
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

    def save_state(self) -> None:
        """Write the submissions to ``state_file`` (atomically), when one is set; call under the lock."""
        if self.state_file is not None:
            save_submissions(self.state_file, self.submissions)

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
        stores the submission) and then closes the connection without answering; ``zip-slip``
        adds a member ``../evil.csv`` to the next zip.
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

    def times_of(self, route: str) -> list[float]:
        """Arrival times (``time.monotonic()``) of the requests to ``route``, e.g. ``"ListDataFiles"``."""
        with self._lock:
            return [t for t, _, r in self.request_log if r == route]

    def evaluation_metric(self, slug: str) -> str | None:
        """The ``evaluationMetric`` text the competition listing shows for ``slug`` (None: absent).

        From ``evaluation_metrics``, else the folder's :data:`COMPETITION_META_FILE`, else
        Kaggle's name of the scoring metric."""
        if slug in self.evaluation_metrics:
            return self.evaluation_metrics[slug] or None
        meta = self._folder_meta(slug)
        if "evaluation_metric" in meta:
            return meta["evaluation_metric"] or None
        return KAGGLE_METRIC_NAMES[self.metric(slug)]

    def metric(self, slug: str) -> str:
        """The :data:`METRICS` name ``slug`` is scored with: from ``metrics``, else the folder's
        :data:`COMPETITION_META_FILE`, else :data:`DEFAULT_METRICS`, else accuracy."""
        if slug in self.given_metrics:
            return self.given_metrics[slug]
        meta = self._folder_meta(slug)
        if meta.get("metric"):
            return meta["metric"]
        return DEFAULT_METRICS.get(slug, "accuracy")

    def _folder_meta(self, slug: str) -> dict[str, str]:
        path = self.data_dir / slug / COMPETITION_META_FILE
        if "/" in slug or slug.startswith(".") or not path.is_file():
            return {}
        meta = json.loads(path.read_text())
        if meta.get("metric") and meta["metric"] not in METRICS:
            raise ValueError(f"{path}: unknown metric {meta['metric']!r}; known: {sorted(METRICS)}")
        return {k: str(v) for k, v in meta.items() if k in ("metric", "evaluation_metric") and v is not None}

    def _record(self, method: str, route: str) -> None:
        with self._lock:
            self.requests.append((method, route))
            self.request_log.append((time.monotonic(), method, route))

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

    def _public_files(self, slug: str) -> dict[str, Path]:
        """``{name in the zip: path}`` of every file a competition serves, sub-folders included.

        Names are paths relative to the competition folder (``data/train.csv``), as the zip
        holds them; the top-level ``solution.csv`` and hidden (dot) files and folders are left out.
        """
        root = self._competition_dir(slug)
        files: dict[str, Path] = {}
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root)
            if not path.is_file() or any(part.startswith(".") for part in relative.parts):
                continue
            if relative.as_posix() == SOLUTION_FILE_NAME:
                continue
            files[relative.as_posix()] = path
        return files

    def _solution_path(self, slug: str) -> Path | None:
        if slug in self.solutions:
            return self.solutions[slug]
        candidate = self.data_dir / slug / SOLUTION_FILE_NAME
        return candidate if candidate.is_file() else None

    def _build_zip(self, slug: str, *, evil: bool = False) -> tuple[bytes, float]:
        files = self._public_files(slug)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, path in files.items():
                archive.write(path, arcname=name)
            if evil:  # a zip-slip member: extracting it naively writes next to the target folder
                archive.writestr("../evil.csv", "id,pwned\n1,1\n")
        newest = max((p.stat().st_mtime for p in files.values()), default=time.time())
        return buffer.getvalue(), newest

    def _score(self, submission: StoredSubmission) -> None:
        solution_path = self._solution_path(submission.competition)
        if solution_path is None:
            submission.status = "ERROR"
            submission.error_description = "No solution file on the fake server for this competition"
            return
        try:
            metric = self.metric(submission.competition)
            submission.metric = metric
            # As text: Kaggle compares labels as written ("1.0" is not "1", "1" is not "True").
            frame = pd.read_csv(io.BytesIO(submission.content), dtype=str, keep_default_na=False)
            solution = pd.read_csv(solution_path, dtype=str, keep_default_na=False)
            submission.public_score = score_submission(frame, solution, metric)
            submission.status = "COMPLETE"
        except Exception as exc:
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
    def log_message(self, format: str, *args: Any) -> None:
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
            except ValueError:  # bad base64 or not UTF-8 (binascii.Error is a ValueError)
                return None
            if secrets.compare_digest(user, self.fake.username) and secrets.compare_digest(
                key, self.fake.key
            ):
                return user
        if header.startswith("Bearer ") and secrets.compare_digest(header[7:], self.fake.token):
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
        self.fake._record("POST", method)
        body = self._read_body()
        try:
            request = json.loads(body or b"{}")
        except json.JSONDecodeError:
            raise _HttpAnswer(400, "Request body is not JSON") from None

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
            "ListCompetitions": self._list_competitions,
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

    def _list_competitions(self, slug: str, request: dict[str, Any]) -> dict[str, Any]:
        """``ListCompetitions``: the data folder's competitions whose slug or title holds ``search``."""
        search = str(request.get("search") or "").strip().lower()
        slugs = sorted(
            p.name for p in self.fake.data_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        found = [s for s in slugs if search in s.lower() or search in _title(s).lower()]
        page_size = int(request.get("pageSize") or 20)
        start = int(request.get("pageToken") or 0)
        page = found[start : start + page_size]
        more = start + page_size < len(found)
        return {
            "competitions": [self._competition_json(s) for s in page],
            "nextPageToken": str(start + page_size) if more else "",
        }

    def _competition_json(self, slug: str) -> dict[str, Any]:
        # The real listing's ref is the competition's URL, not the bare slug.
        url = f"https://www.kaggle.com/competitions/{slug}"
        answer: dict[str, Any] = {
            "ref": url,
            "url": url,
            "title": _title(slug),
            "category": "Getting Started",
            "reward": "Knowledge",
            "maxDailySubmissions": self.fake.daily_limit or 10,
            "hostName": "fake-kaggle",
        }
        metric = self.fake.evaluation_metric(slug)
        if metric:
            answer["evaluationMetric"] = metric
        return answer

    def _list_data_files(self, slug: str, request: dict[str, Any]) -> dict[str, Any]:
        files = []
        for name, path in self.fake._public_files(slug).items():
            stat = path.stat()
            created = datetime.fromtimestamp(stat.st_mtime, tz=UTC).replace(tzinfo=None)
            files.append(
                {
                    "ref": name,
                    "name": name,
                    "totalBytes": stat.st_size,
                    "creationDate": created.isoformat(timespec="milliseconds") + "Z",
                    "url": f"{self.fake.url}/files/{slug}/{name}",
                }
            )
        return {"files": files, "nextPageToken": ""}

    def _download_data_files(self, slug: str, request: dict[str, Any]) -> None:
        self.fake._competition_dir(slug)
        self._redirect(f"{self.fake.url}/files/{slug}.zip")

    def _download_data_file(self, slug: str, request: dict[str, Any]) -> None:
        name = str(request.get("fileName") or "")
        if name not in self.fake._public_files(slug):
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
                date=datetime.now(UTC),
                polls_left=self.fake.pending_polls,
            )
            self.fake.submissions.append(submission)
            self.fake.save_state()
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
                        self.fake.save_state()
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
        if len(parts) >= 3 and parts[0] == "files":
            self._serve_file(parts[1], "/".join(parts[2:]))
            return
        raise _HttpAnswer(404, f"No route {self._route}")

    def _serve_zip(self, slug: str) -> None:
        self.fake._record("GET", "zip")
        self._apply_common_fault("zip", (FAULT_TRUNCATED_ZIP, FAULT_ZIP_SLIP))
        fault = self._pending_fault
        evil = fault is not None and fault.kind == FAULT_ZIP_SLIP
        payload, newest = self.fake._build_zip(slug, evil=evil)
        headers = {
            "Last-Modified": email.utils.formatdate(newest, usegmt=True),
            "Content-Disposition": f'attachment; filename="{slug}.zip"',
            "ETag": '"' + hashlib.sha256(payload).hexdigest()[:32] + '"',
        }
        if fault is not None and fault.kind == FAULT_TRUNCATED_ZIP:
            # An honest-looking answer whose zip lost its tail (central directory included).
            self._send(200, payload[: len(payload) // 2], "application/zip", headers)
            return
        if fault is not None and fault.kind == FAULT_CUT_CONNECTION:
            self._send(200, payload[: len(payload) // 2], "application/zip", headers, len(payload))
            raise _DropConnection()
        self._send(200, payload, "application/zip", headers)

    def _serve_file(self, slug: str, name: str) -> None:
        self.fake._record("GET", "file")
        self._apply_common_fault("file")
        files = self.fake._public_files(slug)
        if name not in files:
            raise _HttpAnswer(404, f"File '{name}' not found")
        path = files[name]
        headers = {"Last-Modified": email.utils.formatdate(path.stat().st_mtime, usegmt=True)}
        self._send(200, path.read_bytes(), "text/csv", headers)

    # -- uploads ---------------------------------------------------------------------------

    def _handle_put(self) -> None:
        parts = [p for p in self._route.split("/") if p]
        self.fake._record("PUT", "upload")
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


def _title(slug: str) -> str:
    return slug.replace("-", " ").title()


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
        "--metric", action="append", default=[], metavar="SLUG=METRIC",
        help=f"scoring metric, one of {', '.join(sorted(METRICS))} (repeatable)",
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
