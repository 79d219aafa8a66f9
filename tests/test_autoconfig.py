"""Auto-configuration: every rule of the table is exercised; real profiles give sane settings."""

from __future__ import annotations

from dataclasses import replace

import pytest
from _data_helpers import HOUSE, TITANIC, TWEETS, shared_dir, tokenizer

from lora_tasks.data.autoconfig import (
    PRESETS,
    RULES,
    Context,
    TrainSettings,
    auto_configure,
    estimate_memory_bytes,
    round_up,
    rules_markdown,
)
from lora_tasks.data.competition import load_competition
from lora_tasks.data.profile import ExcludedColumn, LengthStats, TargetProfile, profile_competition

RULE_NAMES = [r.name for r in RULES]


@pytest.fixture(scope="module")
def titanic():
    cfg = load_competition(TITANIC, shared_dir())
    return cfg, profile_competition(cfg, tokenizer=tokenizer(), token_sample=None)


@pytest.fixture(scope="module")
def house():
    cfg = load_competition(HOUSE, shared_dir())
    return cfg, profile_competition(cfg, tokenizer=tokenizer(), token_sample=300)


def _lengths(p95: float, p99: float) -> LengthStats:
    return LengthStats(count=1000, mean=p95 / 2, p50=p95 / 2, p90=p95 * 0.9, p95=p95, p99=p99, max=int(p99 * 2))


# ---------------------------------------------------------------------------- one test per rule


def test_seq_len_p99(titanic):
    _, p = titanic
    s = auto_configure(p)
    assert s.fired[0] == "seq_len_p99"
    assert s.max_seq_len == round_up(p.token_lengths.p99) and s.max_seq_len % 8 == 0
    assert p.token_lengths.p99 <= s.max_seq_len < p.token_lengths.p99 + 8


def test_seq_len_p95_long_tail(titanic):
    _, p = titanic
    s = auto_configure(replace(p, token_lengths=_lengths(p95=100, p99=300)))
    assert "seq_len_p95_long_tail" in s.fired and "seq_len_p99" not in s.fired
    assert s.max_seq_len == 104


def test_seq_len_unknown(titanic):
    _, p = titanic
    s = auto_configure(replace(p, token_lengths=None))
    assert s.fired[0] == "seq_len_unknown" and s.max_seq_len == 256


def test_seq_len_model_cap(titanic):
    _, p = titanic
    s = auto_configure(replace(p, token_lengths=_lengths(p95=650, p99=700)))
    assert "seq_len_model_cap" in s.fired and s.max_seq_len == 512
    short_model = auto_configure(p, model_max_len=64)
    assert short_model.max_seq_len == 64


@pytest.mark.parametrize(
    "rows, rule, preset, folds, epochs",
    [
        (891, "small_data", "efficient", 5, 10),
        (7_613, "medium_data", "balanced", 5, 4),
        (50_000, "large_data", "expressive", 3, 3),
        (500_000, "huge_data", "expressive", 1, 2),
    ],
)
def test_data_size_rules(titanic, rows, rule, preset, folds, epochs):
    _, p = titanic
    s = auto_configure(replace(p, n_rows=rows, n_test_rows=0), memory_budget_bytes=10**15)
    assert rule in s.fired
    assert (s.preset, s.n_folds, s.n_adapters, s.epochs) == (preset, folds, folds, epochs)
    assert s.preset in PRESETS


def test_learning_rate_falls_as_presets_grow(titanic):
    _, p = titanic
    lrs = [auto_configure(replace(p, n_rows=n, n_test_rows=0)).learning_rate for n in (891, 7_613, 50_000)]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] > lrs[-1]


def test_batch_by_tokens(titanic):
    _, p = titanic
    long_rows = auto_configure(replace(p, n_rows=100_000, n_test_rows=0, token_lengths=_lengths(480, 500)), memory_budget_bytes=10**15)
    assert long_rows.max_seq_len == 504 and long_rows.batch_size == 16  # 8192 / 504 -> 16
    short_rows = auto_configure(replace(p, n_rows=100_000, n_test_rows=0, token_lengths=_lengths(30, 32)))
    assert short_rows.batch_size == 64  # 8192 / 32 = 256, capped at 64
    few_rows = auto_configure(replace(p, n_rows=500, token_lengths=_lengths(30, 32)))
    assert few_rows.batch_size == 8  # 500 / 50 = 10 -> 8
    for s in (long_rows, short_rows, few_rows):
        assert "batch_by_tokens" in s.fired and s.batch_size & (s.batch_size - 1) == 0


def test_imbalanced_classes(titanic):
    _, p = titanic
    assert auto_configure(p).class_weight is None  # 342 of 891 survived: 38% is not rare
    rare = replace(p, target=TargetProfile(("Survived",), "binary", class_counts={"0": 850, "1": 41}))
    s = auto_configure(rare)
    assert "imbalanced_classes" in s.fired and s.class_weight == "balanced"


def test_skewed_target_log1p_and_competition_transform(house):
    cfg, p = house
    zero_config = auto_configure(p)  # no competition: the skew rule decides
    assert "skewed_target_log1p" in zero_config.fired and zero_config.target_transform == "log1p"
    pinned = auto_configure(p, competition=cfg)  # house-prices.toml sets log1p itself
    assert "competition_transform" in pinned.fired and "skewed_target_log1p" not in pinned.fired
    assert pinned.target_transform == "log1p"
    symmetric = replace(p, target=replace(p.target, stats={**p.target.stats, "skew": 0.1}))
    assert auto_configure(symmetric).target_transform == "none"


