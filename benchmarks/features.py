"""Features found without a config: the scikit-learn members' out-of-fold scores with the
features step and without it (``[features] disable = ["all"]``: the table as it is), on the same
rows, folds and seed, through the pipeline's own steps (prepare, plan, train_members).

    python benchmarks/features.py [--competitions titanic,bike-sharing-demand] [--rows N]

Each competition runs as a zero-config user would have it, except that the "without" run adds
a ``[features]`` table to the competition's config (a copy of the shipped one, if any, in a
temporary competitions folder). Rows: each member's OOF score with and without (``peer``), on
the competition's metric as inferred, and the seconds of each train_members call.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from _common import row, write_results

from lora_tasks.data.competition import COMPETITIONS_ENV, default_competitions_dir, find_config_file
from lora_tasks.metrics import get_metric
from lora_tasks.steps import Plan, plan_training, prepare_data, train_members

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def members(slug: str, out: Path, rows: int | None) -> tuple[dict[str, float], str, float, Plan]:
    prepared = prepare_data(slug, DATASETS, out, max_train_rows=rows)
    plan = plan_training(slug, DATASETS, out, tiny=True, no_adapters=True, max_train_rows=rows)
    start = time.perf_counter()
    results = train_members(slug, DATASETS, prepared, plan, out)
    return {r.name: r.oof_score for r in results}, results[0].metric, time.perf_counter() - start, Plan.load(plan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--competitions", default="titanic,bike-sharing-demand")
    parser.add_argument("--rows", type=int, default=None, help="a seeded sample of the training rows")
    args = parser.parse_args()
    out_rows = []
    shipped = default_competitions_dir()
    for slug in args.competitions.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            with_scores, metric, with_s, plan = members(slug, tmp / "with", args.rows)
            configs = tmp / "competitions"
            shutil.copytree(shipped, configs)
            own = find_config_file(slug, configs) or configs / f"{slug}.toml"
            own.write_text((own.read_text() if own.is_file() else "") + '\n[features]\ndisable = ["all"]\n')
            saved = os.environ.get(COMPETITIONS_ENV)
            os.environ[COMPETITIONS_ENV] = str(configs)
            try:
                plain_scores, _, plain_s, _ = members(slug, tmp / "without", args.rows)
            finally:
                if saved is None:
                    os.environ.pop(COMPETITIONS_ENV, None)
                else:
                    os.environ[COMPETITIONS_ENV] = saved
        higher = bool(get_metric(metric).greater_is_better)
        generated = [f.name for f in plan.features.features] if plan.features else []
        print(f"\n{slug}: {len(generated)} feature records: {', '.join(generated)}")
        for name, score in with_scores.items():
            out_rows.append(row(f"{slug}/{name}", score, metric, plain_scores.get(name),
                                higher_is_better=higher, without_features=plain_scores.get(name)))
        out_rows.append(row(f"{slug}/train_members_seconds", with_s, "s", plain_s, higher_is_better=False,
                            without_features=plain_s, features=generated))
    write_results("features", out_rows)


if __name__ == "__main__":
    main()
