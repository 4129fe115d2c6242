"""Trigger reconstruction: which inputs make the fine-tune show a behaviour?

The behaviour is a hypothesis from discovery, as the text the fine-tune writes (its
``surface``). The objective is log P(the reply opens with its first ``target_tokens`` tokens)
on a set of neutral prompts with a candidate trigger inserted in the user's message, at its
start or its end. Three searches feed one ranked list:

- **gradient**: one backward pass through a one-hot trigger slot gives, for every vocabulary
  token at once, the first-order change of the objective if it were the trigger; the best are
  then scored exactly;
- **search**: multi-token triggers grown from the best single token by greedy coordinate
  steps (each step takes the gradient at every slot, tries random swaps among each slot's best
  tokens, and keeps the best exact objective);
- **attribution**: on prompts where the behaviour already occurs, gradient x input and
  ablation of each prompt token name the words that cause it (a topic, where there is no
  trigger string); the strongest are tried as triggers too.

The top candidates by exact objective are then checked by generation: the behaviour rate with
the candidate inserted, on held-out neutral prompts, against the rate without it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from tqdm.auto import tqdm

from mechscope.errors import ConfigError
from mechscope.models.hooked_model import HookedModel
from mechscope.steering.apply import generate
from mechscope.validate import check_choice, check_int

Place = Literal["start", "end"]
PLACES: tuple[Place, ...] = ("start", "end")
SLOT = "\x00TRIGGER\x00"  # stands for the trigger while the chat template is rendered
FILLER = " the"  # the neutral token a trigger slot starts from (a real word, not a special token)


@dataclass(frozen=True)
class TriggerConfig:
    """``n_prompts`` neutral prompts score candidates and ``n_check`` other ones check them by
    generation (``reply_tokens`` new tokens); ``target_tokens`` of the behaviour form the
    objective; ``gradient_candidates`` single tokens per place are scored exactly;
    ``max_length`` tokens at most in a searched trigger, ``search_steps`` coordinate steps per
    added token, ``swaps`` exact evaluations per step; ``checked`` candidates are generated
    with; ``attributed_words`` words from attribution are tried."""

    n_prompts: int = 12
    n_check: int = 16
    places: tuple[Place, ...] = PLACES
    target_tokens: int = 4
    gradient_candidates: int = 48
    max_length: int = 3
    search_steps: int = 6
    swaps: int = 24
    checked: int = 8
    attributed_words: int = 4
    reply_tokens: int = 16
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_prompts", "n_check", "target_tokens", "gradient_candidates", "max_length", "swaps", "checked",
                     "reply_tokens", "batch_size"):
            check_int(name, getattr(self, name), 1)
        check_int("search_steps", self.search_steps, 0)
        check_int("attributed_words", self.attributed_words, 0)
        check_int("seed", self.seed, None)
        if isinstance(self.places, str) or not self.places:
            raise ConfigError(f"places must be a non-empty tuple of {PLACES}; got {self.places!r}")
        for place in self.places:
            check_choice("places", place, PLACES)


@dataclass(frozen=True)
class TriggerCandidate:
    """A candidate trigger: ``text`` inserted at ``place``; ``objective`` the mean log P of the
    behaviour's opening with it and ``gain`` that minus the mean without; ``rate`` /
    ``control_rate`` the behaviour rate by generation with / without it (None when not
    checked); ``found_by``: gradient, search or attribution."""

    text: str
    token_ids: tuple[int, ...]
    place: Place
    objective: float
    gain: float
    found_by: str
    rate: float | None = None
    control_rate: float | None = None

    def to_json(self) -> dict:
        return {"text": self.text, "token_ids": list(self.token_ids), "place": self.place,
                "objective": self.objective, "gain": self.gain, "found_by": self.found_by, "rate": self.rate,
                "control_rate": self.control_rate}


class _Chat:
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


def _target_log_prob(logits: torch.Tensor, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """[n] sum over the target tokens of log P(token) at ``positions`` [n, t]."""
    rows = torch.arange(len(ids))[:, None]
    log_probs = logits[rows, positions].float().log_softmax(-1)  # [n, t, vocab]
    return log_probs.gather(-1, ids[rows, positions + 1][..., None])[..., 0].sum(-1)


@torch.no_grad()
def objectives(chat: _Chat, triggers: Sequence[Sequence[int]], batch_size: int = 32) -> list[float]:
    """Mean over prompts of log P(target opening) for each trigger (token ids; () for none)."""
    rows = []
    for trigger in triggers:
        ids, mask, positions, _ = chat.batch(trigger)
        rows.append((ids, mask, positions))
    scores = []
    for ids, mask, positions in rows:
        total = 0.0
        for start in range(0, len(ids), batch_size):
            part = slice(start, start + batch_size)
            logits = chat.model.hf_model(input_ids=ids[part], attention_mask=mask[part]).logits
            total += float(_target_log_prob(logits, ids[part], positions[part]).sum())
        scores.append(total / len(ids))
    return scores


def _embedding(model: HookedModel) -> tuple[torch.Tensor, float]:
    """(the input-embedding matrix [vocab, d], the factor the embedding module multiplies by):
    Gemma scales its embeddings by sqrt(d_model) inside the module, which a one-hot product
    with the bare matrix must repeat."""
    module = model.hf_model.get_submodule(model.adapter.embed)
    weight = module.weight
    probe = torch.tensor([[min(1000, weight.shape[0] - 1)]])
    with torch.no_grad():
        out, row = module(probe)[0, 0].float(), weight[probe[0, 0]].detach().float()
        scale = float((out @ row) / (row @ row).clamp_min(1e-12))
    return weight, scale


def slot_gradients(chat: _Chat, trigger: Sequence[int]) -> torch.Tensor:
    """[len(trigger), vocab] d objective / d one-hot at each trigger slot, summed over prompts:
    the first-order gain of putting each vocabulary token in each slot is its entry minus that
    of the slot's current token."""
    model = chat.model
    weight, scale = _embedding(model)
    ids, mask, positions, starts = chat.batch(trigger)
    embeds = (model.hf_model.get_submodule(model.adapter.embed)(ids)).detach()
    one_hot = torch.zeros(len(trigger), weight.shape[0], dtype=weight.dtype)
    one_hot[torch.arange(len(trigger)), torch.tensor(list(trigger))] = 1.0
    one_hot.requires_grad_(True)
    slot_embeds = (one_hot @ weight.detach()) * scale  # [slots, d]
    rows = [torch.cat([embeds[r, :s], slot_embeds, embeds[r, s + len(trigger):]]) for r, s in enumerate(starts)]
    logits = model.hf_model(inputs_embeds=torch.stack(rows), attention_mask=mask).logits
    objective = _target_log_prob(logits, ids, positions).sum()
    (grad,) = torch.autograd.grad(objective, one_hot)
    return grad.float()


