"""Kaggle I/O: download competition data, check and submit predictions, read the score back.

Why this module exists: the official client (``kaggle`` 2.2.5 over ``kagglesdk`` 0.1.38) is the
only supported way to talk to Kaggle, but it has sharp edges that a scheduled pipeline cannot
live with. This module wraps it and

* authenticates explicitly, so missing credentials are our own clear error (``import kaggle``
  only prints help and carries on, and every later call fails with 401);
* sets a request timeout (the client sets none) and turns every failure into one exception
  hierarchy split into *retryable* and *fatal* (:func:`is_retryable`, for Prefect's
  ``retry_condition_fn``), honouring ``Retry-After`` on 429;
* downloads into a temp folder, verifies the zip and renames, so nothing is ever half-written;
* validates a submission against ``sample_submission.csv`` before anything is uploaded;
* submits at most once per run id (intent file + ``ListSubmissions`` lookup on retry) and
  detects the client's silent upload failure (``"Could not submit to competition"``, ref 0);
* polls the score with a bounded wait.

Credentials never appear in logs, exception texts or returned objects.
This module must not import MLX or ``lora_tasks.models``.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import io
import json
import logging
import math
import os
import re
import tempfile
import threading
import time
import zipfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import pandas as pd
import requests
from requests.adapters import HTTPAdapter

logger = logging.getLogger(__name__)

KAGGLE_WEB = "https://www.kaggle.com"
TOKEN_SETTINGS_URL = f"{KAGGLE_WEB}/settings/api"
MANIFEST_NAME = ".kaggle_download.json"
UPLOAD_FAILED_MESSAGE = "Could not submit to competition"  # KaggleApi.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE
DEFAULT_TIMEOUT_S = 60.0

# ============================================================================================
# Errors
# ============================================================================================


class KaggleIOError(Exception):
    """Base of every error this module raises; the text names the problem and the fix."""


class RetryableKaggleError(KaggleIOError):
    """A failure that may go away if the same call is made again later.

    ``retry_after`` is the wait in seconds the server asked for (429 ``Retry-After``), or None.
    """

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class FatalKaggleError(KaggleIOError):
    """A failure that will happen again on retry until a person changes something."""


class RateLimitedError(RetryableKaggleError):
    """429 Too Many Requests; wait ``retry_after`` seconds."""


class KaggleServerError(RetryableKaggleError):
    """5xx from Kaggle."""


class KaggleConnectionError(RetryableKaggleError):
    """No answer: connection refused/reset, DNS failure, or the request timed out."""


class CorruptDownloadError(RetryableKaggleError):
    """The downloaded archive is truncated or damaged (retryable: usually a cut transfer)."""


class SilentSubmitFailure(RetryableKaggleError):
    """The client reported success-shaped output but nothing was submitted (upload failed).

    Retryable because nothing was created on Kaggle and :func:`submit` is idempotent per run id.
    """


class ScoringTimeoutError(RetryableKaggleError):
    """The submission was still being scored when the bounded wait ran out."""


class CredentialsError(FatalKaggleError):
    """No credentials were found, or Kaggle rejected them (401)."""


class RulesNotAcceptedError(FatalKaggleError):
    """403: the competition's rules have not been accepted on kaggle.com."""


class NotFoundError(FatalKaggleError):
    """404: no such competition or file (or it is not visible to this account)."""


class SubmissionLimitError(FatalKaggleError):
    """The daily submission allowance is used up."""


class SubmissionValidationError(FatalKaggleError):
    """The submission file does not match ``sample_submission.csv``; nothing was uploaded."""

    def __init__(self, message: str, problems: Sequence[str] = ()):
        super().__init__(message)
        self.problems = list(problems)


class SubmissionScoringError(FatalKaggleError):
    """Kaggle scored the submission with status ERROR."""


class KaggleRequestError(FatalKaggleError):
    """Any other 4xx: the request itself is wrong."""


class RunIdConflictError(FatalKaggleError):
    """A run id was reused for a different submission file."""


