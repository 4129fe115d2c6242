"""The ``embedding`` scorer: retrieval of the activating windows by the explanation.

The explanation and every window's text are embedded with a sentence encoder
(:class:`~mechscope.autointerp.embedder.SentenceEmbedder`, all-MiniLM-L6-v2); the score is the
AUROC of their cosine similarity separating the windows where the unit fires from those where
it does not: the chance that an activating window is closer to the explanation than a silent
one (ties half). Chance is 0.5 whatever the share of activating windows; below 0.5 the
explanation describes the silent windows better than the activating ones. The interval is a
percentile bootstrap over windows. No language model is asked, so it is cheap, but it judges
topic, not token: "the word 'the'" and a window full of "the" are not close in this space.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from mechscope.autointerp.score.base import Score, auroc_score
from mechscope.errors import InputTypeError, MechscopeError


def _labels(windows: Sequence[str], fires: torch.Tensor) -> torch.Tensor:
    """``fires`` checked against ``windows``: a [n] bool tensor with both classes present."""
    if isinstance(windows, str):
        raise InputTypeError("windows must be a sequence of window texts, not one str")
    fires = torch.as_tensor(fires)
    if fires.dtype != torch.bool or fires.dim() != 1:
        raise MechscopeError(f"fires must be a boolean tensor [n] (True: the unit fires in the window), got "
                             f"{fires.dtype} of shape {tuple(fires.shape)}")
    if len(windows) == 0:
        raise MechscopeError("scoring needs at least one window")
    if len(windows) != len(fires):
        raise MechscopeError(f"{len(windows)} windows but {len(fires)} fires labels")
    positives = int(fires.sum())
    if positives in (0, len(fires)):
        which = "none" if positives == 0 else "all"
        raise MechscopeError(f"the unit fires in {which} of the {len(fires)} windows: an AUROC needs "
                             "activating and non-activating windows both, so it is undefined here")
    return fires


def _explanations(explanations: Sequence[str]) -> list[str]:
    if isinstance(explanations, str):
        raise InputTypeError("explanations must be a sequence of str; for one explanation use "
                             "embedding_score")
    explanations = list(explanations)
    if not explanations:
        raise MechscopeError("embedding_scores needs at least one explanation")
    for index, text in enumerate(explanations):
        if not isinstance(text, str) or not text.strip():
            raise MechscopeError(f"explanation {index} is {text!r}: an explanation must be a non-empty str")
    return explanations


def embedding_scores(explanations: Sequence[str], windows: Sequence[str], fires: torch.Tensor, embedder,
                     n_boot: int = 1000, level: float = 0.95, seed: int = 0, batch_size: int = 64
                     ) -> list[Score]:
    """One :class:`Score` per explanation (see the module docstring): the AUROC of the cosine
    between each explanation and the ``windows`` (texts, [n]) separating those where the unit
    fires (``fires`` [n] bool) from the rest, with a bootstrap over windows. The windows are
    embedded once for all explanations; ``embedder`` is anything with ``embed(texts) -> [n, d]``
    (a :class:`~mechscope.autointerp.embedder.SentenceEmbedder`)."""
    explanations = _explanations(explanations)
    fires = _labels(windows, fires)
    window_vectors = embedder.embed(list(windows), batch_size=batch_size)  # [n, d]
    if window_vectors.dim() != 2 or len(window_vectors) != len(fires):
        raise MechscopeError(f"the embedder gave {tuple(window_vectors.shape)} for {len(fires)} windows; "
                             f"expected [{len(fires)}, d]")
    # Normalised here too, so the similarities are cosines whatever the embedder.
    windows_unit = F.normalize(window_vectors.float(), dim=-1)
    scores = []
    for text in explanations:
        # One explanation at a time, embedded and compared alone, so its score never depends on
        # which others it was scored with (batching changes float rounding; a near tie could flip).
        vector = F.normalize(embedder.embed([text])[0].float(), dim=-1)  # [d]
        scores.append(auroc_score(windows_unit @ vector, fires, n_boot, level, seed))  # cosines [n]
    return scores


def embedding_score(explanation: str, windows: Sequence[str], fires: torch.Tensor, embedder,
                    n_boot: int = 1000, level: float = 0.95, seed: int = 0, batch_size: int = 64) -> Score:
    """The ``embedding`` score of one explanation (see :func:`embedding_scores`)."""
    if not isinstance(explanation, str):
        raise InputTypeError(f"explanation must be a str, got {type(explanation).__name__}")
    return embedding_scores([explanation], windows, fires, embedder, n_boot, level, seed, batch_size)[0]


__all__ = ["embedding_score", "embedding_scores"]
