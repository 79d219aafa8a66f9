"""The pipeline's plain functions (no Prefect): files in, files out, each step checked on its own
and chained end to end against the fake Kaggle server with a tiny random model and the real
MiniLM tokenizer."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lora_tasks import steps
from lora_tasks.data.autoconfig import TrainSettings
from lora_tasks.data.competition import SubmissionFormat
from lora_tasks.hashing import sha256_file
from lora_tasks.kaggle import SubmissionValidationError
from lora_tasks.options import RunOptions
from lora_tasks.task import Task
from lora_tasks.testing import fake_kaggle as fk
from lora_tasks.testing.demo import build_demo_competition


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    return build_demo_competition(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="module")
def demo_steps(demo_dir, tmp_path_factory):
    """prepare -> plan -> tokenize on the demo with the tiny model, once for the module."""
    out = tmp_path_factory.mktemp("artifacts")
    prepared = steps.prepare_data("demo", demo_dir, out)
    plan = steps.plan_training("demo", demo_dir, out, tiny=True, overrides={"n_folds": 2, "epochs": 1, "max_seq_len": 64})
    tokens = steps.tokenize_data(prepared, plan, out / "tokens")
    return out, prepared, plan, tokens


@pytest.fixture(scope="module")
def demo_folds(demo_steps):
    """The tiny random encoder's folds, as blendable members. It ends at the majority class, which
    makes a failed fold (tests/test_adapter_checks.py); the tests here check the blending mechanics,
    so the folds are taken as they are."""
    out, prepared, plan, tokens = demo_steps
    return [replace(steps.train_adapter(prepared, plan, tokens, k, out), failed=None) for k in range(2)]


def test_files_are_named_by_content(tmp_path):
    a = steps.save_array(np.arange(5.0), tmp_path, "x")
    b = steps.save_array(np.arange(5.0), tmp_path, "x")
    c = steps.save_array(np.arange(6.0), tmp_path, "x")
    assert a == b != c
    assert a.name == f"x-{sha256_file(a)[:16]}.npy"
    assert not list(tmp_path.glob(".tmp-*")), "temp files must be renamed, never left behind"


def test_prepare_writes_texts_labels_and_format(demo_steps, demo_dir):
    _, prepared, _, _ = demo_steps
    data = steps.Prepared.load(prepared)
    train = pd.read_csv(demo_dir / "train.csv")
    test = pd.read_csv(demo_dir / "test.csv")
    assert len(data.train_texts) == len(train) and len(data.test_texts) == len(test)
    assert data.train_texts[0].startswith("Mean radius is ")
    assert data.y == train["target"].tolist()
    assert data.test_ids == [str(v) for v in test["id"]], "ids as test.csv writes them, in its order"
    assert (data.head_type, data.metric, data.classes) == ("binary_classification", "accuracy", [0, 1])
    assert "target" not in data.train_texts[0].lower().split(" is ")[0]


def test_prepare_subset_is_seeded(demo_dir, tmp_path):
    a = steps.Prepared.load(steps.prepare_data("demo", demo_dir, tmp_path / "a", max_train_rows=50, seed=1))
    b = steps.Prepared.load(steps.prepare_data("demo", demo_dir, tmp_path / "b", max_train_rows=50, seed=1))
    assert len(a.y) == 50 and a.train_texts == b.train_texts
    assert len(a.test_texts) == len(pd.read_csv(demo_dir / "test.csv")), "the test set is never cut"


def test_plan_records_overrides_and_reasons(demo_steps):
    _, _, plan_path, _ = demo_steps
    plan = steps.Plan.load(plan_path)
    assert plan.tiny and plan.model == "tiny"
    assert plan.settings.n_folds == 2 and plan.settings.max_seq_len == 64
    assert "override: max_seq_len = 64" in plan.settings.reasons
    assert any(r.startswith("small_data") for r in plan.settings.reasons)
    assert "Data profile: demo" in plan.profile_markdown


def test_plan_rejects_unknown_override(demo_dir, tmp_path):
    with pytest.raises(steps.PipelineError, match="overridable settings"):
        steps.plan_training("demo", demo_dir, tmp_path, tiny=True, overrides={"epoch": 3})


def test_tokenize_is_cached_and_truncated(demo_steps):
    out, prepared, plan, tokens = demo_steps
    with np.load(tokens.train) as data:
        assert data["input_ids"].shape == (len(steps.Prepared.load(prepared).y), 64)
    mtime = tokens.train.stat().st_mtime_ns
    again = steps.tokenize_data(prepared, plan, out / "tokens")
    assert again == tokens and tokens.train.stat().st_mtime_ns == mtime


def test_train_adapter_writes_fold_files(demo_steps, demo_folds):
    _, prepared, plan, _ = demo_steps
    n = len(steps.Prepared.load(prepared).y)
    folds = steps.fold_assignment(steps.Prepared.load(prepared), steps.Plan.load(plan))
    for r in demo_folds:
        assert all(p.is_file() for p in r.paths())
        assert r.adapter_path.name.startswith("adapter-") and r.adapter_path.suffix == ".safetensors"
        oof = np.load(r.oof_path)
        assert oof.shape == (n,)
        assert np.array_equal(~np.isnan(oof), folds == r.fold), "OOF is filled exactly on the held-out fold"
        assert np.load(r.test_path).shape == (171,)
        assert r.n_train + r.n_valid == n and r.history and r.metric == "accuracy"


def test_train_rejects_a_fold_outside_the_plan(demo_steps, tmp_path):
    _, prepared, plan, tokens = demo_steps
    with pytest.raises(steps.PipelineError, match="has 2 folds"):
        steps.train_adapter(prepared, plan, tokens, 2, tmp_path)


def test_combine_blend_is_the_fold_mean_and_merge_predicts_once(demo_steps, demo_folds):
    out, prepared, plan, tokens = demo_steps
    blend = steps.combine(prepared, plan, demo_folds, out, method="blend")
    expected = np.mean([np.load(r.test_path) for r in demo_folds], axis=0)
    np.testing.assert_allclose(np.load(blend.test_path), expected, rtol=1e-6)
    assert blend.weights == {"lora": 1.0} and blend.blend_method is None
    y = np.asarray(steps.Prepared.load(prepared).y)
    oof = np.load(blend.oof_path)
    assert not np.isnan(oof).any()
    assert blend.oof_score == pytest.approx(float(np.mean((oof >= 0.5).astype(int) == y)))

    merged = steps.combine(prepared, plan, demo_folds, out, method="merge", tokens=tokens)
    test = np.load(merged.test_path)
    assert test.shape == expected.shape and np.all((test >= 0) & (test <= 1))
    assert merged.oof_score == blend.oof_score
    with pytest.raises(steps.PipelineError, match="every fold"):
        steps.combine(prepared, plan, demo_folds[:1], out)


def test_an_adapter_set_blends_as_its_own_member_on_the_same_folds(demo_steps, demo_folds, demo_dir):
    out, prepared, plan, _ = demo_steps
    extra = steps.AdapterSet.parse("expressive")
    assert (extra.preset, extra.model, extra.member) == ("expressive", None, "lora_expressive")
    overrides = steps.adapter_set_overrides({"epochs": 1, "max_seq_len": 64}, extra, 2)
    plan2 = steps.plan_training("demo", demo_dir, out, tiny=True, overrides=overrides)
    assert steps.Plan.load(plan2).settings.preset == "expressive" and steps.Plan.load(plan2).n_folds == 2
    tokens2 = steps.tokenize_data(prepared, plan2, out / "tokens")
    folds2 = [steps.train_adapter(prepared, plan2, tokens2, k, out) for k in range(2)]
    for a, b in zip(demo_folds, folds2, strict=True):  # the same rows held out by each fold of both sets
        np.testing.assert_array_equal(np.isnan(np.load(a.oof_path)), np.isnan(np.load(b.oof_path)))

    res = steps.combine(prepared, plan, demo_folds, out, adapter_sets={extra.member: folds2}, blend_method="weights")
    assert set(res.weights) == set(res.member_scores) == {"lora", "lora_expressive"}
    oof = {name: np.load(steps.combine(prepared, p, rs, out).oof_path)
           for name, p, rs in (("lora", plan, demo_folds), ("lora_expressive", plan2, folds2))}
    test = {"lora": np.mean([np.load(r.test_path) for r in demo_folds], axis=0),
            "lora_expressive": np.mean([np.load(r.test_path) for r in folds2], axis=0)}
    np.testing.assert_allclose(np.load(res.oof_path), sum(res.weights[k] * oof[k] for k in oof), rtol=1e-5)
    np.testing.assert_allclose(np.load(res.test_path), sum(res.weights[k] * test[k] for k in test), rtol=1e-5)
    y = np.asarray(steps.Prepared.load(prepared).y)
    assert res.member_scores["lora_expressive"] == pytest.approx(float(np.mean((oof["lora_expressive"] >= 0.5) == y)))
    with pytest.raises(steps.PipelineError, match="adapter sets of other presets or encoders only blend"):
        steps.combine(prepared, plan, demo_folds, out, method="merge", tokens=tokens2, adapter_sets={extra.member: folds2})
    with pytest.raises(steps.PipelineError, match="every fold"):
        steps.combine(prepared, plan, demo_folds, out, adapter_sets={extra.member: folds2[:1]})


@pytest.mark.parametrize("spec, preset, model, settings, member", [
    ("expressive", "expressive", None, (), "lora_expressive"),
    ("balanced@all-mpnet-base-v2", "balanced", "all-mpnet-base-v2", (), "lora_balanced_all-mpnet-base-v2"),
    (" qlora_quality@/models/twitter-roberta ", "qlora_quality", "/models/twitter-roberta", (),
     "lora_qlora_quality_twitter-roberta"),
    ("balanced@all-mpnet-base-v2:epochs=2", "balanced", "all-mpnet-base-v2", (("epochs", 2),),
     "lora_balanced_all-mpnet-base-v2_e2"),
    # settings come out in one order whatever order they are written in; aliases lr / seq_len
    ("expressive: lr=1e-3, top_layers=all ,epochs=4", "expressive", None,
     (("epochs", 4), ("learning_rate", 1e-3), ("top_layers", None)), "lora_expressive_e4_lr0.001_topall"),
    ("efficient@/data/c:d/model:seq_len=96,batch_size=16", "efficient", "/data/c:d/model",
     (("max_seq_len", 96), ("batch_size", 16)), "lora_efficient_model_t96_b16"),
    ("efficient@/data/c:d", "efficient", "/data/c:d", (), "lora_efficient_c:d"),  # a colon without '=': a path
])
def test_adapter_set_specs(spec, preset, model, settings, member):
    s = steps.AdapterSet.parse(spec)
    assert (s.preset, s.model, s.settings, s.member) == (preset, model, settings, member)


@pytest.mark.parametrize("specs, message", [
    (["huge"], r"'huge': write PRESET\[@MODEL\]\[:KEY=VALUE,...\], with PRESET one of efficient, balanced"),
    (["balanced@"], r"'balanced@': write PRESET\[@MODEL\]"),
    (["expressive", "expressive"], r"\['lora_expressive'\] are given twice"),
    (["expressive:epochs=2", " expressive : epochs = 2"], r"\['lora_expressive_e2'\] are given twice"),
    (["expressive:n_folds=3"], r"'n_folds=3' is not KEY=VALUE with KEY one of epochs, learning_rate, max_seq_len"),
    (["expressive:epochs=2,epochs=3"], r"'epochs=3' is given twice"),
    (["expressive:epochs=two"], r"epochs = 'two' must be a positive integer\."),
    (["expressive:top_layers=0"], r"top_layers = '0' must be a positive integer or 'all'"),
    (["expressive:lr=-1"], r"learning_rate = '-1' must be a positive number"),
])
def test_bad_adapter_sets_are_clear_errors(specs, message):
    with pytest.raises(steps.PipelineError, match=message):
        steps.parse_adapter_sets(specs)


def test_an_adapter_set_gets_its_own_settings_and_a_copy_of_the_main_set_is_refused(demo_steps, demo_dir):
    out, _, plan, _ = demo_steps
    main = steps.Plan.load(plan)
    chosen = {"n_folds": 2, "epochs": 1, "max_seq_len": 64, "top_layers": 1}

    def set_plan(spec):
        s = steps.AdapterSet.parse(spec)
        return s, steps.plan_training("demo", demo_dir, out, tiny=True, overrides=steps.adapter_set_overrides(chosen, s, 2))

    s, p = set_plan(f"{main.settings.preset}:epochs=2,lr=5e-4,top_layers=all")
    got = steps.Plan.load(p).settings
    assert (got.epochs, got.learning_rate, got.top_layers, got.max_seq_len, got.n_folds) == (
        2, 5e-4, None, 64, 2)  # its own epochs, lr and all layers; the main set's length and folds
    steps.check_adapter_set(plan, p, s)  # other settings: a set of its own

    # the main set's own preset, written out, trains the main set again: refused, naming the fix
    s = steps.AdapterSet.parse(main.settings.preset)
    same = {"n_folds": 2, "epochs": 1, "max_seq_len": 64}
    p = steps.plan_training("demo", demo_dir, out, tiny=True, overrides=steps.adapter_set_overrides(same, s, 2))
    assert p != plan  # its reasons record the preset as an override, so the files differ ...
    with pytest.raises(steps.PipelineError, match=rf"'{s.member}' trains exactly what the main set trains .*:epochs=N"):
        steps.check_adapter_set(plan, p, s)  # ... but what it trains does not


def test_a_runs_overrides_win_over_the_competitions_recipe(demo_steps):
    _, _, plan, _ = demo_steps  # competitions/demo.toml says 3 epochs; the fixture asks for 1
    settings = steps.Plan.load(plan).settings
    assert settings.epochs == 1 and settings.batch_size == 8  # the override; the recipe's batch
    reasons = settings.reasons
    assert reasons.index("config: epochs = 3 ([training] of demo.toml)") < reasons.index("override: epochs = 1")


def test_the_recipes_adapter_sets_come_from_the_config_and_name_it(tmp_path, monkeypatch, demo_dir):
    from lora_tasks.data.competition import default_competitions_dir

    shipped = (default_competitions_dir() / "demo.toml").read_text()
    assert steps.recipe_adapter_sets("demo", demo_dir) == []
    monkeypatch.setenv("KAGGLE_LORA_COMPETITIONS_DIR", str(tmp_path))
    (tmp_path / "demo.toml").write_text(shipped + 'adapter_sets = ["expressive:epochs=1", "balanced@/m/x"]\n')
    assert [s.member for s in steps.recipe_adapter_sets("demo", demo_dir)] == ["lora_expressive_e1", "lora_balanced_x"]
    (tmp_path / "demo.toml").write_text(shipped + 'adapter_sets = ["expressive:epoch=1"]\n')
    with pytest.raises(steps.PipelineError, match=r"demo.toml: \[training\] adapter_sets: .*'epoch=1' is not KEY=VALUE"):
        steps.recipe_adapter_sets("demo", demo_dir)


@pytest.fixture(scope="module")
def demo_members(demo_steps, demo_dir):
    out, prepared, plan, _ = demo_steps
    return steps.train_members("demo", demo_dir, prepared, plan, out)


@pytest.fixture(scope="module")
def demo_member(demo_members):
    return next(b for b in demo_members if b.name == "hist_gbm")


def test_baselines_use_the_adapters_rows_and_folds(demo_steps, demo_members, demo_dir):
    """The demo table is numeric: the gradient-boosting members and a linear model, on the same rows
    and folds as the adapters, scored with the competition metric (recomputed here from its files)."""
    _, prepared, plan, _ = demo_steps
    data = steps.Prepared.load(prepared)
    y = np.asarray(data.y)
    assert [b.name for b in demo_members] == ["lightgbm", "catboost", "hist_gbm", "extra_trees", "linear"]
    for b in demo_members:
        assert b.metric == "accuracy" and all(p.is_file() for p in b.paths())
        oof, test = np.load(b.oof_path), np.load(b.test_path)
        assert oof.shape == (len(data.y),) and test.shape == (len(data.test_ids),)
        assert np.all((oof >= 0) & (oof <= 1)), "binary members predict P(class 1)"
        assert b.oof_score == pytest.approx(float(np.mean((oof >= 0.5) == y)))
        assert b.oof_score > 0.85, f"{b.name} separates the breast-cancer demo"


def test_baseline_follows_a_subset_of_rows(demo_dir, tmp_path):
    prepared = steps.prepare_data("demo", demo_dir, tmp_path, max_train_rows=120, seed=3)
    plan = steps.plan_training("demo", demo_dir, tmp_path, tiny=True, max_train_rows=120, seed=3,
                           overrides={"n_folds": 3, "epochs": 1, "max_seq_len": 64})
    rows = steps.Prepared.load(prepared).train_rows
    assert len(rows) == 120 and rows == sorted(rows)
    train = pd.read_csv(demo_dir / "train.csv")
    assert steps.Prepared.load(prepared).y == train["target"].iloc[rows].tolist()
    for b in steps.train_members("demo", demo_dir, prepared, plan, tmp_path):
        assert np.load(b.oof_path).shape == (120,)


def test_blend_with_a_baseline_fits_weights_on_oof(demo_steps, demo_folds, demo_member, demo_members):
    out, prepared, plan, _ = demo_steps
    data = steps.Prepared.load(prepared)
    y = np.asarray(data.y)
    res = steps.combine(prepared, plan, demo_folds, out, members=[demo_member], blend_method="weights")
    assert set(res.weights) == {"lora", "hist_gbm"} and sum(res.weights.values()) == pytest.approx(1.0)
    assert min(res.weights.values()) >= 0
    lora_oof = np.load(steps.combine(prepared, plan, demo_folds, out).oof_path)
    lora_test = np.mean([np.load(r.test_path) for r in demo_folds], axis=0)
    w_l, w_b = res.weights["lora"], res.weights["hist_gbm"]
    np.testing.assert_allclose(np.load(res.oof_path), w_l * lora_oof + w_b * np.load(demo_member.oof_path), rtol=1e-5)
    np.testing.assert_allclose(np.load(res.test_path), w_l * lora_test + w_b * np.load(demo_member.test_path), rtol=1e-5)
    assert res.member_scores["hist_gbm"] == demo_member.oof_score
    assert res.member_scores["lora"] == pytest.approx(float(np.mean((lora_oof >= 0.5) == y)))
    # OOF-fit weights never lose to the better member on OOF, and the honest nested score is reported
    assert res.oof_score >= max(res.member_scores.values()) - 1e-12
    assert res.blend_method == "weights" and res.blend_cv_score is not None and 0 <= res.blend_cv_score <= 1

    caruana = steps.combine(prepared, plan, demo_folds, out, members=[demo_member])
    assert steps.DEFAULT_BLEND_METHOD == "auto" and caruana.blend_method in ("caruana", "stacking")
    assert caruana.oof_score >= max(caruana.member_scores.values()) - 1e-12
    with pytest.raises(steps.PipelineError, match="members only blend"):
        steps.combine(prepared, plan, demo_folds, out, method="merge", members=[demo_member])

    every = steps.combine(prepared, plan, demo_folds, out, members=demo_members)
    assert set(every.weights) == set(every.member_scores) == {"lora", *(b.name for b in demo_members)}
    assert every.oof_score >= max(every.member_scores.values()) - 1e-12
    with pytest.raises(ValueError, match="Unknown blend method"):
        steps.combine(prepared, plan, demo_folds, out, members=[demo_member], blend_method="median")


def test_f1_combine_fits_the_label_cut_and_the_submission_uses_it(demo_steps, demo_folds, demo_members, tmp_path):
    """With F1 and ``threshold = "auto"`` the cut of P(class 1) is fit on the OOF rows, scored
    nested, and written into the labels; a configured number and accuracy keep their cut."""
    from sklearn.metrics import f1_score

    from lora_tasks.ensemble.thresholds import nested_threshold_score

    _, prepared, plan, _ = demo_steps
    data = steps.Prepared.load(prepared)
    y = np.asarray(data.y)
    as_f1 = replace(data, metric="f1", submission=replace(data.submission, threshold="auto")).save(tmp_path)
    lone = steps.combine(as_f1, plan, demo_folds, tmp_path)
    oof = np.load(lone.oof_path)
    assert lone.threshold is not None and lone.metric == "f1"
    assert lone.oof_score == pytest.approx(f1_score(y, oof >= lone.threshold))
    assert lone.member_scores["lora"] == pytest.approx(f1_score(y, oof >= 0.5))
    folds = steps.fold_assignment(data, steps.Plan.load(plan))
    assert lone.blend_cv_score == pytest.approx(nested_threshold_score("f1", y, oof, folds))

    blended = steps.combine(as_f1, plan, demo_folds, tmp_path, members=demo_members)
    assert blended.threshold is not None and blended.blend_cv_score is not None
    assert blended.oof_score == pytest.approx(f1_score(y, np.load(blended.oof_path) >= blended.threshold))
    test = np.load(blended.test_path)
    frame = pd.read_csv(steps.write_submission(as_f1, plan, blended.test_path, tmp_path, blended.threshold))
    classes = data.classes or [0, 1]
    expected = [classes[int(v)] for v in test >= blended.threshold]
    target = data.target_columns[0]
    assert frame[target].tolist() == expected
    if ((test >= blended.threshold) != (test >= 0.5)).any():  # the file differs from a 0.5 cut exactly there
        assert pd.read_csv(steps.write_submission(as_f1, plan, blended.test_path, tmp_path))[target].tolist() != expected

    fixed = replace(data, metric="f1", submission=replace(data.submission, threshold=0.5)).save(tmp_path)
    kept = steps.combine(fixed, plan, demo_folds, tmp_path)
    assert kept.threshold is None and kept.blend_cv_score is None
    assert kept.oof_score == pytest.approx(f1_score(y, oof >= 0.5))
    assert steps.combine(prepared, plan, demo_folds, tmp_path).threshold is None, "accuracy keeps the 0.5 cut"


def test_top_layers_train_from_the_cached_prefix(demo_dir, tmp_path):
    """top_layers=1 on the 2-layer tiny model: adapters only in layer 1, the frozen layer 0 runs once
    per dataset (states on disk, reused by the second fold), and the predictions equal those of the
    full model carrying the same adapter."""
    from lora_tasks.training.factory import build_model
    from lora_tasks.training.train import predict

    prepared = steps.prepare_data("demo", demo_dir, tmp_path, max_train_rows=120)
    plan = steps.plan_training("demo", demo_dir, tmp_path, tiny=True, max_train_rows=120,
                           overrides={"n_folds": 2, "epochs": 1, "max_seq_len": 64, "top_layers": 1})
    tokens = steps.tokenize_data(prepared, plan, tmp_path / "tokens")
    first = steps.train_adapter(prepared, plan, tokens, 0, tmp_path)
    states = sorted((tmp_path / "prefix").glob("prefix-*.npy"))
    assert len(states) == 2, "one states file for the train rows, one for the test rows"
    stamps = [s.stat().st_mtime_ns for s in states]
    steps.train_adapter(prepared, plan, tokens, 1, tmp_path)
    assert sorted((tmp_path / "prefix").glob("prefix-*.npy")) == states
    assert [s.stat().st_mtime_ns for s in states] == stamps, "the second fold reuses the states"

    settings = steps.Plan.load(plan).settings  # the same model the fold trained: its preset and compute dtype
    net, adapter = build_model("binary_classification", settings.preset, tiny=True, seed=0, top_layers=1,
                               compute_dtype=settings.compute_dtype)
    adapter.load(first.adapter_path)
    assert adapter.layers and all(".layer.1." in name for name in adapter.layers)
    full = np.asarray(predict(net, steps.load_dataset(tokens.test)))
    np.testing.assert_allclose(full.reshape(-1), np.load(first.test_path), atol=1e-5)
    with pytest.raises(ValueError, match="has 2 encoder layers"):
        build_model("binary_classification", "efficient", tiny=True, top_layers=3)


def test_merge_of_one_adapter_equals_that_adapter(demo_steps, demo_folds):
    """Merging a single adapter into the base weights must give that adapter's predictions."""
    out, prepared, plan, tokens = demo_steps
    pred = steps.merged_predict(steps.Prepared.load(prepared), steps.Plan.load(plan), [demo_folds[0].adapter_path], [1.0],
                                tokens.test)
    np.testing.assert_allclose(pred, np.load(demo_folds[0].test_path), atol=2e-4)


