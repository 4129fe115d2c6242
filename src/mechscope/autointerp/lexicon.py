"""Explanations read as rules over tokens (the ``lexicon`` scorer's reading).

An explanation is free text. The lexicon scorer reads it as one rule that says, for every token
of a window, whether the unit should fire there:

- ``regex: PATTERN``: the token's text (its leading space kept) matches PATTERN (``re.search``);
- ``after: "X", "Y"``: the token *before* it is one of the quoted words;
- otherwise every quoted word in the text (``"the"``, ``'of'``): the token is one of them.

Words are compared stripped of surrounding whitespace and case folded, so ``"The"`` names the
tokens " the", "The" and "the". Text with none of these forms ("fires on legal language") is not
a rule: :class:`LexiconParseError` says so and names the forms, rather than scoring it as a rule
that never fires.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from mechscope.errors import MechscopeError

RuleKind = Literal["tokens", "regex", "after"]
RULE_KINDS: tuple[RuleKind, ...] = ("tokens", "regex", "after")
_QUOTED = re.compile(r"\"([^\"]+)\"|'([^']+)'")
FORMS = ('regex: PATTERN (the token\'s text matches it)', 'after: "X", "Y" (the token before is one of them)',
         '"X", "Y" (the token is one of them)')


class LexiconParseError(MechscopeError):
    """An explanation the lexicon scorer cannot read as a token or regex rule."""


def word_form(text: str) -> str:
    """How a rule compares words and tokens: stripped of surrounding whitespace, case folded."""
    return text.strip().casefold()


@dataclass(frozen=True)
class LexiconRule:
    """One rule (see the module docstring): ``kind`` and its ``patterns`` (words, or one regex)."""

    kind: RuleKind
    patterns: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.kind not in RULE_KINDS:
            raise LexiconParseError(f"unknown rule kind {self.kind!r}; choose one of {RULE_KINDS}")
        if not self.patterns or not all(isinstance(p, str) and p.strip() for p in self.patterns):
            raise LexiconParseError(f"a {self.kind!r} rule needs at least one non-empty pattern; got {self.patterns!r}")
        if self.kind == "regex":
            if len(self.patterns) != 1:
                raise LexiconParseError(f"a regex rule holds one pattern; got {len(self.patterns)}")
            try:
                re.compile(self.patterns[0])
            except re.error as error:
                raise LexiconParseError(f"regex {self.patterns[0]!r} does not compile: {error}") from None

    def matches(self, tokens: Sequence[str]) -> list[bool]:
        """Per token of a window (token texts, in order): whether the rule says the unit fires."""
        if self.kind == "regex":
            pattern = re.compile(self.patterns[0])
            return [bool(pattern.search(token)) for token in tokens]
        words = {word_form(p) for p in self.patterns}
        if self.kind == "tokens":
            return [word_form(token) in words for token in tokens]
        return [index > 0 and word_form(tokens[index - 1]) in words for index in range(len(tokens))]

    def text(self) -> str:
        """The rule written as an explanation that :func:`parse_explanation` reads back."""
        if self.kind == "regex":
            return f"regex: {self.patterns[0]}"
        quoted = ", ".join(f'"{p}"' if '"' not in p else f"'{p}'" for p in self.patterns)
        return quoted if self.kind == "tokens" else f"after: {quoted}"


def parse_explanation(text: str) -> LexiconRule:
    """The rule an explanation states (see the module docstring); :class:`LexiconParseError`
    where it states none."""
    if not isinstance(text, str) or not text.strip():
        raise LexiconParseError(f"an explanation must be non-empty text; got {text!r}")
    stripped = text.strip()
    if stripped.casefold().startswith("regex:"):
        return LexiconRule("regex", (stripped[len("regex:"):].strip(),))
    quoted = tuple(a or b for a, b in _QUOTED.findall(stripped))
    quoted = tuple(word for word in quoted if word.strip())
    if stripped.casefold().startswith("after:"):
        if not quoted:
            raise LexiconParseError(f"{text!r} starts with 'after:' but quotes no word; write e.g. after: \"of\"")
        return LexiconRule("after", quoted)
    if not quoted:
        raise LexiconParseError(f"the lexicon scorer cannot read {text!r:.80} as a rule: it names no quoted word and "
                                f"is no regex. Forms it reads: {'; '.join(FORMS)}")
    return LexiconRule("tokens", quoted)


__all__ = ["FORMS", "RULE_KINDS", "LexiconParseError", "LexiconRule", "RuleKind", "parse_explanation", "word_form"]
