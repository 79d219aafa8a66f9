"""Old import path of :func:`create_kaggle_lora_model`, :func:`build_model` and friends.

They live in :mod:`lora_tasks.factory` now, beside every other ``create_*``. This module only keeps
``from lora_tasks.auto import ...`` working for the run code until it imports from there; delete it then.
"""

from lora_tasks.factory import (
    TASK_TO_HEAD,
    TINY_BERT,
    KaggleLoRAModel,
    build_model,
    create_kaggle_lora_model,
    head_type_for,
    model_shape,
)

__all__ = ["TASK_TO_HEAD", "TINY_BERT", "KaggleLoRAModel", "build_model", "create_kaggle_lora_model", "head_type_for",
           "model_shape"]
