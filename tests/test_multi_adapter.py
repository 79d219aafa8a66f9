"""Several named adapters on one base: switching, trainability, save/load, equality with LoRAAdapter."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from lora_tasks.lora import AdapterLoadError
from lora_tasks.models import BertConfig
from lora_tasks.training.factory import create_bert_with_lora, create_multi_adapter_model
from lora_tasks.training.multi_adapter import MultiLoRALinear

TINY = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=32)


def _cfg() -> BertConfig:
    return BertConfig(**TINY)


def _batch(seed: int = 0, b: int = 4, s: int = 10):
    rng = np.random.default_rng(seed)
    ids = mx.array(rng.integers(5, 50, (b, s)).astype(np.int32))
    mask = np.ones((b, s), np.int32)
    mask[0, 6:] = 0
    return ids, mx.array(mask), mx.zeros((b, s), mx.int32)


def _randomize(manager, name: str, seed: int) -> None:
    """Give adapter ``name`` non-zero B factors (fresh adapters are the identity)."""
    rng = np.random.default_rng(seed)
    state = {k: mx.array(rng.normal(0, 0.2, v.shape).astype(np.float32)) for k, v in
             manager.adapter_state_dict(name).items()}
    manager.load_adapter_state_dict(name, state)


def _base_params(model) -> list[tuple[str, mx.array]]:
    """Base weights under the single-adapter model's names (``...query.linear.weight``)."""
    return [(k.replace(".linear.", "."), v) for k, v in tree_flatten(model.parameters())
            if ".adapters." not in k and not k.startswith("head.")]


def _single_like(multi_model, name, manager, seed):
    """A single-adapter model with the multi model's base weights and adapter ``name``'s weights."""
    single, adapter = create_bert_with_lora(config=_cfg(), pretrained=False, seed=seed,
                                            lora_preset=manager.configs[name])
    from mlx.utils import tree_unflatten

    base = dict(_base_params(multi_model))
    own = dict(tree_flatten(single.parameters()))
    mapped = []
    for k in own:
        plain = k.replace(".linear.", ".")
        if plain in base and "lora_" not in k and not k.startswith("head."):
            mapped.append((k, base[plain]))
    single.update(tree_unflatten(mapped))
    adapter.load_lora_state_dict(manager.adapter_state_dict(name))
    return single, adapter


def test_defaults_list_and_union_of_targets():
    model, manager = create_multi_adapter_model(config=_cfg(), pretrained=False, seed=0)
    assert manager.list_adapters() == ["task1", "task2", "ensemble"]
    assert manager.active == "task1"
    layers = manager.layers
    # expressive targets all six linears of both layers: the union is 12 wrapped layers
    assert len(layers) == 12 and all(isinstance(m, MultiLoRALinear) for m in layers.values())
    assert len(manager.adapter_layers("task1")) == 4  # query+value x 2 layers
    assert len(manager.adapter_layers("task2")) == 8
    # a layer task1 does not touch returns the base output exactly
    key = "bert.encoder.layer.0.intermediate.dense"
    x = mx.random.normal((3, 32))
    _randomize(manager, "ensemble", 1)
    assert layers[key].active is None
    assert mx.array_equal(layers[key](x), layers[key].linear(x)).item()


def test_switching_matches_single_adapter_models_exactly():
    model, manager = create_multi_adapter_model({"a": "efficient", "b": "balanced", "c": "expressive"},
                                                config=_cfg(), pretrained=False, seed=3)
    for i, name in enumerate(manager.list_adapters()):
        _randomize(manager, name, 10 + i)
    ids, mask, types = _batch()
    outs = {}
    for name in ["c", "a", "b", "a"]:
        manager.activate_adapter(name)
        outs.setdefault(name, []).append(np.array(model(ids, mask, types)))
    for name in manager.list_adapters():
        single, _ = _single_like(model, name, manager, seed=99)
        expected = np.array(single(ids, mask, types))
        for got in outs[name]:
            np.testing.assert_array_equal(got, expected)
    # the adapters really differ from each other
    assert not np.allclose(outs["a"][0], outs["b"][0])


