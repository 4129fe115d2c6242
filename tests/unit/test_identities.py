"""Identities between hook points, exact up to float error (1e-5), for every family."""

import copy

import torch
from transformers import AutoModelForCausalLM

from tests.helpers import random_tokens

TOL = dict(atol=1e-5, rtol=1e-5)


def _cache_all(model, tokens):
    return model.run_with_cache(tokens, names=lambda name: True)


def test_residual_stream_identities(tiny):
    tokens = random_tokens(tiny)
    _, cache = _cache_all(tiny, tokens)
    for layer in range(tiny.cfg.n_layers):
        pre, post = cache["resid_pre", layer], cache["resid_post", layer]
        attn, mlp = cache["attn_out", layer], cache["mlp_out", layer]
        if tiny.cfg.parallel_residual:
            torch.testing.assert_close(post, pre + attn + mlp, **TOL)
            torch.testing.assert_close(cache["mlp_in", layer], pre, **TOL)
        else:
            mid = cache["resid_mid", layer]
            torch.testing.assert_close(mid, pre + attn, **TOL)
            torch.testing.assert_close(post, mid + mlp, **TOL)
        if layer + 1 < tiny.cfg.n_layers:
            torch.testing.assert_close(cache["resid_pre", layer + 1], post, atol=0, rtol=0)
    embeds = cache["hook_embed"] + (cache["hook_pos_embed"] if "hook_pos_embed" in cache else 0)
    torch.testing.assert_close(cache["resid_pre", 0], embeds, **TOL)


def test_final_residual_through_norm_and_unembed_gives_logits(tiny):
    tokens = random_tokens(tiny)
    logits, cache = _cache_all(tiny, tokens)
    final = cache["resid_post", tiny.cfg.n_layers - 1]
    torch.testing.assert_close(tiny.unembed(final), logits, **TOL)
    torch.testing.assert_close(cache["ln_final.hook_normalized"], tiny.final_norm(final), **TOL)


def test_head_results_sum_to_attention_output_and_z_is_o_proj_input(tiny):
    tokens = random_tokens(tiny)
    seen_o_proj_inputs = {}
    handles = []
    for layer in range(tiny.cfg.n_layers):
        o_proj = tiny.hf_model.get_submodule(f"{tiny.adapter.layers}.{layer}.{tiny.adapter.o_proj}")
        handles.append(o_proj.register_forward_pre_hook(
            lambda module, args, layer=layer: seen_o_proj_inputs.__setitem__(layer, args[0].clone())))
    try:
        _, cache = _cache_all(tiny, tokens)
    finally:
        for handle in handles:
            handle.remove()
    for layer in range(tiny.cfg.n_layers):
        z = cache["z", layer]
        torch.testing.assert_close(z.flatten(-2), seen_o_proj_inputs[layer], atol=0, rtol=0)
        summed = cache["result", layer].sum(-2)
        if tiny.b_O(layer) is not None:
            summed = summed + tiny.b_O(layer)
        if tiny.adapter.attn_out != tiny.adapter.attn:  # Gemma's post-attention norm, NeoX's dropout
            post = tiny.hf_model.get_submodule(f"{tiny.adapter.layers}.{layer}.{tiny.adapter.attn_out}")
            summed = post(summed)
        torch.testing.assert_close(summed, cache["attn_out", layer], **TOL)
    stacked = cache.stack_head_results()
    assert stacked.shape == (tiny.cfg.n_layers * tiny.cfg.n_heads, *tokens.shape, tiny.cfg.d_model)


def test_patterns_match_hf_eager_attention_weights(tiny):
    """Patterns captured per layer from an sdpa model equal HF's own eager attention weights
    (covers scaling, GQA, Gemma's sliding window and q/k norms, GPT-NeoX partial rotary)."""
    tokens = random_tokens(tiny, pos=10)
    _, cache = tiny.run_with_cache(tokens, names=lambda n: n.endswith("hook_pattern"))
    config = copy.deepcopy(tiny.hf_model.config)  # from_config sets the implementation on the config
    eager = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    eager.load_state_dict(tiny.hf_model.state_dict())
    eager.eval()
    with torch.no_grad():
        reference = eager(tokens, output_attentions=True).attentions
    for layer in range(tiny.cfg.n_layers):
        pattern = cache["pattern", layer]
        torch.testing.assert_close(pattern, reference[layer], **TOL)
        torch.testing.assert_close(pattern.sum(-1), torch.ones_like(pattern.sum(-1)), **TOL)
    assert tiny.hf_model.config._attn_implementation == "sdpa"


def test_direct_logit_attribution_adds_up_to_the_logit_difference(tiny):
    tokens = random_tokens(tiny)
    logits, cache = _cache_all(tiny, tokens)
    right, wrong = torch.tensor([3, 5]), torch.tensor([7, 11])
    stack = cache.decompose_resid(pos_slice=-1)
    attributions = cache.logit_attrs(stack, right, wrong, pos_slice=-1)  # [components, batch]
    total = attributions.sum(0) + tiny.logit_bias(right, wrong)
    rows = torch.arange(tokens.shape[0])
    expected = logits[rows, -1, right] - logits[rows, -1, wrong]
    torch.testing.assert_close(total, expected, atol=1e-4, rtol=1e-4)



def test_stacked_head_results_add_up_to_each_attention_output(tiny):
    """Per-head residual writes (DLA by head) sum to hook_attn_out, also through Gemma's
    post-attention norm, which stack_head_results linearises."""
    tokens = random_tokens(tiny)
    _, cache = tiny.run_with_cache(tokens)
    heads = cache.stack_head_results().unflatten(0, (tiny.cfg.n_layers, tiny.cfg.n_heads))
    for layer in range(tiny.cfg.n_layers):
        summed = heads[layer].sum(0)
        bias = tiny.b_O(layer)
        if bias is not None and not tiny.adapter.attn_out_is_norm:
            summed = summed + bias
        torch.testing.assert_close(summed, cache["attn_out", layer], **TOL)
