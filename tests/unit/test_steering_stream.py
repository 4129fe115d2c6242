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


class _Rewriting:
    """A tokenizer whose decoding of a longer list rewrites earlier text, and whose last token is
    half a character: the stream must neither freeze nor drop the end."""

    def decode(self, ids, skip_special_tokens=True):
        text = "".join({1: "a ", 2: ",", 3: "b", 4: "\ufffd"}[i] for i in ids)
        return text.replace(" ,", ",")  # "a " + "," -> "a," (a space merged away)


def test_the_detokeniser_keeps_growing_through_a_rewrite_and_flushes_what_it_held():
    from mechscope.steering.stream import _Detokeniser

    text = _Detokeniser(_Rewriting())
    pieces = [text.add(token) for token in (1, 2, 3, 4)]
    assert pieces == ["a ", "", "b", ""]  # the rewrite shortens the text: nothing new; then it grows again
    assert text.rest() == ""  # the held-back half character is not text
    assert "".join(pieces) == "a b"
