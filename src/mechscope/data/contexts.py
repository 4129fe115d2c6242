"""Contexts from the default corpus for a given model: the one helper every run that needs
"n contexts of 128 tokens" (SAE training and evaluation, the tuned lens, perplexity) uses."""

from __future__ import annotations

import torch

from mechscope import checks
from mechscope.data.corpus import pack, stdlib_docstrings
from mechscope.errors import ConfigError
from mechscope.models.hooked_model import HookedModel
from mechscope.validate import check_int

CONTEXT_LENGTH = 128  # tokens per context, BOS included


def default_contexts(model: HookedModel, n_contexts: int = 16, context_length: int = CONTEXT_LENGTH,
                     seed: int = 0, skip: int = 0) -> torch.Tensor:
    """[n_contexts, context_length] token contexts packed from the default corpus
    (standard-library docstrings), after the first ``skip`` (so held-out sets do not overlap).
    Refuses counts below 1 or above the corpus, and contexts longer than the model's."""
    check_int("contexts", n_contexts, 1, checks.MAX_CONTEXTS)
    check_int("skip", skip, 0, checks.MAX_CONTEXTS)
    check_int("context_length", context_length, 2)
    checks.check_context(model, context_length, "a corpus context")
    contexts = pack(model.tokenizer, stdlib_docstrings(), context_length, n_contexts=n_contexts + skip, seed=seed)
    if len(contexts) < n_contexts + skip:
        raise ConfigError(f"the default corpus holds {len(contexts)} contexts of {context_length} tokens for this "
                          f"tokenizer; {n_contexts + skip} were asked for: ask for fewer")
    return contexts[skip:]
