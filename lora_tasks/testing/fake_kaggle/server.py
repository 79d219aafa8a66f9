"""The fake Kaggle server: the competitions it serves, its submissions and faults, and
:func:`serve` for a ``with`` block (see :mod:`lora_tasks.testing.fake_kaggle`).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
import threading
import time
import zipfile
from collections.abc import Iterator, Mapping
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd

from .handler import make_handler
from .scoring import listing_name, metric_of, score_submission
from .state import (
    COMPETITION_META_FILE,
    DEFAULT_KEY,
    DEFAULT_METRICS,
    DEFAULT_TOKEN,
    DEFAULT_USERNAME,
    FAULTS,
    SOLUTION_FILE_NAME,
    Fault,
    HttpAnswer,
    StoredSubmission,
    load_submissions,
    save_submissions,
)

logger = logging.getLogger(__name__)

class FakeKaggleServer:
    """A threaded HTTP server that behaves like the Kaggle API for one or more competitions.

    Args:
        data_dir: folder whose sub-folders are competitions (``<data_dir>/<slug>/*.csv``).
        solutions: ``{slug: path}`` of hidden solution CSVs (id column, target column); a
            ``solution.csv`` inside a competition folder is used when a slug is not given here.
        metrics: ``{slug: metric}``, a name of :mod:`lora_tasks.metrics` or :data:`~.scoring.KAGGLE_METRIC_NAMES` (``accuracy``, ``f1``, ``mcc``,
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
        for name in self.given_metrics.values():
            metric_of(name)  # an unknown name: ValueError listing the known ones
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
        self._httpd = ThreadingHTTPServer((host, port), make_handler(self))
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

    @contextlib.contextmanager
    def submissions_transaction(self) -> Iterator[None]:
        """The submission list, current and exclusively held: this server's threads take turns, and
        with a ``state_file`` so do other servers on it (two demo runs at once in one work dir), each
        reading the file first, so a submission one made is listed by the other and refs never clash."""
        with self._lock:
            if self.state_file is None:
                yield
                return
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            with open(self.state_file.with_name(self.state_file.name + ".lock"), "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    kept = load_submissions(self.state_file)
                    refs = {s.ref for s in kept}
                    self.submissions = kept + [s for s in self.submissions if s.ref not in refs]
                    yield
                    self.save_state()
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)

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
        return listing_name(self.metric(slug))

    def metric(self, slug: str) -> str:
        """The metric name ``slug`` is scored with: from ``metrics``, else the folder's
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
        if meta.get("metric"):
            try:
                metric_of(meta["metric"])
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from None
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
            raise HttpAnswer(404, f"Competition '{slug}' not found")
        path = self.data_dir / slug
        if not path.is_dir():
            raise HttpAnswer(404, f"Competition '{slug}' not found")
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
