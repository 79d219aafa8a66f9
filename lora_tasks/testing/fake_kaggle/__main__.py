"""``python -m lora_tasks.testing.fake_kaggle --data DIR --port N``: serve a data folder until interrupted."""

from __future__ import annotations

import argparse
import logging

from .scoring import KAGGLE_METRIC_NAMES
from .server import FakeKaggleServer
from .state import DEFAULT_KEY, DEFAULT_USERNAME

logger = logging.getLogger(__name__)

def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: serve a data folder until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m lora_tasks.testing.fake_kaggle",
        description="Serve competitions from a data folder with the Kaggle API's wire protocol.",
    )
    parser.add_argument("--data", required=True, help="folder whose sub-folders are competitions")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = any free)")
    parser.add_argument(
        "--solution",
        action="append",
        default=[],
        metavar="SLUG=PATH",
        help="hidden solution CSV used to score a competition (repeatable)",
    )
    parser.add_argument(
        "--metric", action="append", default=[], metavar="SLUG=METRIC",
        help=f"scoring metric, one of {', '.join(sorted(KAGGLE_METRIC_NAMES))} (repeatable)",
    )
    parser.add_argument("--username", default=DEFAULT_USERNAME)
    parser.add_argument("--key", default=DEFAULT_KEY)
    args = parser.parse_args(argv)
    solutions = dict(item.split("=", 1) for item in args.solution)
    metrics = dict(item.split("=", 1) for item in args.metric)
    server = FakeKaggleServer(
        args.data,
        solutions,
        metrics=metrics,
        username=args.username,
        key=args.key,
        port=args.port,
    )
    print(f"Fake Kaggle serving {server.data_dir} at {server.url}", flush=True)
    print(
        "In-process: KaggleClient(endpoint=URL). CLI: KAGGLE_API_ENVIRONMENT=LOCALHOST "
        f"HTTP_PROXY={server.url} KAGGLE_USERNAME={args.username} KAGGLE_KEY=<key>",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server._httpd.server_close()


if __name__ == "__main__":
    main()
