"""Integration tests on the bundled SmolLM2-135M-Instruct (real trained weights; run in CI)."""

import pytest
import torch

import mechscope
from mechscope.analysis import direct_logit_attribution, head_scores, logit_lens
from mechscope.hooks import interventions as iv
from mechscope.models import disk_cache

pytestmark = pytest.mark.smollm2
IOI = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def ioi(smollm2):
    tokens = smollm2.to_tokens(IOI)
    logits, cache = smollm2.run_with_cache(tokens, names=lambda name: True)
    return tokens, logits, cache


def test_loads_from_the_safetensors_cache_with_the_documented_shape(smollm2):
    assert disk_cache.is_cached("smollm2-135m-instruct")
    cfg = smollm2.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.d_model, cfg.d_head, cfg.d_mlp, cfg.d_vocab) == (
        30, 9, 3, 576, 64, 1536, 49152)
    assert cfg.family == "llama"
    reloaded = mechscope.load()  # from the cache: no GGUF dequantisation
    for (name, a), b in zip(smollm2.hf_model.state_dict().items(), reloaded.hf_model.state_dict().values()):
        assert torch.equal(a, b), name


def test_ioi_prediction_and_parity_with_plain_hf(smollm2, ioi):
    tokens, logits, _ = ioi
    with torch.no_grad():
        reference = smollm2.hf_model(tokens).logits
    default_logits, _ = smollm2.run_with_cache(tokens)
    assert torch.equal(default_logits, reference)  # default points: the HF kernels run untouched
    # Capturing all 30 layers' patterns swaps sdpa for explicit attention; HF's own eager
    # attention differs from sdpa by the same order (fp32 budget 5e-5, logits of size ~16).
    assert (logits - reference).abs().max() <= 5e-5
    top = logits[0, -1].topk(2)
    assert smollm2.to_string(top.indices[:1]) == " Mary"
    assert top.values[0] == pytest.approx(11.04, abs=0.05)


def test_identities_on_the_real_model(smollm2, ioi):
    _, logits, cache = ioi
    for layer in range(smollm2.cfg.n_layers):
        torch.testing.assert_close(cache["resid_mid", layer], cache["resid_pre", layer] + cache["attn_out", layer],
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cache["resid_post", layer], cache["resid_mid", layer] + cache["mlp_out", layer],
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cache["result", layer].sum(-2), cache["attn_out", layer], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(smollm2.unembed(cache["resid_post", 29]), logits, atol=1e-4, rtol=1e-5)


def test_every_kind_of_hook_point_is_live_on_the_real_model(smollm2):
    tokens_a = smollm2.to_tokens(IOI)
    tokens_b = smollm2.to_tokens("When Lisa and Anna went to the park, Anna gave a flower to")
    assert tokens_a.shape == tokens_b.shape
    layer = 14
    names = [n for n in smollm2.hook_names() if n.startswith(f"blocks.{layer}.")]
    _, cache_b = smollm2.run_with_cache(tokens_b, names=names)
    clean = smollm2(tokens_a)
    for name in names:
        patched = smollm2.run_with_hooks(tokens_a, fwd_hooks=[(name, iv.patch_from(cache_b))])
        assert (patched - clean).abs().max() > 1e-3, name


def test_analyses_on_ioi(smollm2, ioi):
    tokens, logits, cache = ioi
    mary, the = smollm2.to_single_token(" Mary"), smollm2.to_single_token(" the")
    lens = logit_lens(smollm2, cache)
    assert lens.labels[-1] == "final" and len(lens.labels) == 31
    assert int(lens.rank_of(mary)[-1]) == 0
    dla = direct_logit_attribution(smollm2, cache, mary, the)
    assert dla.logit_diff == pytest.approx(float(logits[0, -1, mary] - logits[0, -1, the]), abs=1e-3)
    assert float(dla.by_component.sum()) + dla.bias == pytest.approx(dla.logit_diff, abs=1e-3)
    # Name movers write " Mary" directly: the top heads by |DLA| sit in the last third of the model.
    assert all(layer >= 20 for layer, _, _ in dla.top_heads(3))


def test_head_scores_find_induction_and_previous_token_heads(smollm2):
    scores = head_scores(smollm2, seq_len=20, n_sequences=4)
    assert scores.induction.max() > 0.5   # trained models have strong induction heads
    assert scores.previous_token.max() > 0.5
    best_induction_layer = scores.ranked("induction", 1)[0][0]
    best_previous_layer = scores.ranked("previous_token", 1)[0][0]
    assert best_induction_layer > 2 and best_previous_layer >= 0


def test_generate_with_chat_template_and_steering_hook(smollm2):
    plain = smollm2.generate("What is the capital of France?", max_new_tokens=8)
    assert "Paris" in plain
    ablated = smollm2.generate("What is the capital of France?", max_new_tokens=8,
                               fwd_hooks=[("blocks.10.hook_resid_post", iv.zero_ablate())])
    assert ablated != plain


def test_every_hook_point_fires_once_with_its_documented_shape(smollm2):
    tokens = smollm2.to_tokens(["The cat sat on the mat", "A dog ran in the park"])
    batch, pos = tokens.shape
    fired = {}

    def record(activation, hook):
        fired.setdefault(hook.name, []).append(tuple(activation.shape))

    smollm2.run_with_hooks(tokens, fwd_hooks=[(lambda name: True, record)])
    assert set(fired) == set(smollm2.hook_names())
    fill = {"batch": batch, "pos": pos, "query_pos": pos, "key_pos": pos}
    for name, shapes in fired.items():
        point = smollm2.hook_point(name)
        assert shapes == [tuple(fill.get(a, s) for a, s in zip(point.axes, point.shape))], name


def test_bf16_model_caches_bit_identically_to_its_plain_forward(smollm2):
    half = mechscope.load(dtype=torch.bfloat16)
    tokens = half.to_tokens(IOI)
    with torch.no_grad():
        reference = half.hf_model(tokens).logits
    logits, cache = half.run_with_cache(tokens)
    assert logits.dtype == torch.bfloat16 and torch.equal(logits, reference)
    assert cache["resid_post", 29].dtype == torch.bfloat16
    assert half.to_string(logits[0, -1].argmax()) == " Mary"
