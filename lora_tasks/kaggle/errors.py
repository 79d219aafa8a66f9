"""The Kaggle layer's errors: one hierarchy, split into *retryable* and *fatal*.

Why one place: every call site gets the same retry semantics (:func:`is_retryable`, for
Prefect's ``retry_condition_fn``) and the same advice in its message, and credentials can be
kept out of every text in one spot. ``Retry-After`` is parsed here and carried on the error.
"""

from __future__ import annotations

import contextlib
import email.utils
import zipfile
from datetime import datetime, timezone
from typing import Any, Sequence

import requests
import urllib3.exceptions

KAGGLE_WEB = "https://www.kaggle.com"
TOKEN_SETTINGS_URL = f"{KAGGLE_WEB}/settings/api"


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


class SubmissionNotListedError(FatalKaggleError):
    """Kaggle's submission list does not hold the submission being waited for (it was made
    against another server or account, or deleted): waiting longer cannot help."""


class KaggleRequestError(FatalKaggleError):
    """Any other 4xx: the request itself is wrong."""


class RunIdConflictError(FatalKaggleError):
    """A run id was reused for a different submission file."""


class InvalidSlugError(FatalKaggleError, ValueError):
    """A competition slug that could name a path outside the data folder (``/``, ``..``)."""


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


def retry_after_from(response: requests.Response | None) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (delta seconds or an HTTP date), or None."""
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
            wait = retry_after_from(response)
            after = f" Retry after {wait:g} s." if wait is not None else " Retry later."
            return RateLimitedError(f"{where}: rate limited by Kaggle (429).{after}", wait)
        if status >= 500:
            return KaggleServerError(
                f"{where}: Kaggle server error ({status}).{said} Retry later.",
                retry_after_from(response),
            )
        return KaggleRequestError(f"{where}: request rejected ({status}).{said}")
    if isinstance(exc, zipfile.BadZipFile):
        return CorruptDownloadError(f"{where}: the downloaded zip is damaged ({exc}). Retry the download.")
    return KaggleRequestError(f"{where}: unexpected {type(exc).__name__}: {_short(exc)}")


def _is_transport_error(exc: BaseException) -> bool:
    return isinstance(
        exc,
        (requests.exceptions.ChunkedEncodingError, urllib3.exceptions.ProtocolError, urllib3.exceptions.HTTPError),
    )


def _short(exc: BaseException, limit: int = 200) -> str:
    text = str(exc)
    return text if len(text) <= limit else text[:limit] + "..."
