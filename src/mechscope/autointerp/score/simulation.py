"""The ``simulation`` scorer: a language model predicts each token's activation (0-10) from the
explanation alone, scored by the correlation of its predictions with the true activations.

With a backend that echoes (the in-process model, ``mechscope serve-llm``, vLLM), each window is
written as a listing "token<TAB>unknown" per line and scored in one pass: the echo's top
alternatives at each placeholder are the model's distribution over what belongs there, and the
prediction is the expected value over the digits 0-10 it puts mass on (renormalised), as OpenAI's
simulator does. A backend that cannot echo is asked instead to write one number per token; the
numbers are parsed in order (a missing or unreadable one counts as 0) and the score's note says
so. The correlation is Pearson's over every token of every window, with a bootstrap over windows.
Chance is 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mechscope.autointerp import prompts
from mechscope.autointerp.backends.base import Backend, TokenLogprobs
from mechscope.autointerp.score.base import Score, bootstrap_interval, checked_windows
from mechscope.errors import MechscopeError

DIGITS = {str(d): d for d in range(11)}


def _expected_digit(top: dict[str, float]) -> float | None:
    """Expected value over the digit alternatives of one position, None when none is a digit."""
    mass = {}
    for text, logprob in top.items():
        digit = DIGITS.get(text.strip())
        if digit is not None:
            mass[digit] = mass.get(digit, 0.0) + math.exp(logprob)
    total = sum(mass.values())
    return sum(d * p for d, p in mass.items()) / total if total > 0 else None


def _placeholder_predictions(echoed: list[TokenLogprobs], n_tokens: int) -> tuple[list[float], int]:
    """The predicted activation at each placeholder of one echoed listing, and how many had no
    digit among their alternatives. A placeholder starts at a token whose preceding text ends in a
    tab and whose text onwards begins with the placeholder, however the tokenizer splits it; the
    last ``n_tokens`` such tokens are the listing's."""
    texts = [token.text for token in echoed]
    full, offsets, position = "".join(texts), [], 0
    for text in texts:
        offsets.append(position)
        position += len(text)
    spots = [i for i, offset in enumerate(offsets)
             if texts[i] and full[:offset].endswith("\t") and full.startswith(prompts.PLACEHOLDER, offset)]
    if len(spots) < n_tokens:
        raise MechscopeError(f"the echoed listing holds {len(spots)} readable placeholders for {n_tokens} tokens "
                             f"(the backend's tokenizer joins the tab and {prompts.PLACEHOLDER!r}), so simulation "
                             "cannot read its predictions from logprobs")
    predictions, missing = [], 0
    for index in spots[-n_tokens:]:
        value = _expected_digit(echoed[index].top)
        missing += value is None
        predictions.append(0.0 if value is None else value)
    return predictions, missing


def _parsed_predictions(text: str, n_tokens: int) -> tuple[list[float], int]:
    """One number per line of a written answer, in order; missing or unreadable ones are 0."""
    values, missing = [], 0
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for index in range(n_tokens):
        word = lines[index].split()[-1] if index < len(lines) else ""
        try:
            values.append(min(10.0, max(0.0, float(word))))
        except ValueError:
            values.append(0.0)
            missing += 1
    return values, missing


def _pearson(sums: torch.Tensor) -> torch.Tensor:
    """[..., 6] sums (n, x, y, xx, yy, xy) -> [...] Pearson correlation (0 where either side is constant)."""
    n, x, y, xx, yy, xy = sums.unbind(-1)
    cov = xy - x * y / n
    var_x, var_y = xx - x * x / n, yy - y * y / n
    denominator = (var_x * var_y).clamp_min(0).sqrt()
    return torch.where(denominator > 1e-12, cov / denominator.clamp_min(1e-12), torch.zeros_like(cov))


def simulation_score(explanation: str, windows: Sequence[Sequence[str]], activations: Sequence[torch.Tensor],
                     backend: Backend, n_boot: int = 1000, level: float = 0.95, seed: int = 0, top_logprobs: int = 20,
                     progress: bool = False) -> Score:
    """Correlation between the activations a model simulates from ``explanation`` and the true
    ``activations`` of the ``windows`` (see the module docstring)."""
    rows = checked_windows(windows, activations)
    if backend.echoes:
        echoed = backend.echo([prompts.simulation_text(explanation, tokens) for tokens in windows], top_logprobs)
        read = [_placeholder_predictions(listing, len(tokens)) for listing, tokens in zip(echoed, windows)]
        how = ""
    else:
        completions = backend.chat([prompts.simulation_request(explanation, tokens) for tokens in windows],
                                   progress=progress)
        read = [_parsed_predictions(c.text, len(tokens)) for c, tokens in zip(completions, windows)]
        how = "the backend cannot echo, so the activations it wrote were parsed"
    per_window = []
    for (predicted, _), actual in zip(read, rows):
        x, y = torch.tensor(predicted, dtype=torch.float64), actual.double()
        per_window.append([len(x), x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum()])
    sums = torch.tensor(per_window, dtype=torch.float64)  # [windows, 6]
    if float(_pearson(sums.sum(0))) == 0 and float(sums[:, 4].sum() - sums[:, 2].sum() ** 2 / sums[:, 0].sum()) <= 0:
        raise MechscopeError("the true activations are constant over these windows, so no correlation is defined")
    value, low, high = bootstrap_interval(sums, lambda r: _pearson(r.sum(-2)), n_boot, level, seed)
    missing = sum(m for _, m in read)
    notes = [how] if how else []
    if missing:
        notes.append(f"{missing} of {sum(len(t) for t in windows)} tokens got no readable prediction and count as 0")
    return Score(value, low, high, 0.0, len(windows), level, "correlation", "; ".join(notes))


__all__ = ["simulation_score"]