def is_retryable(exc: BaseException) -> bool:
    """True when calling again later may succeed. Plug into Prefect's ``retry_condition_fn``.

    Our own errors answer by class. Raw ``requests`` errors that escaped wrapping are classified
    the same way (connection errors, timeouts, 429 and 5xx retry; other HTTP errors do not).
    Anything else (programming errors, ``ValueError``...) is not retried.
    """
    if isinstance(exc, KaggleIOError):
        return isinstance(exc, RetryableKaggleError)
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return True
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return exc.response.status_code == 429 or exc.response.status_code >= 500
    return False


def prefect_retry_condition(task: Any, task_run: Any, state: Any) -> bool:
    """A ready-made Prefect ``retry_condition_fn``: retry only what :func:`is_retryable` allows.

    Why: Prefect calls ``retry_condition_fn(task, task_run, state)``, not with the exception;
    this unwraps the failed state's exception so tasks can use ``retry_condition_fn=
    prefect_retry_condition`` without Kaggle logic in the task layer. Prefect is not imported.
    """
    try:
        exc = state.result(raise_on_failure=False)
    except BaseException as raised:  # some states raise instead of returning
        exc = raised
    return isinstance(exc, BaseException) and is_retryable(exc)


def retry_after_seconds(exc: BaseException) -> float | None:
    """The wait a retryable error asks for (``Retry-After``), for a caller's retry delay."""
    return getattr(exc, "retry_after", None)


def _retry_after_from(response: requests.Response | None) -> float | None:
    if response is None:
        return None
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
    return None


def _server_message(exc: requests.HTTPError) -> str:
    response = exc.response
    message = str(exc.args[0]) if exc.args else ""
    if response is not None:
        with contextlib.suppress(ValueError, AttributeError):
            body = response.json()
            if isinstance(body, dict) and body.get("message"):
                message = str(body["message"])
    return message


_LIMIT_WORDS = ("allowance", "submission limit", "daily limit", "maximum number of submissions")


def classify_error(exc: BaseException, slug: str, action: str) -> KaggleIOError:
    """Turn a client/transport error into our hierarchy, with a message that says what to do.

    Why one place: every call site gets the same retry semantics and the same advice, and
    credentials can be scrubbed from all texts in one spot.
    """
    if isinstance(exc, KaggleIOError):
        return exc
    where = f"{action} for competition '{slug}'"
    if isinstance(exc, requests.Timeout):
        return KaggleConnectionError(f"{where}: Kaggle did not answer in time ({_short(exc)}). Retry later.")
    if isinstance(exc, requests.ConnectionError) or _is_transport_error(exc):
        return KaggleConnectionError(
            f"{where}: the connection to Kaggle failed ({type(exc).__name__}). Check the network and retry."
        )
    if isinstance(exc, requests.HTTPError):
        response = exc.response
        status = response.status_code if response is not None else 0
        message = _server_message(exc)
        said = f" Kaggle said: {message}" if message else ""
        if any(word in message.lower() for word in _LIMIT_WORDS):
            return SubmissionLimitError(
                f"{where}: the daily submission limit is reached.{said} Wait until the limit "
                "resets (00:00 UTC) and submit again; the run id makes the retry safe."
            )
        if status == 401:
            return CredentialsError(
                f"{where}: Kaggle rejected the credentials (401).{said} Create a new API token "
                f"at {TOKEN_SETTINGS_URL} and put it in ~/.kaggle/access_token or "
                "KAGGLE_API_TOKEN (or username/key in ~/.kaggle/kaggle.json)."
            )
        if status == 403:
            return RulesNotAcceptedError(
                f"{where}: access denied (403).{said} Accept the competition rules at "
                f"{KAGGLE_WEB}/competitions/{slug}/rules while logged in as the account whose "
                "token you use, then retry."
            )
        if status == 404:
            return NotFoundError(
                f"{where}: not found (404).{said} Check the slug: it is the last part of "
                f"{KAGGLE_WEB}/competitions/<slug>, e.g. 'titanic'."
            )
        if status == 429:
            wait = _retry_after_from(response)
            after = f" Retry after {wait:g} s." if wait is not None else " Retry later."
            return RateLimitedError(f"{where}: rate limited by Kaggle (429).{after}", wait)
        if status >= 500:
            return KaggleServerError(
                f"{where}: Kaggle server error ({status}).{said} Retry later.",
                _retry_after_from(response),
            )
        return KaggleRequestError(f"{where}: request rejected ({status}).{said}")
    if isinstance(exc, zipfile.BadZipFile):
        return CorruptDownloadError(f"{where}: the downloaded zip is damaged ({exc}). Retry the download.")
    return KaggleRequestError(f"{where}: unexpected {type(exc).__name__}: {_short(exc)}")


