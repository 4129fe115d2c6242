"""Planted units: units whose meaning is known, to measure explainers and scorers against.

Each planted unit fires (activation 1) on the tokens of a text where a rule holds and nowhere
else: a set of words, a regex over the token's text (digits, brackets, word endings, ...), or
"the token after X". It comes with its one true explanation and at least three false ones, near
misses included (a subset of its words, the token *before* the one it fires on, a sibling set,
a narrower or wider pattern). Every explanation is given twice: in plain words, as an explainer
would write it, and as a lexicon rule (:mod:`mechscope.autointerp.lexicon`) that states the same
claim, so rule-reading and LLM scorers judge the same claims.

The units are defined by their rules alone, never by a model: on any tokenizer's windows of the
default corpus (:func:`planted_windows`) each is a known answer. A scorer that ranks the true
explanation of these units above the false ones no more often than chance measures nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mechscope.autointerp.lexicon import parse_explanation
from mechscope.data.corpus import pack, stdlib_docstrings
from mechscope.errors import ConfigError
from mechscope.validate import check_int

MIN_FALSE = 3


@dataclass(frozen=True)
class Explanation:
    """One claim about a unit: ``words`` as an explainer writes it, ``rule`` as a lexicon rule."""

    words: str
    rule: str

    def __post_init__(self) -> None:
        if not self.words.strip():
            raise ConfigError("an explanation needs words")
        parse_explanation(self.rule)  # raises LexiconParseError on a rule it cannot read


@dataclass(frozen=True)
class PlantedUnit:
    """A unit that fires exactly where ``true.rule`` holds; ``false``: wrong explanations."""

    name: str
    kind: str  # "tokens", "regex" or "after": how its true rule reads
    true: Explanation
    false: tuple[Explanation, ...]

    def __post_init__(self) -> None:
        if len(self.false) < MIN_FALSE:
            raise ConfigError(f"planted unit {self.name!r} has {len(self.false)} false explanations; "
                              f"at least {MIN_FALSE} are needed")
        if any(f.rule == self.true.rule for f in self.false):
            raise ConfigError(f"planted unit {self.name!r} lists its true rule among the false ones")

    def activations(self, tokens: Sequence[str]) -> torch.Tensor:
        """[len(tokens)] 1.0 where the unit fires (its true rule holds), else 0.0."""
        return torch.tensor(parse_explanation(self.true.rule).matches(tokens), dtype=torch.float32)


def _quoted(words: Sequence[str]) -> str:
    return ", ".join(f'"{w}"' for w in words)


def _word_set(name: str, label: str, words: Sequence[str], sibling: tuple[str, Sequence[str]]) -> PlantedUnit:
    """A unit firing on ``words``; false: the words but the last (a near miss), the token
    after them (the other near miss), a sibling set, and the sibling's followers."""
    sibling_label, sibling_words = sibling
    false = [Explanation(f"the words {_quoted(words[:-1])}", _quoted(words[:-1])) if len(words) > 1 else
             Explanation(f"words starting with '{words[0][0]}'", f"regex: ^\\s?{words[0][0]}"),
             Explanation(f"the token after {label}", f"after: {_quoted(words)}"),
             Explanation(sibling_label, _quoted(sibling_words)),
             Explanation(f"the token after {sibling_label}", f"after: {_quoted(sibling_words)}")]
    return PlantedUnit(name, "tokens", Explanation(label, _quoted(words)), tuple(false))


def _pattern(name: str, label: str, regex: str, near: Sequence[tuple[str, str]]) -> PlantedUnit:
    return PlantedUnit(name, "regex", Explanation(label, f"regex: {regex}"),
                       tuple(Explanation(words, f"regex: {rule}") for words, rule in near))


def _after(word: str, sibling: str) -> PlantedUnit:
    """A unit firing on the token after ``word``; false: ``word`` itself (the classic near
    miss), the token after ``sibling``, and ``sibling`` itself."""
    false = (Explanation(f'the word "{word}"', f'"{word}"'),
             Explanation(f'the token after "{sibling}"', f'after: "{sibling}"'),
             Explanation(f'the word "{sibling}"', f'"{sibling}"'))
    return PlantedUnit(f"after-{word}", "after", Explanation(f'the token right after "{word}"', f'after: "{word}"'),
                       false)


