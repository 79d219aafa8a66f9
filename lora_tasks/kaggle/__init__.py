"""The Kaggle layer: download competition data, check and submit predictions, read scores back.

Wraps the official client (``kaggle`` 2.2.5 over ``kagglesdk`` 0.1.38) so that a scheduled run
gets clear errors split into retryable and fatal (:mod:`.errors`), explicit credentials, a
timeout and honoured ``Retry-After`` (:mod:`.client`, :mod:`.credentials`), verified atomic
downloads (:mod:`.download`), strict format checks before upload (:mod:`.validate`), at most
one submission per file (:mod:`.submission`), a bounded score wait (:mod:`.scores`) and the
competition's metric (:mod:`.metadata`). Must not import MLX or ``lora_tasks.models``.
"""

from lora_tasks.hashing import sha256_file as file_sha256

from .client import DEFAULT_TIMEOUT_S, KaggleClient, call, check_slug
from .credentials import kaggle_config_dir, token_problem
from .download import MANIFEST_NAME, RemoteFile, download_competition, list_files
from .errors import (
    KAGGLE_WEB,
    TOKEN_SETTINGS_URL,
    CorruptDownloadError,
    CredentialsError,
    FatalKaggleError,
    InvalidSlugError,
    KaggleConnectionError,
    KaggleIOError,
    KaggleRequestError,
    KaggleServerError,
    NotFoundError,
    RateLimitedError,
    RetryableKaggleError,
    RulesNotAcceptedError,
    RunIdConflictError,
    ScoringTimeoutError,
    SilentSubmitFailure,
    SubmissionLimitError,
    SubmissionNotListedError,
    SubmissionScoringError,
    SubmissionValidationError,
    classify_error,
    is_retryable,
    prefect_retry_condition,
    retry_after_seconds,
)
from .metadata import competition_metric
from .scores import wait_for_score
from .submission import (
    UPLOAD_FAILED_MESSAGE,
    SubmissionResult,
    find_submission,
    find_submission_by_sha,
    list_submissions,
    run_tag,
    sha_tag,
    submit,
)
from .validate import SubmissionCheck, validate_submission

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "KAGGLE_WEB",
    "MANIFEST_NAME",
    "TOKEN_SETTINGS_URL",
    "UPLOAD_FAILED_MESSAGE",
    "CorruptDownloadError",
    "CredentialsError",
    "FatalKaggleError",
    "InvalidSlugError",
    "KaggleClient",
    "KaggleConnectionError",
    "KaggleIOError",
    "KaggleRequestError",
    "KaggleServerError",
    "NotFoundError",
    "RateLimitedError",
    "RemoteFile",
    "RetryableKaggleError",
    "RulesNotAcceptedError",
    "RunIdConflictError",
    "ScoringTimeoutError",
    "SilentSubmitFailure",
    "SubmissionCheck",
    "SubmissionLimitError",
    "SubmissionResult",
    "SubmissionNotListedError",
    "SubmissionScoringError",
    "SubmissionValidationError",
    "call",
    "check_slug",
    "classify_error",
    "competition_metric",
    "download_competition",
    "file_sha256",
    "find_submission",
    "find_submission_by_sha",
    "is_retryable",
    "kaggle_config_dir",
    "list_files",
    "list_submissions",
    "prefect_retry_condition",
    "retry_after_seconds",
    "run_tag",
    "sha_tag",
    "submit",
    "token_problem",
    "validate_submission",
    "wait_for_score",
]
