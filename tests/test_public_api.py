"""The seed's public API, verbatim from ``lora_tasks``, and PEFT's ``target_modules`` convention."""

from __future__ import annotations

import subprocess
import sys

import pytest

SEED_NAMES = ("create_bert_with_lora", "create_qlora_model", "create_kaggle_lora_model", "LoRAConfig",
              "create_model_with_lora", "create_multi_adapter_model")
TINY = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=32)


def test_every_seed_name_imports_from_the_package_and_the_import_stays_cheap():
    code = (
        "import sys\n"
        "import lora_tasks\n"
        "assert 'mlx.core' not in sys.modules, 'import lora_tasks loaded MLX'\n"
        f"from lora_tasks import {', '.join(SEED_NAMES)}\n"
        f"for f in ({', '.join(SEED_NAMES)}):\n"
        "    assert callable(f), f\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("ok")


def test_dense_adapts_every_dense_layer_of_each_block():
    from lora_tasks import LoRAConfig, create_model_with_lora
    from lora_tasks.models import BertConfig

    config = LoRAConfig(r=4, alpha=8, dropout=0.0, target_modules={"query", "key", "value", "dense"})
    assert config.target_modules == ("query", "key", "value", "attention_output", "intermediate", "output")
    model, adapter = create_model_with_lora("bert_with_head", config, config=BertConfig(**TINY), pretrained=False,
                                            seed=0)
    suffixes = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                "intermediate.dense", "output.dense")
    for layer in range(TINY["num_hidden_layers"]):
        got = sorted(p.split(f"encoder.layer.{layer}.", 1)[1] for p in adapter.layers if f".layer.{layer}." in p)
        assert got == sorted(suffixes)
    # every linear of each block, and nothing outside the blocks (the pooler is not adapted)
    assert len(adapter.layers) == 6 * TINY["num_hidden_layers"]
    assert all(".encoder.layer." in p or p.startswith("encoder.layer.") for p in adapter.layers)


def test_suffixes_follow_peft_in_both_namings():
    from lora_tasks import LoRAConfig

    assert LoRAConfig(target_modules=["self.query"]).target_modules == ("query",)
    assert LoRAConfig(target_modules=["Wqkv"]).target_modules == ("query", "key", "value")
    assert LoRAConfig(target_modules=["attn.Wo"]).target_modules == ("attention_output",)
    assert LoRAConfig(target_modules=["intermediate.dense"]).target_modules == ("intermediate",)


@pytest.mark.parametrize(("typo", "hint"), [("qurey", "query"), ("dens", "dense"), ("vaule", "value")])
def test_typos_still_get_did_you_mean(typo, hint):
    from lora_tasks import LoRAConfig

    with pytest.raises(ValueError, match=rf"Unknown LoRA target module '{typo}'\. Did you mean '{hint}'\?"):
        LoRAConfig(target_modules=["query", typo])


def test_create_kaggle_lora_model_from_the_package_builds_a_model_for_a_task():
    import mlx.core as mx

    from lora_tasks import create_kaggle_lora_model

    built = create_kaggle_lora_model("binary", tiny=True, preset="efficient", auto_select_preset=False)
    model, adapter, settings = built
    assert settings.preset == "efficient" and built.head_type == "binary_classification"
    assert adapter.config.target_modules == ("query", "value")
    ids = mx.array([[101, 2023, 102]])
    logits = model(ids, mx.ones_like(ids), mx.zeros_like(ids))
    assert logits.shape[0] == 1


def test_create_multi_adapter_model_from_the_package_gives_each_adapter_its_head():
    from lora_tasks import create_multi_adapter_model
    from lora_tasks.models import BertConfig

    model, manager = create_multi_adapter_model({"a": "efficient", "b": "balanced"}, config=BertConfig(**TINY),
                                                pretrained=False, seed=0)
    assert manager.list_adapters() == ["a", "b"]
    assert manager.heads["a"] is not manager.heads["b"]
    manager.activate_adapter("b")
    assert model["head"] is manager.heads["b"]


def test_building_a_model_does_not_load_the_data_stack():
    """create_bert_with_lora users do not pay for pandas and scikit-learn (only create_kaggle_lora_model does)."""
    code = (
        "import sys\n"
        "from lora_tasks import create_bert_with_lora, create_qlora_model, create_multi_adapter_model\n"
        "import lora_tasks.training.train\n"
        "print(sorted(m for m in ('pandas', 'sklearn', 'prefect') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
