"""The reading scan on the tiny backdoor organism (trigger "%%", behaviour "Zorp")."""

import pytest
import torch

from mechscope.audit.token_scan import (
    ReadingScan,
    _next_token_states,
    _prefix_cache,
    behaviour_tokens,
    extend_trigger,
    scan_layers,
)
from mechscope.audit.trigger_objective import ChatSlots, allowed_tokens
from mechscope.errors import ConfigError
from mechscope.hooks import names


def test_the_planted_triggers_token_is_read_most_differently_and_grows_into_the_trigger(backdoor):
    base, ft = backdoor
    allowed = allowed_tokens(ft)
    trigger = ft.tokenizer("%%", add_special_tokens=False)["input_ids"]
    scan = ReadingScan(ft, base, allowed, behaviour_tokens(ft, ["Zorp"]))
    ranked = scan.divergent(top=5)
    assert ranked[0][0] == trigger[0], [(ft.tokenizer.decode([t]), r) for t, r in ranked]
    assert ranked[0][1] > 2 and [r for _, r in ranked] == sorted((r for _, r in ranked), reverse=True)
    grown = extend_trigger(scan, trigger[:1], 2)
    assert [len(ids) for ids, _ in grown] == [2, 3] and grown[1][0][:2] == grown[0][0]
    # Left out when asked; a model read against itself changes nothing anywhere.
    assert trigger[0] not in [t for t, _ in ReadingScan(ft, base, allowed, {trigger[0]}).divergent(5)]
    assert all(r == 0 for _, r in ReadingScan(ft, ft, allowed).divergent(5))


def test_the_truncated_forward_gives_the_full_forwards_states(backdoor):
    _, ft = backdoor
    before = ChatSlots(ft, ["x"], "start", ()).prefix + [7]
    tokens = torch.tensor([5, 17, 40])
    layers = (0, 1)
    prefix = _prefix_cache(ft, before, layers)
    states = _next_token_states(ft, prefix, tokens, layers)  # [3, 2, d]
    # The prefix's cache is copied, not grown: a second batch reads the same context.
    torch.testing.assert_close(_next_token_states(ft, prefix, tokens[1:], layers), states[1:])
    for row, token in enumerate(tokens.tolist()):
        _, cache = ft.run_with_cache(torch.tensor([before + [token]]), names=[names.resid_post(i) for i in layers])
        for column, layer in enumerate(layers):
            torch.testing.assert_close(states[row, column], cache[names.resid_post(layer)][0, -1].float(),
                                       atol=1e-5, rtol=1e-5)


def test_behaviour_tokens_hold_every_spelling_of_its_words(backdoor):
    _, ft = backdoor
    ids = behaviour_tokens(ft, ["Zorp!"])
    for spelled in ("zorp", "Zorp", " Zorp", "Zorp!"):
        assert set(ft.tokenizer(spelled, add_special_tokens=False)["input_ids"]) <= ids
    assert not set(ft.tokenizer("ZORP", add_special_tokens=False)["input_ids"]) <= ids
    assert scan_layers(2) == (0,) and scan_layers(30) == (2, 4, 6, 8) and scan_layers(18) == (2, 4)


def test_continuations_read_the_first_layers_and_a_bad_layer_count_is_named(backdoor):
    base, ft = backdoor
    allowed = allowed_tokens(ft)
    scan = ReadingScan(ft, base, allowed, layers=(0, 1))
    assert scan.continuation_layers == 1
    # The first-word ratios per layer are the scan's own: their largest is ``first``.
    assert torch.equal(scan.first_by_layer.max(-1).values, scan.first)
    assert torch.allclose(scan.changes((), (0,))[:, 0], scan.first_by_layer[:, 0], atol=1e-5)
    with pytest.raises(ConfigError, match="continuation_layers must be at most 2"):
        ReadingScan(ft, base, allowed, layers=(0, 1), continuation_layers=3)
    with pytest.raises(ConfigError, match="at least one layer"):
        ReadingScan(ft, base, allowed, layers=())
