"""The offline demo's fake Kaggle server: the one place product code reaches :mod:`lora_tasks.testing`.

Why one place: ``kaggle-lora run --competition demo`` must work on a fresh machine without an
account, so the run serves the demo competition from the test server in-process; every part of
the product that needs it (the download step, the task runners' worker environment) imports it
from here, lazily, and nothing else of the testing package.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Iterator

from lora_tasks.testing.demo import build_demo_competition
from lora_tasks.testing.fake_kaggle import DEFAULT_TOKEN, serve

log = logging.getLogger("lora_tasks.steps")

#: The fake server's token: the only Kaggle credential the offline demo's processes carry.
OFFLINE_TOKEN = DEFAULT_TOKEN


@contextlib.contextmanager
def offline_kaggle(work_dir: str | os.PathLike) -> Iterator[str]:
    """Serve the offline ``demo`` competition from an in-process fake Kaggle server; yield its URL.

    The fake server accepts only its own token, so for the duration the process's Kaggle
    credentials are the fake ones (``KAGGLE_API_TOKEN`` wins over every other source, so a real
    token is never sent to it); the previous values are restored.
    """
    served = Path(work_dir) / "fake-kaggle"
    build_demo_competition(served)
    saved = os.environ.get("KAGGLE_API_TOKEN")
    os.environ["KAGGLE_API_TOKEN"] = OFFLINE_TOKEN
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
