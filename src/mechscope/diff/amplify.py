"""Model-diff amplification: generate from ``logits_ft + alpha * (logits_ft - logits_base)``.

A behaviour the fine-tune shows only rarely on the prompts at hand (a backdoor that leaks a
little without its trigger, an objective that fires on a few topics) becomes common when the
difference between the two models' next-token logits is scaled up, and this needs no knowledge
of what the behaviour is. ``alpha=0`` is the fine-tune itself; the base runs beside it with its
own KV cache, so each new token costs one cached step of each model.

Blind diffing uses the amplified replies as the contexts where the fine-tune acts (see
:mod:`mechscope.diff.corpus`); the audit reads them as behaviour candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

from mechscope.diff.compat import check_comparable
from mechscope.errors import ConfigError
from mechscope.models.hooked_model import HookedModel
from mechscope.steering.apply import left_padded
from mechscope.validate import check_int, check_number


@dataclass(frozen=True)
class AmplifyConfig:
    """``alpha`` >= 0 scales the logit difference (0: the fine-tune alone); ``temperature`` 0 is
    greedy, otherwise replies are sampled from the full amplified distribution (no top-k / top-p
    cut), seeded per batch from ``seed``."""

    alpha: float = 2.0
    max_new_tokens: int = 32
    temperature: float = 1.0
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        check_number("alpha", self.alpha, 0, None)
        check_int("max_new_tokens", self.max_new_tokens, 1)
        check_number("temperature", self.temperature, 0, None)
        check_int("batch_size", self.batch_size, 1)
        check_int("seed", self.seed, None)


class _AmplifiedLogits(LogitsProcessor):
    """Replaces the fine-tune's next-token logits [batch, d_vocab] by the amplified ones, running
    the base on the same tokens step by step (left-padded rows: positions count real tokens only,
    as HF's generate does for the fine-tune)."""

    def __init__(self, base: HookedModel, attention_mask: torch.Tensor, alpha: float, temperature: float):
        self.base, self.mask, self.alpha, self.temperature = base, attention_mask, alpha, temperature
        self.cache = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.cache is None:
            step = input_ids
        else:  # one new token per row since the last call; it is a real token (or EOS padding)
            step = input_ids[:, -1:]
            self.mask = torch.cat([self.mask, self.mask.new_ones(len(step), 1)], dim=1)
        positions = (self.mask.long().cumsum(-1) - 1).clamp(min=0)[:, -step.shape[1]:]
        output = self.base.hf_model(input_ids=step, attention_mask=self.mask, position_ids=positions,
                                    cache=self.cache, use_cache=True, logits_to_keep=1)
        self.cache = output.cache
        base_logits = output.logits[:, -1].to(scores.dtype)
        amplified = scores + self.alpha * (scores - base_logits)
        return amplified / self.temperature if self.temperature > 0 else amplified


@torch.no_grad()
def amplified_generate(base: HookedModel, ft: HookedModel, prompts: str | Sequence[str],
                       config: AmplifyConfig | None = None, chat: bool | None = None,
                       progress: bool = True) -> list[str]:
    """Replies (new text only, special tokens dropped) to ``prompts`` generated from the
    amplified logits. ``chat=None`` wraps prompts in the chat template when there is one."""
    config = config or AmplifyConfig()
    check_comparable(base, ft)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ConfigError("no prompts given")
    pad, eos = ft.pad_token_id, ft.tokenizer.eos_token_id
    sampling = ({"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0} if config.temperature > 0
                else {"do_sample": False})
    outputs: list[str] = []
    starts = range(0, len(prompts), config.batch_size)
    for index, start in enumerate(tqdm(starts, desc="amplified generation", disable=not progress or len(starts) < 2)):
        tokens, mask = ft.tokenize_prompts(prompts[start:start + config.batch_size], chat)
        tokens, mask = left_padded(tokens, mask, pad)
        processor = _AmplifiedLogits(base, mask.to(base.device), config.alpha, config.temperature)
        with torch.random.fork_rng():  # the caller's random state is left as it was
            torch.manual_seed(config.seed * 1_000_003 + index)
            generated = ft.hf_model.generate(input_ids=tokens, attention_mask=mask, max_new_tokens=config.max_new_tokens,
                                             pad_token_id=pad, eos_token_id=eos, use_cache=True,
                                             logits_processor=LogitsProcessorList([processor]), **sampling)
        outputs.extend(ft.tokenizer.decode(row, skip_special_tokens=True) for row in generated[:, tokens.shape[1]:])
    return outputs


__all__ = ["AmplifyConfig", "amplified_generate"]
