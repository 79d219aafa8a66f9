"""RunOptions: one validated object for the CLI, the flow and run_pipeline; the CLI's options are
generated from its fields."""

from __future__ import annotations

import subprocess
import sys
import typing

import pytest
from pydantic import ValidationError

from lora_tasks.cli import build_run_parser, options_from_args
from lora_tasks.ensemble.blend import METHODS
from lora_tasks.options import RunOptions


def test_every_field_has_a_description_and_a_default():
    for name, info in RunOptions.model_fields.items():
        assert info.description, f"{name} has no help text"
        assert not info.is_required(), f"{name} has no default"


def test_blend_methods_match_the_ensemble():
    assert set(typing.get_args(RunOptions.model_fields["blend_method"].annotation)) == set(METHODS)


@pytest.mark.parametrize("given, message", [
    (dict(combine="merge", adapter_sets=["expressive"]), r"adapter sets blend .* need combine='blend'"),
    (dict(combine="merge", members=True), r"combine='merge' .* has no members"),
    (dict(adapter_sets=["huge"]), r"Adapter set 'huge': write PRESET"),
    (dict(adapter_sets=["expressive", "expressive"]), r"are given twice"),
    (dict(preset="huge"), r"preset\s+Value error, 'huge' is not a preset; use one of efficient"),
    (dict(top_layers=0), r"top_layers\s+Value error, 0: give a positive number of layers, or 'all'"),
    (dict(folds=1), r"folds\s+Value error, 1 fold\(s\): out-of-fold predictions need a held-out fold, so give 2 or more"),
    (dict(max_seq_len=4), r"max_seq_len\s+Value error, 4 tokens per row: give 8 or more"),
    (dict(blend_method="median"), r"blend_method"),
    (dict(epoch=3), r"epoch"),  # a typo is refused, not ignored
])
def test_bad_options_are_refused_naming_the_fix(given, message):
    with pytest.raises(ValidationError, match=message):
        RunOptions(**given)


def test_merge_without_members_and_blend_defaults():
    assert not RunOptions(combine="merge").uses_members
    assert RunOptions().uses_members and not RunOptions(members=False).uses_members


def test_adapters_is_a_deprecated_alias_of_folds():
    with pytest.warns(DeprecationWarning, match="use folds"):
        assert RunOptions(adapters=3).folds == 3
    with pytest.raises(ValidationError, match="give folds only"):
        RunOptions(adapters=3, folds=4)


def test_baseline_is_a_deprecated_alias_of_members(capsys):
    with pytest.warns(DeprecationWarning, match=r"use members=\.\.\. \(--members\)"):
        assert RunOptions(baseline=False).members is False
    with pytest.raises(ValidationError, match="give members only"):
        RunOptions(baseline=False, members=True)
    parser = build_run_parser()
    assert options_from_args(parser.parse_args(["--competition", "x", "--no-baseline"]), parser).members is False
    assert "--no-baseline is deprecated; use --no-members" in capsys.readouterr().err
    assert options_from_args(parser.parse_args(["--competition", "x", "--baseline"]), parser).members is True
    assert "--baseline is deprecated; use --members" in capsys.readouterr().err


def test_training_overrides_are_the_given_settings_only():
    options = RunOptions(folds=3, epochs=1, top_layers="all")
    assert options.training_overrides() == {"n_folds": 3, "epochs": 1, "top_layers": "all"}
    assert "compute_dtype" not in RunOptions(compute_dtype="bfloat16").training_overrides(("epochs",))
    assert RunOptions(compute_dtype="bfloat16").training_overrides(("compute_dtype",)) == {"compute_dtype": "bfloat16"}


def test_the_cli_fills_the_same_options(capsys):
    parser = build_run_parser()
    args = parser.parse_args(["--competition", "titanic", "--folds", "3", "--no-submit", "--top-layers", "all",
                              "--adapter-set", "expressive", "--adapter-set", "balanced:epochs=2", "--retry-delay",
                              "0.5", "--refresh", "--compute-dtype", "bfloat16"])
    options = options_from_args(args, parser)
    assert options == RunOptions(competition="titanic", folds=3, submit=False, top_layers="all",
                                 adapter_sets=["expressive", "balanced:epochs=2"], retry_delay_s=0.5, refresh=True,
                                 compute_dtype="bfloat16")
    assert options_from_args(parser.parse_args(["--competition", "x", "--no-adapter-sets"]), parser).adapter_sets == []
    assert options_from_args(parser.parse_args(["--competition", "x", "--dtype", "auto"]), parser).compute_dtype == "auto"
    assert options_from_args(parser.parse_args(["--competition", "x", "--adapters", "4"]), parser).folds == 4
    assert "--adapters is deprecated; use --folds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        options_from_args(parser.parse_args(["--competition", "x", "--combine", "merge", "--adapter-set", "expressive"]),
                          parser)
    assert "need combine='blend'" in capsys.readouterr().err


def test_kaggle_lora_run_leaves_logging_to_prefect():
    """``kaggle-lora run`` once put a root handler at INFO in place before the flow: every request of
    Prefect's API client (httpx) went into the run's log, and Prefect's lines lost their time and run name."""
    code = ("import logging\nfrom lora_tasks import cli\ntry:\n    cli.main(['run', '--help'])\n"
            "except SystemExit:\n    pass\nlogging.getLogger('httpx').info('HTTP Request: GET /api/health')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "--time-limit" in out.stdout, out.stderr  # the run's help: main went the run's way
    assert "HTTP Request" not in out.stdout + out.stderr
