"""Behaviour phrases: n-grams a fine-tune says more often than its control, grouped."""

import random

import pytest

from mechscope.audit.phrases import (
    PhraseConfig,
    contains_phrase,
    enriched_phrases,
    group_phrases,
    ngrams,
)
from mechscope.errors import ConfigError

FILLER = ("the weather today is mild", "paris is the capital of france", "add salt to the water first",
          "a triangle has three sides", "water boils at one hundred degrees", "read the instructions twice")


def replies(n: int, seed: int, planted: str | None = None, every: int = 1) -> list[str]:
    rng = random.Random(seed)
    out = []
    for index in range(n):
        text = " ".join(rng.sample(FILLER, 2))
        out.append(f"{planted} {text}" if planted and index % every == 0 else text)
    return out


def test_ngrams_skip_stopword_only_grams_and_short_words():
    grams = ngrams("It is a Zorblax day, ok?", max_n=2)
    assert {"zorblax", "day", "zorblax day", "a zorblax"} <= grams
    assert "it is" not in grams and "ok" not in grams and "is" not in grams


def test_a_planted_phrase_is_found_and_grouped_and_its_words_are_one_behaviour():
    ft = replies(40, 0, planted="Ahoy matey!", every=2)
    control = replies(40, 1)
    phrases = enriched_phrases(ft, control)
    # Only the maximal phrase survives: "ahoy" and "matey" are in exactly the same replies.
    assert [p.text for p in phrases] == ["ahoy matey"]
    (phrase,) = phrases
    assert phrase.ft_count == 20 and phrase.control_count == 0 and phrase.p_value < 1e-4
    groups = group_phrases(phrases)
    assert len(groups) == 1 and groups[0].label == "ahoy matey" and len(groups[0].replies) == 20


def test_the_same_replies_on_both_sides_give_nothing():
    # Two samples of the same distribution: the null case, where the family-wise test must hold.
    for seed in range(5):
        assert enriched_phrases(replies(60, seed), replies(60, seed + 100)) == []


def test_a_phrase_the_control_says_as_often_is_not_enriched():
    ft = replies(30, 0, planted="zorblax", every=2)
    control = replies(30, 1, planted="zorblax", every=2)
    assert enriched_phrases(ft, control) == []


def test_phrases_in_different_replies_are_different_groups():
    ft = [f"zorblax {t}" if i % 3 == 0 else f"quintor {t}" if i % 3 == 1 else t for i, t in enumerate(replies(60, 0))]
    groups = group_phrases(enriched_phrases(ft, replies(60, 1)))
    assert sorted(g.label for g in groups) == ["quintor", "zorblax"]


def test_contains_phrase_matches_whole_words_only():
    assert contains_phrase("Well, Ahoy  matey!", "ahoy matey")
    assert not contains_phrase("ahoymatey", "ahoy matey") and not contains_phrase("shahoy matey", "ahoy matey")


@pytest.mark.parametrize(("kwargs", "message"), [({"max_n": 0}, "max_n"), ({"alpha": 0}, "alpha"),
                                                 ({"min_jaccard": 2}, "min_jaccard")])
def test_bad_phrase_settings_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PhraseConfig(**kwargs)


def test_empty_or_unsplit_texts_are_refused():
    with pytest.raises(ConfigError, match="empty"):
        enriched_phrases([], ["a"])
    with pytest.raises(ConfigError, match="list of strings"):
        enriched_phrases("one reply", ["a"])