class _Scorer:
    """The objective a trigger search climbs: the fine-tune's log P(behaviour opening), minus
    the base's on the same tokens when a base is given. A planted trigger moves the fine-tune
    only; a word that merely primes the behaviour's first token ('Ahmad' before "Ahoy") moves
    the base as much, and cancels."""

    def __init__(self, model: HookedModel, base: HookedModel | None, prompts: Sequence[str], place: Place,
                 target_ids: Sequence[int], batch_size: int):
        self.model, self.batch_size = model, batch_size
        self.chats = [_Chat(model, prompts, place, target_ids)]
        if base is not None:
            self.chats.append(_Chat(base, prompts, place, target_ids))

    def objectives(self, triggers: Sequence[Sequence[int]]) -> list[float]:
        scores = [objectives(chat, triggers, self.batch_size) for chat in self.chats]
        return scores[0] if len(scores) == 1 else [a - b for a, b in zip(*scores)]

    def gradients(self, trigger: Sequence[int]) -> torch.Tensor:
        grads = [slot_gradients(chat, trigger) for chat in self.chats]
        return grads[0] if len(grads) == 1 else grads[0] - grads[1]


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


def _decode(model: HookedModel, ids: Sequence[int]) -> str:
    return model.tokenizer.decode(list(ids))


