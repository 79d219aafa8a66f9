"""Serve one deployment per competition config (same as ``kaggle-lora serve``).

    prefect server start                       # UI at http://127.0.0.1:4200
    PREFECT_API_URL=http://127.0.0.1:4200/api python flows/serve.py
    prefect deployment run kaggle-lora/titanic --watch
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Prefect waits 20 s for its temporary API server; a busy 2-core machine can take longer
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")

from lora_tasks.prefect.serve import build_deployments, competition_configs, competition_schedules, main

__all__ = ["build_deployments", "competition_configs", "competition_schedules", "main"]

if __name__ == "__main__":
    sys.exit(main(prog="python flows/serve.py"))