def _is_transport_error(exc: BaseException) -> bool:
    import urllib3.exceptions as u3

    return isinstance(exc, (requests.exceptions.ChunkedEncodingError, u3.ProtocolError, u3.HTTPError))


def _short(exc: BaseException, limit: int = 200) -> str:
    text = str(exc)
    return text if len(text) <= limit else text[:limit] + "..."


# ============================================================================================
# Client
# ============================================================================================

_IMPORT_LOCK = threading.Lock()
_KAGGLE_API_CLASS: type | None = None


def _import_kaggle_api() -> type:
    """Import ``kaggle`` without its import-time side effects reaching the user.

    Why: ``import kaggle`` computes the config folder and creates it, authenticates (possibly
    calling the network with a token) and prints help when nothing is found. We import it once
    with HOME/KAGGLE_CONFIG_DIR pointing at an empty temp folder and no credential variables,
    with output captured, and then authenticate each client ourselves.
    """
    global _KAGGLE_API_CLASS
    with _IMPORT_LOCK:
        if _KAGGLE_API_CLASS is not None:
            return _KAGGLE_API_CLASS
        hidden = ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "VERBOSE", "VERBOSE_OUTPUT")
        saved = {name: os.environ.get(name) for name in (*hidden, "HOME", "KAGGLE_CONFIG_DIR")}
        with tempfile.TemporaryDirectory(prefix="kaggle-import-") as scratch:
            try:
                for name in hidden:
                    os.environ.pop(name, None)
                os.environ["HOME"] = scratch
                os.environ["KAGGLE_CONFIG_DIR"] = scratch
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    from kaggle.api.kaggle_api_extended import KaggleApi
            finally:
                for name, value in saved.items():
                    if value is None:
                        os.environ.pop(name, None)
                    else:
                        os.environ[name] = value
        _KAGGLE_API_CLASS = KaggleApi
        return KaggleApi


def kaggle_config_dir() -> Path:
    """Where ``kaggle.json`` is looked for: ``KAGGLE_CONFIG_DIR``, ``~/.kaggle``, ``~/.config/kaggle``.

    Same order as the official client, but evaluated now (the client fixes it at import time).
    """
    configured = os.environ.get("KAGGLE_CONFIG_DIR")
    if configured:
        return Path(configured)
    home = Path(os.path.expanduser("~"))
    legacy = home / ".kaggle"
    if legacy.exists():
        return legacy
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(home / ".config")
    return Path(xdg) / "kaggle"


class _TimeoutAdapter(HTTPAdapter):
    """Gives every request a timeout: the Kaggle client sets none and can hang forever."""

    def __init__(self, timeout: float, **kwargs: Any):
        self._timeout = timeout
        super().__init__(**kwargs)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self._timeout
        return super().send(request, **kwargs)