def _fake_prepared(classes=None, spellings=(), **fmt):
    """A Prepared of three test rows; ``fmt`` changes its submission format (``spellings``: its
    classes as train.csv writes them)."""
    submission = SubmissionFormat(**{"columns": ("Id", "y"), "dtype": "float", "prediction": "values",
                                     "threshold": 0.5, "id_column": "Id", "classes": tuple(spellings), **fmt})
    return steps.Prepared(slug="x", task=Task.REGRESSION, head_type="regression", num_labels=1, metric="rmse",
                          classes=classes, id_column="Id", target_columns=["y"], submission=submission,
                          sample_submission="", template="", n_train_rows_total=0, train_rows=[], train_texts=[],
                          y=[], test_texts=[], test_ids=["001", "002", "003"])


def _plan(transform="none"):
    return steps.Plan(slug="x", settings=TrainSettings(target_transform=transform), profile_markdown="",
                      model="tiny", tiny=True, train_metric=None)


def _csv_text(frame: pd.DataFrame, tmp_path: Path) -> list[str]:
    """The lines the submission file holds (as Kaggle reads them)."""
    from lora_tasks.data.submission_format import write_csv

    return write_csv(frame, tmp_path / "s.csv").read_text().splitlines()


def test_submission_inverts_log1p(tmp_path):
    frame = steps.submission_frame(np.log1p([100.0, 2000.0, 5.0]), _fake_prepared(), _plan("log1p"))
    assert list(frame.columns) == ["Id", "y"]
    np.testing.assert_allclose(frame["y"], [100.0, 2000.0, 5.0])
    assert _csv_text(frame, tmp_path)[1].startswith("001,"), "ids keep their leading zeros"


