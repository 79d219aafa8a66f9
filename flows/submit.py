"""Run the kaggle-lora flow from the command line (same as ``kaggle-lora run``; ``--plan``: ``kaggle-lora plan``).

    python flows/submit.py --competition demo            # offline, no account needed
    python flows/submit.py --competition titanic --no-submit

Runs on Prefect's embedded (ephemeral) API unless PREFECT_API_URL points at a server.
"""

from __future__ import annotations

import sys

from lora_tasks.cli import build_run_parser, run_main

__all__ = ["build_run_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    return run_main(argv, prog="python flows/submit.py")


if __name__ == "__main__":
    sys.exit(main())
