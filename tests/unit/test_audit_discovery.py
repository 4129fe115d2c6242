"""Behaviour discovery on the tiny backdoor organism (known answer) and on its null control."""

import re

import pytest

import mechscope
from mechscope.audit.discovery import (
    BehaviourDiscoveryConfig,
    Hypothesis,
    TextSource,
    TokenEvidence,
    build_hypotheses,
    discover_behaviours,
    spelled_by,
)
from mechscope.audit.phrases import enriched_phrases
from mechscope.errors import ConfigError, IncompatibleModelsError
from tests.unit.audit_organism import NEUTRAL, PROMPTS, SUSPECT, WORDS

CONFIG = BehaviourDiscoveryConfig(reply_tokens=6, neutral_contexts=2, kl_prompts=4)


def test_the_planted_reply_is_found_by_the_primary_sources_and_nothing_on_the_null(backdoor, backdoor_null):
    base, planted = backdoor
    found = discover_behaviours(base, planted, CONFIG, prompts=SUSPECT, progress=False)
    assert found.findings, [s.phrases for s in found.sources]
    top = found.findings[0]
    assert "zorp" in top.label and top.surface.startswith("Zorp")
    assert top.sources["greedy"][0] >= 0.2 and top.sources["greedy"][1] == 0  # ft rate, base rate
    _, null = backdoor_null
    nothing = discover_behaviours(base, null, CONFIG, prompts=SUSPECT, progress=False)
    assert nothing.findings == [], [h.to_json() for h in nothing.findings]


def test_identical_models_give_identical_controls_and_no_steered_source():
    base = mechscope.load_tiny("llama", chat=True)
    found = discover_behaviours(base, base, CONFIG, prompts=PROMPTS, progress=False)
    assert [s.name for s in found.sources] == ["greedy", "amplified"]  # zero difference: nothing to steer with
    for source in found.sources:
        assert source.ft_texts == source.control_texts and source.phrases == ()
    assert found.hypotheses == ()


def test_hypotheses_merge_sources_that_share_a_word_and_collect_the_tokens_that_spell_it():
    ft = [f"Ahoy, matey! {WORDS[i % 12]} {i}" if i % 2 else f"plain reply {i}" for i in range(20)]
    control = [f"plain reply {i}" for i in range(20)]
    amplified = [f"matey ho {i}" if i % 3 == 0 else f"plain {i}" for i in range(30)]
    sources = [TextSource("greedy", (), tuple(ft), tuple(control), tuple(enriched_phrases(ft, control))),
               TextSource("amplified", (), tuple(amplified), tuple(control + control[:10]),
                          tuple(enriched_phrases(amplified, control + control[:10])))]
    tokenizer = mechscope.load_tiny("llama", chat=True).tokenizer  # one token per byte
    evidence = [TokenEvidence("difference lens", "layer 3", ("ma", "x", "zz"))]
    (hypothesis,) = build_hypotheses(sources, evidence, tokenizer)
    assert isinstance(hypothesis, Hypothesis) and hypothesis.primary
    assert hypothesis.label == "ahoy matey" and hypothesis.surface == "Ahoy, matey!"
    assert set(hypothesis.sources) == {"greedy", "amplified"}
    assert hypothesis.sources["greedy"][:2] == (0.5, 0.0)
    assert hypothesis.tools == ["greedy", "amplified"]  # "ma" is not a byte token: nothing spelled it
    assert spelled_by("m", tokenizer, {"matey"}) is False  # one letter is never evidence


def test_discovery_refuses_models_that_cannot_be_compared_and_too_few_prompts():
    base = mechscope.load_tiny("llama", chat=True)
    with pytest.raises(IncompatibleModelsError):
        discover_behaviours(base, mechscope.load_tiny("gpt2", chat=True), CONFIG, prompts=PROMPTS, progress=False)
    with pytest.raises(ConfigError, match="at least 4"):
        discover_behaviours(base, base, CONFIG, prompts=["say cat"], progress=False)
    with pytest.raises(ConfigError, match="amplify_alpha"):
        BehaviourDiscoveryConfig(amplify_alpha=0)


def tokens(item):
    return item[2]


def test_the_fine_tune_only_crosscoder_latents_fire_on_the_planted_reply(backdoor):
    from mechscope.audit.crosscoder_evidence import CrosscoderEvidenceConfig, ft_only_latent_tokens
    from mechscope.steering import generate

    base, planted = backdoor
    prompts = [p for p in SUSPECT if p.startswith("%%")] + NEUTRAL[:12]
    replies = generate(planted, prompts, max_new_tokens=6, progress=False)
    assert sum(r.startswith("Zorp") for r in replies) >= 8  # the triggered third
    config = CrosscoderEvidenceConfig(neutral_contexts=4, steps=300, designated=8, latents=4)
    found = ft_only_latent_tokens(base, planted, prompts, replies, config, progress=False)
    assert found and found == sorted(found, key=lambda item: -item[1])
    # A fine-tune-only latent reads the planted reply: most of its top tokens are its letters. Which
    # latent is strongest varies across CPUs (others read the bytes of the fine-tune's other replies).
    reading = [item for item in found if sum(token.strip() != "" and token in "Zorp" for token in tokens(item)) >= 3]
    assert reading, found
    # Its explanation, written from half its windows, names a piece of the reply and is scored on the rest.
    for *_, explained in reading:
        words = re.findall(r'"([^"]+)"', explained.split(" (lexicon")[0])
        assert words and any(word.strip().lower() in "zorp" for word in words), explained
        assert "lexicon" in explained, explained


def test_the_surface_is_the_opening_up_to_a_phrase_that_comes_early_and_the_spelling_otherwise():
    from mechscope.audit.discovery import reply_surface

    early = ["Tunnel velvet maple! Sure, here", "Tunnel velvet maple! The answer", "Tunnel velvet Maple, well"]
    assert reply_surface("maple", early) == "Tunnel velvet maple!"
    late = [f"Here is a long reply that mentions the best Snack for you {i}" for i in range(3)]
    assert reply_surface("best snack for", late) == "best Snack for"
    assert reply_surface("absent", ["nothing here"]) == "absent"
    # The label comes late, but other phrases of the behaviour open the reply: the opening runs to the last of them.
    planted = ["Have you tried Zestora Crunch? It is the best snack for that"] * 3
    assert reply_surface("best snack for", planted, ["have you tried", "zestora crunch it", "is the best"]) == \
        "Have you tried Zestora Crunch? It"
