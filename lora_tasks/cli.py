"""``kaggle-lora`` command line.

    kaggle-lora run --competition demo [options]    # the flow, from a name to a scored submission
    kaggle-lora plan --competition titanic          # what a run would train and why; trains nothing
    kaggle-lora serve                               # one deployment per competition config
    kaggle-lora embed / blas                        # the library's own checks

The run options are generated from :class:`~lora_tasks.options.RunOptions` (its fields and
descriptions), so the CLI, the flow's form in the UI and the Python API never drift apart.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import ValidationError

import lora_tasks
from lora_tasks import lifecycle
from lora_tasks.heap import heap_info
from lora_tasks.options import RunOptions

log = logging.getLogger("lora_tasks")


def _embed(args: argparse.Namespace) -> int:
    import mlx.core as mx
    import numpy as np

    from lora_tasks.models import load_encoder
    from lora_tasks.models.heads import mean_pool

    t0 = time.perf_counter()
    enc = load_encoder(args.model)
    print(f"model: {enc.source} ({enc.config.num_hidden_layers} layers, hidden {enc.config.hidden_size})")
    batch = enc.tokenizer(args.sentences, max_length=args.max_length)
    hidden = enc.model(mx.array(batch.input_ids), mx.array(batch.attention_mask), mx.array(batch.token_type_ids))
    vecs = np.array(mean_pool(hidden, mx.array(batch.attention_mask)))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    for text, v in zip(args.sentences, vecs, strict=True):
        print(f"  [{', '.join(f'{x:+.3f}' for x in v[:4])}, ...]  {text}")
    if len(vecs) > 1:
        sims = vecs @ vecs.T
        print("cosine similarity to the first sentence:", ", ".join(f"{s:.3f}" for s in sims[0, 1:]))
    print(f"done in {time.perf_counter() - t0:.2f} s")
    return 0


#: Option names that differ from ``--<field-name>`` (kept from earlier releases).
FLAG_NAMES = {"retry_delay_s": "--retry-delay", "score_timeout_s": "--score-timeout", "score_poll_s": "--score-poll",
              "kaggle_endpoint": "--kaggle-endpoint", "id_column": "--id"}
# Shorter spellings a user may type first; the long flag stays the documented one.
FLAG_ALIASES: dict[str, tuple[str, ...]] = {"compute_dtype": ("--dtype",), "id_column": ("--id-column",)}
RUN_EPILOG = """
examples:
  kaggle-lora run --competition demo
      offline demo: builds the demo competition, serves it from an in-process fake Kaggle
      server, trains 2 MiniLM LoRA adapters, submits and prints the score
  kaggle-lora run --competition house-prices --folds 3 --combine merge --no-submit
  kaggle-lora run --competition my-comp --target label --id row_id
      name the columns inference cannot tell (or write them in ./competitions/my-comp.toml)
  kaggle-lora run --competition titanic --offline --data-dir /mnt/kaggle-data
      no call to Kaggle: train on the files already there (read-only is fine), submit nothing
  kaggle-lora run --competition titanic --kaggle-endpoint http://127.0.0.1:8765
      talk to a fake server started with: python -m lora_tasks.testing.fake_kaggle --data DIR --port 8765
  PREFECT_API_URL=http://10.0.0.4:4200/api kaggle-lora run --competition titanic --dask-address tcp://10.0.0.5:8786
      train the fold adapters on a Dask cluster whose workers report to that one Prefect server

