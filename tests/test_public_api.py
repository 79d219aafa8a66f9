"""The seed's public API, verbatim from ``lora_tasks``, and PEFT's ``target_modules`` convention."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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
    model, adapter = built
    assert built.settings.preset == "efficient" and built.head_type == "binary_classification"
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


SEED_EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "seed-examples.md"
#: What the seed leaves to the reader: a head type and a class count (its placeholders).
SEED_PLACEHOLDERS = {"task_type": "binary_classification", "num_classes": 3}


def seed_blocks() -> list[str]:
    """Every python block of the seed's examples, as written."""
    return re.findall(r"```python\n(.*?)```", SEED_EXAMPLES.read_text(), flags=re.S)


@pytest.mark.skipif(not SEED_EXAMPLES.is_file(), reason=f"the seed's examples are not at {SEED_EXAMPLES} "
                    "(../shared beside the checkout, as in CI)")
def test_the_seeds_examples_run_verbatim(tmp_path, monkeypatch, fixtures_dir):
    """The blocks read as one notebook, ``from models import`` as ``from lora_tasks import``;
    ``data/train.csv`` is a competition's train.csv alone in its folder (no sample submission, no
    test file), and ``create_kaggle_lora_model`` profiles it and unpacks to ``model, lora_adapter``."""
    blocks = seed_blocks()
    assert len(blocks) == 13, "the seed has 13 python blocks"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.csv").write_text(
        "PassengerId,Survived,Name,Age\n" + "".join(
            f"{i},{i % 2},Passenger number {i} {'likes tea' if i % 2 else 'likes coffee'},{20 + i % 7}\n"
            for i in range(1, 61)))
    monkeypatch.chdir(tmp_path)
    namespace: dict = dict(SEED_PLACEHOLDERS)
    # example 4 calls create_model_with_lora, which no block imports: the notebook has the seed's names
    exec(f"from lora_tasks import {', '.join(SEED_NAMES)}", namespace)
    for number, block in enumerate(blocks, start=1):
        code = block.replace("from models import", "from lora_tasks import")
        exec(compile(code, f"seed example {number}", "exec"), namespace)
    # example 3 gave the profiled model: the settings and their reasons ride along as an attribute
    from lora_tasks import create_kaggle_lora_model

    built = create_kaggle_lora_model(competition_type="binary_classification", data_path="data/train.csv",
                                     auto_select_preset=True)
    model, lora_adapter = built
    assert model is built.model and lora_adapter is built.adapter
    assert any(r.startswith("target: 'Survived'") for r in built.settings.reasons), built.settings.reasons
    assert (tmp_path / "lora_adapter.safetensors").is_file(), "example 6 saved the adapter"
