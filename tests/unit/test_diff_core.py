"""Model diffing core: compatibility checks, weight diffs, the activation-difference lens and
per-token KL, each against a fine-tune with a planted, known change."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F

import mechscope
from mechscope.diff.compat import IncompatibleModelsError, check_comparable
from mechscope.diff.lens import (
    DifferenceMeans,
    ResidPostSteering,
    difference_lens,
    difference_means,
    read_difference,
    steer_with_difference,
)
from mechscope.diff.token_kl import per_token_kl
from mechscope.diff.weights import weight_diff
from mechscope.errors import ConfigError, MechscopeError, OutOfRangeError
from mechscope.hooks import names
from mechscope.models.hooked_model import HookedModel
from mechscope.models.tiny import _tiny_config, byte_tokenizer
from mechscope.steering.apply import generate
from mechscope.steering.direction import Direction
from tests.helpers import random_tokens

TEXTS = ["The cat sat on the mat.", "Hi", "def f(x):\n    return x + 1"]


def fine_tune(model: HookedModel, edit=None, name: str = "ft") -> HookedModel:
    """A copy of ``model`` with ``edit(hf_model)`` applied to its weights: a fine-tune whose change
    is known exactly."""
    hf_model = copy.deepcopy(model.hf_model)
    if edit is not None:
        with torch.no_grad():
            edit(hf_model)
    return HookedModel(hf_model, model.tokenizer, name=name)


def unit(n: int, seed: int) -> torch.Tensor:
    vector = torch.randn(n, generator=torch.Generator().manual_seed(seed))
    return vector / vector.norm()


@pytest.fixture(scope="module")
def gpt2():
    return mechscope.load_tiny("gpt2")


@pytest.fixture(scope="module")
def llama():
    return mechscope.load_tiny("llama")


@pytest.fixture(scope="module")
def rank_one(llama):
    """(fine-tune, u [d_model], v [d_mlp], scale): layer 1's down_proj weight plus scale * u v^T."""
    u, v, scale = unit(llama.cfg.d_model, 1), unit(llama.cfg.d_mlp, 2), 0.5

    def edit(hf_model):
        hf_model.model.layers[1].mlp.down_proj.weight += scale * torch.outer(u, v)

    return fine_tune(llama, edit), u, v, scale


def bias_fine_tune(gpt2, layer: int, vector: torch.Tensor) -> HookedModel:
    def edit(hf_model):
        hf_model.transformer.h[layer].mlp.c_proj.bias += vector

    return fine_tune(gpt2, edit)


# ------------------------------------------------------------------ compatibility
def test_models_of_different_families_cannot_be_diffed(llama, gpt2):
    check_comparable(llama, fine_tune(llama))  # a copy is comparable
    with pytest.raises(IncompatibleModelsError, match="architectures differ: LlamaConfig") as info:
        check_comparable(llama, gpt2)
    message = str(info.value)
    assert "'tiny-llama'" in message and "'tiny-gpt2'" in message and "fine-tune of the same base" in message


def test_a_different_depth_is_named(llama):
    from transformers import AutoModelForCausalLM

    config = _tiny_config("llama")
    config.num_hidden_layers = 2
    shallow = HookedModel(AutoModelForCausalLM.from_config(config), llama.tokenizer, name="shallow")
    with pytest.raises(IncompatibleModelsError, match="dimensions differ: n_layers 3 vs 2"):
        check_comparable(llama, shallow)


def test_a_tokenizer_with_an_extra_token_cannot_be_diffed(llama):
    tokenizer = byte_tokenizer()
    tokenizer.add_tokens(["<extra>"])
    other = HookedModel(copy.deepcopy(llama.hf_model), tokenizer, name="retokenized")
    with pytest.raises(IncompatibleModelsError, match=r"tokenizers differ: .*259 tokens.*260.*1 only in the "
                                                      r"fine-tune's \('<extra>'\)"):
        check_comparable(llama, other)
    with pytest.raises(IncompatibleModelsError, match="only in the base's"):
        check_comparable(other, llama)


