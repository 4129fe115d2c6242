"""Interventions do what they say, checked with numbers: the values written, where they land,
what they change downstream (and what they leave bit-identical), gradients and generation."""

import pytest
import torch

import mechscope
from mechscope.hooks import interventions as iv
from tests.helpers import random_tokens

TOL = {"atol": 1e-5, "rtol": 1e-5}
EXACT = {"atol": 0, "rtol": 0}


def _changed(a, b):
    return (a - b).abs().max().item()


# ------------------------------------------------------------------ ablations
def test_zero_ablate_one_head_zeroes_only_that_head(tiny):
    tokens = random_tokens(tiny)
    name = "blocks.1.attn.hook_z"
    clean_logits, clean = tiny.run_with_cache(tokens, names=[name])
    logits, cache = tiny.run_with_cache(tokens, names=[name], fwd_hooks=[(name, iv.zero_ablate(heads=[1]))])
    z, z_clean = cache[name], clean[name]
    assert z_clean[:, :, 1].abs().max() > 1e-3  # the head had something to remove
    assert torch.count_nonzero(z[:, :, 1]) == 0
    for head in (0, 2, 3):
        torch.testing.assert_close(z[:, :, head], z_clean[:, :, head], **EXACT)
    assert _changed(logits, clean_logits) > 1e-4


def test_positions_restriction_changes_only_later_positions(tiny):
    tokens_a, tokens_b = random_tokens(tiny, seed=1), random_tokens(tiny, seed=2)
    name = "blocks.1.hook_resid_pre"
    clean_logits, clean = tiny.run_with_cache(tokens_a, names=[name])
    _, cache_b = tiny.run_with_cache(tokens_b, names=[name])
    logits, patched = tiny.run_with_cache(tokens_a, names=[name],
                                          fwd_hooks=[(name, iv.patch_from(cache_b, positions=[3]))])
    # the written value: B at position 3, A everywhere else
    torch.testing.assert_close(patched[name][:, 3], cache_b[name][:, 3], **EXACT)
    keep = [p for p in range(tokens_a.shape[1]) if p != 3]
    torch.testing.assert_close(patched[name][:, keep], clean[name][:, keep], **EXACT)
    # causal model: earlier positions are bit-identical, position 3 and later all change
    torch.testing.assert_close(logits[:, :3], clean_logits[:, :3], **EXACT)
    per_position = (logits - clean_logits).abs().amax(dim=(0, 2))
    assert (per_position[3:] > 1e-4).all(), per_position


def test_mean_ablate_writes_the_reference_mean(tiny):
    name = "blocks.1.hook_resid_pre"
    reference_tokens = random_tokens(tiny, batch=3, pos=7, seed=5)
    _, reference = tiny.run_with_cache(reference_tokens, names=[name])
    tokens = random_tokens(tiny, batch=2, pos=12, seed=1)
    clean_logits = tiny(tokens)

    # by hand: mean over the 3 reference prompts and their 7 positions -> one [d_model] vector
    data = reference[name]
    expected = sum(data[b, p] for b in range(3) for p in range(7)) / 21
    logits, cache = tiny.run_with_cache(tokens, names=[name], fwd_hooks=[(name, iv.mean_ablate(reference))])
    written = cache[name]
    assert written.shape == (2, 12, tiny.cfg.d_model)
    torch.testing.assert_close(written, expected.expand_as(written), **TOL)
    assert _changed(logits, clean_logits) > 1e-4

    # per-position mean over the batch, restricted to positions [1, 2]
    tokens7 = random_tokens(tiny, batch=2, pos=7, seed=1)
    _, clean7 = tiny.run_with_cache(tokens7, names=[name])
    _, cache = tiny.run_with_cache(tokens7, names=[name], fwd_hooks=[
        (name, iv.mean_ablate(reference, per_position=True, positions=[1, 2]))])
    by_hand = (data[0] + data[1] + data[2]) / 3
    torch.testing.assert_close(cache[name][:, 1:3], by_hand[1:3].expand(2, 2, -1), **TOL)
    torch.testing.assert_close(cache[name][:, [0, 3, 4, 5, 6]], clean7[name][:, [0, 3, 4, 5, 6]], **EXACT)