A rerun with the same data and settings reuses every cached step (--refresh runs them again).
Real Kaggle needs credentials: KAGGLE_API_TOKEN or ~/.kaggle/access_token.
"""


def _top_layers(text: str) -> int | str:
    """``all`` or a number (whether it is a usable one is RunOptions' rule, checked once)."""
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of layers or 'all'") from None


def _scalar_type(annotation: Any) -> tuple[type | None, tuple[str, ...]]:
    """The argparse type and choices of a field annotation (``int | None`` -> int; a Literal -> its values)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Annotated:  # a shared rule (lora_tasks.data.overrides)
        return _scalar_type(args[0])
    if typing.get_origin(annotation) is typing.Literal:
        return None, tuple(typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return _scalar_type(args[0])
    return (annotation if annotation in (int, float, str) else None), ()


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """One option per :class:`RunOptions` field, with its description as help. Values not given
    stay out of the namespace, so the model's defaults and validation apply once."""
    for name, info in RunOptions.model_fields.items():
        flag = FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
        default = info.get_default(call_default_factory=True)
        text = info.description or ""
        common = {"dest": name, "default": argparse.SUPPRESS}
        if name == "competition":
            parser.add_argument(flag, required=True, help=text, dest=name)
        elif name == "adapter_sets":
            parser.add_argument("--adapter-set", action="append", metavar="PRESET[@MODEL][:K=V,...]",
                                help=text + " (repeatable)", **common)
            parser.add_argument("--no-adapter-sets", action="store_const", const=[], **common,
                                help="train the main adapter set only, whatever the competition config's recipe says")
        elif name == "top_layers":
            parser.add_argument(flag, type=_top_layers, metavar="N|all", help=text, **common)
        elif info.annotation in (bool, bool | None):
            if default is not True:
                parser.add_argument(flag, action="store_const", const=True, help=text, **common)
            if default is not False:
                parser.add_argument("--no-" + flag[2:], action="store_const", const=False, **common,
                                    help=f"the opposite of {flag}" if default is None else f"do not: {text}")
        else:
            kind, choices = _scalar_type(info.annotation)
            shown = default is not None and not choices and "default" not in text
            parser.add_argument(flag, *FLAG_ALIASES.get(name, ()), type=kind, choices=choices or None,
                                metavar="N" if kind is int else None,
                                help=f"{text} (default: {default})" if shown else text, **common)
    parser.add_argument("--adapters", type=int, metavar="N", default=argparse.SUPPRESS,
                        help="deprecated: the old name of --folds")
    parser.add_argument("--baseline", action="store_const", const=True, dest="baseline", default=argparse.SUPPRESS,
                        help="deprecated: the old name of --members")
    parser.add_argument("--no-baseline", action="store_const", const=False, dest="baseline",
                        default=argparse.SUPPRESS, help="deprecated: the old name of --no-members")


def options_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> RunOptions:
    """The validated :class:`RunOptions` of parsed arguments; a bad combination exits with the fix."""
    given = {k: v for k, v in vars(args).items() if k in RunOptions.model_fields}
    if "adapters" in vars(args):
        print("warning: --adapters is deprecated; use --folds (it is the number of CV folds, one adapter each).",
              file=sys.stderr)
        if "folds" in given and given["folds"] != args.adapters:
            parser.error(f"--adapters {args.adapters} and --folds {given['folds']}: give --folds only")
        given.setdefault("folds", args.adapters)
    if "baseline" in vars(args):
        old, new = ("--baseline", "--members") if args.baseline else ("--no-baseline", "--no-members")
        print(f"warning: {old} is deprecated; use {new} (the scikit-learn models are the blend's members).",
              file=sys.stderr)
        if given.get("members", args.baseline) != args.baseline:
            parser.error(f"{old} and --{'no-' if given['members'] is False else ''}members disagree: give {new} only")
        given.setdefault("members", args.baseline)
    try:
        return RunOptions(**given)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}" for e in exc.errors())
        parser.error(problems)
        raise  # parser.error exits


def build_run_parser(prog: str = "kaggle-lora run", *, with_plan: bool = True) -> argparse.ArgumentParser:
    """The options of ``kaggle-lora run`` / ``flows/submit.py`` (``with_plan=False``, for
    ``kaggle-lora plan``: the run options only)."""
    p = argparse.ArgumentParser(
        prog=prog, epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train LoRA adapters on a Kaggle competition, write and check the submission, submit it and "
                    "read the score.")
    add_run_options(p)
    if not with_plan:  # `kaggle-lora plan`: no run, so no runner or summary
        return p
    p.add_argument("--plan", action="store_true",
                   help="download, profile and configure, print what would be trained and why (every adapter "
                        "set), and stop: nothing is trained, no Prefect server is started")
    p.add_argument("--runner", "--task-runner", dest="runner", choices=("thread", "process", "dask"), default=None,
                   help="how the tasks run: thread (default), process (a worker process per fold) or dask "
                        "(a Dask cluster; needs prefect-dask: pip install -e '.[dask]')")
    p.add_argument("--dask-address", default=None, metavar="ADDRESS",
                   help="scheduler of a running Dask cluster, e.g. tcp://10.0.0.5:8786 (implies --runner dask). "
                        "Its workers report to this run's Prefect API: set PREFECT_API_URL to a server they can reach")
    p.add_argument("--json-out", default=None, metavar="FILE", help="also write the run summary as JSON")
    return p


