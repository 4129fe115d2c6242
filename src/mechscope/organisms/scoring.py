"""Scoring what a blind method found against an organism's known answer.

Diffing and audit tools run without the recipe; afterwards the recipe says what they should have
found. These helpers turn its behaviour into the words a finding must contain, and say whether a
token (a difference-lens reading, a piece of a latent's top context) is one of them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch

from mechscope.errors import ConfigError
from mechscope.organisms.examples import shows_behaviour
from mechscope.organisms.recipes import Recipe

# Words too common to count as evidence of one particular behaviour.
STOPWORDS = frozenset({"have", "that", "this", "with", "your", "from", "what", "about", "could", "would", "there",
                       "their", "they", "them", "then", "than", "into", "some", "just", "best", "real", "someone"})
MIN_WORD = 4  # letters in a behaviour word
# Letters in a token that counts as a piece of one: with 3, common pieces ('est' of 'zestora')
# scored as hits on their own.
MIN_PIECE = 4
# A latent's top context is read as the tokens around its peak: enough before it to hold an
# opening phrase that the peak sits inside, a few after to finish the word.
CONTEXT_BEFORE, CONTEXT_AFTER = 12, 4


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


def top_context_texts(values: torch.Tensor, contexts: torch.Tensor, tokenizer, k: int = 5) -> list[str]:
    """The decoded windows (``CONTEXT_BEFORE`` tokens before to ``CONTEXT_AFTER`` after) around
    the ``k`` largest positive entries of ``values`` [n_contexts, pos], a latent's activations on
    ``contexts`` [n_contexts, pos] token ids; strongest first, fewer where fewer are positive."""
    if values.shape != contexts.shape:
        raise ConfigError(f"values {tuple(values.shape)} and contexts {tuple(contexts.shape)} must have the same shape")
    flat = values.flatten()
    active = int((flat > 0).sum())
    texts = []
    for index in flat.topk(min(k, active)).indices.tolist() if active else []:
        row, position = divmod(index, values.shape[1])
        texts.append(tokenizer.decode(contexts[row, max(0, position - CONTEXT_BEFORE):position + CONTEXT_AFTER]))
    return texts


def latents_with_behaviour(values: torch.Tensor, latents: Sequence[int], contexts: torch.Tensor, tokenizer,
                           recipe: Recipe, k: int = 5) -> dict[int, list[str]]:
    """The latents (of ``latents``, whose activations are ``values`` [n_contexts, pos,
    len(latents)] on ``contexts``) with the recipe's behaviour in one of their top ``k``
    contexts (:func:`top_context_texts`): a marker of it, or one of its words. Each maps to its
    top context texts, strongest first. Run after a blind method, to score what it found."""
    if values.dim() != 3 or values.shape[-1] != len(latents):
        raise ConfigError(f"values must be [n_contexts, pos, {len(latents)}] (one column per latent); got "
                         f"{tuple(values.shape)}")
    words = behaviour_words(recipe)
    found = {}
    for column, latent in enumerate(latents):
        texts = top_context_texts(values[..., column], contexts, tokenizer, k)
        if any(shows_behaviour(text, recipe.behaviour_markers) or text_hits(text, words) for text in texts):
            found[int(latent)] = texts
    return found


__all__ = ["behaviour_starts", "behaviour_words", "is_hit", "latents_with_behaviour", "lens_hits", "text_hits",
           "top_context_texts"]
