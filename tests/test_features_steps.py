"""The features step inside the pipeline: the plan lists what fired with its reasons, a
competition's ``[features] disable`` switches features off, and the members train on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lora_tasks import steps
from lora_tasks.data.competition import COMPETITIONS_ENV, CompetitionConfigError, load_competition
from lora_tasks.features import FeatureKind

SLUG = "hourly-demand"


def _competition(root: Path, n: int = 480) -> Path:
    """An unseen competition: demand driven by the hour of a timestamp column, a code column."""
    rng = np.random.default_rng(0)
    folder = root / SLUG
    folder.mkdir(parents=True)
    stamps = pd.date_range("2012-05-01", periods=n + 120, freq="h")
    hour = stamps.hour.to_numpy()
    frame = pd.DataFrame({
        "id": np.arange(len(stamps)) + 1000,
        "when": stamps.strftime("%Y-%m-%d %H:%M:%S"),
        "station": [f"{'ABC'[i % 3]}{i % 17}" for i in range(len(stamps))],
        "temp": rng.normal(20, 5, len(stamps)).round(1),
    })
    frame["demand"] = (100 + 80 * np.sin(2 * np.pi * (hour - 6) / 24) + rng.normal(0, 5, len(stamps))).round(1)
    frame.iloc[:n].to_csv(folder / "train.csv", index=False)
    frame.iloc[n:].drop(columns="demand").to_csv(folder / "test.csv", index=False)
    frame.iloc[n:][["id"]].assign(demand=0.0).to_csv(folder / "sample_submission.csv", index=False)
    return folder


@pytest.fixture
def folder(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(COMPETITIONS_ENV, str(tmp_path / "competitions"))
    (tmp_path / "competitions").mkdir()
    return _competition(tmp_path / "data")


def _config(folder: Path, text: str) -> None:
    (folder.parents[1] / "competitions" / f"{SLUG}.toml").write_text(text)


def _plan(folder: Path, out: Path) -> steps.Plan:
    return steps.Plan.load(steps.plan_training(SLUG, folder, out, tiny=True))


def test_the_plan_lists_every_feature_with_its_reason(folder, tmp_path):
    plan = _plan(folder, tmp_path / "out")
    names = {f.name for f in plan.features.features}
    assert {"when_hour", "when_hour_sin", "station_prefix", "station_number"} <= names
    assert "demand" not in plan.features.inputs and not any("demand" in f.sources for f in plan.features.features)
    shown = plan.features_markdown()
    assert "| `when_hour` | datetime_part | when | its values are timestamps (100% parse" in shown
    assert "[features] disable" in shown


def test_the_plan_cli_prints_the_features(creds, folder, tmp_path, capsys):
    """`kaggle-lora plan` shows the features section (the competition served by the fake Kaggle)."""
    from lora_tasks.cli import show_plan
    from lora_tasks.options import RunOptions
    from lora_tasks.testing import fake_kaggle as fk

    with fk.serve(folder.parent) as server:
        options = RunOptions(competition=SLUG, work_dir=str(tmp_path / "work"), kaggle_endpoint=server.url, tiny=True,
                             no_adapters=True)
        assert show_plan(options) == 0
    out = capsys.readouterr().out
    assert "### Features for the table members" in out and "| `when_hour_sin` | datetime_cyclic | when |" in out


def test_a_config_switches_features_off(folder, tmp_path):
    _config(folder, '[features]\ndisable = ["station_prefix", "datetime_cyclic"]\n')
    plan = _plan(folder, tmp_path / "out")
    names = {f.name for f in plan.features.features}
    assert "station_prefix" not in names and not any(n.endswith(("_sin", "_cos")) for n in names)
    assert "when_hour" in names
    off = {f.name for f in plan.features.disabled}
    assert "station_prefix" in off and "when_hour_sin" in off
    assert "~~`station_prefix`~~" in plan.features_markdown()


def test_a_misspelt_feature_in_the_config_fails_the_plan_naming_the_file(folder, tmp_path):
    _config(folder, '[features]\ndisable = ["when_hours"]\n')
    with pytest.raises(steps.PipelineError, match=rf"{SLUG}\.toml: .*when_hours.*Features found: .*when_hour"):
        _plan(folder, tmp_path / "out")


@pytest.mark.parametrize("text, match", [
    ('[features]\ndisable = "station_prefix"\n', "features.disable` must be list"),
    ('[features]\ndisable = [3]\n', "list of feature names or kinds"),
    ('[features]\nenable = ["x"]\n', r"unknown key `features.enable`; allowed keys in \[features\]: disable"),
])
def test_the_features_table_is_checked(folder, text, match):
    _config(folder, text)
    with pytest.raises(CompetitionConfigError, match=match):
        load_competition(SLUG, folder)


def test_the_config_parses_kinds_and_all(folder):
    _config(folder, '[features]\ndisable = ["all", "target_encoding"]\n')
    assert load_competition(SLUG, folder).disable_features == ("all", "target_encoding")
    assert FeatureKind.TARGET_ENCODING.value == "target_encoding"


def test_the_members_train_on_the_generated_features(folder, tmp_path):
    """The demand follows the hour inside `when`: with the features the gradient-boosting member
    reads it; with every feature off (the table as it is) it cannot."""
    out = tmp_path / "out"
    prepared = steps.prepare_data(SLUG, folder, out)
    with_features = steps.train_members(SLUG, folder, prepared, steps.plan_training(SLUG, folder, out, tiny=True), out)
    _config(folder, '[features]\ndisable = ["all"]\n')
    plain_plan = steps.plan_training(SLUG, folder, out, tiny=True)
    assert steps.Plan.load(plain_plan).features.features == ()
    plain = steps.train_members(SLUG, folder, prepared, plain_plan, out)
    rmse = {r.name: r.oof_score for r in with_features}
    rmse_plain = {r.name: r.oof_score for r in plain}
    assert rmse["hist_gbm"] < 0.3 * rmse_plain["hist_gbm"], (rmse, rmse_plain)
    for r in with_features:
        assert np.isfinite(np.load(r.test_path)).all() and len(np.load(r.test_path)) == 120


DOC = Path(__file__).resolve().parents[1] / "docs" / "autoconfig.md"


def test_the_doc_lists_exactly_the_kinds_in_the_code():
    from lora_tasks.features import kinds_markdown

    block = DOC.read_text().split("<!-- feature-kinds:start -->")[1].split("<!-- feature-kinds:end -->")[0]
    assert block.strip() == kinds_markdown().strip(), "regenerate docs/autoconfig.md's kinds from kinds_markdown()"


def test_the_docs_toml_example_is_a_valid_config():
    import re
    import tomllib

    from lora_tasks.data.config_file import validate_config_dict

    blocks = re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.S)
    features = [b for b in blocks if "[features]" in b]
    assert features, "docs/autoconfig.md shows a [features] example"
    for block in features:
        assert validate_config_dict(tomllib.loads(block), "docs")["features"]["disable"]