# ------------------------------------------------------------------ weights
def test_weight_diff_finds_a_planted_rank_one_change(llama, rank_one):
    ft, u, v, scale = rank_one
    diff = weight_diff(llama, ft, progress=False)
    ranked = diff.modules_ranked()
    assert ranked[0].name == "model.layers.1.mlp.down_proj" and ranked[0].layer == 1
    assert ranked[0].relative > 0 and ranked[0].delta_norm == pytest.approx(scale, rel=1e-4)
    assert all(group.delta_norm == 0.0 for group in ranked[1:])
    change = diff.parameter("model.layers.1.mlp.down_proj.weight")
    assert change.role == "mlp.down_proj.weight" and change.shape == (llama.cfg.d_model, llama.cfg.d_mlp)
    assert change.singular_values[0] == pytest.approx(scale, rel=1e-4) and change.singular_values[1] < 1e-5
    assert change.top_fraction == pytest.approx(1.0, abs=1e-5)
    assert abs(float(change.left[0] @ u)) > 0.99 and abs(float(change.right[0] @ v)) > 0.99
    assert change.relative == pytest.approx(scale / float(llama.hf_model.model.layers[1].mlp.down_proj.weight.detach().norm()))
    assert [group.delta_norm > 0 for group in diff.by_layer] == [False, True, False]
    assert diff.total.delta_norm == pytest.approx(scale, rel=1e-4)
    assert diff.embedding_rows == () and diff.unembedding_rows == () and not diff.tied
    encoded = json.loads(json.dumps(diff.to_json()))
    assert encoded["parameters"][0]["name"] == "model.layers.1.mlp.down_proj.weight"
    assert encoded["modules"][0]["name"] == "model.layers.1.mlp.down_proj"
    with pytest.raises(ConfigError, match="by must be one of: relative, absolute"):
        diff.modules_ranked(by="size")


def test_weight_diff_of_identical_models_is_zero_everywhere(llama):
    diff = weight_diff(llama, fine_tune(llama), progress=False)
    assert diff.total.delta_norm == 0.0 and all(change.singular_values == () for change in diff.parameters)
    assert len(diff.parameters) == len(list(llama.hf_model.parameters()))


def test_weight_diff_ranks_the_embedding_and_unembedding_rows_that_moved(gpt2):
    a, b, z = (gpt2.to_single_token(text) for text in ("A", "B", "Z"))
    direction = unit(gpt2.cfg.d_model, 3)

    def edit(hf_model):
        hf_model.transformer.wte.weight[a] += 0.3 * direction
        hf_model.transformer.wte.weight[b] += 0.6 * direction
        hf_model.lm_head.weight[z] -= 0.2 * direction

    diff = weight_diff(gpt2, fine_tune(gpt2, edit), progress=False)
    assert [(row.token, round(row.delta_norm, 4)) for row in diff.embedding_rows] == [("B", 0.6), ("A", 0.3)]
    assert [(row.token, round(row.delta_norm, 4)) for row in diff.unembedding_rows] == [("Z", 0.2)]
    embedding = diff.parameter("transformer.wte.weight")
    assert embedding.layer is None and embedding.role == "transformer.wte.weight"
    # ΔE is rank one, its vocabulary-side singular vector 2:1 on B and A
    top_tokens = embedding.vocab_tokens[0]
    assert [token for token, _ in top_tokens[:2]] == ["B", "A"]
    assert abs(top_tokens[0][1]) == pytest.approx(2 * abs(top_tokens[1][1]), rel=1e-4)
    assert {group.name for group in diff.modules_ranked()[:2]} == {"transformer.wte", "lm_head"}