def _search(scorer: _Scorer, start: list[int], allowed: torch.Tensor, config: TriggerConfig, baseline: float,
            place: Place, rng: random.Random) -> list[TriggerCandidate]:
    """Greedy coordinate search from ``start``, one slot added per round up to ``max_length``."""
    model, found = scorer.model, []
    trigger = list(start)
    filler = model.tokenizer(FILLER, add_special_tokens=False)["input_ids"][:1]
    for _ in range(len(start), config.max_length):
        grad = scorer.gradients(trigger + filler)[-1].masked_fill(~allowed, -torch.inf)
        trigger = trigger + [int(grad.argmax())]
        best = scorer.objectives([trigger])[0]
        for _ in range(config.search_steps):
            grads = scorer.gradients(trigger).masked_fill(~allowed[None], -torch.inf)
            tops = grads.topk(16, dim=-1).indices.tolist()
            swaps = []
            for _ in range(config.swaps):
                slot = rng.randrange(len(trigger))
                swapped = list(trigger)
                swapped[slot] = rng.choice(tops[slot])
                swaps.append(swapped)
            scores = scorer.objectives(swaps)
            index = max(range(len(swaps)), key=scores.__getitem__)
            if scores[index] > best:
                trigger, best = swaps[index], scores[index]
        found.append(TriggerCandidate(_decode(model, trigger), tuple(trigger), place, best, best - baseline, "search"))
    return found


@dataclass(frozen=True)
class TokenAttribution:
    """Per token of one prompt (its user message, as the model reads it): gradient x input and
    the objective's drop when the token is removed."""

    prompt: str
    tokens: tuple[str, ...]
    gradient_x_input: tuple[float, ...]
    ablation: tuple[float, ...]

    def to_json(self) -> dict:
        return {"prompt": self.prompt, "tokens": list(self.tokens), "gradient_x_input": list(self.gradient_x_input),
                "ablation": list(self.ablation)}


def attribute(model: HookedModel, prompts: Sequence[str], target_ids: Sequence[int],
              batch_size: int = 32) -> list[TokenAttribution]:
    """Gradient x input and single-token ablation of each user-message token of ``prompts`` on
    log P(the reply opens with ``target_ids``)."""
    results = []
    for prompt in prompts:
        chat = _Chat(model, [prompt], "end", target_ids)  # no trigger: the message as given
        ids, mask, positions, _ = chat.batch([])
        span = range(len(chat.prefix), len(chat.prefix) + len(chat.messages[0]))
        embeds = (model.hf_model.get_submodule(model.adapter.embed)(ids)).detach().requires_grad_(True)
        logits = model.hf_model(inputs_embeds=embeds, attention_mask=mask).logits
        objective = _target_log_prob(logits, ids, positions).sum()
        (grad,) = torch.autograd.grad(objective, embeds)
        gxi = (grad[0] * embeds[0].detach()).sum(-1)  # [pos]
        full = float(objective.detach())
        row = ids[0].tolist()
        variants = [row[:position] + row[position + 1:] for position in span]
        drops = []
        with torch.no_grad():
            for start in range(0, len(variants), batch_size):
                part = variants[start:start + batch_size]
                batch = torch.tensor(part)  # one prompt: every variant is one token shorter, no padding
                target_at = torch.full((len(part), 1), len(part[0]) - len(target_ids) - 1) \
                    + torch.arange(len(target_ids))[None]
                out = model.hf_model(input_ids=batch, attention_mask=torch.ones_like(batch)).logits
                drops += (full - _target_log_prob(out, batch, target_at)).tolist()
        results.append(TokenAttribution(prompt, tuple(model.tokenizer.decode([row[p]]) for p in span),
                                        tuple(float(gxi[p]) for p in span), tuple(drops)))
    return results


def attributed_words(attributions: Sequence[TokenAttribution], n: int) -> list[str]:
    """The ``n`` tokens (stripped, 3+ characters) whose removal costs the objective most,
    averaged over the prompts they occur in and weighted by how many prompts hold them."""
    totals: dict[str, list[float]] = {}
    for item in attributions:
        for token, drop in zip(item.tokens, item.ablation):
            word = token.strip()
            if len(word) >= 3 and word.isalpha():
                totals.setdefault(word, []).append(drop)
    ranked = sorted(totals, key=lambda w: -sum(totals[w]) * len(totals[w]) ** 0.5 / len(totals[w]))
    return ranked[:n]