def test_qlora_over_budget(titanic):
    _, p = titanic
    fits = auto_configure(p)
    assert not fits.quantize and fits.estimated_memory_bytes < 8 * 1024**3
    budget = fits.estimated_memory_bytes - 1  # fp32 just does not fit; 4-bit weights do
    s = auto_configure(p, memory_budget_bytes=budget)
    assert "qlora_over_budget" in s.fired and "qlora_memory_far_over_budget" not in s.fired
    assert s.quantize and s.preset == "qlora_quality" and s.estimated_memory_bytes <= budget


def test_qlora_memory_far_over_budget(titanic):
    _, p = titanic
    big_model = 3_000_000_000
    budget = 2 * 1024**3  # 3B params: 12 GB in fp32, ~1.7 GB at 4 bits plus activations
    s = auto_configure(p, model_params=big_model, hidden_size=2048, num_layers=24, memory_budget_bytes=budget)
    assert s.fired[-2:] == ["qlora_over_budget", "qlora_memory_far_over_budget"]
    assert s.preset == "qlora_memory" and s.quantize
    assert s.batch_size < 16 and (s.estimated_memory_bytes <= budget or s.batch_size == 1)


def test_the_preset_table_is_the_lora_package_one():
    """One table: the auto-config rules pick names from the same dict the adapters are built from."""
    from lora_tasks.lora.config import PRESETS as LORA_PRESETS

    assert PRESETS is LORA_PRESETS


def test_every_rule_has_a_test_above():
    tested = {"seq_len_p99", "seq_len_p95_long_tail", "seq_len_unknown", "seq_len_model_cap", "small_data",
              "medium_data", "large_data", "huge_data", "batch_by_tokens", "imbalanced_classes",
              "skewed_target_log1p", "competition_transform", "qlora_over_budget", "qlora_memory_far_over_budget"}
    assert tested == set(RULE_NAMES)


# ---------------------------------------------------------------------------- table and settings


def test_reasons_follow_table_order(house):
    cfg, p = house
    s = auto_configure(p, competition=cfg)
    positions = [RULE_NAMES.index(name) for name in s.fired]
    assert positions == sorted(positions)
    assert all(": " in r for r in s.reasons)


def test_the_competitions_recipe_wins_over_the_rules_and_says_so(titanic):
    cfg, p = titanic
    rules_only = auto_configure(p)
    s = auto_configure(p, competition=cfg)  # competitions/titanic.toml [training]
    assert (rules_only.epochs, rules_only.top_layers) == (10, None)
    assert (s.preset, s.epochs, s.max_seq_len, s.learning_rate, s.top_layers) == ("efficient", 6, 80, 3e-3, 2)
    assert "config: epochs = 6 ([training] of titanic.toml)" in s.reasons
    assert s.fired == rules_only.fired  # the rules still ran; the recipe is not a rule
    assert s.batch_size == rules_only.batch_size  # what the recipe leaves out, the rules decide
    every = auto_configure(p, competition=replace(cfg, training={"top_layers": "all", "n_folds": 3}))
    assert (every.top_layers, every.n_folds, every.n_adapters) == (None, 3, 3)


def test_rules_markdown_has_one_row_per_rule():
    md = rules_markdown()
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| #")]
    assert len(rows) == len(RULES)
    for r in RULES:
        assert f"`{r.name}`" in md and r.effect in md


def test_memory_estimate_grows_with_batch_and_shrinks_with_quantization(titanic):
    _, p = titanic
    ctx = Context(p, 22_713_216, 8 * 1024**3, 512, 384, 6, "none")
    small, large = TrainSettings(batch_size=8, max_seq_len=128), TrainSettings(batch_size=32, max_seq_len=128)
    assert estimate_memory_bytes(ctx, small) < estimate_memory_bytes(ctx, large)
    assert estimate_memory_bytes(ctx, small, quantized=True) < estimate_memory_bytes(ctx, small)


@pytest.mark.parametrize("slug", [TITANIC, TWEETS])
def test_real_competitions_get_sane_settings(slug):
    cfg = load_competition(slug, shared_dir())
    p = profile_competition(cfg, tokenizer=tokenizer(), token_sample=500)
    s = auto_configure(p, competition=cfg)
    assert 8 <= s.max_seq_len <= 512 and s.max_seq_len % 8 == 0
    assert s.max_seq_len >= p.token_lengths.p95
    assert not s.quantize and s.n_adapters == s.n_folds >= 1
    assert "| preset |" in s.to_markdown() and s.to_dict()["reasons"] == s.reasons


def test_autoconfig_doc_lists_exactly_the_rules_in_the_code():
    from pathlib import Path

    from lora_tasks.data.autoconfig import rules_markdown

    doc = (Path(__file__).resolve().parents[1] / "docs" / "autoconfig.md").read_text()
    block = doc.split("<!-- autoconfig-rules:start -->")[1].split("<!-- autoconfig-rules:end -->")[0]
    assert block.strip() == rules_markdown().strip(), "regenerate docs/autoconfig.md's table from rules_markdown()"


def test_autoconfig_doc_lists_exactly_the_budget_ladder_in_the_code():
    from pathlib import Path

    from lora_tasks.budget import ladder_markdown

    doc = (Path(__file__).resolve().parents[1] / "docs" / "autoconfig.md").read_text()
    block = doc.split("<!-- budget-ladder:start -->")[1].split("<!-- budget-ladder:end -->")[0]
    assert block.strip() == ladder_markdown().strip(), "regenerate docs/autoconfig.md's ladder from ladder_markdown()"


def test_reasons_name_the_excluded_columns(titanic):
    _, profile = titanic
    p = replace(profile, excluded=(ExcludedColumn("Boat", "only in train.csv: not available at prediction time"),))
    s = auto_configure(p)
    assert s.reasons[0] == "excluded_column: Boat (only in train.csv: not available at prediction time)"
    assert "excluded_column" not in s.fired and s.fired == auto_configure(profile).fired
