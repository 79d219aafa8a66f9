"""Wait for Kaggle to score a submission, bounded, riding out transient errors."""

from __future__ import annotations

import time
from typing import Callable

from .client import KaggleClient
from .errors import RetryableKaggleError, ScoringTimeoutError, SubmissionNotListedError, SubmissionScoringError
from .submission import SubmissionResult, list_submissions

#: Answers of the submission list without the ref before waiting is given up: Kaggle lists a
#: submission as soon as it is created, so a few polls cover any lag, while a ref it never made
#: (an earlier run against another server or account) would otherwise be waited on until the timeout.
NOT_LISTED_POLLS = 3


def wait_for_score(
    slug: str,
    ref: int,
    client: KaggleClient,
    *,
    timeout_s: float = 900.0,
    poll_s: float = 10.0,
    max_poll_s: float = 60.0,
    not_listed_polls: int = NOT_LISTED_POLLS,
    sleep: Callable[[float], None] = time.sleep,
) -> SubmissionResult:
    """Poll until submission ``ref`` is COMPLETE (return it, with ``public_score``) or ERROR.

    Why bounded: scoring normally takes seconds to minutes, but a stuck submission must not
    hold a worker forever; :class:`ScoringTimeoutError` is retryable, so a later retry simply
    resumes waiting. Transient errors while polling (429, 5xx, timeouts) are waited out within
    the same budget, honouring ``Retry-After``. The poll interval grows by 1.5x up to
    ``max_poll_s``. A ref that ``not_listed_polls`` answers in a row do not list raises
    :class:`SubmissionNotListedError` (not retryable) instead of waiting out the timeout.
    """
    deadline = time.monotonic() + timeout_s
    interval = poll_s
    last_status = "unknown"
    started, unlisted = time.monotonic(), 0
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
                    unlisted = 0
                    break
            else:
                last_status, unlisted = "not listed", unlisted + 1
                if unlisted >= not_listed_polls:
                    raise SubmissionNotListedError(
                        f"Kaggle does not list submission {ref} for '{slug}' (checked {unlisted} times over "
                        f"{time.monotonic() - started:.0f} s). It was recorded by an earlier run against another "
                        f"server or account, or it was deleted. Run again with --resubmit to make a new "
                        f"submission, or look it up at https://www.kaggle.com/competitions/{slug}/submissions."
                    )
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
