"""Side-by-side streamed generation: each row equals the library's own greedy generation, with
and without the steering; strength 0 gives identical rows; ``should_stop`` ends it."""

import torch

import mechscope
from mechscope.steering import Direction, Steering, generate
from mechscope.steering.stream import stream_side_by_side


def test_rows_equal_plain_and_steered_generation_and_zero_strength_changes_nothing():
    model = mechscope.load_tiny("llama")
    direction = Direction.from_vector(torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0)),
                                      layer=1)
    for strength in (0.0, 60.0):
        steps = list(stream_side_by_side(model, "the cat sat on", Steering(direction, strength), 12, chat=False))
        unsteered = "".join(step.unsteered for step in steps)
        steered = "".join(step.steered for step in steps)
        assert unsteered == generate(model, "the cat sat on", None, 12, chat=False, progress=False)[0]
        assert steered == generate(model, "the cat sat on", Steering(direction, strength), 12, chat=False,
                                   progress=False)[0]
        assert (steered == unsteered) == (strength == 0.0)
    calls = iter(range(100))
    stopped = list(stream_side_by_side(model, "the cat", Steering(direction, 1.0), 50, chat=False,
                                       should_stop=lambda: next(calls) >= 3))
    assert len(stopped) == 3
