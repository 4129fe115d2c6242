"""Parity with the plain HF forward, and hygiene: hooks leave the model exactly as found."""

import pytest
import torch

from tests.helpers import random_tokens


def _hook_state(module_tree):
    return {
        name: (dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks),
               dict(m._forward_hooks_with_kwargs), dict(m._forward_pre_hooks_with_kwargs),
               m.__dict__.get("config"))
        for name, m in module_tree.named_modules()
    }


def test_cached_run_matches_plain_hf_forward(tiny):
    tokens = random_tokens(tiny)
    with torch.no_grad():
        reference = tiny.hf_model(tokens).logits
    logits_default, _ = tiny.run_with_cache(tokens)
    assert torch.equal(logits_default, reference)  # no opt-in points: nothing recomputed
    logits_all, _ = tiny.run_with_cache(tokens, names=lambda name: True)
    assert (logits_all - reference).abs().max() <= 1e-5


def test_noop_hooks_leave_logits_bit_identical(tiny):
    tokens = random_tokens(tiny)
    with torch.no_grad():
        reference = tiny.hf_model(tokens).logits
        hooked = tiny.run_with_hooks(tokens, fwd_hooks=[(n, lambda a, h: None) for n in tiny.hook_names(False)])
    assert torch.equal(hooked, reference)


def test_hooks_are_removed_after_runs_contexts_and_exceptions(tiny):
    before = _hook_state(tiny.hf_model)
    tokens = random_tokens(tiny)
    tiny.run_with_cache(tokens, names=lambda name: True)
    assert _hook_state(tiny.hf_model) == before

    def explode(activation, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        tiny.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_pattern", explode)])
    assert _hook_state(tiny.hf_model) == before
    with pytest.raises(RuntimeError, match="boom"), tiny.hooks(fwd_hooks=[("blocks.0.hook_resid_post", explode)]):
        tiny(tokens)
    assert _hook_state(tiny.hf_model) == before


def test_hooks_registered_by_others_are_kept_and_still_fire(tiny):
    calls = []
    embed = tiny.hf_model.get_submodule(tiny.adapter.embed)
    handle = embed.register_forward_hook(lambda module, args, output: calls.append(1))
    try:
        tiny.run_with_cache(random_tokens(tiny), names=lambda name: True)
        assert calls == [1]
        assert handle.id in embed._forward_hooks
    finally:
        handle.remove()


def test_nested_hook_contexts_compose(tiny):
    tokens = random_tokens(tiny)
    seen = []
    with tiny.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", lambda a, h: seen.append("outer"))]):
        with tiny.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", lambda a, h: seen.append("inner"))]):
            tiny(tokens)
        tiny(tokens)
    tiny(tokens)
    assert seen == ["outer", "inner", "outer"]


def test_cache_holds_the_model_tensors_without_copies_and_can_move_them(tiny):
    tokens = random_tokens(tiny)
    o_proj_inputs = []
    o_proj = tiny.hf_model.get_submodule(f"{tiny.adapter.layers}.0.{tiny.adapter.o_proj}")
    handle = o_proj.register_forward_pre_hook(lambda module, args: o_proj_inputs.append(args[0]))
    try:
        _, cache = tiny.run_with_cache(tokens)
    finally:
        handle.remove()
    # resid_post of block 0 is the very tensor block 1 receives: one storage, not two
    assert cache["resid_post", 0].data_ptr() == cache["resid_pre", 1].data_ptr()
    # z is a per-head view of o_proj's own input, not a reshaped copy
    assert cache["z", 0].data_ptr() == o_proj_inputs[0].data_ptr()
    _, moved = tiny.run_with_cache(tokens, device="meta")
    assert moved["resid_post", 0].device.type == "meta"
    assert moved["resid_post", 0].shape == cache["resid_post", 0].shape
