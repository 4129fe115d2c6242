"""Explanations read as rules, the lexicon scorer's bootstrap, and the planted units' definitions."""

import pytest
import torch

from mechscope.autointerp import (
    DeadUnitError,
    LexiconParseError,
    LexiconRule,
    explain_tokens,
    lexicon_score,
    parse_explanation,
    planted_units,
)
from mechscope.autointerp.score import bootstrap_interval
from mechscope.errors import MechscopeError

WINDOW = [" The", " cat", " sat", " on", " the", " mat", " in", " 1999", "."]


def test_quoted_words_name_tokens_case_folded_and_stripped():
    rule = parse_explanation('fires on "the" and on \'mat\'')
    assert rule == LexiconRule("tokens", ("the", "mat"))
    assert rule.matches(WINDOW) == [True, False, False, False, True, True, False, False, False]


def test_after_names_the_token_that_follows():
    rule = parse_explanation('after: "the", "in"')
    assert rule.kind == "after"
    assert rule.matches(WINDOW) == [False, True, False, False, False, True, False, True, False]


def test_a_regex_reads_the_token_text_with_its_space():
    assert parse_explanation(r"regex: \d").matches(WINDOW) == [False] * 7 + [True, False]
    assert parse_explanation(r"regex: ^ [a-z]").matches(WINDOW)[:3] == [False, True, True]


@pytest.mark.parametrize("rule", [LexiconRule("tokens", ("the", "a")), LexiconRule("after", ('it\'s',)),
                                  LexiconRule("regex", (r"^\s?[A-Z]",))])
def test_a_rule_written_out_reads_back_as_itself(rule):
    assert parse_explanation(rule.text()) == rule


@pytest.mark.parametrize(("text", "message"), [
    ("fires on legal language", "cannot read 'fires on legal language' as a rule"),
    ("", "non-empty"), ("regex: ([a", "does not compile"), ("after: the word of", "quotes no word"),
    ("regex:   ", "at least one non-empty pattern")])
def test_what_is_no_rule_is_refused_with_the_forms_it_could_take(text, message):
    with pytest.raises(LexiconParseError, match=message.replace("(", r"\(").replace("[", r"\[")) as caught:
        parse_explanation(text)
    if "cannot read" in message:
        assert "regex: PATTERN" in str(caught.value) and 'after: "X"' in str(caught.value)


