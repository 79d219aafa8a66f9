"""Serve one deployment per competition config: ``kaggle-lora/<slug>`` on the config's cron schedule.

    prefect server start                       # UI at http://127.0.0.1:4200
    PREFECT_API_URL=http://127.0.0.1:4200/api python flows/serve.py
    prefect deployment run kaggle-lora/titanic --watch

The serving process runs the scheduled and triggered runs itself (no work pool needed); for
runs on other machines, deploy to a work pool of type ``process`` instead (see the README).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Prefect waits 20 s for its temporary API server; on a busy 2-core machine its start took 22 s
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def competition_schedules(directory: Path | None = None) -> dict[str, str]:
    """``{slug: cron}`` of every ``competitions/*.toml`` (one deployment each)."""
    from lora_tasks.data.competition import DEFAULT_SCHEDULE, default_competitions_dir, read_config_file

    directory = directory or default_competitions_dir()
    out: dict[str, str] = {}
    for path in sorted(directory.glob("*.toml")):
        raw = read_config_file(path)
        out[raw.get("slug", path.stem)] = raw.get("schedule", DEFAULT_SCHEDULE)
    if not out:
        raise SystemExit(f"No competition configs in {directory}; add competitions/<slug>.toml files.")
    return out


def build_deployments(*, tiny: bool = False, submit: bool = True, work_dir: str | None = None,
                      schedules: bool = True, only: list[str] | None = None) -> list:
    from kaggle_lora import kaggle_lora

    deployments = []
    for slug, cron in competition_schedules().items():
        if only and slug not in only:
            continue
        params: dict = {"competition": slug, "submit": submit}
        if tiny:
            params["tiny"] = True
        if work_dir:
            params["work_dir"] = str(Path(work_dir).resolve())
        deployments.append(kaggle_lora.to_deployment(
            name=slug, cron=cron if schedules else None, parameters=params,
            description=f"{slug}: download, train LoRA adapters, submit (cron {cron})",
            tags=["kaggle-lora", slug],
        ))
    return deployments


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python flows/serve.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="serve with the tiny random model (smoke checks)")
    p.add_argument("--no-submit", dest="submit", action="store_false", help="deployments stop before submitting")
    p.add_argument("--no-schedules", dest="schedules", action="store_false", help="only manual runs (no cron)")
    p.add_argument("--work-dir", default=None, help="artifacts and results folder of every run")
    p.add_argument("--only", action="append", metavar="SLUG", help="serve only these competitions (repeatable)")
    args = p.parse_args(argv)
    from prefect import serve

    deployments = build_deployments(tiny=args.tiny, submit=args.submit, work_dir=args.work_dir,
                                    schedules=args.schedules, only=args.only)
    print("Serving " + ", ".join(f"kaggle-lora/{d.name}" for d in deployments), flush=True)
    serve(*deployments)
    return 0


if __name__ == "__main__":
    sys.exit(main())