def _make_api(endpoint: str | None, timeout: float) -> Any:
    """Build a ``KaggleApi`` subclass instance with our endpoint, timeout and no hidden retries."""
    base = _import_kaggle_api()
    from kaggle.models.kaggle_models_extended import ResumableUploadResult

    class _KaggleApi(base):  # type: ignore[misc, valid-type]
        def build_kaggle_client(self):  # noqa: ANN202
            client = super().build_kaggle_client()
            http = client.http_client()
            if endpoint is not None:
                http._endpoint = endpoint.rstrip("/")
            http._init_session()
            session = http._session
            adapter = _TimeoutAdapter(timeout)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            return client

        def download_file(self, response, outfile, http_client, quiet=True, resume=False, **_: Any):  # noqa: ANN001, ANN202
            # One attempt, no resume: retries belong to the caller (Prefect), which re-downloads
            # into a fresh temp folder. The client's own loop would sleep 2+4+8+16+32 s.
            return super().download_file(
                response, outfile, http_client, quiet=True, resume=False, max_retries=0, timeout=timeout
            )

        def upload_complete(self, path, url, quiet, resume=False):  # noqa: ANN001, ANN202
            # Same contract as the client's (returns a status, never raises), plus a timeout.
            try:
                with open(path, "rb") as handle:
                    response = requests.put(url, data=handle, timeout=timeout)
            except requests.RequestException as exc:
                logger.warning("Submission upload failed: %s", type(exc).__name__)
                return ResumableUploadResult.INCOMPLETE
            if response.status_code in (200, 201):
                return ResumableUploadResult.COMPLETE
            logger.warning("Submission upload failed: HTTP %s", response.status_code)
            return ResumableUploadResult.FAILED

    api = _KaggleApi()
    config_dir = kaggle_config_dir()
    api.config_dir = str(config_dir)
    api.config = str(config_dir / "kaggle.json")
    # "--local" makes the client use KaggleEnv.LOCAL, whose URL layout (/api/v1/...) fits a
    # local server; never "--verbose", which prints the Authorization header.
    api.args = ["--local"] if endpoint is not None else []
    return api


class KaggleClient:
    """The official Kaggle client, authenticated explicitly, with a timeout and an endpoint.

    Args:
        endpoint: base URL of a Kaggle-compatible server (e.g. the fake server's ``.url``);
            None means the real ``https://api.kaggle.com``. The endpoint is set on this client's
            own HTTP client rather than in ``kagglesdk.kaggle_env._env_to_endpoint``, so two
            clients aimed at two servers in one process do not interfere.
        timeout: seconds to wait for connect and for each read of every request.

    Credentials are found the client's way: ``KAGGLE_API_TOKEN`` (value or file path) or
    ``~/.kaggle/access_token``; else ``KAGGLE_USERNAME``/``KAGGLE_KEY`` or ``kaggle.json`` in
    :func:`kaggle_config_dir`; else OAuth ``~/.kaggle/credentials.json``. Authentication happens
    on first use (or :meth:`authenticate`); none found raises :class:`CredentialsError`.
    """

    def __init__(self, endpoint: str | None = None, *, timeout: float = DEFAULT_TIMEOUT_S):
        self.endpoint = endpoint.rstrip("/") if endpoint else None
        self.timeout = float(timeout)
        self._api: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never shows credentials
        return f"KaggleClient(endpoint={self.endpoint or 'https://api.kaggle.com'!r}, timeout={self.timeout:g})"

    def __getstate__(self) -> dict[str, Any]:
        # Picklable without credentials (e.g. for Prefect): re-authenticates after unpickling.
        return {"endpoint": self.endpoint, "timeout": self.timeout}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["endpoint"], timeout=state["timeout"])  # type: ignore[misc]

    @property
    def api(self) -> Any:
        """The authenticated ``kaggle.api.kaggle_api_extended.KaggleApi`` (built on first use)."""
        with self._lock:
            if self._api is None:
                self._api = self._authenticated_api()
            return self._api

    def authenticate(self) -> "KaggleClient":
        """Authenticate now (instead of on first call) so a missing token fails early."""
        _ = self.api
        return self

    def _authenticated_api(self) -> Any:
        api = _make_api(self.endpoint, self.timeout)
        captured = io.StringIO()
        try:
            with contextlib.redirect_stdout(captured):
                api.authenticate()
        except SystemExit:
            raise CredentialsError(_missing_credentials_message()) from None
        except Exception as exc:  # e.g. 401 while checking a token, or no network
            raise classify_error(exc, "-", "authenticating") from exc
        return api


