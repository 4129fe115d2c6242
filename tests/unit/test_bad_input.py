"""Bad input gives a clear error that names the problem, never a silent wrong answer or a
deep stack trace from inside transformers."""

import re

import pytest
import torch

import mechscope
from mechscope.hooks import interventions as iv
from tests.helpers import random_tokens

TYPO = "blocks.0.hook_resid_psot"
MEANT = "blocks.0.hook_resid_post"


def _no_hooks_left(model):
    return all(
        not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks)
        and not isinstance(m.__dict__.get("config"), mechscope.hooks.attention.CaptureConfigView)
        for m in model.hf_model.modules()
    )


@pytest.fixture(scope="module")
def llama():
    return mechscope.load_tiny("llama")


# ------------------------------------------------------------------ hook names
def test_unknown_hook_name_suggests_the_close_match(tiny):
    tokens = random_tokens(tiny)
    with pytest.raises(KeyError, match=r"unknown hook point 'blocks\.0\.hook_resid_psot'.*"
                                       + re.escape(MEANT)):
        tiny.run_with_hooks(tokens, fwd_hooks=[(TYPO, lambda a, h: None)])
    with pytest.raises(KeyError, match=re.escape(MEANT)):
        tiny.run_with_hooks(tokens, bwd_hooks=[(TYPO, lambda a, h: None)])
    with pytest.raises(KeyError, match=re.escape(MEANT)):
        tiny.run_with_cache(tokens, names=["hook_embed", TYPO])
    with pytest.raises(KeyError, match=re.escape(MEANT)):
        tiny.run_with_cache(tokens, names=TYPO)
    with pytest.raises(KeyError, match=re.escape(MEANT)):
        tiny.hook_point(TYPO)
    assert _no_hooks_left(tiny)


def test_cache_lookup_of_a_typo_suggests_the_close_match(llama):
    _, cache = llama.run_with_cache(random_tokens(llama), names=[MEANT])
    assert cache[MEANT].shape == (2, 12, 64)
    with pytest.raises(KeyError, match=re.escape(MEANT)):
        cache[TYPO]
    with pytest.raises(KeyError, match=re.escape(MEANT)):
        cache[("resid_psot", 0)]
    # a valid name that simply was not cached says so, and says how to get it
    with pytest.raises(KeyError, match=r"valid hook point but was not cached.*names="):
        cache["blocks.1.hook_resid_post"]


def test_layer_out_of_range_names_the_number_of_layers(tiny):
    n = tiny.cfg.n_layers
    message = rf"layer 99 .*out of range.*has {n} layers \(0\.\.{n - 1}\)"
    with pytest.raises(KeyError, match=message):
        tiny.run_with_hooks(random_tokens(tiny), fwd_hooks=[("blocks.99.hook_resid_pre", lambda a, h: None)])
    with pytest.raises(KeyError, match=message):
        tiny.run_with_cache(random_tokens(tiny), names=["blocks.99.hook_resid_pre"])
    _, cache = tiny.run_with_cache(random_tokens(tiny), names=["blocks.0.hook_resid_pre"])
    with pytest.raises(KeyError, match=message):
        cache["resid_pre", 99]
    with pytest.raises(KeyError, match=r"layer -1 .*out of range"):
        cache["resid_pre", -1]


def test_resid_mid_on_parallel_residual_model_explains_why_it_is_missing(tiny_models):
    neox = tiny_models["gpt_neox"]
    assert neox.cfg.parallel_residual
    assert not any(name.endswith("hook_resid_mid") for name in neox.hook_names())
    explanation = r"'blocks\.1\.hook_resid_mid' does not exist.*parallel.*hook_resid_pre"
    with pytest.raises(KeyError, match=explanation):
        neox.run_with_hooks(random_tokens(neox), fwd_hooks=[("blocks.1.hook_resid_mid", lambda a, h: None)])
    _, cache = neox.run_with_cache(random_tokens(neox))
    with pytest.raises(KeyError, match=explanation):
        cache["resid_mid", 1]
    # and the serial models do have it
    assert "blocks.1.hook_resid_mid" in tiny_models["llama"].hook_names()


def test_hook_filter_matching_nothing_is_a_value_error(llama):
    tokens = random_tokens(llama)
    nothing = lambda name: name.endswith("hook_resid_psot")
    with pytest.raises(ValueError, match="matched no hook point"):
        llama.run_with_hooks(tokens, fwd_hooks=[(nothing, lambda a, h: None)])
    with pytest.raises(ValueError, match="matched no hook point"):
        llama.run_with_hooks(tokens, bwd_hooks=[(nothing, lambda a, h: None)])
    with pytest.raises(ValueError, match="matched no hook point"):
        llama.hooks(fwd_hooks=[(nothing, lambda a, h: None)])
    with pytest.raises(ValueError, match="matched no hook point"):
        llama.run_with_cache(tokens, fwd_hooks=[(nothing, lambda a, h: None)])


