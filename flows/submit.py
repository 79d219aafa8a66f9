"""Run the kaggle-lora flow from the command line: from a competition name to a scored submission.

    python flows/submit.py --competition demo            # offline, no account needed
    python flows/submit.py --competition titanic --no-submit

Runs on Prefect's embedded (ephemeral) API unless PREFECT_API_URL points at a server; see the
runs in the UI with ``prefect server start`` and PREFECT_API_URL=http://127.0.0.1:4200/api.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Prefect waits 20 s for its temporary API server; on a busy 2-core machine its start took 22 s
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
sys.path.insert(0, str(Path(__file__).resolve().parent))

EPILOG = """
examples:
  python flows/submit.py --competition demo
      offline demo: builds the demo competition, serves it from an in-process fake Kaggle
      server, trains 2 MiniLM LoRA adapters, submits and prints the score (a few minutes on 2 cores)
  python flows/submit.py --competition house-prices --adapters 3 --combine merge --no-submit
  python flows/submit.py --competition titanic --kaggle-endpoint http://127.0.0.1:8765
      talk to a fake server started with: python -m lora_tasks.testing.fake_kaggle --data DIR --port 8765
  PREFECT_API_URL=http://10.0.0.4:4200/api python flows/submit.py --competition titanic --dask-address tcp://10.0.0.5:8786
      train the fold adapters on a Dask cluster; its workers (started with the same PREFECT_API_URL)
      report every task run to that one Prefect server