def _missing_credentials_message() -> str:
    config = kaggle_config_dir() / "kaggle.json"
    return (
        "No Kaggle credentials found. Create an API token at "
        f"{TOKEN_SETTINGS_URL} (\"Generate New Token\") and either export KAGGLE_API_TOKEN=<token>, "
        "or save it to ~/.kaggle/access_token, or put {\"username\": ..., \"key\": ...} in "
        f"{config} (chmod 600). To run offline without an account, use the 'demo' competition "
        "with the fake Kaggle server (lora_tasks.testing.fake_kaggle)."
    )


def _call(slug: str, action: str, fn: Callable[[], Any]) -> Any:
    """Run one client call, translating every failure into our hierarchy."""
    try:
        return fn()
    except KaggleIOError:
        raise
    except Exception as exc:
        raise classify_error(exc, slug, action) from exc


# ============================================================================================
# Files and downloads
# ============================================================================================


@dataclass(frozen=True)
class RemoteFile:
    """One file of a competition as Kaggle lists it."""

    name: str
    size: int
    created: str  # ISO timestamp from Kaggle; part of the "unchanged?" check


def list_files(slug: str, client: KaggleClient) -> list[RemoteFile]:
    """List a competition's data files (all pages). Cheap, so downloads use it to skip work."""
    files: list[RemoteFile] = []
    page_token: str | None = None
    for _ in range(1000):
        response = _call(
            slug, "listing files", lambda: client.api.competition_list_files(slug, page_token, 200)
        )
        for item in response.files or []:
            created = item.creation_date.isoformat() if item.creation_date else ""
            files.append(RemoteFile(name=item.name or item.ref, size=int(item.total_bytes or 0), created=created))
        page_token = response.next_page_token
        if not page_token:
            break
    return files