def test_cache_filter_matching_nothing_is_a_value_error(llama):
    """BUG: run_with_cache(names=filter) with a filter that selects no hook point silently
    returns an empty cache, unlike run_with_hooks which raises. The typo only surfaces later."""
    tokens = random_tokens(llama)
    nothing = lambda name: name.endswith("hook_resid_psot")
    with pytest.raises(ValueError, match="matched no hook point"):
        llama.run_with_cache(tokens, names=nothing)
    with pytest.raises(ValueError, match="matched no hook point"):
        llama.run_with_cache_and_grads(tokens, metric=lambda logits: logits[:, -1, 5].sum(), names=nothing)


def test_malformed_hook_specs_are_type_errors(llama):
    tokens = random_tokens(llama)
    with pytest.raises(TypeError, match=r"\(name_or_filter, fn\) pair"):
        llama.run_with_hooks(tokens, fwd_hooks=[MEANT])
    with pytest.raises(TypeError, match="not callable"):
        llama.run_with_hooks(tokens, fwd_hooks=[(MEANT, "zero")])


# ------------------------------------------------------------------ hook return values
@pytest.mark.parametrize("name", ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z", "blocks.1.attn.hook_pattern"])
def test_hook_returning_wrong_shape_names_hook_and_both_shapes(tiny, name):
    tokens = random_tokens(tiny, batch=2, pos=12)
    seen = {}

    def record(activation, hook):
        seen["shape"] = tuple(activation.shape)

    tiny.run_with_hooks(tokens, fwd_hooks=[(name, record)])
    good, bad = seen["shape"], (seen["shape"][0], *seen["shape"][1:-1], seen["shape"][-1] - 1)
    with pytest.raises(ValueError) as info:
        tiny.run_with_hooks(tokens, fwd_hooks=[(name, lambda a, h: a[..., :-1])])
    message = str(info.value)
    assert name in message and str(bad) in message and str(good) in message
    assert _no_hooks_left(tiny)


def test_hook_returning_a_non_tensor_is_a_type_error(tiny):
    tokens = random_tokens(tiny)
    for name, returned in [("blocks.0.hook_resid_post", 1.0), ("blocks.0.attn.hook_z", [0]),
                           ("blocks.0.attn.hook_pattern", "pattern")]:
        with pytest.raises(TypeError, match=re.escape(name) + ".*returned " + type(returned).__name__):
            tiny.run_with_hooks(tokens, fwd_hooks=[(name, lambda a, h, r=returned: r)])
    assert _no_hooks_left(tiny)


def test_backward_hook_returning_wrong_shape_is_a_value_error(llama):
    tokens = random_tokens(llama)
    logits = llama.run_with_hooks(tokens, bwd_hooks=[("blocks.1.hook_resid_post", lambda g, h: g[:, :-1])])
    embedding = llama.hf_model.get_input_embeddings().weight
    with pytest.raises(ValueError, match=r"blocks\.1\.hook_resid_post.*\(2, 11, 64\).*\(2, 12, 64\)"):
        # autograd.grad, not .backward(): the shared model's parameter .grad stay untouched
        torch.autograd.grad(logits[:, -1, 5].sum(), embedding)


# ------------------------------------------------------------------ inputs
def test_empty_string_is_just_bos_and_empty_without_bos_is_an_error(llama):
    bos = llama.tokenizer.bos_token_id
    assert llama.to_tokens("").tolist() == [[bos]]
    logits = llama("")
    assert logits.shape == (1, 1, llama.cfg.d_vocab)
    torch.testing.assert_close(logits, llama(torch.tensor([[bos]])), atol=0, rtol=0)
    with pytest.raises(ValueError, match="zero tokens"):
        llama.to_tokens("", prepend_bos=False)
    with pytest.raises(ValueError, match=r"prompt\(s\) \[1\] tokenize to zero tokens"):
        llama.to_tokens(["ab", ""], prepend_bos=False)


def test_empty_list_and_empty_tensor_are_value_errors(llama):
    with pytest.raises(ValueError, match="input is empty"):
        llama([])
    with pytest.raises(ValueError, match="input is empty"):
        llama.run_with_cache([])
    with pytest.raises(ValueError, match=r"input is empty.*\(1, 0\)"):
        llama(torch.empty(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="input is empty"):
        llama.run_with_hooks(torch.empty(0, dtype=torch.long))


def test_wrong_kind_of_input_is_reported(llama):
    with pytest.raises(TypeError, match="integer"):
        llama(torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"\[batch, pos\]"):
        llama(torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="prompt 1 is a int"):
        llama(["ab", 3])
    with pytest.raises(ValueError, match="attention_mask shape"):
        llama(torch.zeros(2, 4, dtype=torch.long), attention_mask=torch.ones(2, 5, dtype=torch.long))


def test_unequal_prompts_without_pad_token_name_the_pad_token():
    model = mechscope.load_tiny("llama", with_pad_token=False)
    assert model.tokenizer.pad_token_id is None
    with pytest.raises(ValueError, match=r"different token lengths \[3, 5\].*no pad token"):
        model(["ab", "abcd"])
    with pytest.raises(ValueError, match="pad token"):
        model.run_with_cache(["ab", "abcd"])
    logits = model(["ab", "cd"])  # equal lengths need no padding
    assert logits.shape == (2, 3, model.cfg.d_vocab)
    torch.testing.assert_close(logits[1:], model("cd"), atol=1e-5, rtol=1e-5)


def test_token_ids_outside_the_vocabulary_are_value_errors(tiny):
    vocab = tiny.cfg.d_vocab
    with pytest.raises(ValueError, match=rf"\[0, {vocab}\).*{vocab}"):
        tiny(torch.tensor([[1, 2, vocab]]))
    with pytest.raises(ValueError, match=rf"\[0, {vocab}\)"):
        tiny.run_with_cache(torch.tensor([[1, -1, 3]]))
    assert tiny(torch.tensor([[1, 2, vocab - 1]])).shape == (1, 3, vocab)


# ------------------------------------------------------------------ interventions
def test_intervention_index_errors(tiny):
    tokens = random_tokens(tiny, pos=12)
    assert tiny.cfg.n_heads == 4
    with pytest.raises(IndexError, match=r"heads \[7\] out of range.*hook_z.*size 4"):
        tiny.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", iv.zero_ablate(heads=[7]))])
    with pytest.raises(IndexError, match=r"heads \[-5\] out of range"):
        tiny.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", iv.zero_ablate(heads=[-5]))])
    with pytest.raises(IndexError, match=r"positions \[12\] out of range.*size 12"):
        tiny.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_post", iv.zero_ablate(positions=[12]))])
    with pytest.raises(IndexError, match=r"positions \[0, 20\] out of range"):
        tiny.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_pattern", iv.scale(2.0, positions=[0, 20]))])
    with pytest.raises(ValueError, match=r"hook_resid_post.*no head axis"):
        tiny.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_post", iv.zero_ablate(heads=[0]))])
    assert _no_hooks_left(tiny)


def test_kv_head_index_is_checked_against_the_kv_heads(tiny_models):
    llama = tiny_models["llama"]
    assert llama.cfg.n_kv_heads == 2
    with pytest.raises(IndexError, match=r"heads \[2\] out of range.*hook_k.*size 2"):
        llama.run_with_hooks(random_tokens(llama), fwd_hooks=[("blocks.0.attn.hook_k", iv.zero_ablate(heads=[2]))])


def test_vector_of_wrong_size_is_a_value_error(llama):
    tokens = random_tokens(llama)
    with pytest.raises(ValueError, match=r"size 63.*hook_resid_post.*64"):
        llama.run_with_hooks(tokens, fwd_hooks=[(MEANT, iv.add_vector(torch.ones(63)))])
    with pytest.raises(ValueError, match=r"size 65.*hook_resid_post.*64"):
        llama.run_with_hooks(tokens, fwd_hooks=[(MEANT, iv.project_out(torch.ones(65)))])


def test_non_scalar_metric_is_a_value_error_and_leaves_no_hooks(llama):
    tokens = random_tokens(llama)
    with pytest.raises(ValueError, match=r"metric must return a scalar, got shape \(2,\)"):
        llama.run_with_cache_and_grads(tokens, metric=lambda logits: logits[:, -1, 5], names=[MEANT])
    assert _no_hooks_left(llama)
    assert all(p.grad is None for p in llama.hf_model.parameters())


def test_chat_generation_without_a_chat_template_is_a_value_error(tiny):
    assert getattr(tiny.tokenizer, "chat_template", None) is None
    with pytest.raises(ValueError, match="no chat template"):
        tiny.generate("ab", max_new_tokens=2, chat=True)


# ------------------------------------------------------------------ loading
def test_loading_errors(tiny_models):
    with pytest.raises(FileNotFoundError, match=r"/nonexistent/file\.gguf"):
        mechscope.load("/nonexistent/file.gguf")
    with pytest.raises(ValueError, match="tokenizer"):
        mechscope.load(tiny_models["llama"].hf_model)
    with pytest.raises(ValueError, match="unknown family 'bert'") as info:
        mechscope.load_tiny("bert")
    for family in mechscope.SUPPORTED_FAMILIES:
        assert family in str(info.value)
