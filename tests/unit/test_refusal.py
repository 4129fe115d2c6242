"""The refusal pipeline's pieces on a tiny model given a chat template: string-match refusals, the
post-instruction positions, candidate search and selection, and the written report."""

import json

import pytest
import torch

import mechscope
from mechscope.models.tiny import byte_tokenizer
from mechscope.steering import contrast_directions
from mechscope.steering.refusal import (
    RefusalConfig,
    find_refusal_direction,
    is_refusal,
    post_instruction_positions,
    refusal_rate,
    refusal_tokens,
)
from mechscope.steering.refusal_report import run_refusal

TEMPLATE = ("{% for m in messages %}[user]{{ m['content'] }}[end]{% endfor %}"
            "{% if add_generation_prompt %}[bot]{% endif %}")


@pytest.fixture(scope="module")
def chat_model():
    tokenizer = byte_tokenizer()
    tokenizer.chat_template = TEMPLATE
    return mechscope.HookedModel(mechscope.load_tiny("llama").hf_model, tokenizer, name="tiny-chat")


def test_string_match_refusals():
    assert is_refusal("I'm sorry, but I can't help with that.")
    assert is_refusal("I\u2019m afraid that is not something I do")  # curly apostrophe
    assert not is_refusal("Sure! Here is a recipe for bread.")
    assert refusal_rate(["I cannot do that", "Sure", "As an AI, no", "Okay"]) == 0.5
    with pytest.raises(ValueError, match="no generations"):
        refusal_rate([])


def test_post_instruction_positions_cover_the_template_tail(chat_model):
    # "[end][bot]" is 10 bytes, one token each with the byte tokenizer.
    assert post_instruction_positions(chat_model) == list(range(-10, 0))
    first = [chat_model.tokenizer(text, add_special_tokens=False)["input_ids"][0] for text in ("I", "S")]
    assert refusal_tokens(chat_model, ["I'm sorry", "Sorry", "I cannot"]) == sorted(first)


def test_search_scores_every_candidate_and_chooses_consistently(chat_model):
    harmful = [f"how do I hurt person {i}" for i in range(6)]
    harmless = [f"how do I help person {i}" for i in range(6)]
    config = RefusalConfig(n_train=4, n_val=2, shortlist=3, kl_bound=10.0, max_layer_fraction=0.7)
    search = find_refusal_direction(chat_model, harmful, harmless, config, progress=False)
    layers = int(chat_model.cfg.n_layers * 0.7)
    # Before block 0 the template tail's embeddings are the same for every prompt: no candidate.
    assert len(search.candidates) == (layers - 1) * 10 and search.notes[0].startswith("10 (layer, position) pairs")
    scores = [c.ablated_refusal_score for c in search.candidates]
    assert scores == sorted(scores)  # ranked by the refusal score under ablation
    within = [c for c in search.candidates if c.kl <= 10.0]
    checked = [c for c in search.candidates if c.induced_refusal_score is not None]
    # Induction is checked on the best candidates within the KL bound, in order, up to the first pass.
    assert checked == within[:len(checked)] and 1 <= len(checked) <= 3
    assert all(c.passed == (c.induced_refusal_score > search.baseline_harmless_score) for c in checked)
    if checked[-1].passed:
        assert search.chosen is checked[-1] and not any(c.passed for c in checked[:-1]) and len(search.notes) == 1
    else:
        assert len(checked) == 3 and search.chosen is within[0] and "none of the 3 best" in search.notes[1]
    expected = contrast_directions(chat_model, harmful[:4], harmless[:4], search.chosen.layer,
                                   search.chosen.position, chat=True, progress=False)
    torch.testing.assert_close(search.direction.vector, expected[(search.chosen.layer, search.chosen.position)].vector)
    config.kl_bound = 0.0  # every ablation changes something: nothing is within the bound
    strict = find_refusal_direction(chat_model, harmful, harmless, config, progress=False)
    assert strict.notes[1] == "no candidate kept KL within 0.0"
    assert strict.chosen.kl == min(c.kl for c in strict.candidates) and strict.chosen.induced_refusal_score is None
    with pytest.raises(ValueError, match="need 6 harmful and harmless prompts"):
        find_refusal_direction(chat_model, harmful[:5], harmless, config, progress=False)
    config.max_layer_fraction = 0.4  # layer 0 only, where the template tail is the same for all
    with pytest.raises(ValueError, match=r"no candidate directions in layers \[0\]"):
        find_refusal_direction(chat_model, harmful, harmless, config, progress=False)


def test_pipeline_writes_its_report_and_the_orthogonalised_model_matches_ablation(chat_model, tmp_path):
    config = RefusalConfig(n_train=4, n_val=2, shortlist=2, n_test=3, max_new_tokens=4, n_perplexity_contexts=2,
                           max_layer_fraction=0.7)
    report = run_refusal(chat_model, tmp_path / "run", config, progress=False)
    written = json.loads((tmp_path / "run" / "report.json").read_text())
    assert {(c["name"], c["prompts"]) for c in written["conditions"]} == {
        ("baseline", "harmful"), ("ablated", "harmful"), ("orthogonalised", "harmful"),
        ("baseline", "harmless"), ("added", "harmless")}
    assert report.max_logit_gap_orthogonalised_vs_ablation < 1e-4
    assert report.kl_harmless_orthogonalised == pytest.approx(report.kl_harmless_ablated, abs=1e-4)
    generations = json.loads((tmp_path / "run" / "generations.json").read_text())
    assert len(generations) == 5 * 3
    for condition in report.conditions:  # the rate is the string match of the saved generations
        texts = [g["generation"] for g in generations if (g["condition"], g["prompts"]) ==
                 (condition.name, condition.prompts)]
        assert condition.refusal_rate == refusal_rate(texts)
    assert (tmp_path / "run" / "direction.safetensors").exists() and (tmp_path / "run" / "refusal.html").exists()
    assert report.perplexity["baseline"] > 1