def download_competition(
    slug: str, dest_dir: str | os.PathLike[str], client: KaggleClient, *, force: bool = False
) -> Path:
    """Download all files of competition ``slug`` into ``dest_dir/slug`` and return that folder.

    Skips the download when the folder already holds exactly what Kaggle lists (names, sizes
    and dates recorded at the last download, sizes checked on disk). Otherwise the zip is
    downloaded and extracted inside a temp folder next to the target, verified (CRC of every
    member, every listed file present), and only then swapped in by rename: after any failure
    the previous folder is untouched and no partial file is left behind.
    """
    target = Path(dest_dir) / slug
    remote = list_files(slug, client)
    if not force and _is_up_to_date(target, remote):
        logger.info("Competition %s is up to date in %s; skipping download", slug, target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{slug}.partial-", dir=target.parent) as scratch:
        scratch_dir = Path(scratch)
        zip_dir = scratch_dir / "zip"
        zip_dir.mkdir()
        _call(
            slug,
            "downloading data",
            lambda: client.api.competition_download_files(slug, path=str(zip_dir), force=True, quiet=True),
        )
        # The client names the file after the redirect URL's extension; take whatever single
        # file it wrote (its ".kaggle-partial" sidecar only exists after a failed transfer).
        archives = sorted(p for p in zip_dir.iterdir() if p.is_file() and not p.name.endswith(".kaggle-partial"))
        if len(archives) != 1:
            raise CorruptDownloadError(
                f"downloading data for competition '{slug}': expected one zip, got "
                f"{[p.name for p in zip_dir.iterdir()]}. Retry the download."
            )
        staged = scratch_dir / slug
        _extract_verified(archives[0], staged, slug, [f.name for f in remote])
        _write_json(staged / MANIFEST_NAME, {"slug": slug, "files": [asdict(f) for f in remote]})
        _swap_in(staged, target, scratch_dir / "previous")
    logger.info("Downloaded competition %s into %s", slug, target)
    return target


def _is_up_to_date(target: Path, remote: list[RemoteFile]) -> bool:
    manifest = target / MANIFEST_NAME
    if not manifest.is_file() or not remote:
        return False
    try:
        recorded = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return False
    if recorded.get("files") != [asdict(f) for f in remote]:
        return False
    return all((target / f.name).is_file() and (target / f.name).stat().st_size == f.size for f in remote)


def _extract_verified(archive: Path, staged: Path, slug: str, expected: Iterable[str]) -> None:
    where = f"downloading data for competition '{slug}'"
    try:
        with zipfile.ZipFile(archive) as bundle:
            bad = bundle.testzip()
            if bad is not None:
                raise CorruptDownloadError(f"{where}: member {bad!r} of the zip fails its CRC check. Retry the download.")
            names = bundle.namelist()
            for name in names:
                resolved = (staged / name).resolve()
                if not resolved.is_relative_to(staged.resolve()):
                    raise CorruptDownloadError(f"{where}: zip member {name!r} points outside the folder; refusing it.")
            missing = sorted(set(expected) - {Path(n).name for n in names} - set(names))
            if missing:
                raise CorruptDownloadError(f"{where}: the zip lacks listed files {missing}. Retry the download.")
            staged.mkdir(parents=True)
            bundle.extractall(staged)
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as exc:
        raise CorruptDownloadError(
            f"{where}: the zip is truncated or damaged ({exc}). Retry the download."
        ) from exc


def _swap_in(staged: Path, target: Path, parking: Path) -> None:
    """Replace ``target`` with ``staged`` by renames; restore the old folder if the swap fails."""
    had_previous = target.exists()
    if had_previous:
        os.replace(target, parking)
    try:
        os.replace(staged, target)
    except OSError:
        if had_previous:
            os.replace(parking, target)
        raise


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    os.replace(tmp, path)


# ============================================================================================
# Submission validation
# ============================================================================================


@dataclass(frozen=True)
class SubmissionCheck:
    """What :func:`validate_submission` verified, for logs and artifacts."""

    path: Path
    rows: int
    columns: tuple[str, ...]
    sha256: str


def validate_submission(
    path: str | os.PathLike[str],
    sample_submission_path: str | os.PathLike[str],
    *,
    id_column: str | None = None,
    dtypes: Mapping[str, str] | None = None,
) -> SubmissionCheck:
    """Check a submission against ``sample_submission.csv`` before anything is uploaded.

    Why: Kaggle counts a malformed file against the daily limit and reports the problem only
    after scoring. Checks: same columns in the same order, same row count, same id set with no
    duplicates, no NaN/empty or infinite predictions, and each prediction column has the kind of
    values the competition wants (``dtypes`` ``{column: "int"|"float"|"str"}``; by default
    inferred from the sample: integer columns must hold integers, e.g. 0/1 labels, not 0.7).
    ``id_column`` defaults to the sample's first column. All problems are reported at once in a
    :class:`SubmissionValidationError`.
    """
    path = Path(path)
    sample_path = Path(sample_submission_path)
    if not path.is_file():
        raise SubmissionValidationError(f"Submission file {path} does not exist.", [f"missing {path}"])
    sample = pd.read_csv(sample_path)
    try:
        frame = pd.read_csv(path)
    except (ValueError, pd.errors.ParserError) as exc:
        raise SubmissionValidationError(f"Submission {path} is not a readable CSV: {exc}", [str(exc)]) from exc
    id_col = id_column or str(sample.columns[0])
    problems: list[str] = []
    if list(frame.columns) != list(sample.columns):
        problems.append(
            f"columns are {list(frame.columns)} but sample_submission has {list(sample.columns)} "
            "(same names, same order)"
        )
    if len(frame) != len(sample):
        problems.append(f"{len(frame)} rows but sample_submission has {len(sample)}")
    if id_col in frame.columns:
        ids = frame[id_col].astype(str)
        expected_ids = set(sample[id_col].astype(str))
        duplicated = ids[ids.duplicated()].unique().tolist()
        if duplicated:
            problems.append(f"duplicate {id_col} values, e.g. {duplicated[:5]}")
        unknown = sorted(set(ids) - expected_ids)
        absent = sorted(expected_ids - set(ids))
        if unknown:
            problems.append(f"{len(unknown)} {id_col} values not in sample_submission, e.g. {unknown[:5]}")
        if absent:
            problems.append(f"{len(absent)} {id_col} values of sample_submission missing, e.g. {absent[:5]}")
    wanted = dict(dtypes or {})
    for column in [c for c in sample.columns if c != id_col and c in frame.columns]:
        values = frame[column]
        if values.isna().any():
            problems.append(f"column {column!r} has {int(values.isna().sum())} empty/NaN values")
        kind = wanted.get(column) or _kind_of(sample[column])
        problems.extend(_dtype_problems(column, values.dropna(), kind))
    if problems:
        raise SubmissionValidationError(
            f"Submission {path.name} does not match {sample_path.name}: " + "; ".join(problems)
            + ". Fix the file; nothing was uploaded.",
            problems,
        )
    return SubmissionCheck(path=path, rows=len(frame), columns=tuple(frame.columns), sha256=file_sha256(path))


def _kind_of(column: pd.Series) -> str:
    if pd.api.types.is_integer_dtype(column) or pd.api.types.is_bool_dtype(column):
        return "int"
    if pd.api.types.is_numeric_dtype(column):
        return "float"
    return "str"


def _dtype_problems(column: str, values: pd.Series, kind: str) -> list[str]:
    if kind == "str" or values.empty:
        return []
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.isna().any():
        return [f"column {column!r} must be numeric ({kind}) but has non-numbers, e.g. {values[numeric.isna()].iloc[0]!r}"]
    finite = numeric.map(math.isfinite)
    if not finite.all():
        return [f"column {column!r} has {int((~finite).sum())} infinite values"]
    if kind == "int" and not (numeric == numeric.round()).all():
        example = numeric[numeric != numeric.round()].iloc[0]
        return [f"column {column!r} must hold integers like the sample (e.g. class labels), got {example!r}"]
    return []


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, streamed (identifies the exact bytes a run submitted)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ============================================================================================
# Submitting and scores
# ============================================================================================


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
    reused: bool = False  # True when a retry found the submission instead of submitting again
    error_description: str | None = None


def run_tag(run_id: str) -> str:
    """The marker put in the submission message so a retry can find its own submission."""
    return f"[run:{run_id}]"


def submit(
    slug: str,
    path: str | os.PathLike[str],
    message: str,
    run_id: str,
    state_dir: str | os.PathLike[str],
    client: KaggleClient,
    *,
    sample_submission_path: str | os.PathLike[str] | None = None,
) -> SubmissionResult:
    """Submit ``path`` to ``slug`` at most once per ``run_id`` and return the submission.

    Why so careful: a submit costs one of a few daily submissions, and a lost answer (timeout,
    dropped connection) looks exactly like a failure. So the message is tagged with the run id,
    an intent file (with the file's sha256) is written to ``state_dir`` *before* the upload,
    and when an intent already exists the run id is looked up in ``ListSubmissions`` first:
    if Kaggle has it, that submission is returned (``reused=True``) instead of submitting again.
    The client's silent upload failure is turned into :class:`SilentSubmitFailure`.
    If ``sample_submission_path`` is given the file is validated first.
    """
    path = Path(path)
    if sample_submission_path is not None:
        validate_submission(path, sample_submission_path)
    if not re.fullmatch(r"[A-Za-z0-9._:-]{1,80}", run_id):
        raise KaggleRequestError(
            f"run id {run_id!r} must be 1-80 characters of letters, digits, '.', '_', ':' or '-'."
        )
    digest = file_sha256(path)
    description = f"{message.strip()} {run_tag(run_id)}".strip()
    intent_path = Path(state_dir) / f"submission-{slug}-{run_id}.json"
    intent = _read_intent(intent_path)
    if intent is not None:
        if intent.get("sha256") != digest:
            raise RunIdConflictError(
                f"run id {run_id!r} already submitted a different file to '{slug}' "
                f"(intent {intent_path}). Use a new run id for a new submission."
            )
        found = find_submission(slug, run_id, client)
        if found is not None:
            logger.info("Run %s already has submission %s on %s; not submitting again", run_id, found.ref, slug)
            found.sha256 = digest
            found.reused = True
            _write_json(intent_path, {**intent, "ref": found.ref, "state": "submitted"})
            return found
        if intent.get("ref"):
            # Recorded as submitted but beyond the listed page: trust the record, never resubmit.
            return SubmissionResult(
                slug=slug, ref=int(intent["ref"]), run_id=run_id, description=description,
                sha256=digest, reused=True,
            )
    intent = {
        "slug": slug,
        "run_id": run_id,
        "file": str(path.resolve()),
        "sha256": digest,
        "description": description,
        "created": datetime.now(timezone.utc).isoformat(),
        "state": "uploading",
    }
    intent_path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(intent_path, intent)

    response = _call(
        slug, "submitting", lambda: client.api.competition_submit(str(path), description, slug, quiet=True)
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
    _write_json(intent_path, {**intent, "ref": ref, "state": "submitted"})
    logger.info("Submitted %s to %s as ref %s (run %s)", path.name, slug, ref, run_id)
    return SubmissionResult(
        slug=slug, ref=ref, run_id=run_id, description=description, sha256=digest, message=server_message
    )


def _read_intent(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def list_submissions(slug: str, client: KaggleClient, *, page_size: int = 100) -> list[SubmissionResult]:
    """The account's most recent submissions to ``slug`` (newest first)."""
    items = _call(
        slug,
        "listing submissions",
        lambda: client.api.competition_submissions(slug, page_size=page_size, page_number=1),
    )
    return [_to_result(slug, item) for item in items or [] if item is not None]


def find_submission(slug: str, run_id: str, client: KaggleClient) -> SubmissionResult | None:
    """The submission whose message carries ``run_id``'s tag, or None (looked up on Kaggle)."""
    tag = run_tag(run_id)
    for item in list_submissions(slug, client):
        if tag in item.description:
            return item
    return None


def _to_result(slug: str, item: Any) -> SubmissionResult:
    description = str(item.description or "")
    match = re.search(r"\[run:([^\]]+)\]", description)
    status = getattr(item.status, "name", str(item.status))
    return SubmissionResult(
        slug=slug,
        ref=int(item.ref or 0),
        run_id=match.group(1) if match else "",
        description=description,
        sha256="",
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


def wait_for_score(
    slug: str,
    ref: int,
    client: KaggleClient,
    *,
    timeout_s: float = 900.0,
    poll_s: float = 10.0,
    max_poll_s: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
) -> SubmissionResult:
    """Poll until submission ``ref`` is COMPLETE (return it, with ``public_score``) or ERROR.

    Why bounded: scoring normally takes seconds to minutes, but a stuck submission must not
    hold a worker forever; :class:`ScoringTimeoutError` is retryable, so a later retry simply
    resumes waiting. Transient errors while polling (429, 5xx, timeouts) are waited out within
    the same budget, honouring ``Retry-After``. The poll interval grows by 1.5x up to
    ``max_poll_s``.
    """
    deadline = time.monotonic() + timeout_s
    interval = poll_s
    last_status = "unknown"
    while True:
        wait = interval
        try:
            for item in list_submissions(slug, client):
                if item.ref == ref:
                    last_status = item.status
                    if item.status == "COMPLETE":
                        return item
                    if item.status == "ERROR":
                        raise SubmissionScoringError(
                            f"Kaggle could not score submission {ref} to '{slug}': "
                            f"{item.error_description or 'no reason given'}. Fix the file and submit again."
                        )
                    break
            else:
                last_status = "not listed"
        except RetryableKaggleError as exc:
            last_status = f"error: {exc}"
            if exc.retry_after is not None:
                wait = max(wait, exc.retry_after)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ScoringTimeoutError(
                f"submission {ref} to '{slug}' was not scored within {timeout_s:g} s (last status: "
                f"{last_status}). Retry later to keep waiting; it will not be resubmitted."
            )
        sleep(min(wait, remaining))
        interval = min(interval * 1.5, max_poll_s)
