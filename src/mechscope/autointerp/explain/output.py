"""Output-side records and the ``output`` explainer: what a unit makes the model say.

A unit's output side is read two ways from its direction in the residual stream (for a
dictionary latent, its decoder row; see :func:`mechscope.steering.direction.sae_direction`):

- the **vocabulary projection**: the direction through the final norm's weight and the
  unembedding, the tokens whose logits it raises and lowers directly;
- the **steering changes**: the direction added (``alpha`` times) to the residual stream before
  its layer, on every position of some prompts; the tokens whose next-token log-probability rises
  most on average are what the unit *causes*, through all the layers after it.

The ``output`` explanation names the tokens that rise under steering, those the projection also
promotes first: "makes the model say ...". It is a claim about effects, not about where the unit
fires, so it is scored by ``intervention``, not by the input-side scorers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mechscope.errors import FileFormatError, MechscopeError
from mechscope.files import atomic_text, read_json
from mechscope.hooks.names import resid_pre
from mechscope.models.hooked_model import HookedModel
from mechscope.sae.dashboard import logit_effects
from mechscope.steering.apply import Steering
from mechscope.steering.direction import Direction
from mechscope.validate import check_int, check_number

FORMAT = "mechscope.autointerp.output_records/1"


@dataclass(frozen=True)
class OutputRecords:
    """``promoted``/``suppressed``: (token, logit effect) of the vocabulary projection, strongest
    first; ``rising``: (token, mean change of next-token log-probability) under steering by
    ``alpha``, over ``n_positions`` positions of the prompts."""

    unit: str
    promoted: tuple[tuple[str, float], ...]
    suppressed: tuple[tuple[str, float], ...]
    rising: tuple[tuple[str, float], ...]
    alpha: float
    n_positions: int

    def to_json(self) -> dict:
        return {"format": FORMAT, "unit": self.unit, "promoted": [list(p) for p in self.promoted],
                "suppressed": [list(p) for p in self.suppressed], "rising": [list(p) for p in self.rising],
                "alpha": self.alpha, "n_positions": self.n_positions}

    def save(self, path: str | Path) -> Path:
        return atomic_text(path, json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> OutputRecords:
        data = read_json(path, "output records")
        if data.get("format") != FORMAT:
            raise FileFormatError(f"{path} is not {FORMAT} (format {data.get('format')!r})")
        pairs = lambda key: tuple((str(t), float(v)) for t, v in data[key])
        return cls(data["unit"], pairs("promoted"), pairs("suppressed"), pairs("rising"), float(data["alpha"]),
                   int(data["n_positions"]))


def output_records(model: HookedModel, direction: Direction, prompts: Sequence[str], unit: str = "unit",
                   alpha: float | None = None, k: int = 10) -> OutputRecords:
    """The output side of the unit whose residual direction is ``direction`` (its ``layer``: the
    block it is added before) over plain-text ``prompts``. ``alpha`` defaults to the mean norm of
    the residual stream there (BOS excluded), a push the size of the stream itself."""
    check_int("k", k, 1)
    if direction.layer is None:
        raise MechscopeError("the direction records no layer; build it with layer= (the block it enters before)")
    if not prompts:
        raise MechscopeError("output records need at least one prompt to steer")
    tokens, mask = model.tokenize_prompts(list(prompts), chat=False)
    real = torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask.bool()  # [batch, pos]
    hook = resid_pre(direction.layer)
    with torch.no_grad():
        clean, cache = model.run_with_cache(tokens, [hook], attention_mask=mask)
        if alpha is None:
            # BOS excluded: its residual norm is often many times the others' (a sink).
            typical = real.clone()
            typical[:, 0] = False
            alpha = float(cache[hook].float().norm(dim=-1)[typical if typical.any() else real].mean())
        check_number("alpha", alpha)
        steering = Steering(direction, alpha)
        with model.hooks(steering.hooks(model)):
            steered = model.forward(tokens, attention_mask=mask)
    change = torch.log_softmax(steered.float(), -1) - torch.log_softmax(clean.float(), -1)  # [batch, pos, vocab]
    mean_change = change[real].mean(0)  # [vocab]
    up = mean_change.topk(k)
    rising = tuple((model.tokenizer.decode([int(i)]), float(v)) for v, i in zip(up.values, up.indices))
    (promoted, suppressed), = logit_effects(model, direction.vector[None], k)
    return OutputRecords(unit, tuple(promoted), tuple(suppressed), rising, float(alpha), int(real.sum()))


@dataclass(frozen=True)
class OutputExplanation:
    """``text``: "makes the model say ..."; ``tokens``: the tokens it names."""

    text: str
    tokens: tuple[str, ...]

    def to_json(self) -> dict:
        return {"text": self.text, "tokens": list(self.tokens)}


def explain_output(records: OutputRecords, n_tokens: int = 6) -> OutputExplanation:
    """The ``output`` explanation (see the module docstring): up to ``n_tokens`` distinct tokens
    that rise under steering, those the vocabulary projection also promotes first; the
    projection's own tokens fill the list when steering raised too few."""
    check_int("n_tokens", n_tokens, 1)
    promoted = {token.strip().lower() for token, _ in records.promoted}
    rising = [token for token, value in records.rising if value > 0]
    ordered = [t for t in rising if t.strip().lower() in promoted] + [t for t in rising
                                                                      if t.strip().lower() not in promoted]
    ordered += [token for token, _ in records.promoted]
    chosen, seen = [], set()
    for token in ordered:
        key = token.strip().lower()
        # A token with no readable text (a byte of a multi-byte character, a control byte) names nothing.
        if key and key.isprintable() and "\ufffd" not in key and key not in seen:
            seen.add(key)
            chosen.append(token.strip())
        if len(chosen) == n_tokens:
            break
    if not chosen:
        raise MechscopeError(f"unit {records.unit!r}: neither steering nor the vocabulary projection raises a "
                             "token with text; no output explanation")
    return OutputExplanation("makes the model say " + ", ".join(f'"{t}"' for t in chosen), tuple(chosen))


__all__ = ["OutputExplanation", "OutputRecords", "explain_output", "output_records"]
