"""What Kaggle says about a competition itself: today, its evaluation metric.

Why: a competition without a config file still has to be scored the way Kaggle scores it.
The official client's competition listing (``competitions_list(search=...)``, the RPC
``ListCompetitions``) carries ``evaluation_metric``, e.g. "Categorization Accuracy" or
"Root Mean Squared Logarithmic Error". Mapping that text to one of our metrics is the caller's
job (``lora_tasks.metrics``); this module only fetches it, and never fails a run over it.
"""

from __future__ import annotations

import logging

from .client import KaggleClient, call, check_slug
from .errors import KaggleIOError

logger = logging.getLogger(__name__)

_PAGES = 3


def competition_metric(slug: str, client: KaggleClient) -> str | None:
    """Kaggle's ``evaluation_metric`` text for competition ``slug``, or None.

    None when the listing has no such competition, the field is empty, or Kaggle cannot be
    reached (logged as a warning; the caller falls back to inferring the metric). An invalid
    slug still raises :class:`~lora_tasks.kaggle.errors.InvalidSlugError`: that is the
    caller's mistake, not missing metadata.
    """
    check_slug(slug)
    try:
        competition = _find_competition(slug, client)
    except KaggleIOError as exc:
        logger.warning("Could not read the evaluation metric of '%s' from Kaggle (%s); inferring it instead.", slug, exc)
        return None
    if competition is None:
        logger.warning("Kaggle's competition list has no '%s'; its evaluation metric is inferred instead.", slug)
        return None
    metric = str(getattr(competition, "evaluation_metric", "") or "").strip()
    return metric or None


def _find_competition(slug: str, client: KaggleClient) -> object | None:
    page_token = ""
    for _ in range(_PAGES):
        token = page_token
        response = call(
            slug,
            "reading competition metadata",
            lambda token=token: client.api.competitions_list(search=slug, page_token=token or None),
        )
        for competition in getattr(response, "competitions", None) or []:
            if _slug_of(competition) == slug.lower():
                return competition
        page_token = str(getattr(response, "next_page_token", "") or "")
        if not page_token:
            return None
    return None


def _slug_of(competition: object) -> str:
    """The slug in a listed competition: its ``ref`` is a URL (``.../competitions/<slug>``) or the slug."""
    for field in ("ref", "url"):
        value = str(getattr(competition, field, "") or "").rstrip("/")
        if value:
            return value.rsplit("/", 1)[-1].lower()
    return ""
