"""Loading paths: local folders, built models, GGUF files, and the atomic disk cache."""

import pytest
import torch

import mechscope
from mechscope.models import disk_cache
from mechscope.models.loading import _smollm2_gguf, bundled_available


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
