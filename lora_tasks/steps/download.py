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


@contextlib.contextmanager
def offline_kaggle(work_dir: str | os.PathLike) -> Iterator[str]:
    """Serve the offline ``demo`` competition from an in-process fake Kaggle server; yield its URL.

    The fake server accepts only its own token, so for the duration the process's Kaggle
    credentials are the fake ones (``KAGGLE_API_TOKEN`` wins over every other source, so a real
    token is never sent to it); the previous values are restored.
    """
    # the test server is needed by the offline demo only
    from lora_tasks.testing.demo import build_demo_competition
    from lora_tasks.testing.fake_kaggle import DEFAULT_TOKEN, serve

    served = Path(work_dir) / "fake-kaggle"
    build_demo_competition(served)
    saved = os.environ.get("KAGGLE_API_TOKEN")
    os.environ["KAGGLE_API_TOKEN"] = DEFAULT_TOKEN
    try:
        # the run's submission records live in <work>/state; the server's own list goes beside
        # them, so a rerun's server knows the submissions an earlier run's server scored
        state_file = Path(work_dir) / "state" / "fake-kaggle-submissions.json"
        with serve(served, pending_polls=1, state_file=state_file) as server:
            log.info("Offline demo: fake Kaggle server at %s", server.url)
            yield server.url
    finally:
        if saved is None:
            os.environ.pop("KAGGLE_API_TOKEN", None)
        else:
            os.environ["KAGGLE_API_TOKEN"] = saved


@contextlib.contextmanager
def kaggle_endpoint(competition: str, endpoint: str | None, work_dir: str | os.PathLike) -> Iterator[str | None]:
    """The endpoint a run talks to: the given one, or for the demo without one the offline server."""
    if needs_offline_server(competition, endpoint):
        with offline_kaggle(work_dir) as url:
            yield url
    else:
        yield endpoint