_SETS = {
    "articles": ("articles", ("the", "a", "an")),
    "prepositions": ("prepositions of place", ("in", "on", "at")),
    "conjunctions": ("coordinating conjunctions", ("and", "or", "but")),
    "pronouns": ("third-person pronouns", ("it", "he", "she", "they")),
    "copulas": ("forms of 'to be'", ("is", "are", "was", "were")),
    "negations": ("negations", ("no", "not")),
    "demonstratives": ("demonstratives", ("this", "that", "these", "those")),
    "modals": ("modal verbs", ("can", "could", "may", "might", "must", "should")),
    "conditionals": ("words that open a condition", ("if", "when", "unless")),
    "quantifiers": ("quantifiers", ("all", "some", "any", "each", "both")),
}
_SIBLINGS = {"articles": "demonstratives", "prepositions": "conjunctions", "conjunctions": "prepositions",
             "pronouns": "demonstratives", "copulas": "modals", "negations": "quantifiers",
             "demonstratives": "articles", "modals": "copulas", "conditionals": "conjunctions",
             "quantifiers": "negations"}
_PATTERNS = (
    ("digits", "numbers (tokens with a digit)", r"\d", [("letters a to f", r"^\s?[a-f]+$"),
                                                         ("two or more digits", r"\d\d"), ("the digit 1", r"1")]),
    ("brackets", "brackets and parentheses", r"[()\[\]{}]", [("opening brackets only", r"[(\[{]"),
                                                              ("quotation marks", r"[\"'`]"),
                                                              ("commas", r",")]),
    ("quotes", "quotation marks", r"[\"'`]", [("double quotes only", r"\""), ("brackets", r"[()\[\]]"),
                                              ("colons", r":")]),
    ("capitalised", "capitalised words", r"^\s?[A-Z][a-z]", [("all-capital words", r"^\s?[A-Z]{2,}$"),
                                                             ("words starting with T", r"^\s?T"),
                                                             ("lower-case words", r"^\s?[a-z]")]),
    ("all-caps", "words in capitals", r"^\s?[A-Z]{2,}$", [("capitalised words", r"^\s?[A-Z][a-z]"),
                                                          ("single capital letters", r"^\s?[A-Z]$"),
                                                          ("digits", r"\d")]),
    ("full-stops", "full stops", r"\.", [("commas", r","), ("sentence-final punctuation", r"[.!?]\s*$"),
                                         ("colons", r":")]),
    ("commas", "commas", r",", [("full stops", r"\."), ("semicolons", r";"), ("the word 'and'", r"^\s?and$")]),
    ("underscores", "identifiers with underscores", r"_", [("dots inside words", r"\w\.\w"), ("hyphens", r"-"),
                                                           ("digits", r"\d")]),
    ("ing", "words ending in -ing", r"ing$", [("words ending in -ed", r"ed$"), ("words ending in -in", r"in$"),
                                              ("words ending in -s", r"s$")]),
    ("ed", "words ending in -ed", r"ed$", [("words ending in -ing", r"ing$"), ("words ending in -d", r"[^e]d$"),
                                           ("words ending in -er", r"er$")]),
    ("ly", "adverbs ending in -ly", r"ly$", [("words ending in -y", r"[^l]y$"), ("words ending in -le", r"le$"),
                                              ("words ending in -ing", r"ing$")]),
    ("colons", "colons", r":", [("semicolons", r";"), ("full stops", r"\."), ("equals signs", r"=")]),
    ("newlines", "line breaks", r"\n", [("spaces alone", r"^ +$"), ("full stops", r"\."), ("colons", r":")]),
)
_AFTER = (("the", "a"), ("of", "in"), ("to", "for"), ("(", "["), ("is", "was"), ("and", "or"), ("a", "the"),
          ("in", "on"), (",", "."), ("with", "for"))


def planted_units() -> list[PlantedUnit]:
    """The benchmark's units (more than 30): word sets, token patterns and "the token after X"."""
    units = [_word_set(name, label, words, _SETS[_SIBLINGS[name]]) for name, (label, words) in _SETS.items()]
    units += [_pattern(name, label, regex, near) for name, label, regex, near in _PATTERNS]
    units += [_after(word, sibling) for word, sibling in _AFTER]
    return units


def planted_contexts(tokenizer, n_windows: int = 64, window: int = 64, seed: int = 0) -> torch.Tensor:
    """[n_windows, window] token ids (BOS dropped) from the default corpus (standard-library
    docstrings), as ``tokenizer`` splits it."""
    check_int("n_windows", n_windows, 1)
    check_int("window", window, 2)
    return pack(tokenizer, stdlib_docstrings(), window + 1, n_contexts=n_windows, seed=seed)[:, 1:]


def planted_windows(tokenizer, n_windows: int = 64, window: int = 64, seed: int = 0) -> list[list[str]]:
    """The windows of :func:`planted_contexts` as token texts."""
    ids = planted_contexts(tokenizer, n_windows, window, seed)
    return [[tokenizer.decode([int(i)]) for i in row] for row in ids]


__all__ = ["Explanation", "PlantedUnit", "planted_contexts", "planted_units", "planted_windows"]