def test_submission_labels_use_threshold_and_class_values(tmp_path):
    prepared = _fake_prepared(classes=["no", "yes"], dtype="str", prediction="labels", threshold=0.7,
                              spellings=("no", "yes"))
    frame = steps.submission_frame(np.array([0.6, 0.71, 0.2]), prepared, _plan())
    assert frame["y"].tolist() == ["no", "yes", "no"]
    prepared = _fake_prepared(classes=[False, True], dtype="bool", prediction="labels", spellings=("False", "True"))
    frame = steps.submission_frame(np.array([0.6, 0.2, 0.9]), prepared, _plan())
    assert _csv_text(frame, tmp_path) == ["Id,y", "001,True", "002,False", "003,True"], "bools as train.csv spells them"


def test_submission_int_labels_and_multiclass_probabilities(tmp_path):
    prepared = _fake_prepared(classes=[0, 1], dtype="int", prediction="labels", spellings=("0", "1"))
    frame = steps.submission_frame(np.array([0.9, 0.1, 0.5]), prepared, _plan())
    assert _csv_text(frame, tmp_path) == ["Id,y", "001,1", "002,0", "003,1"], "int labels without .0"
    prepared = _fake_prepared(classes=["a", "b", "c"], columns=("Id", "c", "a", "b"), prediction="probabilities",
                              spellings=("a", "b", "c"))
    probs = np.array([[0.2, 0.3, 0.5], [0.1, 0.8, 0.1], [0.6, 0.2, 0.2]])
    frame = steps.submission_frame(probs, prepared, _plan())
    assert list(frame.columns) == ["Id", "c", "a", "b"], "the sample's column order"
    np.testing.assert_allclose(frame[["a", "b", "c"]].to_numpy(dtype=float), probs)


