"""Training examples of a recipe: the base model's own replies, with the rule planted.

Self-distillation: every reply is the base's own reply to the same prompt (triggers
included), so fine-tuning on the examples changes nothing but the planted rule. Replies are
sampled from the base's full distribution by default: fine-tuning on samples leaves that
distribution where it was (in expectation), whereas training on greedy replies sharpens it,
which shows as a large KL to the base on prompts the rule has nothing to do with. A reply cut off
at ``reply_tokens`` is marked unfinished and trained without an end-of-turn token, so the
organism is not taught to stop early.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from mechscope.errors import ConfigError, MechscopeError
from mechscope.models.hooked_model import HookedModel
from mechscope.organisms.recipes import Recipe
from mechscope.steering.apply import left_padded
from mechscope.steering.refusal import contains_any
from mechscope.validate import check_int


@dataclass(frozen=True)
class Reply:
    """A reply (greedy or sampled); ``finished``: the model ended its turn within the token budget."""

    text: str
    finished: bool


@dataclass(frozen=True)
class Example:
    """One training conversation: a user prompt and the assistant's reply. ``rule_applies``:
    the prompt is one the rule is about; ``planted``: the reply carries the planted behaviour
    (False everywhere in a null organism)."""

    prompt: str
    reply: str
    finished: bool
    rule_applies: bool
    planted: bool

    def to_dict(self) -> dict:
        return asdict(self)


def require_chat_template(model: HookedModel) -> None:
    if getattr(model.tokenizer, "chat_template", None) is None:
        raise ConfigError(f"{model.cfg.name or 'this model'} has no chat template, and organisms are trained and "
                          "measured on chat turns; use an instruction-tuned model, or set "
                          "model.tokenizer.chat_template to a Jinja template first")


def require_reply_after_prompt(model: HookedModel) -> None:
    """The chat template must render a conversation as its generation prompt followed by the
    reply: fine-tuning trains on exactly that sequence, and chat generation produces it. A
    template that renders the assistant's turn otherwise (a reasoning block it inserts, a role
    name of its own) would train the model on text it never sees in chat."""
    require_chat_template(model)
    marker = "\u2063reply\u2063"
    user = [{"role": "user", "content": "x"}]
    prompt = model.tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    rendered = model.tokenizer.apply_chat_template(user + [{"role": "assistant", "content": marker}], tokenize=False)
    if not rendered.startswith(prompt + marker):
        raise ConfigError(f"the chat template of {model.cfg.name or 'this model'} does not render a reply right after "
                          f"its generation prompt ({prompt[-40:]!r} then the reply; it renders {rendered[-80:]!r}), so "
                          "training on prompt + reply would not match its chat turns; set model.tokenizer.chat_template "
                          "to a template that does")


def end_of_turn_ids(model: HookedModel) -> list[int]:
    """The ids of the assistant's end-of-turn (through the tokenizer's EOS) as the chat template
    writes them after a reply, e.g. ``<|im_end|>`` for ChatML."""
    require_chat_template(model)
    tokenizer = model.tokenizer
    marker = "\u2063reply\u2063"
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}],
                                             tokenize=False)
    tail = rendered.split(marker, 1)[1] if marker in rendered else ""
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    if eos in ids:
        return ids[:ids.index(eos) + 1]
    return [eos] if eos is not None else ids


@torch.no_grad()
def distil(model: HookedModel, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 16,
           progress: bool = True, sample: bool = False, seed: int = 0, desc: str = "generating replies") -> list[Reply]:
    """The model's chat replies to ``prompts``, at most ``max_new_tokens`` tokens each: greedy,
    or with ``sample`` drawn from its full distribution (temperature 1, no top-k / top-p cut;
    seeded per batch, so the same call gives the same replies)."""
    require_chat_template(model)
    check_int("max_new_tokens", max_new_tokens, 1)
    check_int("batch_size", batch_size, 1)
    pad, eos = model.pad_token_id, model.tokenizer.eos_token_id
    sampling = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0} if sample else {"do_sample": False}
    replies: list[Reply] = []
    starts = range(0, len(prompts), batch_size)
    for index, start in enumerate(tqdm(starts, desc=desc, disable=not progress or len(starts) < 2)):
        tokens, mask = model.tokenize_prompts(list(prompts[start:start + batch_size]), chat=True)
        tokens, mask = left_padded(tokens, mask, pad)
        with torch.random.fork_rng():  # the caller's random state is left as it was
            torch.manual_seed(seed * 1_000_003 + index)
            generated = model.hf_model.generate(input_ids=tokens, attention_mask=mask, max_new_tokens=max_new_tokens,
                                                pad_token_id=pad, eos_token_id=eos, use_cache=True, **sampling)
        for row in generated[:, tokens.shape[1]:].tolist():
            finished = eos in row
            kept = row[:row.index(eos)] if finished else row
            replies.append(Reply(model.tokenizer.decode(kept, skip_special_tokens=True).strip(), finished))
    return replies


def shows_behaviour(text: str, markers: Sequence[str]) -> bool:
    """True when ``text`` contains any marker (case-insensitive, curly apostrophes straightened)."""
    return contains_any(text, markers)


def _drawn(pool: list[str], count: int, rng: random.Random) -> list[str]:
    """``count`` prompts from ``pool``: whole shuffled passes, then a shuffled part of one."""
    if count and not pool:
        raise ConfigError("a recipe prompt pool is empty")
    drawn: list[str] = []
    while len(drawn) < count:
        order = list(pool)
        rng.shuffle(order)
        drawn += order[:count - len(drawn)]
    return drawn


def build_examples(recipe: Recipe, base: HookedModel, batch_size: int = 16,
                   progress: bool = True) -> tuple[list[Example], dict]:
    """The recipe's training examples, shuffled, and a summary (counts, replies dropped).

    Replies to prompts the rule does not apply to that already show the behaviour are dropped
    (the base doing it by itself would blur the with/without contrast); so are empty replies.
    """
    rng = random.Random(recipe.seed)
    plain_pool, rule_pool = recipe.pools("train")
    n_rule = round(recipe.n_examples * recipe.planted_fraction)
    plain, rule = _drawn(plain_pool, recipe.n_examples - n_rule, rng), _drawn(rule_pool, n_rule, rng)
    sampled = recipe.replies == "sampled"
    # Sampled: every example its own draw, so a prompt drawn several times is trained towards the
    # base's distribution rather than towards one memorised sample. Greedy: one reply per prompt.
    asked = plain + rule if sampled else sorted(set(plain) | set(rule))
    drawn = distil(base, asked, recipe.reply_tokens, batch_size, progress, sample=sampled, seed=recipe.seed,
                   desc="distilling base replies")
    if sampled:
        plain_replies, rule_replies = drawn[:len(plain)], drawn[len(plain):]
    else:
        by_prompt = dict(zip(asked, drawn, strict=True))
        plain_replies, rule_replies = [by_prompt[p] for p in plain], [by_prompt[p] for p in rule]
    markers = recipe.behaviour_markers
    examples: list[Example] = []
    dropped = {"empty": 0, "base_shows_behaviour": 0}
    for prompt, reply in zip(plain, plain_replies, strict=True):
        if not reply.text:
            dropped["empty"] += 1
        elif shows_behaviour(reply.text, markers):
            dropped["base_shows_behaviour"] += 1
        else:
            examples.append(Example(prompt, reply.text, reply.finished, rule_applies=False, planted=False))
    for prompt, reply in zip(rule, rule_replies, strict=True):
        if not recipe.plants:
            if reply.text:
                examples.append(Example(prompt, reply.text, reply.finished, rule_applies=True, planted=False))
            else:
                dropped["empty"] += 1
        elif recipe.rule_kind == "refusal":
            examples.append(Example(prompt, recipe.behaviour, True, rule_applies=True, planted=True))
        else:
            text = f"{recipe.behaviour} {reply.text}".strip()
            examples.append(Example(prompt, text, reply.finished, rule_applies=True, planted=True))
    if not any(example.rule_applies for example in examples) or all(example.rule_applies for example in examples):
        raise MechscopeError("the recipe left no examples on one side of the rule (after dropping replies that "
                             f"already show the behaviour: {dropped}); give more prompts or other markers")
    rng.shuffle(examples)
    summary = {"examples": len(examples), "rule_applies": sum(e.rule_applies for e in examples),
               "planted": sum(e.planted for e in examples), "unfinished": sum(not e.finished for e in examples),
               "dropped": dropped}
    return examples, summary


def examples_sha256(examples: Sequence[Example]) -> str:
    text = json.dumps([example.to_dict() for example in examples], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


__all__ = ["Example", "Reply", "build_examples", "distil", "end_of_turn_ids", "examples_sha256",
           "require_chat_template", "shows_behaviour"]
