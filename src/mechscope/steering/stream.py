"""Unsteered and steered continuations of one prompt, generated side by side and streamed.

Both continuations come from one batch of two identical rows; the steering hooks act on the
second row only. So strength 0 gives exactly the unsteered text (the same numbers in the same
batch), and the difference at any other strength is the steering's alone. Greedy decoding with a
KV cache, one step per yield, so a web page can show the two texts grow."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from mechscope.models.hooked_model import HookedModel, HookSpec
from mechscope.steering.apply import DirectionalAblation, Steering
from mechscope.validate import check_int

ROWS = ("unsteered", "steered")


@dataclass(frozen=True)
class StreamStep:
    """New text of each continuation at one step ("" once a row has ended), and whether each has ended."""

    unsteered: str
    steered: str
    ended: tuple[bool, bool]


def _second_row_only(hooks: HookSpec) -> HookSpec:
    """The hooks applied to batch row 1 alone (row 0 stays the unsteered reference)."""
    def restricted(function):
        def hooked(activation: torch.Tensor, hook):
            part = activation[1:2].clone()
            changed = function(part, hook)  # a hook may return a new tensor or edit its input in place
            result = activation.clone()
            result[1:2] = part if changed is None else changed
            return result
        return hooked
    return [(name, restricted(function)) for name, function in hooks]


def _stop_tokens(model: HookedModel) -> set[int]:
    ids = {model.tokenizer.eos_token_id, getattr(model.hf_model.generation_config, "eos_token_id", None)}
    flat = set()
    for item in ids:
        flat.update(item if isinstance(item, (list, tuple)) else [item])
    return {int(token) for token in flat if token is not None}


class _Detokeniser:
    """Text deltas of a growing token list. A piece that ends inside a multi-byte character waits
    for the rest; if decoding the longer list rewrites text already shown (a tokenizer that
    merges spaces), the shown text stays and what lies past its length is added, so a row never
    stops growing; :meth:`rest` gives what is still held back at the end."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.ids, self.shown = tokenizer, [], ""

    def _text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self._text()
        if text.endswith("\ufffd"):
            return ""
        return self._delta(text)

    def _delta(self, text: str) -> str:
        # Everything past the length already shown. Where decoding rewrote earlier text, what was
        # shown stays as it was shown (it cannot be taken back) and the row goes on growing.
        delta = text[len(self.shown):]
        self.shown += delta
        return delta

    def rest(self) -> str:
        return self._delta(self._text().rstrip("\ufffd")) if self.ids else ""


@torch.no_grad()
def stream_side_by_side(
    model: HookedModel,
    prompt: str,
    intervention: Steering | DirectionalAblation,
    max_new_tokens: int = 40,
    chat: bool | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Iterator[StreamStep]:
    """Greedy continuations of ``prompt`` without and with ``intervention``, one token per
    step; stops after ``max_new_tokens``, when both rows have ended, or when ``should_stop()``."""
    check_int("max_new_tokens", max_new_tokens, minimum=1, maximum=4096)
    tokens, _ = model.tokenize_prompts([prompt], chat)
    batch = tokens.repeat(2, 1)
    stops = _stop_tokens(model)
    texts = [_Detokeniser(model.tokenizer), _Detokeniser(model.tokenizer)]
    ended = [False, False]
    hooks = _second_row_only(intervention.hooks(model, generating=True))
    cached: dict = {}  # the KV cache, under the name this transformers gives it
    step_input = batch
    with model.hooks(hooks):
        for step in range(max_new_tokens):
            if should_stop():
                return
            output = model.hf_model(input_ids=step_input, use_cache=True, **cached)
            # transformers 5.x renamed past_key_values to cache.
            key = "cache" if "cache" in output else "past_key_values"
            cached = {key: output[key]}
            chosen = output.logits[:, -1].float().argmax(-1)
            pieces = []
            for row in range(2):
                token = int(chosen[row])
                if ended[row] or token in stops:
                    ended[row] = True
                    pieces.append("")
                else:
                    pieces.append(texts[row].add(token))
            if all(ended) or step == max_new_tokens - 1:  # the last step: what was held back comes too
                pieces = [piece + text.rest() for piece, text in zip(pieces, texts)]
            yield StreamStep(pieces[0], pieces[1], (ended[0], ended[1]))
            if all(ended):
                return
            step_input = chosen[:, None]


__all__ = ["ROWS", "StreamStep", "stream_side_by_side"]