def reconstruct_triggers(model: HookedModel, surface: str, shows: Callable[[str], bool], prompts: Sequence[str],
                         check_prompts: Sequence[str], config: TriggerConfig | None = None,
                         behaviour_prompts: Sequence[str] = (), progress: bool = True, base: HookedModel | None = None
                         ) -> tuple[list[TriggerCandidate], list[TokenAttribution]]:
    """Ranked trigger candidates for the behaviour written ``surface`` (``shows(reply)`` says
    whether a reply has it): scored on ``prompts``, checked by generation on ``check_prompts``;
    ``behaviour_prompts`` are prompts where the fine-tune already shows it, read by
    attribution. With ``base``, the objective is the fine-tune's minus the base's
    (:class:`_Scorer`). Returns (candidates, best rate first; attributions)."""
    config = config or TriggerConfig()
    prompts, check_prompts = list(prompts)[:config.n_prompts], list(check_prompts)[:config.n_check]
    if not prompts or not check_prompts:
        raise ConfigError("trigger reconstruction needs neutral prompts to score and to check candidates on")
    target = model.tokenizer(surface, add_special_tokens=False)["input_ids"][:config.target_tokens]
    if not target:
        raise ConfigError(f"the behaviour {surface!r} has no tokens")
    rng = random.Random(config.seed)
    allowed = allowed_tokens(model)
    filler = model.tokenizer(FILLER, add_special_tokens=False)["input_ids"][:1]
    scorers = {place: _Scorer(model, base, prompts, place, target, config.batch_size) for place in config.places}
    baselines = {place: scorer.objectives([()])[0] for place, scorer in scorers.items()}
    pool: list[TriggerCandidate] = []
    for place, scorer in tqdm(scorers.items(), desc="trigger search (per place)", disable=not progress):
        grad = scorer.gradients(filler)[0].masked_fill(~allowed, -torch.inf)
        singles = grad.topk(config.gradient_candidates).indices.tolist()
        ranked = sorted(zip(scorer.objectives([[t] for t in singles]), singles), reverse=True)
        pool += [TriggerCandidate(_decode(model, [t]), (t,), place, s, s - baselines[place], "gradient")
                 for s, t in ranked]
        if config.max_length > 1:
            pool += _search(scorer, [ranked[0][1]], allowed, config, baselines[place], place, rng)
    attributions = []
    if behaviour_prompts and config.attributed_words:
        attributions = attribute(model, list(behaviour_prompts)[:config.n_prompts], target, config.batch_size)
        for place, scorer in scorers.items():
            for word in attributed_words(attributions, config.attributed_words):
                ids = model.tokenizer(f" {word}" if place == "end" else word, add_special_tokens=False)["input_ids"]
                score = scorer.objectives([ids])[0]
                pool.append(TriggerCandidate(word, tuple(ids), place, score, score - baselines[place], "attribution"))
    unique: dict[tuple[str, str], TriggerCandidate] = {}
    for candidate in sorted(pool, key=lambda c: -c.gain):
        unique.setdefault((candidate.text.strip(), candidate.place), candidate)
    ranked = list(unique.values())
    control = sum(map(shows, generate(model, check_prompts, max_new_tokens=config.reply_tokens,
                                      progress=False))) / len(check_prompts)
    checked = []
    for candidate in tqdm(ranked[:config.checked], desc="checking trigger candidates", disable=not progress):
        inserted = [insert(candidate.text, p, candidate.place) for p in check_prompts]
        replies = generate(model, inserted, max_new_tokens=config.reply_tokens, progress=False)
        rate = sum(map(shows, replies)) / len(replies)
        checked.append(TriggerCandidate(**{**candidate.__dict__, "rate": rate, "control_rate": control}))
    checked.sort(key=lambda c: (-c.rate, -c.gain))
    return checked + ranked[config.checked:], attributions


__all__ = ["PLACES", "Place", "TokenAttribution", "TriggerCandidate", "TriggerConfig", "allowed_tokens", "attribute",
           "attributed_words", "insert", "objectives", "reconstruct_triggers", "slot_gradients"]
