"""LoRAConfig: validation, scaling, presets, layer-specific overrides, (de)serialization."""

from __future__ import annotations

import math

import pytest

import lora_tasks
from lora_tasks.lora import PRESETS, LoRAConfig, get_preset
from lora_tasks.lora.config import TARGETS, as_config, path_has_prefix, target_of_path


def test_alpha_defaults_to_twice_r_and_scaling_is_alpha_over_r():
    cfg = LoRAConfig(r=8)
    assert cfg.resolved_alpha == 16.0
    assert cfg.scale == 2.0
    assert LoRAConfig(r=8, alpha=4).scale == 0.5


def test_rslora_scales_by_alpha_over_sqrt_r():
    cfg = LoRAConfig(r=16, alpha=8, use_rslora=True)
    assert cfg.scale == pytest.approx(8 / math.sqrt(16))


@pytest.mark.parametrize("r", [0, -1, 2.5, True])
def test_bad_rank_is_a_value_error_that_suggests_values(r):
    with pytest.raises(ValueError, match="positive integer"):
        LoRAConfig(r=r)


def test_unknown_target_module_names_the_valid_ones_and_the_closest():
    with pytest.raises(ValueError) as err:
        LoRAConfig(target_modules=("query", "valeu"))
    msg = str(err.value)
    assert "'valeu'" in msg and "Did you mean 'value'" in msg and "attention_output" in msg


def test_bad_dropout_and_alpha():
    with pytest.raises(ValueError, match="dropout"):
        LoRAConfig(dropout=1.0)
    with pytest.raises(ValueError, match="alpha"):
        LoRAConfig(alpha=0)


def test_aliases_normalize_and_head_target_means_train_head():
    cfg = LoRAConfig(target_modules=("q", "K", "v", "o", "head"), train_head=False)
    assert cfg.target_modules == ("query", "key", "value", "attention_output")
    assert cfg.train_head is True
    assert LoRAConfig(target_modules="value").target_modules == ("value",)
    with pytest.raises(ValueError, match="at least one LoRA target"):
        LoRAConfig(target_modules=("head",))


def test_target_paths_are_anchored_at_the_layer():
    assert target_of_path("bert.encoder.layer.3.output.dense") == "output"
    assert target_of_path("bert.encoder.layer.3.attention.output.dense") == "attention_output"
    assert target_of_path("encoder.layer.10.intermediate.dense") == "intermediate"
    assert target_of_path("bert.pooler.dense") is None
    assert target_of_path("head.classifier") is None
    assert set(TARGETS) == {"query", "key", "value", "attention_output", "intermediate", "output"}


def test_layer_prefix_matches_whole_components_only():
    assert path_has_prefix("encoder.layer.1.attention.self.query", "encoder.layer.1")
    assert not path_has_prefix("encoder.layer.11.attention.self.query", "encoder.layer.1")
    assert path_has_prefix("encoder.layer.1", "encoder.layer.1.")


def test_layer_specific_overrides_r_and_alpha_longest_prefix_wins():
    cfg = LoRAConfig(
        r=8,
        layer_specific_config={
            "bert.encoder.layer.11.attention": {"r": 16},
            "bert.encoder.layer.11.attention.self.value": {"r": 2, "alpha": 1},
            "bert.encoder.layer.0.attention": {"r": 4},
        },
    )
    assert cfg.for_layer("bert.encoder.layer.11.attention.self.query").r == 16
    assert cfg.for_layer("bert.encoder.layer.11.attention.self.query").alpha == 32  # 2r of the override
    v = cfg.for_layer("bert.encoder.layer.11.attention.self.value")
    assert (v.r, v.alpha, v.scale) == (2, 1.0, 0.5)
    assert cfg.for_layer("bert.encoder.layer.1.attention.self.query").r == 8
    # an explicit global alpha is kept when only r is overridden (PEFT's rank_pattern rule)
    fixed = LoRAConfig(r=8, alpha=8, layer_specific_config={"encoder.layer.0": {"r": 4}})
    assert fixed.for_layer("encoder.layer.0.attention.self.query").scale == 2.0


def test_layer_specific_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match="only r, alpha"):
        LoRAConfig(layer_specific_config={"encoder.layer.0": {"rank": 4}})
    with pytest.raises(ValueError, match="positive integer"):
        LoRAConfig(layer_specific_config={"encoder.layer.0": {"r": 0}})
    with pytest.raises(ValueError, match="must be a dict"):
        LoRAConfig(layer_specific_config={"encoder.layer.0": 4})


def test_presets_exactly_as_specified():
    assert set(PRESETS) == {"efficient", "balanced", "expressive", "qlora_memory", "qlora_quality"}
    eff, bal, exp = get_preset("efficient"), get_preset("balanced"), get_preset("expressive")
    assert (eff.r, eff.target_modules) == (4, ("query", "value"))
    assert (bal.r, bal.target_modules) == (8, ("query", "key", "value", "attention_output"))
    assert (exp.r, set(exp.target_modules)) == (16, set(TARGETS))
    qm, qq = get_preset("qlora_memory"), get_preset("qlora_quality")
    assert (qm.r, qm.target_modules, qm.quantize_bits) == (4, ("query", "value"), 4)
    assert (qq.r, qq.target_modules, qq.quantize_bits) == (8, bal.target_modules, 4)
    assert eff.quantize_bits is None and bal.quantize_bits is None


def test_get_preset_overrides_and_unknown_name():
    assert get_preset("balanced", dropout=0.0, use_dora=True).use_dora
    with pytest.raises(ValueError, match="Did you mean 'balanced'"):
        get_preset("balance")


def test_json_round_trip_and_as_config():
    cfg = LoRAConfig(r=4, alpha=3, target_modules=("query", "output"), use_dora=True,
                     layer_specific_config={"encoder.layer.1": {"r": 2}})
    assert LoRAConfig.from_json(cfg.to_json()) == cfg
    assert as_config("efficient") == get_preset("efficient")
    assert as_config({"r": 2, "target_modules": ["q"]}).target_modules == ("query",)
    assert as_config(None) == get_preset("balanced")
    with pytest.raises(ValueError, match="Unknown LoRAConfig fields"):
        LoRAConfig.from_dict({"rank": 4})


def test_public_names_importable_from_package():
    for name in ("LoRAConfig", "LoRAAdapter", "LoRALinear", "DoRALinear", "create_bert_with_lora",
                 "create_model_with_lora", "get_preset", "PRESETS", "export_peft", "import_peft"):
        assert getattr(lora_tasks, name) is not None
