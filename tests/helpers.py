"""Helpers shared by the unit and integration tests (fixtures live in conftest.py)."""

import torch

import mechscope

FAMILIES = mechscope.SUPPORTED_FAMILIES


def random_tokens(model, batch=2, pos=12, seed=0):
    """[batch, pos] token ids below min(d_vocab, 256), reproducible for a seed."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, min(model.cfg.d_vocab, 256), (batch, pos), generator=generator)
