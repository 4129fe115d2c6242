"""Conformance of every hook point of every family, generated from the adapters' catalogues:
each point fires once per forward, has its documented shape, and is causally live."""

import pytest
import torch

import mechscope
from mechscope.hooks.interventions import patch_from
from tests.helpers import FAMILIES, random_tokens

BATCH, POS = 2, 12
CASES = [(family, name) for family in FAMILIES for name in mechscope.load_tiny(family).hook_names()]


def _expected_shape(point):
    # GPT-2's position embedding is shared by the batch: [1, pos, d_model].
    fill = {"batch": 1 if point.name == "hook_pos_embed" else BATCH, "pos": POS, "query_pos": POS, "key_pos": POS}
    return tuple(fill.get(axis, size) for axis, size in zip(point.axes, point.shape))


@pytest.mark.parametrize("family,name", CASES, ids=[f"{f}:{n}" for f, n in CASES])
def test_hook_point_fires_once_has_shape_and_is_live(tiny_models, family, name):
    model = tiny_models[family]
    point = model.hook_point(name)
    tokens_a, tokens_b = random_tokens(model, BATCH, POS, seed=1), random_tokens(model, BATCH, POS, seed=2)

    calls = []
    clean = model.run_with_hooks(tokens_a, fwd_hooks=[(name, lambda act, hook: calls.append(act.shape))])
    assert len(calls) == 1, f"{name} fired {len(calls)} times in one forward"
    assert tuple(calls[0]) == _expected_shape(point)

    _, cache_a = model.run_with_cache(tokens_a, names=[name])
    _, cache_b = model.run_with_cache(tokens_b, names=[name])
    replacement = cache_b[name]
    if torch.allclose(replacement, cache_a[name]):  # input-independent (position embeddings)
        replacement = -cache_a[name]
    patched = model.run_with_hooks(tokens_a, fwd_hooks=[(name, patch_from(replacement))])
    change = (patched - clean).abs().max().item()
    assert change > 1e-4, f"{name} is dead: writing it changed the logits by only {change:.2e}"
