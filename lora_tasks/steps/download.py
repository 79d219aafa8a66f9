"""Step 1: Kaggle (or a Kaggle-compatible server) -> the competition's data folder.

Also the offline demo's in-process fake server: a fresh machine without an account must run the
whole flow (download, submit, score) through the real client.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Iterator

from lora_tasks.steps.spec import (
    CompetitionMetadata,
    competition_slug,
    config_names_metric,
)

log = logging.getLogger("lora_tasks.steps")

DEMO_SLUG = "demo"


def download_data(
    competition: str,
    data_dir: str | os.PathLike,
    endpoint: str | None = None,
    *,
    timeout: float = 60.0,
) -> Path:
    """Download (or confirm up to date) ``competition`` into ``data_dir/<slug>``; return that folder.

    ``endpoint`` is a Kaggle-compatible server's base URL (the fake server); None is kaggle.com.
    When no config file names the metric, Kaggle's ``evaluation_metric`` is read from the
    competition listing and kept beside the data (:class:`~lora_tasks.steps.spec.CompetitionMetadata`)
    for the later steps.
    """
    # the kaggle client prints help text and reads credentials at import: load it when used
    from lora_tasks.kaggle import KaggleClient, competition_metric, download_competition

    slug = competition_slug(competition)
    client = KaggleClient(endpoint, timeout=timeout)
    folder = download_competition(slug, data_dir, client)
    metric = None if config_names_metric(competition) else competition_metric(slug, client)
    if CompetitionMetadata.find(folder, slug) != CompetitionMetadata(slug, metric):
        CompetitionMetadata(slug, metric).save(folder)
    return folder


def needs_offline_server(competition: str, endpoint: str | None) -> bool:
    """The demo without a server to talk to runs against the in-process fake one."""
    return competition == DEMO_SLUG and not endpoint


def offline_kaggle(work_dir: str | os.PathLike) -> contextlib.AbstractContextManager[str]:
    """Serve the offline ``demo`` competition from an in-process fake Kaggle server; its URL in a
    ``with`` block (:func:`lora_tasks.testing.offline_demo.offline_kaggle`, the one place product
    code reaches the test server; loaded only for the demo)."""
    from lora_tasks.testing.offline_demo import offline_kaggle as serve_demo

    return serve_demo(work_dir)


@contextlib.contextmanager
def kaggle_endpoint(competition: str, endpoint: str | None, work_dir: str | os.PathLike) -> Iterator[str | None]:
    """The endpoint a run talks to: the given one, or for the demo without one the offline server."""
    if needs_offline_server(competition, endpoint):
        with offline_kaggle(work_dir) as url:
            yield url
    else:
        yield endpoint