def test_tied_models_report_the_shared_matrix_once_and_untied_ones_do_not_match_them(llama):
    from transformers import AutoModelForCausalLM

    config = _tiny_config("llama")
    config.tie_word_embeddings = True
    tied = HookedModel(AutoModelForCausalLM.from_config(config), llama.tokenizer, name="tied")
    token = tied.to_single_token("q")

    def edit(hf_model):
        hf_model.model.embed_tokens.weight[token] += 0.25 * unit(config.hidden_size, 4)

    diff = weight_diff(tied, fine_tune(tied, edit), progress=False)
    assert diff.tied and diff.unembedding_rows is None
    assert [row.token for row in diff.embedding_rows] == ["q"]
    assert "tied" in diff.to_json()["unembedding_note"]
    with pytest.raises(IncompatibleModelsError, match="only in the fine-tune: lm_head.weight"):
        weight_diff(tied, llama, progress=False)


# ------------------------------------------------------------------ activation-difference lens
@pytest.mark.parametrize("layer", [1, 2])
def test_difference_mean_recovers_a_vector_planted_in_an_mlp_bias(gpt2, layer):
    vector = 0.7 * unit(gpt2.cfg.d_model, 5)
    ft = bias_fine_tune(gpt2, layer, vector)
    means = difference_means(gpt2, ft, random_tokens(gpt2, batch=5, pos=10, seed=1), first_positions=3,
                             batch_size=2, progress=False)
    assert means.first.shape == (3, 3, 64) and means.rest.shape == (3, 64) and means.norm_reference.shape == (3,)
    assert means.first_counts.tolist() == [5, 5, 5] and means.n_rest == 5 * 7 and means.n_contexts == 5
    for position in range(3):
        assert F.cosine_similarity(means.first[layer, position], vector, dim=0) > 0.99
    assert F.cosine_similarity(means.rest[layer], vector, dim=0) > 0.99
    # the bias adds exactly the vector at every position, and nothing before its layer
    torch.testing.assert_close(means.rest[layer], vector, atol=1e-5, rtol=0)
    assert torch.equal(means.rest[:layer], torch.zeros(layer, 64)) and not means.first[:layer].any()


def test_difference_means_of_identical_models_are_exactly_zero(gpt2):
    means = difference_means(gpt2, fine_tune(gpt2), random_tokens(gpt2, batch=3, pos=9), progress=False)
    assert not means.first.any() and not means.rest.any()
    assert bool((means.norm_reference > 0).all())
    lens = difference_lens(gpt2, means, k=3)
    assert all(reading.norm == 0.0 for reading in lens.readings)