def test_mean_ablate_one_head_of_z(tiny_models):
    model = tiny_models["llama"]
    name = "blocks.0.attn.hook_z"
    _, reference = model.run_with_cache(random_tokens(model, batch=4, pos=6, seed=3), names=[name])
    tokens = random_tokens(model, batch=2, pos=9, seed=4)
    _, clean = model.run_with_cache(tokens, names=[name])
    _, cache = model.run_with_cache(tokens, names=[name], fwd_hooks=[(name, iv.mean_ablate(reference, heads=[2]))])
    head_mean = reference[name][:, :, 2].reshape(-1, model.cfg.d_head).mean(0)  # [d_head]
    torch.testing.assert_close(cache[name][:, :, 2], head_mean.expand(2, 9, -1), **TOL)
    torch.testing.assert_close(cache[name][:, :, [0, 1, 3]], clean[name][:, :, [0, 1, 3]], **EXACT)


def test_resample_ablate_is_seeded_and_draws_rows_of_the_source(tiny):
    name = "blocks.1.hook_resid_post"
    _, source = tiny.run_with_cache(random_tokens(tiny, batch=4, pos=8, seed=7), names=[name])
    tokens = random_tokens(tiny, batch=6, pos=8, seed=1)

    def resampled(seed):
        logits, cache = tiny.run_with_cache(tokens, names=[name],
                                            fwd_hooks=[(name, iv.resample_ablate(source, seed=seed))])
        return logits, cache[name]

    logits_0, written_0 = resampled(0)
    logits_again, written_again = resampled(0)
    torch.testing.assert_close(written_again, written_0, **EXACT)
    torch.testing.assert_close(logits_again, logits_0, **EXACT)

    donors = source[name]
    draws = []
    for seed in range(6):
        _, written = resampled(seed)
        rows = []
        for row in written:
            matches = [i for i in range(donors.shape[0]) if torch.equal(row, donors[i])]
            assert matches, "a resampled row is not a row of the source"
            rows.append(matches[0])
        draws.append(tuple(rows))
    assert len(set(draws)) > 1, "different seeds drew the same rows every time"
    assert len(set(draws[0])) > 1, "all six rows drew the same donor"


def test_add_vector_then_project_out_removes_the_direction(tiny):
    name = "blocks.1.hook_resid_post"
    tokens = random_tokens(tiny)
    direction = torch.randn(tiny.cfg.d_model, generator=torch.Generator().manual_seed(0))
    unit = direction / direction.norm()
    _, clean = tiny.run_with_cache(tokens, names=[name])
    x = clean[name]

    _, added = tiny.run_with_cache(tokens, names=[name], fwd_hooks=[(name, iv.add_vector(direction, scale=3.0))])
    torch.testing.assert_close(added[name], x + 3.0 * direction, **TOL)
    torch.testing.assert_close(added[name] @ unit, x @ unit + 3.0 * direction.norm(), **TOL)

    _, both = tiny.run_with_cache(tokens, names=[name], fwd_hooks=[
        (name, iv.add_vector(direction, scale=3.0)), (name, iv.project_out(direction))])
    assert (x @ unit).abs().max() > 0.1  # there was a component to remove
    assert (both[name] @ unit).abs().max() < 1e-5
    torch.testing.assert_close(both[name], x - (x @ unit).unsqueeze(-1) * unit, **TOL)


def test_scale_zero_equals_zero_ablate(tiny):
    tokens = random_tokens(tiny)
    clean = tiny(tokens)
    for name, kwargs in [("blocks.1.hook_mlp_out", {}), ("blocks.0.attn.hook_z", {"heads": [2]}),
                         ("blocks.1.hook_resid_pre", {"positions": [0, 5]})]:
        scaled = tiny.run_with_hooks(tokens, fwd_hooks=[(name, iv.scale(0.0, **kwargs))])
        zeroed = tiny.run_with_hooks(tokens, fwd_hooks=[(name, iv.zero_ablate(**kwargs))])
        torch.testing.assert_close(scaled, zeroed, **EXACT)
        assert _changed(zeroed, clean) > 1e-4
    halved = tiny.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_mlp_out", iv.scale(0.5))])
    assert _changed(halved, clean) > 1e-4


