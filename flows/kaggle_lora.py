"""The ``kaggle-lora`` flow, for ``prefect deploy flows/kaggle_lora.py:kaggle_lora`` and
``python flows/kaggle_lora.py`` (the offline demo with default options).

The flow lives in the package (:mod:`lora_tasks.prefect.flow`), so Dask workers and other
machines need the installed package only; this script re-exports it.
"""

from __future__ import annotations

import sys

from lora_tasks.options import RunOptions
from lora_tasks.prefect.flow import RunSummary, kaggle_lora

__all__ = ["RunOptions", "RunSummary", "kaggle_lora"]

if __name__ == "__main__":
    sys.exit(print(kaggle_lora(RunOptions())))