def test_difference_means_leave_padding_out(llama, rank_one):
    ft = rank_one[0]
    tokens = llama.to_tokens(TEXTS)
    mask = llama.attention_mask_of(tokens)
    padded = difference_means(llama, ft, tokens, first_positions=2, batch_size=3, progress=False)
    alone = [difference_means(llama, ft, text, first_positions=2, progress=False) for text in TEXTS]
    lengths = mask.sum(1)
    assert padded.n_rest == int((lengths - 2).sum()) and padded.first_counts.tolist() == [3, 3]
    weights = (lengths - 2).float() / (lengths - 2).sum()
    expected_rest = sum(w * m.rest for w, m in zip(weights, alone))
    torch.testing.assert_close(padded.rest, expected_rest, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(padded.first, sum(m.first for m in alone) / 3, atol=1e-5, rtol=1e-4)
    expected_norm = sum(w * m.norm_reference for w, m in zip(weights, alone))
    torch.testing.assert_close(padded.norm_reference, expected_norm, atol=1e-4, rtol=1e-4)
    assert bool((padded.rest[1:].norm(dim=-1) > 0).all())  # the down_proj change reaches layers 1 and 2


@pytest.mark.parametrize("side", ["right", "left"])
def test_last_position_means_are_each_contexts_own_last_tokens_whatever_the_padding(llama, rank_one, side):
    ft = rank_one[0]
    rows = [llama.to_tokens(text)[0] for text in TEXTS]  # unpadded, lengths differ
    width = max(len(row) for row in rows)
    tokens = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(tokens)
    for i, row in enumerate(rows):
        place = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
        tokens[i, place], mask[i, place] = row, 1
    means = difference_means(llama, ft, tokens, first_positions=1, attention_mask=mask, batch_size=2,
                             last_positions=2, progress=False)
    alone = [difference_means(llama, ft, row[None], first_positions=1, progress=False, last_positions=2) for row in rows]
    assert means.last.shape == (llama.cfg.n_layers, 2, llama.cfg.d_model) and means.last_counts.tolist() == [3, 3]
    torch.testing.assert_close(means.last, sum(m.last for m in alone) / 3, atol=1e-5, rtol=1e-4)
    # by hand: -1 is the last real token of each row, read from full caches of the lone rows
    hook = names.resid_post(1)
    by_hand = torch.stack([ft.run_with_cache(row[None], names=[hook])[1][hook][0, -1]
                           - llama.run_with_cache(row[None], names=[hook])[1][hook][0, -1] for row in rows]).mean(0)
    torch.testing.assert_close(means.vector(1, -1), by_hand.float(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(means.vector(1, -2), means.last[1, 1])
    assert means.to_json()["last_counts"] == [3, 3]
    with pytest.raises(OutOfRangeError, match=r"a last position -1..-2"):
        means.vector(1, -3)
    with pytest.raises(ConfigError, match="last_positions=99"):
        difference_means(llama, ft, tokens, first_positions=1, attention_mask=mask, last_positions=99, progress=False)
    no_last = difference_means(llama, ft, tokens, first_positions=1, attention_mask=mask, progress=False)
    assert no_last.last_positions == 0
    with pytest.raises(OutOfRangeError, match="'rest' or a first position 0..0$"):
        no_last.vector(1, -1)


def test_reading_a_planted_unembedding_row_and_embedding_row(gpt2):
    token = gpt2.to_single_token("k")
    unembed_row = gpt2.W_U[:, token].detach().clone()
    ft = bias_fine_tune(gpt2, 2, 3 * unembed_row)
    means = difference_means(gpt2, ft, random_tokens(gpt2, batch=2, pos=8), first_positions=2, progress=False)
    reading = read_difference(gpt2, means, layer=2, k=5)
    assert reading.unembed_cosine[0].token == "k" and reading.unembed_cosine[0].value > 0.99
    assert reading.logit_lens[0].token_id == token
    with torch.no_grad():
        logits = gpt2.unembed(means.rest[2])
    assert reading.logit_lens[0].value == pytest.approx(float(logits.max()), rel=1e-5)
    assert reading.norm == pytest.approx(3 * float(unembed_row.norm()), rel=1e-4)
    assert reading.relative_norm == pytest.approx(reading.norm / float(means.norm_reference[2]))

    embed_row = gpt2.hf_model.transformer.wte.weight[gpt2.to_single_token("m")].detach().clone()
    means = difference_means(gpt2, bias_fine_tune(gpt2, 0, embed_row), random_tokens(gpt2, batch=2, pos=8),
                             first_positions=2, progress=False)
    first = read_difference(gpt2, means, layer=0, position_group=1, k=5)
    assert first.position_group == 1 and first.embed_cosine[0].token == "m" and first.embed_cosine[0].value > 0.99

    lens = difference_lens(gpt2, means, position_groups=["rest", 0], k=4)
    encoded = json.loads(json.dumps(lens.to_json()))
    assert [entry["layer"] for entry in encoded["layers"]] == [0, 1, 2]
    assert [r["position_group"] for r in encoded["layers"][0]["readings"]] == ["rest", 0]
    assert encoded["layers"][0]["readings"][0]["embed_cosine"][0]["token"] == "m"
    assert len(encoded["layers"][0]["readings"][0]["logit_lens"]) == 4
    assert lens.reading(0, 0).embed_cosine[0].token == "m"


def test_bad_layer_and_position_group_name_the_valid_choices(gpt2):
    means = difference_means(gpt2, fine_tune(gpt2), random_tokens(gpt2, batch=2, pos=8), first_positions=3,
                             progress=False)
    with pytest.raises(OutOfRangeError, match=r"layer 3 out of range; .* layers 0\.\.2"):
        read_difference(gpt2, means, layer=3)
    with pytest.raises(OutOfRangeError, match="layer -1 out of range"):
        means.vector(-1)
    with pytest.raises(ConfigError, match=r"unknown position_group 'first'; position_group must be 'rest' or a "
                                          r"first position 0\.\.2"):
        read_difference(gpt2, means, layer=0, position_group="first")
    with pytest.raises(OutOfRangeError, match=r"position_group 3 out of range; .*0\.\.2"):
        means.vector(0, 3)
    with pytest.raises(ConfigError, match="first_positions must be at least 0"):
        difference_means(gpt2, gpt2, random_tokens(gpt2), first_positions=-1)
    with pytest.raises(ConfigError, match="no context has a token beyond the first 8 positions"):
        difference_means(gpt2, gpt2, random_tokens(gpt2, pos=8), first_positions=8, progress=False)
    with pytest.raises(ConfigError, match="positions must be one of: all, prompt, generated"):
        steer_with_difference(gpt2, bias_means(gpt2)[0], 1, "hi", positions="everywhere")
    with pytest.raises(IncompatibleModelsError):
        difference_means(gpt2, mechscope.load_tiny("llama"), random_tokens(gpt2))


def bias_means(gpt2, layer=1, seed=6):
    vector = 0.8 * unit(gpt2.cfg.d_model, seed)
    ft = bias_fine_tune(gpt2, layer, vector)
    return difference_means(gpt2, ft, random_tokens(gpt2, batch=2, pos=8), first_positions=2, progress=False), ft


@pytest.mark.parametrize("layer", [1, 2])
def test_steering_the_base_with_a_planted_bias_difference_reproduces_the_fine_tune(gpt2, layer):
    means, ft = bias_means(gpt2, layer)
    # adding the exact difference (length ‖v‖) at resid_post is the fine-tune's own forward pass
    strength = float(means.rest[layer].norm() / means.norm_reference[layer])
    tokens = random_tokens(gpt2, batch=2, pos=7, seed=3)
    steering = ResidPostSteering(Direction.from_vector(means.rest[layer]), float(means.rest[layer].norm()),
                                 layers=layer)
    assert [name for name, _ in steering.hooks(gpt2)] == [names.resid_post(layer)]
    torch.testing.assert_close(gpt2.run_with_hooks(tokens, fwd_hooks=steering.hooks(gpt2)), ft(tokens),
                               atol=1e-4, rtol=1e-4)
    prompts = ["ab", "hello there"]
    steered = steer_with_difference(gpt2, means, layer, prompts, strength=strength, max_new_tokens=6,
                                    chat=False, progress=False)
    assert steered == generate(ft, prompts, max_new_tokens=6, chat=False, progress=False)
    unsteered = steer_with_difference(gpt2, means, layer, prompts, strength=0.0, max_new_tokens=6, chat=False,
                                      progress=False)
    assert unsteered == generate(gpt2, prompts, max_new_tokens=6, chat=False, progress=False)


def test_steering_with_a_zero_difference_is_refused(gpt2):
    means = DifferenceMeans(torch.zeros(3, 1, 64), torch.zeros(3, 64), torch.ones(3), torch.ones(1, dtype=torch.long),
                            4, 1)
    with pytest.raises(MechscopeError, match="is zero: the models do not differ there"):
        steer_with_difference(gpt2, means, 0, "hi")


# ------------------------------------------------------------------ per-token KL
def test_per_token_kl_is_zero_for_identical_models_and_matches_torch_for_a_fine_tune(llama, rank_one):
    same = per_token_kl(llama, fine_tune(llama), TEXTS, progress=False)
    assert all(torch.equal(kl, torch.zeros_like(kl)) for kl in same.kl) and same.mean == 0.0

    ft = rank_one[0]
    result = per_token_kl(llama, ft, TEXTS, batch_size=2, progress=False)
    lengths = [len(llama.to_tokens(text)[0]) for text in TEXTS]
    assert [len(kl) for kl in result.kl] == lengths and result.n_tokens == sum(lengths)
    assert all(bool((kl > 0).all()) for kl in result.kl) and result.mean > 0
    assert result.tokens[1] == tuple(llama.to_str_tokens("Hi"))
    # one position by hand, and against torch's kl_div
    tokens = llama.to_tokens(TEXTS[0])
    with torch.no_grad():
        log_p = llama(tokens)[0, 4].double().log_softmax(-1)
        log_q = ft(tokens)[0, 4].double().log_softmax(-1)
    by_hand = float((log_p.exp() * (log_p - log_q)).sum())
    by_torch = float(F.kl_div(log_q, log_p, reduction="sum", log_target=True))
    assert result.kl[0][4].item() == pytest.approx(by_hand, rel=1e-6) == pytest.approx(by_torch, rel=1e-6)
    # padded batches give each text's own values
    alone = [per_token_kl(llama, ft, text, progress=False).kl[0] for text in TEXTS]
    for padded, single in zip(result.kl, alone):
        torch.testing.assert_close(padded, single, atol=1e-7, rtol=1e-4)


def test_top_kl_positions_are_sorted_and_name_their_tokens(llama, rank_one):
    result = per_token_kl(llama, rank_one[0], TEXTS, progress=False)
    top = result.top(5)
    assert len(top) == 5 and [item.kl for item in top] == sorted((item.kl for item in top), reverse=True)
    assert top[0].kl == pytest.approx(max(float(kl.max()) for kl in result.kl))
    for item in top:
        assert result.kl[item.text_index][item.position].item() == item.kl
        assert item.token == result.tokens[item.text_index][item.position]
        following = result.tokens[item.text_index][item.position + 1:item.position + 2]
        assert item.next_token == (following[0] if following else None)
    everything = result.top(10_000)
    assert len(everything) == result.n_tokens and sum(item.next_token is None for item in everything) == len(TEXTS)
    encoded = json.loads(json.dumps(result.to_json(top_k=3)))
    assert len(encoded["top"]) == 3 and encoded["mean"] == pytest.approx(result.mean)
    tokens = random_tokens(llama, batch=2, pos=6)
    from_tensor = per_token_kl(llama, rank_one[0], tokens, progress=False)
    assert [len(kl) for kl in from_tensor.kl] == [6, 6]


def test_generic_chat_corpus_interleaves_instructions_and_packs_the_models_own_replies():
    from mechscope import datasets
    from mechscope.diff.corpus import chat_transcripts, generic_prompts, transcript_contexts

    prompts = generic_prompts(6)
    assert prompts[0::2] == datasets.load("harmless", "train")[:3]
    assert prompts[1::2] == datasets.load("harmful", "train")[:3]
    model = mechscope.load_tiny("llama", chat=True)
    transcripts = chat_transcripts(model, prompts[:2], reply_tokens=3, progress=False)
    assert all(t.startswith(f"user: {p}\nassistant: ") for t, p in zip(transcripts, prompts))
    contexts = transcript_contexts(model, transcripts * 4, context_length=16)
    assert contexts.shape[1] == 16 and len(contexts) >= 4
    with pytest.raises(ConfigError, match="need a chat template"):
        chat_transcripts(mechscope.load_tiny("llama"), prompts[:1])
