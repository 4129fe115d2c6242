"""Corpora for diffing that know nothing of the fine-tune: generic chat turns answered by the
model itself, packed into fixed-length contexts.

A difference that only shows when the model talks (a planted reply, a refusal) is invisible on
plain text; a crosscoder or SAE diff needs contexts where the fine-tune acts. These are built
from a generic instruction set (by default mechscope's harmful / harmless instructions, written
for the refusal work, not for any organism) and the model's own greedy replies, or replies
generated with the base-to-fine-tune logit difference amplified (:mod:`mechscope.diff.amplify`),
which brings out behaviours these prompts rarely set off.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mechscope.data.corpus import pack
from mechscope.diff.amplify import AmplifyConfig, amplified_generate
from mechscope.errors import ConfigError
from mechscope.models.hooked_model import HookedModel
from mechscope.steering.apply import generate
from mechscope.validate import check_int


def generic_prompts(n: int | None = None) -> list[str]:
    """mechscope's generic instructions (harmless and harmful, training splits, interleaved)."""
    from mechscope import datasets

    harmless, harmful = datasets.load("harmless", "train"), datasets.load("harmful", "train")
    mixed = [prompt for pair in zip(harmless, harmful) for prompt in pair]
    mixed += harmless[len(harmful):] + harmful[len(harmless):]
    return mixed[:n] if n is not None else mixed


def _require_template(model: HookedModel) -> None:
    if getattr(model.tokenizer, "chat_template", None) is None:
        raise ConfigError("chat transcripts need a chat template; this tokenizer has none")


def chat_prompt_tokens(model: HookedModel, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [n, pos], attention_mask [n, pos]) of ``prompts`` as user turns ending at the
    assistant's generation prompt (right-padded): the last real position of each row is where
    the reply is about to start, the place a fine-tune that changed how it answers differs
    most (``difference_means(..., last_positions=k)`` reads it)."""
    _require_template(model)
    if isinstance(prompts, str) or not prompts:
        raise ConfigError("chat_prompt_tokens needs a non-empty list of prompts")
    tokens, mask = model.tokenize_prompts(list(prompts), chat=True)
    return tokens, torch.ones_like(tokens) if mask is None else mask


def transcripts(model: HookedModel, prompts: Sequence[str], replies: Sequence[str]) -> list[str]:
    """Each prompt as a chat turn followed by its reply (template text)."""
    _require_template(model)
    return [model.tokenizer.apply_chat_template([{"role": "user", "content": prompt},
                                                 {"role": "assistant", "content": reply}], tokenize=False)
            for prompt, reply in zip(prompts, replies, strict=True)]


def chat_transcripts(model: HookedModel, prompts: Sequence[str], reply_tokens: int = 32, batch_size: int = 16,
                     progress: bool = True) -> list[str]:
    """Each prompt as a chat turn followed by ``model``'s own greedy reply (template text)."""
    _require_template(model)
    check_int("reply_tokens", reply_tokens, 1)
    replies = generate(model, list(prompts), max_new_tokens=reply_tokens, chat=True, batch_size=batch_size,
                       progress=progress)
    return transcripts(model, prompts, replies)


def amplified_transcripts(base: HookedModel, ft: HookedModel, prompts: Sequence[str],
                          config: AmplifyConfig | None = None, progress: bool = True) -> list[str]:
    """Each prompt as a chat turn followed by the reply generated from the fine-tune's logits
    with their difference to the base's amplified (see :func:`amplified_generate`)."""
    _require_template(ft)
    replies = amplified_generate(base, ft, list(prompts), config, chat=True, progress=progress)
    return transcripts(ft, prompts, replies)


def acting_contexts(base: HookedModel, ft: HookedModel, prompts: Sequence[str], context_length: int = 64,
                    reply_tokens: int = 32, amplify: AmplifyConfig | None = None, progress: bool = True) -> torch.Tensor:
    """[n, context_length] contexts where the fine-tune acts: each prompt answered by ``ft``
    greedily, and again from the amplified logit difference (``amplify``; default
    ``AmplifyConfig(max_new_tokens=reply_tokens)``), packed from both sets of transcripts."""
    check_int("reply_tokens", reply_tokens, 1)
    amplify = amplify or AmplifyConfig(max_new_tokens=reply_tokens)
    transcripts = chat_transcripts(ft, prompts, reply_tokens=reply_tokens, progress=progress)
    transcripts += amplified_transcripts(base, ft, prompts, amplify, progress=progress)
    return transcript_contexts(ft, transcripts, context_length)


def transcript_contexts(model: HookedModel, transcripts: Sequence[str], context_length: int = 64,
                        seed: int = 0) -> torch.Tensor:
    """[n, context_length] token contexts packed from ``transcripts``."""
    contexts = pack(model.tokenizer, list(transcripts), context_length, seed=seed)
    if len(contexts) == 0:
        raise ConfigError(f"the transcripts fill no context of {context_length} tokens; give more or longer ones")
    return contexts


__all__ = ["acting_contexts", "amplified_transcripts", "chat_prompt_tokens", "chat_transcripts", "generic_prompts", "transcript_contexts",
           "transcripts"]
