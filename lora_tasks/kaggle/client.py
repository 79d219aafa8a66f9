"""The official Kaggle client, built our way: explicit authentication, a timeout, an endpoint.

Why a wrapper: ``kaggle`` 2.2.5 over ``kagglesdk`` 0.1.38 is the only supported way to talk
to Kaggle, but ``import kaggle`` authenticates and prints help as a side effect, the client
sets no request timeout, and it hides its own retry loops. :class:`KaggleClient` fixes those,
and :func:`call` runs one client call, turning every failure into our error hierarchy and
waiting out a short ``Retry-After`` itself (so the wait is honoured with or without Prefect).
Credentials never appear in logs, exception texts or returned objects.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import logging
import os
import re
import tempfile
import threading
import time
from typing import Any, Callable
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from .credentials import (
    TOKEN_VARIABLE,
    kaggle_config_dir,
    missing_credentials_message,
    rejected_token_message,
    token_problem,
)
from .errors import (
    CredentialsError,
    InsecureEndpointError,
    InvalidSlugError,
    KaggleIOError,
    RateLimitedError,
    RetryableKaggleError,
    classify_error,
)

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 60.0
#: Longest ``Retry-After`` waited out inside :func:`call`; a longer one is raised to the caller
#: (the error carries ``retry_after``), since holding a worker that long is the scheduler's call.
MAX_RETRY_AFTER_S = 120.0
#: How many times :func:`call` waits and tries again before raising.
RETRY_AFTER_TRIES = 3

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


class _TimeoutAdapter(HTTPAdapter):
    """Gives every request a timeout: the Kaggle client sets none and can hang forever."""

    def __init__(self, timeout: float, **kwargs: Any):
        self._timeout = timeout
        super().__init__(**kwargs)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]  # requests types send() narrower
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self._timeout
        return super().send(request, **kwargs)


def _make_api(endpoint: str | None, timeout: float) -> Any:
    """Build a ``KaggleApi`` subclass instance with our endpoint, timeout and no hidden retries."""
    base = _import_kaggle_api()
    from kaggle.models.kaggle_models_extended import ResumableUploadResult

    class _KaggleApi(base):  # type: ignore[misc, valid-type]  # base is imported at run time
        def build_kaggle_client(self):
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

        def download_file(self, response, outfile, http_client, quiet=True, resume=False, **_: Any):
            # One attempt, no resume: retries belong to the caller (Prefect), which re-downloads
            # into a fresh temp folder. The client's own loop would sleep 2+4+8+16+32 s.
            return super().download_file(
                response, outfile, http_client, quiet=True, resume=False, max_retries=0, timeout=timeout
            )

        def upload_complete(self, path, url, quiet, resume=False):
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
        self.endpoint = check_endpoint(endpoint.rstrip("/")) if endpoint else None
        self.timeout = float(timeout)
        self._api: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never shows credentials
        return f"KaggleClient(endpoint={self.endpoint or 'https://api.kaggle.com'!r}, timeout={self.timeout:g})"

    def __getstate__(self) -> dict[str, Any]:
        # Picklable without credentials (e.g. for Prefect): re-authenticates after unpickling.
        return {"endpoint": self.endpoint, "timeout": self.timeout}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["endpoint"], timeout=state["timeout"])  # type: ignore[misc]  # unpickling rebuilds the HTTP session

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
        problem = token_problem()
        if problem is not None:
            raise CredentialsError(problem)
        api = _make_api(self.endpoint, self.timeout)
        captured = io.StringIO()
        try:
            with contextlib.redirect_stdout(captured):
                api.authenticate()
        except SystemExit:
            token_set = bool(os.environ.get(TOKEN_VARIABLE))
            raise CredentialsError(rejected_token_message() if token_set else missing_credentials_message()) from None
        except Exception as exc:  # e.g. 401 while checking a token, or no network
            raise classify_error(exc, "-", "authenticating") from exc
        method = str(api.config_values.get(api.CONFIG_NAME_AUTH_METHOD, ""))
        if os.environ.get(TOKEN_VARIABLE) and method != "ACCESS_TOKEN":
            # The client then authenticates by other means, but its HTTP layer still sends the
            # variable's token on every request, so each call would fail with a bare 401.
            raise CredentialsError(rejected_token_message())
        return api


def check_endpoint(endpoint: str) -> str:
    """Return ``endpoint`` if the credentials can go there; else :class:`InsecureEndpointError`.

    Why: every request carries the account's token or key. Over ``https`` that is safe anywhere;
    over plain ``http`` only to this machine (``localhost``, ``127.0.0.0/8``, ``::1``: the fake
    server, a local proxy). A typo such as ``http://`` for a remote host must not send real
    credentials across the network in clear.
    """
    parts = urlsplit(endpoint)
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    if scheme not in ("http", "https") or not host:
        raise InsecureEndpointError(
            f"--kaggle-endpoint {endpoint!r} is not an http(s) URL with a host; give e.g. "
            "https://kaggle.example.org or http://127.0.0.1:8765 (a server on this machine)."
        )
    if scheme == "https" or _is_loopback(host):
        return endpoint
    raise InsecureEndpointError(
        f"Refusing to send Kaggle credentials over plain http to {host!r} ({endpoint}): anyone on the "
        "network could read them. Use https://, or run the server on this machine (localhost, 127.0.0.1, ::1)."
    )


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def call(slug: str, action: str, fn: Callable[[], Any], *, idempotent: bool = True) -> Any:
    """Run one client call, translating every failure into our hierarchy.

    A retryable error that carries ``Retry-After`` (429, or a 5xx that names a wait) is waited
    out here, up to :data:`MAX_RETRY_AFTER_S` each time and :data:`RETRY_AFTER_TRIES` times,
    with a log line per wait; then the error is raised. Why here and not in Prefect: Prefect's
    fixed retry delays ignore the server's wait, and plain-Python users have no retries at all.
    ``idempotent=False`` (e.g. creating a submission) waits only on 429, which Kaggle answers
    before doing anything; a 5xx there may have done the work, so the caller must look first.
    """
    for attempt in range(RETRY_AFTER_TRIES + 1):
        try:
            return fn()
        except Exception as exc:
            error = exc if isinstance(exc, KaggleIOError) else classify_error(exc, slug, action)
            wait = getattr(error, "retry_after", None)
            waitable = isinstance(error, RateLimitedError if not idempotent else RetryableKaggleError)
            if not waitable or wait is None or wait > MAX_RETRY_AFTER_S or attempt == RETRY_AFTER_TRIES:
                if error is exc:
                    raise
                raise error from exc
            logger.warning(
                "Kaggle asked to wait %g s while %s for '%s' (%s); waiting, then try %d of %d.",
                wait, action, slug, type(error).__name__, attempt + 2, RETRY_AFTER_TRIES + 1,
            )
            time.sleep(wait)
    raise AssertionError("unreachable")  # the loop either returns or raises


_SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def check_slug(slug: str) -> str:
    """Return ``slug`` if it is a plain competition name; otherwise raise :class:`InvalidSlugError`.

    Why: the slug becomes a folder name (``data_dir/<slug>``) and part of state file names,
    so ``../x`` or ``a/b`` would write outside the work folder.
    """
    if not isinstance(slug, str) or not _SLUG.fullmatch(slug):
        raise InvalidSlugError(
            f"Competition slug {slug!r} is not valid: use the last part of "
            "https://www.kaggle.com/competitions/<slug> (letters, digits, '-' and '_'; no '/', "
            "'..' or spaces), e.g. 'titanic'."
        )
    return slug
