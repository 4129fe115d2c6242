"""The ``tokens`` explainer: which tokens, or which preceding tokens, the unit fires on.

The honest baseline, with no language model. For every word (a token's text stripped and case
folded) it counts the tokens the unit fires on and the tokens it occurs as, in two readings: the
firing token itself ("tokens") and the token right before it ("after"). In each reading it takes
words in order of how many firing tokens they cover, among those with precision (the share of
their occurrences where the unit fires) at least ``min_precision``, while the F1 of the growing
set improves, up to ``max_words``. The reading with the higher F1 is the explanation, written as
a lexicon rule (``"the", "a"`` or ``after: "of"``) so the ``lexicon`` scorer reads it back, with
the set's precision and recall and each word's. Whitespace-only tokens (line breaks, indents)
have no word: a unit that fires on them is read through the token before them, if at all.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from mechscope.autointerp.lexicon import LexiconRule, word_form
from mechscope.autointerp.records import DeadUnitError
from mechscope.errors import MechscopeError
from mechscope.validate import check_int, check_number

Reading = Literal["tokens", "after"]


class NoTokenExplanationError(MechscopeError):
    """No word (token form) marks the unit's firing windows precisely enough to be its explanation."""


@dataclass(frozen=True)
class WordStat:
    word: str
    fires: int  # firing tokens it covers
    count: int  # its occurrences (as the token, or as the token before)

    @property
    def precision(self) -> float:
        return self.fires / self.count


@dataclass(frozen=True)
class TokenExplanation:
    """``text``: the explanation as a lexicon rule; ``reading`` and ``words`` behind it; the
    set's ``precision`` and ``recall`` over the firing tokens; ``stats``: each chosen word's."""

    text: str
    reading: Reading
    words: tuple[str, ...]
    precision: float
    recall: float
    stats: tuple[WordStat, ...]

    @property
    def f1(self) -> float:
        total = self.precision + self.recall
        return 0.0 if total == 0 else 2 * self.precision * self.recall / total

    def to_json(self) -> dict:
        return {"text": self.text, "reading": self.reading, "words": list(self.words), "precision": self.precision,
                "recall": self.recall, "f1": self.f1,
                "stats": [{"word": s.word, "fires": s.fires, "count": s.count, "precision": s.precision}
                          for s in self.stats]}


def _keys(tokens: Sequence[str], reading: Reading) -> list[str | None]:
    """The word each token is judged by in ``reading`` (None: the first token has no 'before')."""
    words = [word_form(t) for t in tokens]
    return words if reading == "tokens" else [None, *words[:-1]]


def _best_set(fires: Counter, counts: Counter, total_fires: int, min_precision: float, max_words: int
              ) -> tuple[list[str], float, float]:
    """(words, precision, recall) of the greedy set (see the module docstring)."""
    ranked = sorted((w for w in fires if w and fires[w] / counts[w] >= min_precision), key=lambda w: (-fires[w], w))
    chosen, best_f1, covered, occurrences = [], 0.0, 0, 0
    for word in ranked[:max_words]:
        new_covered, new_occurrences = covered + fires[word], occurrences + counts[word]
        precision, recall = new_covered / new_occurrences, new_covered / total_fires
        f1 = 2 * precision * recall / (precision + recall)
        if f1 <= best_f1:
            break
        chosen, best_f1, covered, occurrences = [*chosen, word], f1, new_covered, new_occurrences
    if not chosen:
        return [], 0.0, 0.0
    return chosen, covered / occurrences, covered / total_fires


def explain_tokens(windows: Sequence[Sequence[str]], activations: Sequence[torch.Tensor], threshold: float = 0.0,
                   max_words: int = 8, min_precision: float = 0.5) -> TokenExplanation:
    """The ``tokens`` explanation of a unit from ``windows`` (token texts) and its
    ``activations`` ([len(window)] each; fires: above ``threshold``); see the module docstring.
    :class:`DeadUnitError` when it fires nowhere."""
    check_int("max_words", max_words, 1)
    check_number("min_precision", min_precision, 0, 1)
    if len(windows) != len(activations):
        raise MechscopeError(f"{len(windows)} windows but {len(activations)} activation rows")
    best = None
    for reading in ("tokens", "after"):
        fires, counts, total = Counter(), Counter(), 0
        for tokens, values in zip(windows, activations):
            firing = (torch.as_tensor(values) > threshold).tolist()
            if len(firing) != len(tokens):
                raise MechscopeError(f"a window of {len(tokens)} tokens has {len(firing)} activations")
            for key, fired in zip(_keys(tokens, reading), firing):
                total += fired
                if key is not None:
                    counts[key] += 1
                    fires[key] += fired
        if total == 0:
            raise DeadUnitError(f"the unit never fires (activation > {threshold}) on the {len(windows)} windows "
                                "given: it is dead there, nothing to explain")
        words, precision, recall = _best_set(fires, counts, total, min_precision, max_words)
        if not words:
            continue
        stats = tuple(WordStat(w, fires[w], counts[w]) for w in words)
        candidate = TokenExplanation(LexiconRule(reading, tuple(words)).text(), reading, tuple(words), precision,
                                     recall, stats)
        if best is None or candidate.f1 > best.f1:
            best = candidate
    if best is None:
        raise NoTokenExplanationError(f"no word has a precision of {min_precision} or more for this unit: no token "
                                      "explanation (lower min_precision to see the best there is)")
    return best


__all__ = ["DeadUnitError", "NoTokenExplanationError", "TokenExplanation", "WordStat", "explain_tokens"]