def test_only_active_adapter_and_head_are_trainable():
    model, manager = create_multi_adapter_model({"a": "efficient", "b": "balanced"}, config=_cfg(),
                                                pretrained=False, seed=0)
    manager.activate_adapter("b")
    keys = [k for k, _ in tree_flatten(model.trainable_parameters())]
    assert keys and all(".adapters.b." in k or k.startswith("head.") for k in keys)
    assert sum(".adapters.b." in k for k in keys) == 16  # 8 layers x (A, B)
    assert model.head is manager.heads["b"] and manager.heads["a"] is not manager.heads["b"]

    # a training step changes b (and its head) only
    import mlx.nn as nn
    import mlx.optimizers as optim

    ids, mask, types = _batch()
    y = mx.array([0, 1, 1, 0])
    before_a = {k: np.array(v) for k, v in manager.adapter_state_dict("a").items()}
    before_b = {k: np.array(v) for k, v in manager.adapter_state_dict("b").items()}
    opt = optim.SGD(learning_rate=0.5)
    loss_and_grad = nn.value_and_grad(model, lambda m: m.loss(m(ids, mask, types), y))
    _, grads = loss_and_grad(model)
    opt.update(model, grads)
    mx.eval(model.parameters())
    after_a = manager.adapter_state_dict("a")
    after_b = manager.adapter_state_dict("b")
    assert all(np.array_equal(before_a[k], np.array(after_a[k])) for k in before_a)
    assert any(not np.array_equal(before_b[k], np.array(after_b[k])) for k in before_b if k.endswith("lora_b"))


def test_add_delete_and_errors():
    model, manager = create_multi_adapter_model({"a": "efficient"}, config=_cfg(), pretrained=False, seed=0)
    ids, mask, types = _batch()
    base_out = np.array(model(ids, mask, types))  # B = 0: adapter a is the identity
    manager.add_adapter("x", {"r": 2, "target_modules": ["intermediate"]})
    assert manager.active == "a" and len(manager.layers) == 6
    manager.activate_adapter("x")
    with pytest.raises(ValueError, match="already exists"):
        manager.add_adapter("x", "efficient")
    with pytest.raises(KeyError, match="No adapter named"):
        manager.activate_adapter("nope")
    manager.delete_adapter("x")
    assert manager.list_adapters() == ["a"] and manager.active == "a"
    assert len(manager.layers) == 4  # the intermediate layers are plain nn.Linear again
    np.testing.assert_array_equal(np.array(model(ids, mask, types)), base_out)
    with pytest.raises(ValueError, match="only adapter"):
        manager.delete_adapter("a")


def test_save_load_roundtrip_one_file(tmp_path):
    model, manager = create_multi_adapter_model({"a": "efficient", "b": "balanced"}, config=_cfg(),
                                                pretrained=False, seed=0)
    _randomize(manager, "a", 1)
    _randomize(manager, "b", 2)
    manager.activate_adapter("b")
    ids, mask, types = _batch()
    outs = {}
    for n in ("a", "b"):
        manager.activate_adapter(n)
        outs[n] = np.array(model(ids, mask, types))
    path = manager.save(tmp_path / "multi")
    assert path.name == "multi.safetensors" and [p.name for p in tmp_path.iterdir()] == ["multi.safetensors"]
    arrays, meta = mx.load(str(path), return_metadata=True)
    assert all(k.split("/")[0] in ("a", "b") for k in arrays) and "adapters" in meta

    # a fresh model with the same base (same seed) but only adapter "a" (random) gets both back
    model2, manager2 = create_multi_adapter_model({"a": "efficient"}, config=_cfg(), pretrained=False, seed=0)
    manager2.load(path)
    assert manager2.list_adapters() == ["a", "b"] and manager2.active == "b"
    for n in ("a", "b"):
        manager2.activate_adapter(n)
        np.testing.assert_array_equal(np.array(model2(ids, mask, types)), outs[n])

    # a config mismatch is refused with the adapter and field named
    model3, manager3 = create_multi_adapter_model({"a": "balanced"}, config=_cfg(), pretrained=False, seed=0)
    with pytest.raises(AdapterLoadError, match="adapter 'a' config r"):
        manager3.load(path)


def test_qlora_presets_are_refused_rather_than_trained_in_fp32():
    import pytest

    from lora_tasks.models import BertConfig
    from lora_tasks.training.factory import create_multi_adapter_model

    cfg = BertConfig(vocab_size=50, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=32)
    with pytest.raises(NotImplementedError, match="'qlora_memory' -> 'efficient'"):
        create_multi_adapter_model({"a": "qlora_memory"}, config=cfg, pretrained=False, seed=0)
