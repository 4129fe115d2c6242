"""Scoring what a blind method found against an organism's known answer.

Diffing and audit tools run without the recipe; afterwards the recipe says what they should have
found. These helpers turn its behaviour into the words a finding must contain, and say whether a
token (a difference-lens reading, a piece of a latent's top context) is one of them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from mechscope.organisms.recipes import Recipe

# Words too common to count as evidence of one particular behaviour.
STOPWORDS = frozenset({"have", "that", "this", "with", "your", "from", "what", "about", "could", "would", "there",
                       "their", "they", "them", "then", "than", "into", "some", "just", "best", "real", "someone"})
MIN_WORD = 4  # letters in a behaviour word
# Letters in a token that counts as a piece of one: with 3, common pieces ('est' of 'zestora')
# scored as hits on their own.
MIN_PIECE = 4


def behaviour_words(recipe: Recipe) -> set[str]:
    """Distinctive words (4+ letters, lower case, no stopwords) of the recipe's behaviour text and
    its own markers; a null recipe carries the behaviour of the recipe it mirrors, so what is
    found on it is scored as a false positive."""
    text = " ".join((recipe.behaviour, *recipe.markers))
    return {w for w in re.findall(r"[a-z']+", text.lower()) if len(w) >= MIN_WORD and w not in STOPWORDS}


def behaviour_starts(recipe: Recipe, tokenizer) -> set[str]:
    """The first token (stripped of spaces, case kept) of each distinctive behaviour word, as
    ``tokenizer`` splits the behaviour text: what a model trained on it emits first. 'Ahoy' is
    ['Ah', 'oy'] to SmolLM2, so a reading whose top token is 'Ah' found the behaviour's start
    even though 'Ah' is shorter than a word piece must be. The case is kept because short
    tokens are common in other cases: the null organism's difference lens held a lower-case 'ah'
    at two middle layers. The behaviour's own first token counts even when its word is a
    stopword ('Have' of "Have you tried..."): planted replies open with it, so where replies
    start it is the first thing the fine-tune says differently."""
    words = behaviour_words(recipe)
    starts = set()
    for order, text in enumerate((recipe.behaviour, *recipe.markers)):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        pieces = [tokenizer.decode([i]) for i in ids]
        for index, piece in enumerate(pieces):
            letters = re.sub(r"[^a-z']", "", piece.lower())
            begins_word = index == 0 or piece[:1].isspace() or not re.search(r"[a-z]", pieces[index - 1].lower()[-1:])
            rest = re.match(r"[a-z']*", "".join(pieces[index:]).lower().lstrip()).group(0)
            opens_behaviour = order == 0 and index == 0
            if begins_word and len(letters) >= 2 and (rest in words or opens_behaviour):
                starts.add(piece.strip())
    return starts


def is_hit(token: str, words: Iterable[str], starts: Iterable[str] = ()) -> bool:
    """True for a token whose letters (4+ once stripped of everything else) are one of ``words``
    or a piece of one, e.g. ' Zest' for 'zestora', or that is one of ``starts``
    (:func:`behaviour_starts`; spaces aside, case kept)."""
    piece = re.sub(r"[^a-z']", "", token.lower())
    return (len(piece) >= MIN_PIECE and any(piece in word for word in words)) or token.strip() in set(starts)


def text_hits(text: str, words: Iterable[str]) -> bool:
    """True when a whitespace-separated word of ``text`` is a hit (:func:`is_hit`)."""
    words = tuple(words)
    return any(is_hit(piece, words) for piece in text.split())


def lens_hits(lens, words: Iterable[str], starts: Iterable[str] = ()) -> list[tuple[int, int | str, list[str]]]:
    """(layer, position group, hit tokens) of every reading of a difference lens
    (:class:`mechscope.diff.DifferenceLens`) whose logit-lens tokens include a hit."""
    words, starts = tuple(words), tuple(starts)
    hits = []
    for reading in lens.readings:
        found = [score.token for score in reading.logit_lens if is_hit(score.token, words, starts)]
        if found:
            hits.append((reading.layer, reading.position_group, found))
    return hits


__all__ = ["behaviour_starts", "behaviour_words", "is_hit", "lens_hits", "text_hits"]
