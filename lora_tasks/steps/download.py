"""Step 1: Kaggle (or a Kaggle-compatible server) -> the competition's data folder.

Also the offline demo's in-process fake server: a fresh machine without an account must run the
whole flow (download, submit, score) through the real client.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from pathlib import Path
from typing import Iterator

from lora_tasks.data.source import CompetitionSource
from lora_tasks.steps.spec import (
    CompetitionMetadata,
    competition_slug,
    config_names_metric,
)

log = logging.getLogger("lora_tasks.steps")

#: Files that make a folder count as downloaded data (``--offline``).
DATA_SUFFIXES = (".csv", ".tsv", ".gz", ".zip", ".parquet")


class DataDirNotWritableError(PermissionError):
    """The data folder cannot be written (read-only, another owner); the message names ``--offline``."""


class OfflineDataError(FileNotFoundError):
    """``--offline`` found no data on disk; the message says how to get it."""

DEMO_SLUG = "demo"


def download_data(
    competition: str | CompetitionSource,
    data_dir: str | os.PathLike,
    endpoint: str | None = None,
    *,
    timeout: float = 60.0,
    offline: bool = False,
) -> Path:
    """Download (or confirm up to date) ``competition`` into ``data_dir/<slug>``; return that folder.

    ``endpoint`` is a Kaggle-compatible server's base URL (the fake server); None is kaggle.com.
    When no config file names the metric, Kaggle's ``evaluation_metric`` is read from the
    competition listing and kept beside the data (:class:`~lora_tasks.steps.spec.CompetitionMetadata`)
    for the later steps. ``offline``: no call to Kaggle at all; the data already downloaded is
    used as it is, and nothing is written (:func:`local_data`).
    """
    if offline:
        return local_data(competition, data_dir)
    # the kaggle client prints help text and reads credentials at import: load it when used
    from lora_tasks.kaggle import KaggleClient, competition_metric, download_competition

    slug = competition_slug(competition)
    client = KaggleClient(endpoint, timeout=timeout)
    try:
        folder = download_competition(slug, data_dir, client)
        metric = None if config_names_metric(competition) else competition_metric(slug, client)
        if CompetitionMetadata.find(folder, slug) != CompetitionMetadata(slug, metric):
            CompetitionMetadata(slug, metric).save(folder)
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        raise DataDirNotWritableError(
            f"Cannot write the download of {slug} into {data_dir} ({exc.strerror}: {exc.filename}). Fix: "
            "pass --offline to train on the data already there without downloading, or --data-dir a folder you "
            "can write") from exc
    return folder


def local_data(competition: str | CompetitionSource, data_dir: str | os.PathLike) -> Path:
    """The competition's data already on disk, for ``--offline``: ``data_dir/<slug>`` as a
    download lays it out, or ``data_dir`` itself when it holds the files (a folder the user
    filled). Reads only, so a read-only folder works; Kaggle is never asked, so the metric is
    the one recorded at the download (if any), else the config's, else inferred."""
    slug = competition_slug(competition)
    base = Path(data_dir).expanduser()
    # the slug's folder may nest (a zip with a sub-folder); data_dir itself counts only with files of its own
    for folder, files in ((base / slug, "**/*"), (base, "*")):
        if folder.is_dir() and any(p.suffix.lower() in DATA_SUFFIXES for p in folder.glob(files) if p.is_file()):
            log.info("Offline: using the data in %s as it is (no download, no call to Kaggle).", folder)
            return folder
    raise OfflineDataError(
        f"--offline: no data of {slug} in {base / slug} or {base}. Fix: run once without --offline to download it, "
        f"or pass --data-dir with the folder that holds the competition's files (train.csv, test.csv, the sample "
        "submission).")


def needs_offline_server(competition: str | CompetitionSource, endpoint: str | None, offline: bool = False) -> bool:
    """The demo without a server to talk to runs against the in-process fake one (not with
    ``--offline``: its data is already on disk)."""
    return str(competition) == DEMO_SLUG and not endpoint and not offline


def offline_kaggle(work_dir: str | os.PathLike) -> contextlib.AbstractContextManager[str]:
    """Serve the offline ``demo`` competition from an in-process fake Kaggle server; its URL in a
    ``with`` block (:func:`lora_tasks.testing.offline_demo.offline_kaggle`, the one place product
    code reaches the test server; loaded only for the demo)."""
    from lora_tasks.testing.offline_demo import offline_kaggle as serve_demo

    return serve_demo(work_dir)


@contextlib.contextmanager
def kaggle_endpoint(competition: str | CompetitionSource, endpoint: str | None, work_dir: str | os.PathLike,
                    offline: bool = False) -> Iterator[str | None]:
    """The endpoint a run talks to: the given one, or for the demo without one the offline server
    (none with ``offline``: nothing is downloaded or submitted)."""
    if needs_offline_server(competition, endpoint, offline):
        with offline_kaggle(work_dir) as url:
            yield url
    else:
        yield endpoint
