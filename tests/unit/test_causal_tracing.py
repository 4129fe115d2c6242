"""Causal tracing: batched restores equal one-at-a-time restores; known boundary values."""

import pytest
import torch

import mechscope
from mechscope.hooks import interventions as iv
from mechscope.patching import causal_trace, subject_positions

PROMPT, SUBJECT = "the cat sat on a mat", "cat"


@pytest.fixture(scope="module")
def model():
    return mechscope.load_tiny("llama")


def test_subject_positions_follow_character_offsets(model):
    positions = subject_positions(model, PROMPT, SUBJECT)
    tokens = model.to_str_tokens(PROMPT)
    assert "".join(tokens[p] for p in positions) == "cat"
    with pytest.raises(ValueError, match="does not occur"):
        subject_positions(model, PROMPT, "dog")


@pytest.mark.parametrize("kind,window", [("resid", 1), ("mlp", 3), ("attn", 2)])
def test_batched_trace_equals_single_restores(model, kind, window):
    result = causal_trace(model, PROMPT, SUBJECT, kind=kind, window=window, samples=3, units_per_forward=5,
                          progress=False)
    tokens = model.to_tokens(PROMPT)
    noise_positions = result.info["noised_positions"]
    scale = result.info["noise_scale"]
    noise = torch.randn(3, len(noise_positions), model.cfg.d_model, generator=torch.Generator().manual_seed(0)) * scale
    answer = result.info["answer_id"]
    hook_suffix = {"resid": "hook_resid_post", "attn": "hook_attn_out", "mlp": "hook_mlp_out"}[kind]
    _, clean = model.run_with_cache(tokens, names=lambda n: n.endswith(hook_suffix))

    def add_noise(activation, hook):
        noised = activation.clone()
        noised[:, noise_positions] += noise
        return noised

    for layer, position in [(0, 4), (1, 2), (2, 6)]:
        restored = range(max(0, layer - window // 2), min(model.cfg.n_layers, layer - (-window // 2)))
        hooks = [("hook_embed", add_noise)] + [
            (f"blocks.{r}.{hook_suffix}", iv.patch_from(clean[f"blocks.{r}.{hook_suffix}"].expand(3, -1, -1),
                                                         positions=[position])) for r in restored]
        logits = model.run_with_hooks(tokens.repeat(3, 1), fwd_hooks=hooks)
        expected = logits[:, -1].softmax(-1)[:, answer].mean().item()
        assert result.raw[layer, position].item() == pytest.approx(expected, abs=1e-5)


def test_boundary_values(model):
    result = causal_trace(model, PROMPT, SUBJECT, samples=4, progress=False)
    first_noised = min(result.info["noised_positions"])
    # states before the subject are identical in both runs: restoring them changes nothing
    assert torch.allclose(result.raw[:, :first_noised], torch.tensor(result.corrupted_value), atol=1e-6)
    # the last block's output at the last position fixes the prediction completely
    assert result.scores[-1, -1].item() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="kind must be"):
        causal_trace(model, PROMPT, SUBJECT, kind="heads", progress=False)


def test_default_noise_scale_follows_the_embeddings_that_are_noised():
    """Gemma scales embeddings by sqrt(d_model) inside the embedding module: the noise must be
    3x the std of hook_embed, not of the weight matrix."""
    gemma = mechscope.load_tiny("gemma3")
    result = causal_trace(gemma, PROMPT, SUBJECT, samples=2, progress=False)
    _, cache = gemma.run_with_cache(PROMPT, names=["hook_embed"])
    assert result.info["noise_scale"] == pytest.approx(3 * cache["hook_embed"].std().item(), rel=1e-5)


def test_window_is_cut_off_at_the_model_ends():
    from mechscope.patching.tracing import _window

    assert list(_window(0, 10, 30)) == [0, 1, 2, 3, 4]
    assert list(_window(15, 10, 30)) == list(range(10, 20))
    assert list(_window(29, 10, 30)) == list(range(24, 30))
    assert list(_window(5, 1, 30)) == [5]
