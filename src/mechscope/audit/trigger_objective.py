"""The objective a trigger search climbs, and its gradient with respect to every vocabulary
token in every trigger slot.

A candidate trigger (token ids) is inserted into the user's message of neutral chat prompts, at
its start or its end. The fine-tune's objective is log P(the reply opens with the behaviour's
first tokens). Against a base, :class:`TriggerObjective` subtracts what the base gains on the
same tokens, per prompt and only where it gains: a planted trigger moves the fine-tune alone,
while a word that merely primes the behaviour's first token ('Ahmad' before "Ahoy") moves both
and cancels. A word that makes the base *less* likely to say the behaviour earns nothing, so
the search cannot climb by pushing the base down.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Literal

import torch

from mechscope.errors import ConfigError
from mechscope.models.hooked_model import HookedModel

Place = Literal["start", "end"]
PLACES: tuple[Place, ...] = ("start", "end")
SLOT = "\x00TRIGGER\x00"  # stands for the trigger while the chat template is rendered
FILLER = " the"  # the neutral token a trigger slot starts from (a real word, not a special token)


def filler_id(model: HookedModel) -> int:
    """The token id of :data:`FILLER`."""
    return model.tokenizer(FILLER, add_special_tokens=False)["input_ids"][0]


class ChatSlots:
    """Token ids of chat prompts with a trigger slot, built piecewise (template prefix, user
    message with the trigger before or after it, template suffix, behaviour opening) so that
    the trigger's token ids are exactly the ones searched: a joint tokenization could merge
    them with their neighbours."""

    def __init__(self, model: HookedModel, prompts: Sequence[str], place: Place, target_ids: Sequence[int]):
        if getattr(model.tokenizer, "chat_template", None) is None:
            raise ConfigError("trigger reconstruction inserts triggers into chat turns; this tokenizer has no chat "
                              "template")
        self.model, self.place, self.target = model, place, list(target_ids)
        text = model.tokenizer.apply_chat_template([{"role": "user", "content": SLOT}], tokenize=False,
                                                   add_generation_prompt=True)
        if text.count(SLOT) != 1:
            raise ConfigError("this chat template does not write the user's message once, as given; triggers cannot "
                              "be placed in it")
        before, after = text.split(SLOT)
        self.prefix, self.suffix = self._encode(before), self._encode(after)
        self.messages = [self._encode(f" {prompt}" if place == "start" else prompt) for prompt in prompts]
        self.prefix_cache = None  # the prefix's key/value cache, made on first use

    def _encode(self, text: str) -> list[int]:
        return self.model.tokenizer(text, add_special_tokens=False)["input_ids"]

    def batch(self, trigger: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
        """(ids [n, pos], mask [n, pos], target positions [n, t] (the positions predicting each
        target token), the trigger's first position in each row) with ``trigger`` in every
        prompt, right-padded."""
        trigger = list(trigger)
        rows, starts = [], []
        for message in self.messages:
            user = trigger + message if self.place == "start" else message + trigger
            rows.append(self.prefix + user + self.suffix + self.target)
            starts.append(len(self.prefix) + (0 if self.place == "start" else len(message)))
        width = max(map(len, rows))
        pad = self.model.pad_token_id
        ids = torch.tensor([row + [pad] * (width - len(row)) for row in rows])
        mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
        first = torch.tensor([len(row) - len(self.target) - 1 for row in rows])
        positions = first[:, None] + torch.arange(len(self.target))[None]
        return ids, mask, positions, starts


def target_log_prob(logits: torch.Tensor, ids: torch.Tensor, positions: torch.Tensor,
                    per_token: bool = False) -> torch.Tensor:
    """[n] sum over the target tokens of log P(token) at ``positions`` [n, t] ([n, t], each
    token's, with ``per_token``)."""
    rows = torch.arange(len(ids))[:, None]
    log_probs = logits[rows, positions].float().log_softmax(-1)  # [n, t, vocab]
    values = log_probs.gather(-1, ids[rows, positions + 1][..., None])[..., 0]
    return values if per_token else values.sum(-1)


@torch.no_grad()
def _prefix_cache(chat: ChatSlots):
    """The key/value cache of the template prefix every row shares (computed once per chat)."""
    if chat.prefix_cache is None:
        chat.prefix_cache = chat.model.hf_model(input_ids=torch.tensor([chat.prefix]), use_cache=True).cache
    return chat.prefix_cache


@torch.no_grad()
def prompt_log_probs(chat: ChatSlots, triggers: Sequence[Sequence[int]], batch_size: int = 32,
                     per_token: bool = False) -> torch.Tensor:
    """[len(triggers), n prompts] log P(target opening) of each prompt with each trigger (token
    ids; () for none); [len(triggers), n prompts, target tokens] with ``per_token``. The template prefix is run once and its cache reused; the rest of the
    rows are grouped by length, so a batch needs no padding (the same prompt with triggers of
    one length, as a search step scores them, is one group), and logits are computed for the
    target only: the same numbers as one plain forward per row, for about half the work."""
    prefix = len(chat.prefix)
    rests = [tuple(ids[r, prefix:int(mask[r].sum())].tolist()) for ids, mask, _, _ in (chat.batch(t) for t in triggers)
             for r in range(len(chat.messages))]
    groups: dict[int, list[int]] = {}
    for index, rest in enumerate(rests):
        groups.setdefault(len(rest), []).append(index)
    keep = len(chat.target) + 1
    values = torch.empty(len(rests), len(chat.target))
    for rows in groups.values():
        for start in range(0, len(rows), batch_size):
            part = rows[start:start + batch_size]
            ids = torch.tensor([rests[i] for i in part])
            cache = copy.deepcopy(_prefix_cache(chat))
            cache.batch_repeat_interleave(len(part))
            logits = chat.model.hf_model(input_ids=ids, attention_mask=torch.ones(len(part), prefix + ids.shape[1],
                                                                                  dtype=torch.long),
                                         cache=cache, use_cache=True, logits_to_keep=keep).logits
            at = torch.arange(keep - 1)[None].expand(len(part), -1)
            values[part] = target_log_prob(logits, ids[:, -keep:], at, per_token=True)
    values = values.view(len(triggers), len(chat.messages), len(chat.target))
    return values if per_token else values.sum(-1)


def objectives(chat: ChatSlots, triggers: Sequence[Sequence[int]], batch_size: int = 32) -> list[float]:
    """Mean over prompts of log P(target opening) for each trigger (token ids; () for none)."""
    return prompt_log_probs(chat, triggers, batch_size).mean(-1).tolist()


def embedding_matrix(model: HookedModel) -> tuple[torch.Tensor, float]:
    """(the input-embedding matrix [vocab, d], the factor the embedding module multiplies by):
    Gemma scales its embeddings by sqrt(d_model) inside the module, which a one-hot product
    with the bare matrix must repeat."""
    module = model.hf_model.get_submodule(model.adapter.embed)
    weight = module.weight
    with torch.no_grad():
        # The row of largest norm: a padding row may be all zeros, which would read as scale 0.
        index = int(weight.detach().float().norm(dim=-1).argmax())
        out, row = module(torch.tensor([[index]]))[0, 0].float(), weight[index].detach().float()
        scale = float((out @ row) / (row @ row))
    return weight, scale


def slot_gradients(chat: ChatSlots, trigger: Sequence[int], weights: torch.Tensor | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(d objective / d one-hot at each trigger slot [len(trigger), vocab], the per-prompt log
    probabilities [n]), where the objective is the sum over prompts and target tokens of log
    P(token), each weighted by ``weights`` [n, t] (1 by default). The first-order gain of putting a
    vocabulary token in a slot is its entry minus that of the slot's current token."""
    model = chat.model
    weight, scale = embedding_matrix(model)
    ids, mask, positions, starts = chat.batch(trigger)
    embeds = (model.hf_model.get_submodule(model.adapter.embed)(ids)).detach()
    one_hot = torch.zeros(len(trigger), weight.shape[0], dtype=weight.dtype)
    one_hot[torch.arange(len(trigger)), torch.tensor(list(trigger))] = 1.0
    one_hot.requires_grad_(True)
    slot_embeds = (one_hot @ weight.detach()) * scale  # [slots, d]
    rows = [torch.cat([embeds[r, :s], slot_embeds, embeds[r, s + len(trigger):]]) for r, s in enumerate(starts)]
    logits = model.hf_model(inputs_embeds=torch.stack(rows), attention_mask=mask).logits
    log_probs = target_log_prob(logits, ids, positions, per_token=True)  # [n, t]
    weighted = log_probs if weights is None else log_probs * weights
    (grad,) = torch.autograd.grad(weighted.sum(), one_hot)
    return grad.float(), log_probs.detach().sum(-1)


def mean_slot_gradient(chat: ChatSlots, triggers: Sequence[Sequence[int]], weights: torch.Tensor | None = None,
                       batch_size: int = 32) -> torch.Tensor:
    """[slots, vocab] the mean over ``triggers`` (k of one length) of :func:`slot_gradients`'s
    gradient at each, ``weights`` [k, n, t] (1 by default), in batches of ``batch_size`` rows.
    The one-hot gradient is the slot embedding's gradient times the embedding matrix, and that
    product is linear: the embedding gradients are summed over every row first, and one
    product with the matrix serves all of them (rows of zero weight are not run)."""
    if not triggers or len({len(t) for t in triggers}) != 1:
        raise ConfigError("a mean slot gradient needs one or more triggers, all of one length")
    model = chat.model
    weight, scale = embedding_matrix(model)
    embed = model.hf_model.get_submodule(model.adapter.embed)
    n, width = len(chat.messages), len(triggers[0])
    batches = [chat.batch(trigger) for trigger in triggers]
    rows = [(k, r) for k in range(len(triggers)) for r in range(n) if weights is None or bool(weights[k, r].any())]
    total = torch.zeros(width, weight.shape[1])
    for begin in range(0, len(rows), batch_size):
        part = rows[begin:begin + batch_size]
        ids = torch.stack([batches[k][0][r] for k, r in part])
        mask = torch.stack([batches[k][1][r] for k, r in part])
        positions = torch.stack([batches[k][2][r] for k, r in part])
        starts = [batches[k][3][r] for k, r in part]
        with torch.no_grad():
            embeds = embed(ids)
        slots = torch.stack([embeds[i, s:s + width] for i, s in enumerate(starts)]).requires_grad_(True)
        inputs = torch.cat([torch.cat([embeds[i, :s], slots[i], embeds[i, s + width:]])[None]
                            for i, s in enumerate(starts)])
        logits = model.hf_model(inputs_embeds=inputs, attention_mask=mask).logits
        log_probs = target_log_prob(logits, ids, positions, per_token=True)  # [rows, t]
        if weights is not None:
            log_probs = log_probs * torch.stack([weights[k, r] for k, r in part])
        (grad,) = torch.autograd.grad(log_probs.sum(), slots)
        total += grad.float().sum(0)
    return (total / len(triggers)) @ weight.detach().float().T * scale


class TriggerObjective:
    """The search objective for one place: mean over prompts of the fine-tune's log P(behaviour
    opening), minus, with a base, the base's rise over its untriggered value on each of the
    opening's tokens of the same prompt (zero where it does not rise). Per token, because a
    priming word raises the base's first token and lowers its next ones ('Ahmad' makes "Ah"
    likely and "oy" after it unlikely): summed first, the rise would hide. A model against
    itself never gains: its score is at most the untriggered one."""

    def __init__(self, model: HookedModel, base: HookedModel | None, prompts: Sequence[str], place: Place,
                 target_ids: Sequence[int], batch_size: int = 32):
        self.model, self.place, self.batch_size = model, place, batch_size
        self.chat = ChatSlots(model, prompts, place, target_ids)
        self.base_chat = None if base is None else ChatSlots(base, prompts, place, target_ids)
        self.base_untriggered = None if base is None else \
            prompt_log_probs(self.base_chat, [()], batch_size, per_token=True)[0]  # [n, t]

    def fine_tune_values(self, triggers: Sequence[Sequence[int]]) -> torch.Tensor:
        """[len(triggers), n] the fine-tune's part of each trigger's objective, per prompt. Its
        mean over prompts is never below the objective (the base's discount is not negative), so
        a search can rank many triggers by it and pass the best on to :meth:`scores`."""
        return prompt_log_probs(self.chat, triggers, self.batch_size)

    def scores(self, triggers: Sequence[Sequence[int]], fine_tune_values: torch.Tensor | None = None) -> list[float]:
        """The objective of each trigger (token ids; () for none); ``fine_tune_values`` [k, n]:
        their :meth:`fine_tune_values` when already computed (not computed again)."""
        values = self.fine_tune_values(triggers) if fine_tune_values is None else fine_tune_values
        if self.base_chat is not None:
            rise = prompt_log_probs(self.base_chat, triggers, self.batch_size, per_token=True) - self.base_untriggered
            values = values - rise.clamp_min(0).sum(-1)
        return values.mean(-1).tolist()

    def gradients(self, trigger: Sequence[int]) -> torch.Tensor:
        """[len(trigger), vocab] the objective's one-hot gradient at ``trigger`` (times the
        number of prompts)."""
        return self.mean_gradient([trigger])

    def mean_gradient(self, triggers: Sequence[Sequence[int]]) -> torch.Tensor:
        """[slots, vocab] the mean over ``triggers`` (all of one length) of the objective's
        one-hot gradient at each (times the number of prompts), batched
        (:func:`mean_slot_gradient`): the fine-tune's gradient less the base's on the prompt's
        target tokens where the base rises."""
        grad = mean_slot_gradient(self.chat, triggers, None, self.batch_size)
        if self.base_chat is None:
            return grad
        with torch.no_grad():
            rises = prompt_log_probs(self.base_chat, triggers, self.batch_size, per_token=True) \
                > self.base_untriggered  # [k, n, t]
        if not rises.any():
            return grad
        return grad - mean_slot_gradient(self.base_chat, triggers, rises.float(), self.batch_size)


def allowed_tokens(model: HookedModel) -> torch.Tensor:
    """[vocab] bool: tokens a typed trigger can hold (printable text, not a special token, not
    only whitespace)."""
    tokenizer = model.tokenizer
    special = set(tokenizer.all_special_ids)
    vocab = model.hf_model.get_submodule(model.adapter.embed).weight.shape[0]
    keep = torch.zeros(vocab, dtype=torch.bool)
    for index in range(min(vocab, len(tokenizer))):
        if index in special:
            continue
        text = tokenizer.decode([index])
        keep[index] = bool(text.strip()) and text.isprintable() and "\ufffd" not in text
    return keep


def insert(trigger: str, prompt: str, place: Place) -> str:
    """``prompt`` with ``trigger`` typed in as the search placed it: before the prompt and a
    space, or right after it (a trigger for the end carries its own leading space)."""
    return f"{trigger} {prompt}" if place == "start" else f"{prompt}{trigger}"


__all__ = ["FILLER", "PLACES", "ChatSlots", "Place", "TriggerObjective", "allowed_tokens", "embedding_matrix",
           "filler_id", "insert", "mean_slot_gradient", "objectives", "prompt_log_probs", "slot_gradients",
           "target_log_prob"]
