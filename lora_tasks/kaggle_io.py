"""TEMPORARY shim: the Kaggle layer moved to the package :mod:`lora_tasks.kaggle`.

Kept only so code still importing ``lora_tasks.kaggle_io`` (pipeline.py, tasks.py and their
tests, being moved by other branches at the same time) keeps working until the merge.
The lead deletes this file at merge; import from ``lora_tasks.kaggle`` instead.
"""

from lora_tasks.kaggle import *  # noqa: F403  (temporary re-export, removed at merge)
from lora_tasks.kaggle import __all__  # noqa: F401
