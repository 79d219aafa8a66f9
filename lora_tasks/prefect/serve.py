"""Deployments: one per competition config, ``kaggle-lora/<slug>`` on the config's cron schedule,
each storing its :class:`~lora_tasks.options.RunOptions` as the flow's parameter.

    prefect server start                       # UI at http://127.0.0.1:4200
    PREFECT_API_URL=http://127.0.0.1:4200/api kaggle-lora serve
    prefect deployment run kaggle-lora/titanic --watch

The serving process runs the scheduled and triggered runs itself (no work pool needed); for runs
on other machines, deploy to a work pool of type ``process`` instead (see the README).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lora_tasks.data.config_file import DEFAULT_SCHEDULE, ORIGIN_SHIPPED, config_search_dirs, read_config_file
from lora_tasks.options import RunOptions
from lora_tasks.prefect.flow import kaggle_lora
from lora_tasks.prefect.preflight import credentials_problem


def competition_configs(directory: Path | None = None) -> dict[str, tuple[str, Path, str]]:
    """``{slug: (cron, config file, where it was found)}`` of every competition config, one
    deployment each: ``./competitions/*.toml`` where ``serve`` runs, then
    ``$KAGGLE_LORA_COMPETITIONS_DIR``, then the shipped recipes; a slug found twice keeps the first
    file (as a run does). ``directory``: that folder only."""
    folders = [(directory, str(directory))] if directory is not None else config_search_dirs()
    out: dict[str, tuple[str, Path, str]] = {}
    for folder, origin in folders:
        for path in sorted(folder.glob("*.toml")) if folder.is_dir() else []:
            raw = read_config_file(path)
            out.setdefault(raw.get("slug", path.stem), (raw.get("schedule", DEFAULT_SCHEDULE), path.resolve(), origin))
    if not out:
        where = ", ".join(str(f) for f, _ in folders)
        raise SystemExit(f"No competition configs in {where}; add competitions/<slug>.toml files.")
    return out


def competition_schedules(directory: Path | None = None) -> dict[str, str]:
    """``{slug: cron}`` of every competition config (see :func:`competition_configs`)."""
    return {slug: cron for slug, (cron, _, _) in competition_configs(directory).items()}


def build_deployments(*, tiny: bool = False, submit: bool = True, work_dir: str | None = None,
                      schedules: bool = True, only: list[str] | None = None) -> list[Any]:
    """One deployment per competition config; its parameters are the run's :class:`RunOptions`.
    A config that is not a shipped recipe is named by its path (``config``), so a run reads that
    file whatever its working directory."""
    deployments = []
    for slug, (cron, path, origin) in competition_configs().items():
        if only and slug not in only:
            continue
        given: dict[str, Any] = {"competition": slug, "submit": submit, "tiny": tiny}
        if origin != ORIGIN_SHIPPED:
            given["config"] = str(path)
        if work_dir:
            given["work_dir"] = str(Path(work_dir).resolve())
        options = RunOptions(**given)
        deployments.append(kaggle_lora.to_deployment(
            name=slug, cron=cron if schedules else None,
            parameters={"options": options.model_dump(exclude_defaults=True)},
            description=f"{slug}: download, train LoRA adapters, submit (cron {cron})",
            tags=["kaggle-lora", slug],
        ))
    return deployments


def credentials_warning(slugs: list[str]) -> str | None:
    """What to tell the user at start when the served competitions cannot reach Kaggle (None: all
    is well, or only the offline demo is served): every scheduled run would otherwise fail later."""
    for slug in slugs:
        problem = credentials_problem(slug, None)
        if problem is not None:
            others = [s for s in slugs if credentials_problem(s, None) is not None]
            return (f"warning: the runs of {', '.join(others)} will fail until Kaggle credentials are set "
                    f"in this serving process's environment. {problem}")
    return None


def build_parser(prog: str = "kaggle-lora serve") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="serve with the tiny random model (smoke checks)")
    p.add_argument("--no-submit", dest="submit", action="store_false", help="deployments stop before submitting")
    p.add_argument("--no-schedules", dest="schedules", action="store_false", help="only manual runs (no cron)")
    p.add_argument("--work-dir", default=None, help="artifacts and results folder of every run")
    p.add_argument("--only", action="append", metavar="SLUG", help="serve only these competitions (repeatable)")
    return p


def main(argv: list[str] | None = None, prog: str = "kaggle-lora serve") -> int:
    from prefect import serve  # starts Prefect's serving machinery: only for this command

    args = build_parser(prog).parse_args(argv)
    deployments = build_deployments(tiny=args.tiny, submit=args.submit, work_dir=args.work_dir,
                                    schedules=args.schedules, only=args.only)
    warning = credentials_warning([d.name for d in deployments])
    if warning:
        print(warning, file=sys.stderr, flush=True)
    print("Serving " + ", ".join(f"kaggle-lora/{d.name}" for d in deployments), flush=True)
    serve(*deployments)
    return 0
