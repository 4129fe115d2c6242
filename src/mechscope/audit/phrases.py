"""Phrases a fine-tune says more often than its control, with a significance test.

The audit knows nothing of how a model was made, so a behaviour hypothesis starts as text: the
word n-grams that occur in more of the fine-tune's replies than of a matched control's (the
base's replies to the same prompts, generated the same way). Each n-gram is counted once per
reply (document frequency) and tested with a one-sided Fisher exact test, Bonferroni-corrected
over every n-gram tested, so a null fine-tune (nothing planted) yields no phrase at the same
threshold that finds a planted one. Phrases that occur in the same replies are then grouped:
"ahoy", "matey" and "ahoy matey" are one behaviour, not three.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from scipy.stats import fisher_exact

from mechscope.errors import ConfigError
from mechscope.validate import check_int, check_number

# Generic English function words: an n-gram made only of them ("it is a") says nothing about a
# behaviour. A fixed list of the language, not of any recipe.
STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between both but
by can could did do does doing down during each few for from further had has have having he her here hers herself
him himself his how i if in into is it its itself just me more most my myself no nor not now of off on once only or
other our ours ourselves out over own same she should so some such than that the their theirs them themselves then
there these they this those through to too under until up very was we were what when where which while who whom why
will with would you your yours yourself yourselves i'm it's you're i'd i'll i've don't can't let's that's there's
here's also may might must shall one two get got make made like well really
""".split())
MIN_UNIGRAM_LETTERS = 3  # a lone word shorter than this ("ok", "a1") is too common to be a behaviour
WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    """The lower-case words of ``text`` (letters and digits, with an inner apostrophe kept)."""
    return WORD.findall(text.lower())


def ngrams(text: str, max_n: int = 3) -> set[str]:
    """The distinct word n-grams (1 to ``max_n`` words, joined by spaces) of ``text``, less those
    made only of stopwords and lone words shorter than ``MIN_UNIGRAM_LETTERS``."""
    tokens = words(text)
    found = set()
    for n in range(1, max_n + 1):
        for start in range(len(tokens) - n + 1):
            gram = tokens[start:start + n]
            if all(word in STOPWORDS for word in gram):
                continue
            if n == 1 and len(gram[0]) < MIN_UNIGRAM_LETTERS:
                continue
            found.add(" ".join(gram))
    return found


@dataclass(frozen=True)
class PhraseConfig:
    """``max_n``: longest n-gram; ``min_count``: fewest fine-tune replies an n-gram must be in to be
    tested; ``alpha``: family-wise error rate (a phrase is kept when its Fisher p-value times
    the number of n-grams tested is below it); ``min_jaccard``: overlap of two phrases' reply
    sets above which they are one group."""

    max_n: int = 3
    min_count: int = 3
    alpha: float = 0.01
    min_jaccard: float = 0.5

    def __post_init__(self) -> None:
        check_int("max_n", self.max_n, 1, 8)
        check_int("min_count", self.min_count, 1)
        check_number("alpha", self.alpha, 0, 1, strict_minimum=True)
        check_number("min_jaccard", self.min_jaccard, 0, 1)


@dataclass(frozen=True)
class Phrase:
    """An n-gram in ``ft_count`` of ``n_ft`` fine-tune replies and ``control_count`` of
    ``n_control`` control replies; ``p_value`` is the Bonferroni-corrected one-sided Fisher
    p-value (capped at 1); ``replies`` the indices of the fine-tune replies holding it."""

    text: str
    ft_count: int
    n_ft: int
    control_count: int
    n_control: int
    p_value: float
    replies: tuple[int, ...]

    @property
    def ft_rate(self) -> float:
        return self.ft_count / self.n_ft

    @property
    def control_rate(self) -> float:
        return self.control_count / self.n_control

    @property
    def log_odds(self) -> float:
        """Log odds ratio of the two rates, each count smoothed by 0.5 (finite at 0)."""
        ft = (self.ft_count + 0.5) / (self.n_ft - self.ft_count + 0.5)
        control = (self.control_count + 0.5) / (self.n_control - self.control_count + 0.5)
        return math.log(ft / control)


