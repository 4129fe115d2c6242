"""Model-diff amplification: cached, batched, left-padded generation equals the amplified logits
recomputed from scratch, one prompt at a time."""

import pytest
import torch

import mechscope
from mechscope.diff import AmplifyConfig, IncompatibleModelsError, amplified_generate
from mechscope.errors import ConfigError, MechscopeError
from mechscope.steering.apply import generate

PROMPTS = ["Tell me about cats", "Hi", "Why is the sky blue? Explain slowly."]  # three lengths: padding


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def pair(request):
    return (mechscope.load_tiny(request.param, chat=True), mechscope.load_tiny(request.param, seed=1, chat=True))


@torch.no_grad()
def reference_greedy(base, ft, prompt: str, alpha: float, new_tokens: int) -> str:
    """Greedy decoding of logits_ft + alpha (logits_ft - logits_base), each step a full forward of
    both models on the unpadded prompt so far (no cache, no batching)."""
    tokens, _ = ft.tokenize_prompts([prompt], chat=True)
    start = tokens.shape[1]
    for _ in range(new_tokens):
        ft_logits, base_logits = ft(tokens)[0, -1], base(tokens)[0, -1]
        token = int((ft_logits + alpha * (ft_logits - base_logits)).argmax())
        tokens = torch.cat([tokens, torch.tensor([[token]])], dim=1)
        if token == ft.tokenizer.eos_token_id:
            break
    return ft.tokenizer.decode(tokens[0, start:], skip_special_tokens=True)


@pytest.mark.parametrize("alpha", [1.5, 4.0])
def test_batched_amplified_generation_equals_the_reference_loop(pair, alpha):
    base, ft = pair
    config = AmplifyConfig(alpha=alpha, max_new_tokens=8, temperature=0, batch_size=3)
    got = amplified_generate(base, ft, PROMPTS, config, chat=True, progress=False)
    assert got == [reference_greedy(base, ft, prompt, alpha, 8) for prompt in PROMPTS]
    # Amplification changed something: the base and fine-tune differ, so alpha matters.
    plain = amplified_generate(base, ft, PROMPTS, AmplifyConfig(alpha=0, max_new_tokens=8, temperature=0),
                               chat=True, progress=False)
    assert got != plain


def test_alpha_zero_is_the_fine_tune_itself(pair):
    base, ft = pair
    config = AmplifyConfig(alpha=0, max_new_tokens=8, temperature=0)
    assert amplified_generate(base, ft, PROMPTS, config, chat=True, progress=False) == generate(
        ft, PROMPTS, max_new_tokens=8, chat=True, progress=False)


def test_sampling_is_seeded_and_leaves_the_callers_random_state_alone(pair):
    base, ft = pair
    config = AmplifyConfig(alpha=2.0, max_new_tokens=8, temperature=1.0, seed=3)
    before = torch.random.get_rng_state()
    first = amplified_generate(base, ft, PROMPTS * 3, config, chat=True, progress=False)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert amplified_generate(base, ft, PROMPTS * 3, config, chat=True, progress=False) == first
    other = amplified_generate(base, ft, PROMPTS * 3, AmplifyConfig(alpha=2.0, max_new_tokens=8, seed=4), chat=True,
                               progress=False)
    assert other != first


@pytest.mark.parametrize("field, value, message", [("alpha", -1.0, "alpha"), ("temperature", float("nan"), "temperature"),
                                                    ("max_new_tokens", 0, "max_new_tokens")])
def test_bad_settings_are_named(field, value, message):
    with pytest.raises(MechscopeError, match=message):  # NaN is a NonFiniteError
        AmplifyConfig(**{field: value})


def test_models_of_different_families_and_no_prompts_are_refused(pair):
    base, ft = pair
    other = mechscope.load_tiny("qwen2" if base.cfg.family != "qwen2" else "llama", chat=True)
    with pytest.raises(IncompatibleModelsError):
        amplified_generate(base, other, PROMPTS, progress=False)
    with pytest.raises(ConfigError, match="no prompts"):
        amplified_generate(base, ft, [], progress=False)
