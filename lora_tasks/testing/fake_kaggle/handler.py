"""The fake Kaggle server's HTTP handler: Kaggle's RPC routes, the download redirects and the
upload PUT, with the injected faults applied (see :mod:`lora_tasks.testing.fake_kaggle`).
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import hashlib
import json
import logging
import secrets
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import unquote, urlsplit

from .state import (
    FAULT_401,
    FAULT_403_RULES,
    FAULT_404,
    FAULT_429,
    FAULT_500,
    FAULT_CUT_CONNECTION,
    FAULT_LOSE_RESPONSE,
    FAULT_SLOW,
    FAULT_SUBMISSION_LIMIT,
    FAULT_TRUNCATED_ZIP,
    FAULT_UPLOAD_FAILED,
    FAULT_ZIP_SLIP,
    LIMIT_MESSAGE,
    RULES_MESSAGE,
    DropConnection,
    Fault,
    HttpAnswer,
    StoredSubmission,
)

logger = logging.getLogger(__name__)

def make_handler(server: Any) -> type[BaseHTTPRequestHandler]:
    class Handler(_FakeKaggleHandler):
        fake = server

    return Handler


class _FakeKaggleHandler(BaseHTTPRequestHandler):
    fake: Any  # the FakeKaggleServer this handler answers for (lora_tasks.testing.fake_kaggle.server)
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

    def _send_error_json(self, error: HttpAnswer) -> None:
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
            raise HttpAnswer(401, "Unauthenticated")
        if fault.kind == FAULT_403_RULES:
            raise HttpAnswer(403, RULES_MESSAGE)
        if fault.kind == FAULT_404:
            raise HttpAnswer(404, "Not found")
        if fault.kind == FAULT_429:
            raise HttpAnswer(
                429, "Too many requests", {"Retry-After": _format_retry_after(fault.retry_after)}
            )
        if fault.kind == FAULT_500:
            raise HttpAnswer(500, "Internal server error")
        if fault.kind == FAULT_SLOW:
            self.fake._stopping.wait(fault.delay)
            return
        if fault.kind == FAULT_CUT_CONNECTION:
            raise DropConnection()
        if fault.kind == FAULT_SUBMISSION_LIMIT:
            raise HttpAnswer(400, LIMIT_MESSAGE.format(limit=self.fake.daily_limit or 5))
        if fault.kind == FAULT_UPLOAD_FAILED:
            raise HttpAnswer(500, "upload failed")
        # lose-response and truncated-zip are applied by the route itself.
        self._pending_fault = fault

    def _dispatch(self, handler: Callable[[], None]) -> None:
        self._pending_fault: Fault | None = None
        try:
            handler()
        except HttpAnswer as error:
            self._send_error_json(error)
        except DropConnection:
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # never kill the server thread; answer 500 like Kaggle would
            logger.exception("fake kaggle handler failed")
            with contextlib.suppress(Exception):
                self._send_error_json(HttpAnswer(500, f"fake server error: {exc}"))

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
            raise HttpAnswer(404, f"No route {route}")
        service, method = parts[1], parts[2]
        self.fake._record("POST", method)
        body = self._read_body()
        try:
            request = json.loads(body or b"{}")
        except json.JSONDecodeError:
            raise HttpAnswer(400, "Request body is not JSON") from None

        if service == "security.OAuthService" and method == "IntrospectToken":
            self._apply_common_fault(method)
            active = secrets.compare_digest(str(request.get("token", "")), self.fake.token)
            self._send_json(
                {"active": active, "username": self.fake.username if active else ""}
            )
            return
        if service != "competitions.CompetitionApiService":
            raise HttpAnswer(404, f"Unknown service {service}")
        if self._authenticated_user() is None:
            raise HttpAnswer(401, "Unauthenticated")
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
            raise HttpAnswer(404, f"Method {method} is not implemented by the fake server")
        answer = handlers[method](slug, request)
        if self._pending_fault is not None and self._pending_fault.kind == FAULT_LOSE_RESPONSE:
            raise DropConnection()
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
            raise HttpAnswer(404, f"File '{name}' not found in competition '{slug}'")
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
        with self.fake.submissions_transaction():
            content = self.fake._uploads.pop(token, None)
            file_name = self.fake._pending_uploads.pop(token, "submission.csv")
            if content is None:
                raise HttpAnswer(400, "Blob file token is invalid or the upload was not completed")
            limit = self.fake.daily_limit
            if limit is not None and len(
                [s for s in self.fake.submissions if s.competition == slug]
            ) >= limit:
                raise HttpAnswer(400, LIMIT_MESSAGE.format(limit=limit))
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
        return {"message": "Successfully submitted to " + slug, "ref": submission.ref}

    def _list_submissions(self, slug: str, request: dict[str, Any]) -> dict[str, Any]:
        self.fake._competition_dir(slug)
        with self.fake.submissions_transaction():
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
        if len(parts) >= 3 and parts[0] == "files":
            self._serve_file(parts[1], "/".join(parts[2:]))
            return
        raise HttpAnswer(404, f"No route {self._route}")

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
            raise DropConnection()
        self._send(200, payload, "application/zip", headers)

    def _serve_file(self, slug: str, name: str) -> None:
        self.fake._record("GET", "file")
        self._apply_common_fault("file")
        files = self.fake._public_files(slug)
        if name not in files:
            raise HttpAnswer(404, f"File '{name}' not found")
        path = files[name]
        headers = {"Last-Modified": email.utils.formatdate(path.stat().st_mtime, usegmt=True)}
        self._send(200, path.read_bytes(), "text/csv", headers)

    # -- uploads ---------------------------------------------------------------------------

    def _handle_put(self) -> None:
        parts = [p for p in self._route.split("/") if p]
        self.fake._record("PUT", "upload")
        if len(parts) != 2 or parts[0] != "upload":
            raise HttpAnswer(404, f"No route {self._route}")
        body = self._read_body()
        self._apply_common_fault("upload", (FAULT_UPLOAD_FAILED,))
        token = parts[1]
        with self.fake._lock:
            if token not in self.fake._pending_uploads:
                raise HttpAnswer(404, "Upload URL expired or unknown")
            self.fake._uploads[token] = body
        self._send_json({}, status=200)


def _title(slug: str) -> str:
    return slug.replace("-", " ").title()


def _format_retry_after(seconds: float) -> str:
    # RFC 9110 allows only whole seconds; keep fractions so tests stay fast (clients parse float).
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"