A rerun with the same data and settings reuses every cached step (nothing is trained again);
results live in --work-dir (default .kaggle-lora). Real Kaggle needs credentials: KAGGLE_API_TOKEN
or ~/.kaggle/access_token (https://www.kaggle.com/settings/api).
"""


def _top_layers(text: str) -> int | str:
    if text == "all":
        return text
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of layers or 'all'")
    return n


def build_parser() -> argparse.ArgumentParser:
    from lora_tasks.ensemble import METHODS as BLEND_METHODS

    p = argparse.ArgumentParser(
        prog="python flows/submit.py",
        description="Train LoRA adapters on a Kaggle competition, write and check the submission, submit it and read the score.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--competition", required=True, help="Kaggle slug, config name or alias (e.g. demo, titanic, house-prices)")
    p.add_argument("--no-submit", dest="submit", action="store_false", help="stop after the checked submission file")
    p.add_argument("--plan", action="store_true",
                   help="download, profile and configure, print what would be trained and why (every adapter set), "
                        "and stop: nothing is trained, no Prefect server is started")
    p.add_argument("--model", default=None, help="encoder id or folder (default: offline all-MiniLM-L6-v2; all-mpnet-base-v2 once its PyPI parts are installed)")
    p.add_argument("--preset", default=None, help="LoRA preset instead of the auto-configured one (efficient, balanced, expressive)")
    p.add_argument("--adapters", type=int, default=None, metavar="N", help="number of adapters = CV folds (default: the competition config's [training], else auto)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs per adapter (default: the config's [training], else auto)")
    p.add_argument("--max-seq-len", type=int, default=None, help="token limit per row (default: the config's [training], else auto from token lengths)")
    p.add_argument("--top-layers", type=_top_layers, default=None, metavar="N|all",
                   help="adapters on the top N encoder layers only: the frozen layers below run once per dataset "
                        "(cached on disk) instead of once per fold, epoch and batch; all: every layer (default: the "
                        "config's [training], else every layer)")
    p.add_argument("--combine", choices=("blend", "merge"), default="blend",
                   help="blend (default): the fold adapters' mean blended with scikit-learn baselines, weights fit "
                        "on out-of-fold rows; merge: one model from the averaged adapters")
    p.add_argument("--blend-method", choices=BLEND_METHODS, default="caruana",
                   help="how --combine blend weighs the members (caruana: greedy selection as in AutoGluon)")
    p.add_argument("--no-baseline", dest="baseline", action="store_false",
                   help="blend the adapters only (no HistGradientBoosting / linear / TF-IDF members)")
    p.add_argument("--adapter-set", dest="adapter_sets", action="append", default=None, metavar="PRESET[@MODEL][:K=V,...]",
                   help="another adapter set on the same folds, blended as its own member (repeatable): a preset, "
                        "optionally @ a model id or folder and :settings of its own (epochs, lr, max_seq_len, "
                        "batch_size, top_layers), e.g. expressive or balanced@all-mpnet-base-v2:epochs=2; "
                        "default: the competition config's [training] adapter_sets")
    p.add_argument("--no-adapter-sets", dest="adapter_sets", action="store_const", const=[],
                   help="train the main adapter set only, whatever the competition config's recipe says")
    p.add_argument("--message", default="kaggle-lora", help="submission message")
    p.add_argument("--data-dir", default=None, help="where competition data is downloaded (default: WORK_DIR/data)")
    p.add_argument("--work-dir", default=None, help="artifacts, token cache, task results (default: $KAGGLE_LORA_HOME or .kaggle-lora)")
    p.add_argument("--kaggle-endpoint", default=None, metavar="URL", help="a Kaggle-compatible API server (the fake one)")
    p.add_argument("--runner", "--task-runner", dest="runner", choices=("thread", "process", "dask"), default=None,
                   help="how the tasks run: thread (default), process (a worker process per fold) or dask "
                        "(a Dask cluster; needs prefect-dask: pip install -e '.[dask]')")
    p.add_argument("--dask-address", default=None, metavar="ADDRESS",
                   help="scheduler of a running Dask cluster, e.g. tcp://10.0.0.5:8786 (implies --runner dask; "
                        "default: a local cluster of 2 worker processes). Its workers report to this run's "
                        "Prefect API: set PREFECT_API_URL to a server they can reach")
    p.add_argument("--tiny", action="store_true", help="tiny random model (smoke tests: fast; its adapters score near chance, so the blend leans on the baseline)")
    p.add_argument("--max-train-rows", type=int, default=None, help="train on a seeded sample of this many rows")
    p.add_argument("--retry-delay", type=float, default=10.0, metavar="S", help="first retry delay of Kaggle calls (doubles each retry)")
    p.add_argument("--json-out", default=None, metavar="FILE", help="also write the run summary as JSON")
    return p


def print_summary(summary) -> None:  # noqa: ANN001 - RunSummary
    from lora_tasks.tasks import markdown_table

    print()
    print(f"Cross-validation ({summary.slug}, {len(summary.cv)} adapters):")
    print(markdown_table(summary.cv))
    if summary.members:
        print("\nEnsemble (out-of-fold):")
        print(markdown_table(summary.members))
    print(f"\nOOF {summary.metric} ({summary.combine}): {summary.oof_score:.5f}")
    cached = sum(s == "Cached" for s in summary.task_states.values())
    print(f"Tasks: {len(summary.task_states)} ({cached} cached)")
    print(f"Submission file: {summary.submission_path}")
    if summary.submitted:
        again = " (found from an earlier attempt; not submitted twice)" if summary.reused else ""
        print(f"Submitted: ref {summary.ref}, run id {summary.run_id}{again}")
        print(f"Public score ({summary.metric}): {summary.public_score}")
    else:
        print("Not submitted (--no-submit).")


def show_plan(args: argparse.Namespace) -> int:
    """``--plan``: the profile and every adapter set's settings with the reason for each, no training."""
    import contextlib

    from lora_tasks import pipeline as P
    from lora_tasks import tasks as T

    work = Path(args.work_dir or T.DEFAULT_WORK_DIR).expanduser().resolve()
    overrides = {"preset": args.preset, "n_folds": args.adapters, "epochs": args.epochs,
                 "max_seq_len": args.max_seq_len, "top_layers": args.top_layers}
    offline = args.competition == P.DEMO_SLUG and not args.kaggle_endpoint
    if args.combine == "merge" and args.adapter_sets:
        print("\nkaggle-lora failed: adapter sets blend as members of their own; they need --combine blend.",
              file=sys.stderr)
        return 1
    try:
        with (P.offline_kaggle(work) if offline else contextlib.nullcontext(args.kaggle_endpoint)) as endpoint:
            plans = P.plan_run(args.competition, work, data_dir=args.data_dir, endpoint=endpoint, model=args.model,
                               tiny=args.tiny, overrides=overrides, max_train_rows=args.max_train_rows,
                               adapter_sets=[] if args.combine == "merge" else args.adapter_sets)  # sets only blend
    except Exception as exc:  # noqa: BLE001 - the CLI's job is a clear last line
        print(f"\nkaggle-lora failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    first = P.Plan.load(next(iter(plans.values())))
    print(f"\n{first.profile_markdown}")
    for member, path in plans.items():
        plan = P.Plan.load(path)
        print(f"\nAdapter set `{member}` ({plan.model}; {plan.n_folds} folds): {path}\n{plan.settings_markdown()}")
    print(f"\nNothing trained (--plan). Without --plan, the run trains {len(plans)} adapter set(s) of "
          f"{first.n_folds} folds each.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.dask_address and args.runner not in (None, "dask"):
        parser.error(f"--dask-address needs --runner dask, not --runner {args.runner}")
    runner = args.runner or ("dask" if args.dask_address else "thread")
    if args.plan:
        return show_plan(args)
    import logging

    logging.getLogger("lora_tasks").setLevel(logging.INFO)
    from kaggle_lora import kaggle_lora, make_task_runner

    import lora_tasks
    from lora_tasks import tasks as T
    from lora_tasks.native import native_info

    print(lora_tasks.blas_info().summary(), flush=True)  # which BLAS serves MLX's GEMMs in this run
    print(native_info().summary(), flush=True)  # native CPU kernels or MLX's ops
    flow_fn = kaggle_lora.with_options(task_runner=make_task_runner(runner, address=args.dask_address))
    params = dict(
        competition=args.competition, model=args.model, preset=args.preset, adapters=args.adapters,
        epochs=args.epochs, max_seq_len=args.max_seq_len, top_layers=args.top_layers, combine=args.combine, baseline=args.baseline,
        blend_method=args.blend_method, submit=args.submit,
        message=args.message, data_dir=args.data_dir, kaggle_endpoint=args.kaggle_endpoint, tiny=args.tiny,
        max_train_rows=args.max_train_rows, work_dir=args.work_dir or T.DEFAULT_WORK_DIR,
        retry_delay_s=args.retry_delay, adapter_sets=args.adapter_sets,
    )
    start = time.perf_counter()
    try:
        summary = flow_fn(**params)
    except KeyboardInterrupt:
        print("\nInterrupted; a rerun resumes from the cached steps and checkpoints.", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI's job is a clear last line
        print(f"\nkaggle-lora failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print_summary(summary)
    print(f"Finished in {time.perf_counter() - start:.0f} s.")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary.to_dict(), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