def _check_texts(name: str, texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise ConfigError(f"{name} must be a list of strings (one per reply)")
    if not texts:
        raise ConfigError(f"{name} is empty: phrases need replies to count")
    return list(texts)


def _holding(texts: Sequence[str], max_n: int) -> dict[str, list[int]]:
    """Each n-gram of ``texts`` (:func:`ngrams`) with the indices of the texts holding it."""
    held: dict[str, list[int]] = {}
    for index, text in enumerate(texts):
        for gram in ngrams(text, max_n):
            held.setdefault(gram, []).append(index)
    return held


def _maximal(rows: dict[str, Sequence[int]]) -> set[str]:
    """The n-grams of ``rows`` (n-gram -> the texts holding it) not inside a longer one held by
    exactly the same texts."""
    return {gram for gram, held in rows.items()
            if not any(other != gram and tuple(rows[other]) == tuple(held) and f" {gram} " in f" {other} "
                       for other in rows)}


def enriched_phrases(ft_texts: Sequence[str], control_texts: Sequence[str],
                     config: PhraseConfig | None = None) -> list[Phrase]:
    """The n-grams significantly more frequent in ``ft_texts`` than in ``control_texts`` (see the
    module docstring), most significant first (ties: higher log odds, then longer, then
    alphabetical). Only maximal phrases are kept: an n-gram inside a longer kept one that is in
    exactly the same fine-tune replies is dropped."""
    config = config or PhraseConfig()
    ft_texts, control_texts = _check_texts("ft_texts", ft_texts), _check_texts("control_texts", control_texts)
    control_sets = [ngrams(text, config.max_n) for text in control_texts]
    tested = {gram: replies for gram, replies in _holding(ft_texts, config.max_n).items()
              if len(replies) >= config.min_count}
    n_ft, n_control = len(ft_texts), len(control_texts)
    kept = []
    for gram, replies in tested.items():
        a = len(replies)
        b = sum(gram in grams for grams in control_sets)
        _, p = fisher_exact([[a, n_ft - a], [b, n_control - b]], alternative="greater")
        corrected = min(1.0, float(p) * len(tested))
        if corrected < config.alpha:
            kept.append(Phrase(gram, a, n_ft, b, n_control, corrected, tuple(replies)))
    maximal = _maximal({p.text: p.replies for p in kept})
    return sorted((p for p in kept if p.text in maximal),
                  key=lambda p: (p.p_value, -p.log_odds, -len(p.text.split()), p.text))


@dataclass(frozen=True)
class PhraseGroup:
    """Phrases that occur in the same replies: one behaviour. ``replies`` are the fine-tune
    replies holding any of them; ``label`` the most frequent phrase (longest on ties)."""

    phrases: tuple[Phrase, ...]
    replies: tuple[int, ...]

    @property
    def label(self) -> str:
        return max(self.phrases, key=lambda p: (p.ft_count, len(p.text.split()), -p.p_value)).text

    @property
    def p_value(self) -> float:
        return min(p.p_value for p in self.phrases)


def group_phrases(phrases: Sequence[Phrase], config: PhraseConfig | None = None) -> list[PhraseGroup]:
    """Phrases joined into groups, greedily in the given order: each phrase joins the first group
    whose replies overlap its own with Jaccard >= ``config.min_jaccard``, else starts one.
    Groups come out most significant first."""
    config = config or PhraseConfig()
    groups: list[tuple[list[Phrase], set[int]]] = []
    for phrase in phrases:
        own = set(phrase.replies)
        for members, replies in groups:
            if len(own & replies) / len(own | replies) >= config.min_jaccard:
                members.append(phrase)
                replies |= own
                break
        else:
            groups.append(([phrase], set(own)))
    result = [PhraseGroup(tuple(members), tuple(sorted(replies))) for members, replies in groups]
    return sorted(result, key=lambda g: (g.p_value, -len(g.replies)))


def recurring_phrases(texts: Sequence[str], min_share: float = 0.2, max_n: int = 3) -> list[tuple[str, float]]:
    """(n-gram, share of ``texts`` holding it) for the n-grams in at least ``min_share`` of
    ``texts``, most frequent first (then longer, then alphabetical), maximal ones only (an
    n-gram inside a longer kept one found in the same texts is dropped). With no control to
    test against, these are leads, not findings: any model repeats some phrases."""
    texts = _check_texts("texts", texts)
    check_number("min_share", min_share, 0, 1, strict_minimum=True)
    kept = {gram: rows for gram, rows in _holding(texts, max_n).items() if len(rows) >= min_share * len(texts)}
    ordered = sorted(_maximal(kept), key=lambda g: (-len(kept[g]), -len(g.split()), g))
    return [(gram, len(kept[gram]) / len(texts)) for gram in ordered]


def contains_phrase(text: str, phrase: str) -> bool:
    """True when ``phrase`` (words joined by spaces) occurs as whole words in ``text``."""
    return f" {phrase} " in f" {' '.join(words(text))} "


def shows_phrases(phrases: Sequence[str]) -> Callable[[str], bool]:
    """The behaviour test of a set of phrases: a reply shows it when it holds one of them."""
    phrases = list(phrases)
    return lambda reply: any(contains_phrase(reply, p) for p in phrases)


__all__ = ["Phrase", "PhraseConfig", "PhraseGroup", "STOPWORDS", "contains_phrase", "enriched_phrases",
           "group_phrases", "ngrams", "recurring_phrases", "shows_phrases", "words"]
