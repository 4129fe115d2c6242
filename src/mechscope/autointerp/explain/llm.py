"""The ``llm`` explainer: a chat model reads a contrast and states what the unit fires on.

The prompt shows up to ``n_activating`` activating windows, the strongest first and then windows
from every quantile bin (so the explanation covers weak activations too), each with its firing
tokens marked ``<<`` ``>>``, and up to ``n_silent`` windows where the unit stays silent, the
hardest negatives first (windows that hold its commonest firing tokens, then nearest neighbours,
then random ones): a contrast the model can only honour by being specific. The reply's
"Explanation:" line is the explanation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mechscope.autointerp import prompts
from mechscope.autointerp.backends.base import Backend
from mechscope.autointerp.records import DeadUnitError, UnitRecords
from mechscope.errors import MechscopeError
from mechscope.validate import check_int

SILENT_ORDER = ("same tokens", "neighbours", "random")


@dataclass(frozen=True)
class LLMExplanation:
    """``text``: the explanation; ``reply``: the model's whole answer; ``shown``: how many
    activating and silent windows the prompt held."""

    text: str
    reply: str
    shown: tuple[int, int]

    def to_json(self) -> dict:
        return {"text": self.text, "reply": self.reply, "shown": list(self.shown)}


def _interleaved(records: UnitRecords, n: int) -> list[int]:
    """Activating windows: the top ones first, then the quantile bins in turn (strongest bin first)."""
    top = records.of_kind("top")
    bins = sorted({k for k in records.kinds if k.startswith("quantile")}, reverse=True)
    queues = [records.of_kind(b) for b in bins]
    order = top[:max(1, n // 2)]
    while len(order) < n and any(queues):
        for queue in queues:
            if queue and len(order) < n:
                order.append(queue.pop(0))
    order += [i for i in top if i not in order][:n - len(order)]
    return order


def llm_requests(records_list: Sequence[UnitRecords], tokenizer, n_activating: int = 12, n_silent: int = 6,
                 max_tokens: int = 48):
    """One explanation request per unit, with how many windows of each side it shows."""
    check_int("n_activating", n_activating, 1)
    check_int("n_silent", n_silent, 0)
    built = []
    for records in records_list:
        fires = records.activations > records.config.threshold  # [n, window]
        if not fires.any():
            raise DeadUnitError(f"unit {records.unit!r} never fires in its records: nothing to explain")
        texts = records.texts(tokenizer)
        activating = [prompts.render(texts[i], fires[i].tolist()) for i in _interleaved(records, n_activating)
                      if fires[i].any()]
        silent_index = [i for kind in SILENT_ORDER for i in records.of_kind(kind)][:n_silent]
        silent = [prompts.render(texts[i]) for i in silent_index]
        built.append((prompts.explain_request(activating, silent, max_tokens), (len(activating), len(silent))))
    return built


def explain_llm(records_list: Sequence[UnitRecords], tokenizer, backend: Backend, n_activating: int = 12,
                n_silent: int = 6, max_tokens: int = 48, progress: bool = False) -> list[LLMExplanation]:
    """An explanation per unit's records (see the module docstring), asked of ``backend`` in one
    batch. A reply with no explanation in it is an error naming the unit and the reply."""
    built = llm_requests(records_list, tokenizer, n_activating, n_silent, max_tokens)
    completions = backend.chat([request for request, _ in built], progress=progress)
    explanations = []
    for records, (_, shown), completion in zip(records_list, built, completions):
        text = prompts.parse_explanation_reply(completion.text)
        if not text:
            raise MechscopeError(f"the model gave no explanation for unit {records.unit!r}; its reply was "
                                 f"{completion.text!r}")
        explanations.append(LLMExplanation(text, completion.text, shown))
    return explanations


def windows_of(records: UnitRecords, tokenizer) -> tuple[list[list[str]], list[torch.Tensor]]:
    """A unit's records as (windows as token texts, their activations), the form every scorer takes."""
    return records.texts(tokenizer), list(records.activations)


__all__ = ["LLMExplanation", "explain_llm", "llm_requests", "windows_of"]
