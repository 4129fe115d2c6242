"""Edge cases of per-call attention capture and of padded / frozen / nested use."""

import copy

import pytest
import torch

import mechscope
from mechscope.analysis import logit_lens
from mechscope.hooks.attention import CaptureConfigView, capture_attention_forward
from tests.helpers import random_tokens

PATTERN_0 = "blocks.0.attn.hook_pattern"


def _noop(activation, hook):
    return None


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_static_cache_generation_is_unchanged_by_a_read_only_pattern_hook(family):
    """Static-cache prefill passes mask=None with more key slots than queries (top-left causal)."""
    model = mechscope.load_tiny(family)
    plain = model.generate("abcdefg", max_new_tokens=6, chat=False, cache_implementation="static")
    hooked = model.generate("abcdefg", max_new_tokens=6, chat=False, cache_implementation="static",
                            fwd_hooks=[(lambda n: n.endswith("hook_pattern"), _noop)])
    assert hooked == plain


def test_sliding_window_argument_is_applied_without_a_mask():
    module = torch.nn.Module()
    module.is_causal = True
    module.config = CaptureConfigView(object(), lambda t: t, lambda t: t)
    query, key = torch.randn(1, 2, 10, 4), torch.randn(1, 1, 10, 4)
    _, pattern = capture_attention_forward(module, query, key, key, None, sliding_window=3)
    last_row = pattern[0, 0, -1]
    assert torch.all(last_row[:7] == 0) and torch.allclose(last_row[7:].sum(), torch.tensor(1.0))
    assert torch.all(pattern[0, 0].triu(1) == 0)  # still causal


def test_sessions_closed_out_of_order_restore_the_real_config():
    model = mechscope.load_tiny("llama")
    attention = model.hf_model.get_submodule("model.layers.0.self_attn")
    original = attention.config
    outer = model.hooks(fwd_hooks=[(PATTERN_0, _noop)]).__enter__()
    inner = model.hooks(fwd_hooks=[(PATTERN_0, _noop)]).__enter__()
    outer.close()
    inner.close()
    assert attention.config is original


def test_model_can_be_deep_copied_inside_a_hook_context():
    model = mechscope.load_tiny("llama")
    with model.hooks(fwd_hooks=[(PATTERN_0, _noop)]):
        clone = copy.deepcopy(model.hf_model)
    tokens = random_tokens(model)
    with torch.no_grad():  # the copy carries the context's capture view: explicit attention, 1e-5
        torch.testing.assert_close(clone(tokens).logits, model.hf_model(tokens).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_left_padded_rows_match_the_prompt_run_alone(family):
    model = mechscope.load_tiny(family)
    prompt = model.to_tokens("hello world")[0]
    pad = model.tokenizer.pad_token_id
    padded = torch.cat([torch.full((3,), pad), prompt]).unsqueeze(0)
    mask = torch.cat([torch.zeros(3, dtype=torch.long), torch.ones(len(prompt), dtype=torch.long)]).unsqueeze(0)
    with torch.no_grad():
        alone = model(prompt.unsqueeze(0))
        left = model(padded, attention_mask=mask)
    torch.testing.assert_close(left[:, 3:], alone, atol=1e-5, rtol=1e-5)


def test_backward_only_resid_mid_hook_gets_the_full_gradient_with_frozen_parameters():
    model = mechscope.load_tiny("llama")
    tokens = random_tokens(model)
    name = "blocks.1.hook_resid_mid"

    def grad_norm():
        grads = []
        logits = model.run_with_hooks(tokens, bwd_hooks=[(name, lambda g, h: grads.append(g.clone()))])
        logits[:, -1, 5].sum().backward()
        model.hf_model.zero_grad(set_to_none=True)
        return grads[0]

    trainable = grad_norm()
    model.hf_model.requires_grad_(False)
    try:
        frozen = grad_norm()
    finally:
        model.hf_model.requires_grad_(True)
    torch.testing.assert_close(frozen, trainable, atol=1e-6, rtol=1e-5)


def test_analyses_of_a_padded_batch_read_each_prompt_at_its_last_real_token():
    model = mechscope.load_tiny("llama")
    short, long = "hi there", "hello there, world"
    _, batch_cache = model.run_with_cache([long, short])
    _, alone_cache = model.run_with_cache(short)
    batched = logit_lens(model, batch_cache, position=-1, batch_index=1)
    single = logit_lens(model, alone_cache, position=-1)
    torch.testing.assert_close(batched.log_probs, single.log_probs, atol=1e-4, rtol=1e-4)