def _windows(n: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    words = [" the", " cat", " 7", " on"]
    windows = [[words[int(i)] for i in torch.randint(0, 4, (12,), generator=generator)] for _ in range(n)]
    return windows, generator


def test_a_rule_that_is_the_unit_scores_one_and_its_negation_zero():
    windows, _ = _windows(40, 0)
    fires = [torch.tensor([float(t == " 7") for t in w]) for w in windows]
    exact = lexicon_score(r"regex: \d", windows, fires)
    assert (exact.value, exact.low, exact.high) == (1.0, 1.0, 1.0) and exact.above_chance and exact.n == 40
    wrong = lexicon_score('"the", "cat", "on"', windows, fires)
    assert wrong.value == 0.0 and not wrong.above_chance


def test_an_unrelated_rule_has_an_interval_around_chance():
    windows, generator = _windows(200, 1)
    fires = [(torch.rand(12, generator=generator) < 0.3).float() for _ in windows]
    score = lexicon_score('"the"', windows, fires, seed=3)
    assert score.low < 0.5 < score.high and not score.above_chance
    assert score.high - score.low < 0.1  # 200 windows of 12 tokens pin it down


def test_a_partial_rule_scores_its_balanced_accuracy():
    # The unit fires on " 7" and " cat"; the rule names only " 7": recall 1/2 of the firing
    # tokens (about), no false positives, so balanced accuracy about (0.5 + 1) / 2.
    windows, _ = _windows(300, 2)
    fires = [torch.tensor([float(t in (" 7", " cat")) for t in w]) for w in windows]
    score = lexicon_score('"7"', windows, fires)
    tokens = [t for w in windows for t in w]
    expected = (tokens.count(" 7") / (tokens.count(" 7") + tokens.count(" cat")) + 1) / 2
    assert score.value == pytest.approx(expected) and score.low < expected < score.high


def test_the_bootstrap_is_deterministic_for_a_seed_and_resamples_items():
    rows = torch.tensor([[1.0], [0.0], [1.0], [1.0]])
    mean = lambda r: r.mean((-2, -1))
    assert bootstrap_interval(rows, mean, 200, seed=5) == bootstrap_interval(rows, mean, 200, seed=5)
    value, low, high = bootstrap_interval(rows, mean, 2000, seed=0)
    assert value == 0.75 and 0.0 <= low < 0.75 < high <= 1.0
    with pytest.raises(MechscopeError, match="at least one item"):
        bootstrap_interval(rows[:0], mean)


def test_windows_and_activations_must_agree():
    with pytest.raises(MechscopeError, match="2 windows but 1 activation rows"):
        lexicon_score('"a"', [[" a"], [" b"]], [torch.ones(1)])
    with pytest.raises(MechscopeError, match="window 0 has 2 tokens"):
        lexicon_score('"a"', [[" a", " b"]], [torch.ones(3)])


def test_planted_units_are_over_thirty_each_with_three_false_explanations():
    units = planted_units()
    assert len(units) >= 30 and len({u.name for u in units}) == len(units)
    assert {u.kind for u in units} == {"tokens", "regex", "after"}
    for unit in units:
        assert len(unit.false) >= 3 and unit.true.rule not in {f.rule for f in unit.false}
        assert parse_explanation(unit.true.rule).kind == unit.kind
    after_the = next(u for u in units if u.name == "after-the")
    assert after_the.activations(WINDOW).tolist() == [0, 1, 0, 0, 0, 1, 0, 0, 0]
    assert any(f.rule == '"the"' for f in after_the.false)  # the word itself: the classic near miss


# ---------------------------------------------------------------- the tokens explainer
def test_the_tokens_explainer_recovers_a_word_set_and_says_how_precise_it_is():
    windows, _ = _windows(100, 4)
    fires = [torch.tensor([float(t in (" the", " cat")) for t in w]) for w in windows]
    found = explain_tokens(windows, fires)
    assert (found.reading, set(found.words), found.precision, found.recall) == ("tokens", {"the", "cat"}, 1.0, 1.0)
    assert parse_explanation(found.text) == LexiconRule("tokens", found.words)  # the lexicon scorer reads it back
    assert lexicon_score(found.text, windows, fires).value == 1.0


def test_the_tokens_explainer_reads_the_token_before_when_that_explains_more():
    windows, _ = _windows(100, 5)
    fires = [torch.tensor([float(i > 0 and w[i - 1] == " on") for i in range(len(w))]) for w in windows]
    found = explain_tokens(windows, fires)
    assert (found.reading, found.words, found.precision, found.recall) == ("after", ("on",), 1.0, 1.0)
    assert found.text == 'after: "on"'


def test_a_noisy_unit_gets_the_words_that_raise_f1_with_their_precision():
    # Fires on every " 7" and on about a third of " cat" (as frequent): adding " cat" (precision
    # about 1/3) would lower F1 from about 0.86 to 0.8, so " 7" stands alone, recall about 0.75.
    windows, generator = _windows(200, 6)
    fires = [torch.tensor([float(t == " 7" or (t == " cat" and bool(torch.rand(1, generator=generator) < 0.33)))
                           for t in w]) for w in windows]
    found = explain_tokens(windows, fires)
    assert found.words == ("7",) and found.precision == 1.0 and 0.6 < found.recall < 0.9
    (stat,) = found.stats
    assert stat.word == "7" and stat.precision == 1.0 and stat.fires == stat.count


def test_a_dead_unit_is_reported_as_dead():
    windows, _ = _windows(10, 7)
    with pytest.raises(DeadUnitError, match="never fires"):
        explain_tokens(windows, [torch.zeros(12) for _ in windows])
