"""Activation capping on tiny models: identities, a planted excursion cut back, bad input named."""

import pytest
import torch

import mechscope
from mechscope.errors import ConfigError, MechscopeError
from mechscope.hooks import names
from mechscope.steering import ActivationCap, Direction, Steering, fit_cap_ladder, fit_caps
from mechscope.steering.evaluate import kl_divergence, last_token_logits
from tests.unit.audit_organism import NEUTRAL


def test_caps_at_the_full_range_leave_their_own_prompts_unchanged_and_a_cap_holds_every_projection():
    model = mechscope.load_tiny("llama", chat=True)
    torch.manual_seed(0)
    directions = {layer: torch.randn(model.cfg.d_model) for layer in range(model.cfg.n_layers)}
    prompts = ["the cat sat", "a dog ran far away", "hello"]
    # quantile 0: the caps are the smallest and largest projections seen, so nothing is moved.
    whole = fit_caps(model, directions, prompts, quantile=0.0)
    plain = last_token_logits(model, prompts, (), chat=True)
    assert torch.allclose(last_token_logits(model, prompts, whole.hooks(model), chat=True), plain, atol=1e-5)
    # At the median both ways, every typical position's projection is pinned to one value.
    pinned = fit_caps(model, directions, prompts, quantile=0.5)
    cap = pinned.caps[1]
    assert cap.low == pytest.approx(cap.high)
    tokens, mask = model.tokenize_prompts(prompts, chat=True)
    _, cache = model.run_with_cache(tokens, names=[names.resid_pre(1)], attention_mask=mask,
                                    fwd_hooks=pinned.hooks(model))
    states = cache[names.resid_pre(1)][mask.bool()]
    orthogonal = states - (states @ cap.direction)[:, None] * cap.direction
    typical = orthogonal.norm(dim=-1) < pinned.outlier_norm * cap.typical_norm
    assert typical.sum() >= len(prompts)
    assert torch.allclose(states[typical] @ cap.direction, torch.full((int(typical.sum()),), cap.low), atol=1e-4)
    assert abs(float(cap.direction.norm()) - 1) < 1e-5
    # Saved as JSON and tensors and read back, the caps run the same.
    again = ActivationCap.from_state(*pinned.to_state())
    assert torch.allclose(last_token_logits(model, prompts, again.hooks(model), chat=True),
                                             last_token_logits(model, prompts, pinned.hooks(model), chat=True))
    assert [(c.layer, c.low, c.high) for c in again.caps] == [(c.layer, c.low, c.high) for c in pinned.caps]


def test_bad_caps_are_named(backdoor):
    _, ft = backdoor
    with pytest.raises(MechscopeError, match="at least one direction"):
        fit_caps(ft, {}, NEUTRAL)
    with pytest.raises(ConfigError, match="layer"):
        fit_caps(ft, {ft.cfg.n_layers: torch.ones(ft.cfg.d_model)}, NEUTRAL)
    with pytest.raises(ConfigError, match="quantile"):
        fit_caps(ft, {0: torch.ones(ft.cfg.d_model)}, NEUTRAL, quantile=0.7)
    wide = fit_caps(ft, {0: torch.ones(ft.cfg.d_model)}, NEUTRAL)
    narrow = ActivationCap((type(wide.caps[0])(0, torch.ones(3), 0.0, 1.0, 1.0),))
    with pytest.raises(MechscopeError, match="width"):
        narrow.hooks(ft)
    with pytest.raises(MechscopeError, match="at least one"):
        ActivationCap(())
    state, tensors = wide.to_state()
    with pytest.raises(MechscopeError, match="2 directions for 1 caps"):
        ActivationCap.from_state(state, {"directions": torch.ones(2, ft.cfg.d_model)})


def test_capping_cuts_a_planted_excursion_along_its_direction_and_nothing_else():
    model = mechscope.load_tiny("llama", chat=True)
    torch.manual_seed(1)
    prompts = ["the cat sat", "a dog ran far away", "hello there", "one two three", "red green blue"]
    planted = Direction.from_vector(torch.randn(model.cfg.d_model), layer=1)
    push = Steering(planted, 8.0 * float(model.cfg.d_model) ** 0.5)
    plain = last_token_logits(model, prompts, (), chat=True)
    steered = last_token_logits(model, prompts, push.hooks(model), chat=True)
    caps = fit_caps(model, {1: planted.vector}, prompts, quantile=0.0)
    # The cap runs after the push at the same hook point: it holds the projection at the plain
    # prompts' largest, where the push had carried it far beyond.
    capped = last_token_logits(model, prompts, [*push.hooks(model), *caps.hooks(model)], chat=True)
    moved, left = kl_divergence(plain, steered), kl_divergence(plain, capped)
    assert moved > 0.1 and left < 0.1 * moved, (moved, left)
    # A cap along another direction leaves the push as it was.
    other = fit_caps(model, {1: torch.randn(model.cfg.d_model)}, prompts, quantile=0.0)
    unrelated = last_token_logits(model, prompts, [*push.hooks(model), *other.hooks(model)], chat=True)
    assert kl_divergence(plain, unrelated) > 0.5 * moved


def test_a_ladder_and_stacked_directions_fit_as_each_alone():
    model = mechscope.load_tiny("llama", chat=True)
    torch.manual_seed(2)
    first, second = torch.randn(model.cfg.d_model), torch.randn(model.cfg.d_model)
    prompts = ["the cat sat", "a dog ran far away", "hello there"]
    wide, narrow = fit_cap_ladder(model, {1: torch.stack([first, second]), 2: first}, prompts, (0.2, 0.05))
    assert [c.layer for c in wide.caps] == [1, 1, 2]  # two directions at layer 1, each capped on its own
    for quantile, ladder_caps in ((0.2, wide), (0.05, narrow)):
        alone = [fit_caps(model, {layer: vector}, prompts, quantile).caps[0]
                 for layer, vector in ((1, first), (1, second), (2, first))]
        assert [b for c in ladder_caps.caps for b in (c.low, c.high)] == pytest.approx([b for c in alone for b in (c.low, c.high)])
    assert all(w.high - w.low < n.high - n.low for w, n in zip(wide.caps, narrow.caps))  # 20% clamps more
    with pytest.raises(MechscopeError, match="width 3"):
        fit_caps(model, {1: torch.ones(2, 3)}, prompts)
    with pytest.raises(MechscopeError, match="at least one quantile"):
        fit_cap_ladder(model, {1: first}, prompts, ())
