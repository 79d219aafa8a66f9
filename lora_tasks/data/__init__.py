"""The data layer: competitions, profiles, auto-configuration, rows as text, tokens, batches.

No MLX here (see docs/architecture.md): everything is numpy/pandas, so data work runs and is
tested without a model. Names are loaded lazily so ``import lora_tasks.data`` stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "CompetitionConfig": "competition",
    "CompetitionConfigError": "competition",
    "SubmissionFormat": "submission_format",
    "SubmissionRenderError": "submission_format",
    "write_csv": "submission_format",
    "read_csv": "csv_io",
    "CsvReadError": "csv_io",
    "ExcludedColumn": "profile",
    "load_competition": "competition",
    "list_competitions": "competition",
    "DataProfile": "profile",
    "profile_frame": "profile",
    "profile_competition": "profile",
    "infer_task_type": "profile",
    "detect_text_columns": "profile",
    "TrainSettings": "autoconfig",
    "auto_configure": "autoconfig",
    "rules_markdown": "autoconfig",
    "RULES": "autoconfig",
    "SerializationOptions": "text",
    "RowTemplate": "text",
    "rows_to_text": "text",
    "readable_name": "text",
    "format_value": "text",
    "CachedTokens": "token_cache",
    "tokenize_cached": "token_cache",
    "Batch": "batching",
    "bucket_indices": "batching",
    "iter_batches": "batching",
    "padding_report": "batching",
    "Tokenizer": "tokenizer",
    "Encoded": "tokenizer",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lora_tasks.data' has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{module}"), name)


__all__ = list(_LAZY)