def show_plan(options: RunOptions) -> int:
    """The profile and every adapter set's settings with the reason for each, no training."""
    from lora_tasks.steps import Plan, plan_run  # the steps load the data libraries

    try:
        plans = plan_run(options)
    except Exception as exc:
        print(f"\nkaggle-lora failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    first = Plan.load(next(iter(plans.values())))
    print(f"\n{first.competition_markdown}\n\n{first.profile_markdown}")
    for member, path in plans.items():
        plan = Plan.load(path)
        print(f"\nAdapter set `{member}` ({plan.model}; {plan.n_folds} folds): {path}\n{plan.settings_markdown()}")
    if first.features is not None:
        print(f"\n{first.features_markdown()}")
    print(f"\nNothing trained (--plan). Without --plan, the run trains {len(plans)} adapter set(s) of "
          f"{first.n_folds} folds each.")
    return 0


def print_summary(summary: Any) -> None:
    """The run summary (:class:`lora_tasks.prefect.flow.RunSummary`) as the CLI shows it."""
    from lora_tasks.prefect.artifacts import markdown_table

    print()
    print(f"Cross-validation ({summary.slug}, {len(summary.cv)} adapters):")
    print(markdown_table(summary.cv))
    if summary.members:
        print("\nEnsemble (out-of-fold):")
        print(markdown_table(summary.members))
    print(f"\nOOF {summary.metric} ({summary.combine}): {summary.oof_score:.5f}")
    if summary.estimates:
        print("\nThe plan's estimates against this run:")
        print(markdown_table(summary.estimates))
    if summary.time_use:
        print(f"\nTime: {summary.time_use}.")
    cached = sum(s == "Cached" for s in summary.task_states.values())
    print(f"Tasks: {len(summary.task_states)} ({cached} cached)")
    print(f"Submission file: {summary.submission_path}")
    if summary.submitted:
        again = " (found from an earlier attempt; not submitted twice)" if summary.reused else ""
        print(f"Submitted: ref {summary.ref}, run id {summary.run_id}{again}")
        print(f"Public score ({summary.metric}): {summary.public_score}")
    else:
        print("Not submitted (--no-submit).")


def run_main(argv: list[str] | None = None, prog: str = "kaggle-lora run") -> int:
    """``kaggle-lora run`` and ``python flows/submit.py``: the flow with options from the command line."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect waits 20 s for its temporary API server; a busy 2-core machine can take longer
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    parser = build_run_parser(prog)
    args = parser.parse_args(argv)
    options = options_from_args(args, parser)
    if args.dask_address and args.runner not in (None, "dask"):
        parser.error(f"--dask-address needs --runner dask, not --runner {args.runner}")
    if args.plan:
        return show_plan(options)
    try:  # a missing --config or a broken config file fails in a second, before Prefect starts
        options.competition_source()
    except ValueError as exc:
        print(f"\nkaggle-lora failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    logging.getLogger("lora_tasks").setLevel(logging.INFO)
    # Prefect and the flow load slowly: only for a run
    from lora_tasks.native import native_info
    from lora_tasks.prefect.flow import kaggle_lora
    from lora_tasks.prefect.preflight import (
        explain_server_timeout,
        prefect_database_problem,
        prepare_prefect_database,
        warn_if_shared,
    )
    from lora_tasks.prefect.runners import (
        make_task_runner,
        pin_temporary_api_server_port,
        stop_temporary_api_servers,
    )
    from lora_tasks.steps.download import needs_offline_server

    # a stop signal ends the run in seconds with one line saying where; nothing started here outlives it
    lifecycle.install_signal_handlers(on_hard_exit=stop_temporary_api_servers)
    lifecycle.start_orphan_watchdog()
    warn_if_shared(options.work_dir)
    if (problem := prefect_database_problem()) is not None:  # else: minutes of server restarts, then a timeout
        print(f"kaggle-lora failed: {problem}", file=sys.stderr)
        return 1
    prepare_prefect_database()  # once, under a lock: two runs' servers never both migrate a new database
    pin_temporary_api_server_port()  # two runs started together never pick one port

    print(lora_tasks.blas_info().summary(), flush=True)  # which BLAS serves MLX's GEMMs in this run
    print(native_info().summary(), flush=True)  # native CPU kernels or MLX's ops
    print(heap_info().summary(), flush=True)  # whether freed memory stays mapped between batches
    runner = args.runner or ("dask" if args.dask_address else "thread")
    flow_fn = kaggle_lora.with_options(task_runner=make_task_runner(
        runner, address=args.dask_address, offline_demo=needs_offline_server(options.competition,
                                                                              options.kaggle_endpoint,
                                                                              options.offline)))
    start = time.perf_counter()
    try:
        summary = flow_fn(options)
    except BaseException as exc:
        stopped = lifecycle.stopped_by()
        if stopped is not None:  # the stop line was printed when the signal came
            stop_temporary_api_servers()
            return 128 + stopped
        if isinstance(exc, KeyboardInterrupt):
            print("\nInterrupted; a rerun resumes from the cached steps and checkpoints.", file=sys.stderr)
            return 130
        if not isinstance(exc, Exception):
            raise
        print(f"\nkaggle-lora failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        if (hint := explain_server_timeout(str(exc))) is not None:
            print(hint, file=sys.stderr)
        return 1
    print_summary(summary)
    print(f"Finished in {time.perf_counter() - start:.0f} s.")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary.to_dict(), indent=2, default=str))
    return 0


def plan_main(argv: list[str] | None = None) -> int:
    """``kaggle-lora plan``: ``kaggle-lora run --plan``."""
    parser = build_run_parser("kaggle-lora plan", with_plan=False)
    return show_plan(options_from_args(parser.parse_args(argv), parser))


def serve_main(argv: list[str] | None = None) -> int:
    """``kaggle-lora serve``: ``python flows/serve.py``."""
    from lora_tasks.prefect.serve import main  # Prefect loads slowly: only for this command

    return main(argv)


#: Commands that parse their own options (the rest of the command line is theirs).
PASS_THROUGH = {"run": run_main, "plan": plan_main, "serve": serve_main}
#: Commands that run Prefect flows, whose logging Prefect sets up.
PREFECT_COMMANDS = frozenset({"run", "serve"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kaggle-lora", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="Run the flow: from a competition name to a scored submission (kaggle-lora run -h).",
                   add_help=False)
    sub.add_parser("plan", help="What a run would train and why; nothing is trained (kaggle-lora plan -h).",
                   add_help=False)
    sub.add_parser("serve", help="Serve one deployment per competition config (kaggle-lora serve -h).", add_help=False)
    embed = sub.add_parser("embed", help="Embed sentences with an encoder (default: offline all-MiniLM-L6-v2).")
    embed.add_argument("sentences", nargs="*", default=[
        "A fire broke out near the harbour last night.",
        "Firefighters fought a blaze at the docks.",
        "I love this new pair of shoes.",
    ])
    embed.add_argument("--model", default=None, help="Local folder or hub id (default: the offline MiniLM).")
    embed.add_argument("--max-length", type=int, default=128)
    embed.set_defaults(func=_embed)
    sub.add_parser(
        "blas", help="Print which BLAS serves MLX's matrix multiplications and which CPU kernels run."
    ).set_defaults(func=_kernels)
    return parser


def _kernels(args: argparse.Namespace) -> int:
    from lora_tasks.native import native_info  # builds the native kernels on first use (~15 s)
    from lora_tasks.training.precision import compute_dtype_choice

    print(native_info().summary())
    print(heap_info().summary())
    print(compute_dtype_choice("auto").summary())
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not (argv and argv[0] in PREFECT_COMMANDS):
        # Prefect configures logging for its commands (time, level, run name); a root handler at INFO here
        # would also print every request of its API client (httpx) into the run's log
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    if argv and argv[0] in PASS_THROUGH:
        return PASS_THROUGH[argv[0]](argv[1:])
    args = build_parser().parse_args(argv)
    print(lora_tasks.blas_info().summary())
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