# ------------------------------------------------------------------ resid_mid and mlp_in
def _serial(tiny):
    if tiny.cfg.parallel_residual:
        pytest.skip("parallel-residual model has no resid_mid")
    return tiny


def test_resid_mid_write_reaches_mlp_and_skip_path(tiny):
    model = _serial(tiny)
    names = ["blocks.1.hook_resid_mid", "blocks.1.hook_mlp_in", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post"]
    tokens_a, tokens_b = random_tokens(model, seed=1), random_tokens(model, seed=2)
    clean_logits, clean = model.run_with_cache(tokens_a, names=names)
    _, source = model.run_with_cache(tokens_b, names=names)
    patched_mid = source["resid_mid", 1]
    logits, cache = model.run_with_cache(tokens_a, names=names, fwd_hooks=[
        ("blocks.1.hook_resid_mid", iv.patch_from(source))])
    torch.testing.assert_close(cache["resid_mid", 1], patched_mid, **EXACT)
    torch.testing.assert_close(cache["mlp_in", 1], patched_mid, **EXACT)
    torch.testing.assert_close(cache["resid_post", 1], patched_mid + cache["mlp_out", 1], **TOL)
    # the whole block output now is B's (everything after resid_mid only depends on it)
    torch.testing.assert_close(cache["resid_post", 1], source["resid_post", 1], **TOL)
    assert _changed(cache["resid_post", 1], clean["resid_post", 1]) > 1e-2
    assert _changed(logits, clean_logits) > 1e-4


def test_mlp_in_write_changes_only_the_mlp_branch(tiny):
    model = _serial(tiny)
    names = ["blocks.1.hook_resid_mid", "blocks.1.hook_mlp_in", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post"]
    tokens_a, tokens_b = random_tokens(model, seed=1), random_tokens(model, seed=2)
    _, clean = model.run_with_cache(tokens_a, names=names)
    _, source = model.run_with_cache(tokens_b, names=names)
    _, cache = model.run_with_cache(tokens_a, names=names, fwd_hooks=[("blocks.1.hook_mlp_in", iv.patch_from(source))])
    torch.testing.assert_close(cache["resid_mid", 1], clean["resid_mid", 1], **EXACT)
    torch.testing.assert_close(cache["mlp_in", 1], source["mlp_in", 1], **EXACT)
    torch.testing.assert_close(cache["mlp_out", 1], source["mlp_out", 1], **TOL)  # MLP saw B's input
    torch.testing.assert_close(cache["resid_post", 1], clean["resid_mid", 1] + cache["mlp_out", 1], **TOL)
    assert _changed(cache["mlp_out", 1], clean["mlp_out", 1]) > 1e-3


# ------------------------------------------------------------------ attention internals
def test_zeroing_the_pattern_zeroes_z(tiny):
    tokens = random_tokens(tiny)
    names = ["blocks.1.attn.hook_z", "blocks.2.attn.hook_z"]
    clean_logits, clean = tiny.run_with_cache(tokens, names=names)
    logits, cache = tiny.run_with_cache(tokens, names=names,
                                        fwd_hooks=[("blocks.1.attn.hook_pattern", iv.zero_ablate())])
    assert clean["z", 1].abs().max() > 1e-3
    assert torch.count_nonzero(cache["z", 1]) == 0
    assert cache["z", 2].abs().max() > 1e-3  # later layers still attend
    assert _changed(logits, clean_logits) > 1e-4


def test_scaling_one_heads_pattern_scales_its_z(tiny):
    """z is linear in the pattern: halving head 3's pattern halves head 3's z, others untouched."""
    tokens = random_tokens(tiny)
    name = "blocks.0.attn.hook_z"
    _, clean = tiny.run_with_cache(tokens, names=[name])
    _, cache = tiny.run_with_cache(tokens, names=[name], fwd_hooks=[
        ("blocks.0.attn.hook_pattern", iv.scale(0.5, heads=[3]))])
    torch.testing.assert_close(cache[name][:, :, 3], 0.5 * clean[name][:, :, 3], **TOL)
    torch.testing.assert_close(cache[name][:, :, :3], clean[name][:, :, :3], **TOL)


def test_hook_result_write_of_clean_value_reproduces_logits(tiny):
    tokens = random_tokens(tiny)
    name = "blocks.0.attn.hook_result"
    clean_logits, clean = tiny.run_with_cache(tokens, names=[name])
    assert clean[name].shape == (2, 12, tiny.cfg.n_heads, tiny.cfg.d_model)
    logits = tiny.run_with_hooks(tokens, fwd_hooks=[(name, iv.patch_from(clean))])
    torch.testing.assert_close(logits, clean_logits, **TOL)


def test_zeroing_a_heads_result_equals_zeroing_its_z(tiny):
    tokens = random_tokens(tiny)
    clean = tiny(tokens)
    by_result = tiny.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_result", iv.zero_ablate(heads=[2]))])
    by_z = tiny.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", iv.zero_ablate(heads=[2]))])
    torch.testing.assert_close(by_result, by_z, **TOL)
    assert _changed(by_z, clean) > 1e-4


# ------------------------------------------------------------------ gradients
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_embedding_gradient_matches_autograd_by_hand(family):
    model = mechscope.load_tiny(family)
    tokens = random_tokens(model)
    params = list(model.hf_model.parameters())
    assert all(p.grad is None for p in params)
    names = ["hook_embed", "blocks.0.hook_resid_post"]
    value, cache, grads = model.run_with_cache_and_grads(
        tokens, metric=lambda logits: logits[:, -1, 5].sum(), names=names)

    emb = model.hf_model.get_input_embeddings()(tokens).detach().requires_grad_()
    out = model.hf_model(inputs_embeds=emb).logits[:, -1, 5].sum()
    (by_hand,) = torch.autograd.grad(out, emb)
    torch.testing.assert_close(grads["hook_embed"], by_hand, **TOL)
    torch.testing.assert_close(value, out.detach(), **TOL)
    torch.testing.assert_close(cache["hook_embed"], emb.detach(), **EXACT)
    assert grads["hook_embed"].abs().max() > 1e-4
    # the last position's logit depends on every position through attention
    g_post = grads["blocks.0.hook_resid_post"]
    assert g_post.shape == cache["blocks.0.hook_resid_post"].shape
    assert g_post[:, -1].abs().max() > 1e-4 and g_post[:, 0].abs().max() > 1e-6
    assert not value.requires_grad
    assert all(p.grad is None for p in params)


def test_existing_parameter_gradients_are_left_as_they_were():
    """BUG: the docstring promises model .grad fields are left as they were, but value.backward()
    accumulates in place into an existing .grad tensor, which is then "restored" (same object)."""
    model = mechscope.load_tiny("llama")
    params = list(model.hf_model.parameters())
    for p in params:
        p.grad = torch.full_like(p, 7.0)
    _, _, grads = model.run_with_cache_and_grads(
        random_tokens(model), metric=lambda logits: logits[:, -1, 5].sum(), names=["hook_embed"])
    assert grads["hook_embed"].abs().max() > 1e-4
    worst = max((p.grad - 7.0).abs().max().item() for p in params)
    assert worst == 0.0, f"existing parameter gradients were changed by up to {worst:.3g}"


def test_backward_hook_fires_once_with_the_right_gradient():
    model = mechscope.load_tiny("llama")
    tokens = random_tokens(model)
    name = "blocks.1.hook_resid_post"
    seen = []
    logits = model.run_with_hooks(tokens, bwd_hooks=[(name, lambda grad, hook: seen.append((hook.name, grad.clone())))])
    assert seen == []  # nothing before backward
    logits[:, -1, 5].sum().backward()
    assert len(seen) == 1 and seen[0][0] == name
    _, _, grads = model.run_with_cache_and_grads(tokens, metric=lambda lg: lg[:, -1, 5].sum(), names=[name])
    torch.testing.assert_close(seen[0][1], grads[name], **TOL)
    assert seen[0][1].abs().max() > 1e-4
    # the hook is not left armed on later runs
    model(tokens)[:, -1, 5].sum().backward()
    assert len(seen) == 1


def test_backward_hook_can_edit_the_gradient():
    model = mechscope.load_tiny("llama")
    tokens = random_tokens(model)
    metric = lambda logits: logits[:, -1, 5].sum()
    _, _, clean = model.run_with_cache_and_grads(tokens, metric=metric, names=["hook_embed"])
    logits = model.run_with_hooks(tokens, bwd_hooks=[("blocks.1.hook_resid_post", lambda g, h: torch.zeros_like(g))])
    emb = model.hf_model.get_input_embeddings().weight
    (grad,) = torch.autograd.grad(metric(logits), emb)
    # only the path through blocks.1.hook_resid_post reaches the embedding: zeroing it kills it
    assert clean["hook_embed"].abs().max() > 1e-4
    assert grad.abs().max() == 0


# ------------------------------------------------------------------ generation
def _greedy(model, prompt, n, fwd_hooks=()):
    tokens = model.to_tokens(prompt)
    new = []
    with torch.no_grad(), model.hooks(fwd_hooks=fwd_hooks):
        for _ in range(n):
            next_id = model.forward(tokens)[0, -1].argmax()
            new.append(int(next_id))
            tokens = torch.cat([tokens, next_id.view(1, 1)], dim=1)
    return new


def _assert_generate_matches_greedy(model, prompt, n, fwd_hooks):
    ids = _greedy(model, prompt, n, fwd_hooks)
    assert model.tokenizer.eos_token_id not in ids  # generate would stop there; the loop would not
    generated = model.generate(prompt, max_new_tokens=n, chat=False, fwd_hooks=fwd_hooks)
    assert generated == model.tokenizer.decode(ids, skip_special_tokens=True)
    return ids


def test_generate_matches_a_manual_greedy_loop_with_and_without_hooks(tiny_models):
    model = tiny_models["llama"]
    plain = _assert_generate_matches_greedy(model, "ab", 4, ())
    hooked = _assert_generate_matches_greedy(model, "ab", 4, [("blocks.0.attn.hook_pattern", iv.scale(0.5))])
    assert len(plain) == len(hooked) == 4
    assert plain != hooked, "the pattern hook did not change the generation"


def test_generate_with_pattern_hooks_and_kv_cache_every_family(tiny):
    """Decoding with a KV cache runs the captured attention one query at a time (and past
    Gemma's / Mistral's sliding windows of 4 / 8 keys: 7 prompt + 8 new tokens); it must agree
    with full-sequence forwards. (Scaling every head's pattern uniformly is invisible to Gemma,
    whose post-attention norm undoes the scale, so one head is silenced instead.)"""
    plain = _greedy(tiny, "abcdef", 8)
    hooked = _assert_generate_matches_greedy(
        tiny, "abcdef", 8, [(lambda name: name.endswith("hook_pattern"), iv.zero_ablate(heads=[0]))])
    assert hooked != plain, "the pattern hooks did not change the generation"


def test_prompt_activations_reads_each_prompts_own_positions(tiny_models):
    """Negative positions count back from each prompt's last real token, never into padding,
    and equal the same prompt run alone."""
    from mechscope.analysis import prompt_activations

    model = tiny_models["llama"]
    prompts = ["hello there friend", "a b c d e f g", "x"]
    acts = prompt_activations(model, prompts, ["blocks.1.hook_resid_pre"], positions=[-1, 0], progress=False)
    assert acts["blocks.1.hook_resid_pre"].shape == (3, 2, model.cfg.d_model)
    for row, prompt in enumerate(prompts):
        _, cache = model.run_with_cache(prompt)
        alone = cache["blocks.1.hook_resid_pre"][0]
        torch.testing.assert_close(acts["blocks.1.hook_resid_pre"][row, 0], alone[-1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(acts["blocks.1.hook_resid_pre"][row, 1], alone[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(IndexError, match="out of range for prompt 2"):
        prompt_activations(model, prompts, "blocks.1.hook_resid_pre", positions=-3, progress=False)
    with pytest.raises(KeyError, match="closest valid names"):
        prompt_activations(model, prompts, "blocks.1.hook_resid_prex", progress=False)