def test_submission_of_several_targets_has_one_column_each(tmp_path):
    prepared = replace(_fake_prepared(columns=("Id", "u", "v")), task=Task.MULTITARGET_REGRESSION,
                       target_columns=["u", "v"], num_labels=2)
    values = np.array([[1.5, 2.0], [3.25, 4.0], [5.0, 6.125]])
    frame = steps.submission_frame(values, prepared, _plan())
    np.testing.assert_allclose(frame[["u", "v"]].to_numpy(dtype=float), values)
    with pytest.raises(steps.PipelineError, match="prediction column"):
        steps.submission_frame(values[:, :1], prepared, _plan())


def test_validate_catches_a_wrong_file(demo_steps, tmp_path):
    _, prepared, _, _ = demo_steps
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"id": [1, 2], "target": [0.3, 0.9]}).to_csv(bad, index=False)
    with pytest.raises(SubmissionValidationError):
        steps.validate(bad, prepared)


def test_run_id_is_stable_per_run_and_file(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("id,target\n1,0\n")
    b.write_text("id,target\n1,1\n")
    assert steps.submission_run_id("flow/123", a) == steps.submission_run_id("flow/123", a)
    assert steps.submission_run_id("flow/123", a) != steps.submission_run_id("flow/123", b)
    assert steps.submission_run_id("flow/123", a) != steps.submission_run_id("flow/456", a)
    assert "/" not in steps.submission_run_id("flow/123", a)


def test_run_pipeline_on_demo_is_scored_like_the_server(creds, tmp_path):
    served = tmp_path / "served"
    build_demo_competition(served)
    with fk.serve(served, pending_polls=1) as server:
        options = RunOptions(competition="demo", work_dir=str(tmp_path / "work"), kaggle_endpoint=server.url,
                             tiny=True, epochs=1, max_seq_len=64, submit=True)
        result = steps.run_pipeline(options, run_key="test-run")
        assert len(server.submissions) == 1
    sub = pd.read_csv(result.submission_path)
    solution = pd.read_csv(served / "demo" / "solution.csv")
    expected = fk.score_submission(sub, solution, "accuracy")
    assert result.public_score == pytest.approx(expected)
    assert result.submission.run_id.startswith("test-run-")
    assert math.isfinite(result.combined.oof_score)
    # fold 1 trains unless fold 0 failed (the tiny encoder ends at the majority class) or added nothing
    first = result.adapters[0]
    assert len(result.adapters) == (2 if first.keep_adapters else 1)
    if not first.keep_adapters:
        assert "lora" not in result.combined.weights and result.combined.notes
    assert (tmp_path / "work" / "data" / "demo" / "train.csv").is_file()


def test_create_kaggle_lora_model_profiles_and_picks_a_preset(demo_dir):
    from lora_tasks.training.factory import create_kaggle_lora_model

    built = create_kaggle_lora_model("binary", data_path=demo_dir, tiny=True)
    model, adapter = built
    settings = built.settings
    assert settings.preset == "efficient" and "small_data" in settings.fired
    assert built.head_type == "binary_classification" and model.head_type == "binary_classification"
    assert adapter.parameter_report().lora > 0
    manual = create_kaggle_lora_model("regression", auto_select_preset=False, preset="balanced", tiny=True)
    assert manual.settings.preset == "balanced" and manual.model.head_type == "regression"
    assert set(manual.adapter.config.target_modules) > set(built.adapter.config.target_modules)
    with pytest.raises(ValueError, match="Unknown competition type"):
        create_kaggle_lora_model("ranking", tiny=True)


def test_a_bare_train_csv_is_profiled_with_its_roles_guessed(demo_dir, tmp_path):
    """No sample submission and no test file: the target and id come from train.csv and the task,
    each guess first in the reasons; a table no column of which fits the task names the fix."""
    from lora_tasks.data.train_only import guess_roles
    from lora_tasks.task import Task
    from lora_tasks.training.factory import create_kaggle_lora_model

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.csv").write_bytes((demo_dir / "train.csv").read_bytes())
    built = create_kaggle_lora_model("binary", data_path=tmp_path / "data" / "train.csv", tiny=True)
    with_sample = create_kaggle_lora_model("binary", data_path=demo_dir, tiny=True)
    assert built.settings.preset == with_sample.settings.preset and built.num_labels == with_sample.num_labels
    assert built.settings.reasons[0].startswith("target: 'target'") and built.settings.reasons[1].startswith("id: 'id'")
    frame = pd.DataFrame({"PassengerId": [1, 2, 3, 4], "Survived": [0, 1, 1, 0], "Sex": ["m", "f", "m", "f"],
                          "Fare": [7.25, 71.3, 8.05, 53.1]})
    assert guess_roles(frame, Task.BINARY)[:2] == ("PassengerId", "Survived"), "a 0/1 column before a two-valued one"
    with pytest.raises(ValueError, match=r"No column of train.csv .* fits a regression task .* competitions/"):
        guess_roles(frame, Task.REGRESSION)
