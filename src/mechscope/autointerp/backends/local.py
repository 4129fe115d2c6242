"""The in-process backend: any HookedModel with a chat template answers in batches, with logprobs.

Requests are wrapped in the model's chat template, sorted by their tokens (so that requests with a
long common beginning fall together) and padded in batches of ``batch_size``, and generated
together; every generated token carries its logprob and the top alternatives from the model's raw
logits. Requests of a batch that begin with the same tokens (a judge's instructions and the
explanation, asked about many windows) share one forward pass over that prefix: its key/value cache
is computed once and repeated for the batch, and each row's own tokens follow it with the padding
between them masked (``prefix_cache``; the answers equal those without it to float rounding).
Greedy at temperature 0; requests with a temperature sample from a generator seeded by the batch's
first request, so the same requests always get the same answers. :meth:`LocalBackend.echo` scores
a raw text token by token in one forward pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import torch
from tqdm.auto import tqdm

from mechscope.autointerp.backends.base import Backend, BackendError, ChatRequest, Completion, TokenLogprobs
from mechscope.models.hooked_model import HookedModel
from mechscope.validate import check_int


def _top(logprobs: torch.Tensor, k: int, decode) -> dict[str, float]:
    """{token text: logprob} of the ``k`` most likely tokens of one position's [vocab] logprobs;
    tokens that decode to the same text share one entry (their probabilities added)."""
    if k == 0:
        return {}
    values, ids = logprobs.topk(k)
    top: dict[str, float] = {}
    for value, token in zip(values.tolist(), ids.tolist()):
        text = decode(token)
        top[text] = float(torch.logaddexp(torch.tensor(top[text]), torch.tensor(value))) if text in top else value
    return top


# A shared prefix shorter than this saves less than the cache's copy costs.
MIN_SHARED_PREFIX = 16


def shared_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all ``prompts`` share, leaving each at least one token of its own
    (the last prompt token's logits give the first answer token)."""
    limit = min(len(prompt) for prompt in prompts) - 1
    length = 0
    while length < limit and all(prompt[length] == prompts[0][length] for prompt in prompts):
        length += 1
    return length


@dataclass
class LocalBackend(Backend):
    """``model`` answering in batches of ``batch_size``; ``prefix_cache``: rows of a batch that
    share leading tokens share their forward pass."""

    model: HookedModel
    batch_size: int = 8
    prefix_cache: bool = True
    _decoded: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.model, HookedModel):
            raise BackendError(f"LocalBackend takes a HookedModel, got {type(self.model).__name__}")
        check_int("batch_size", self.batch_size, 1)
        if getattr(self.model.tokenizer, "chat_template", None) is None:
            raise BackendError(f"model {self.model.cfg.name!r} has no chat template, so it cannot answer chat requests; "
                               "use an instruct model (SmolLM2-135M-Instruct is the default)")

    @cached_property
    def identity(self) -> str:
        """``local:<name>:<fingerprint>``: a hash of the embedding and the last parameter, so a
        fine-tune that keeps the base model's name never reads the base model's cached answers."""
        parameters = list(self.model.hf_model.parameters())
        digest = hashlib.sha256()
        for tensor in (parameters[0], parameters[-1]):
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        return f"local:{self.model.cfg.name or self.model.cfg.family}:{digest.hexdigest()[:16]}"

    @property
    def echoes(self) -> bool:
        return True

    def _text(self, token: int) -> str:
        if token not in self._decoded:
            self._decoded[token] = self.model.tokenizer.decode([token])
        return self._decoded[token]

    def _prompt_ids(self, request: ChatRequest) -> list[int]:
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        text = self.model.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # The template writes its own special tokens.
        return self.model.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _generate(self, prompts: list[list[int]], requests: list[ChatRequest]) -> list[Completion]:
        """One batch of prompts sharing a temperature: [shared prefix][padding][own tokens] per row,
        the padding masked (left padding when no prefix is shared)."""
        pad = self.model.pad_token_id
        shared = shared_prefix(prompts) if self.prefix_cache and len(prompts) > 1 else 0
        shared = shared if shared >= MIN_SHARED_PREFIX else 0
        own = max(len(prompt) - shared for prompt in prompts)
        width = shared + own
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        ids[:, :shared] = torch.tensor(prompts[0][:shared])
        mask[:, :shared] = 1
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) + shared:] = torch.tensor(prompt[shared:])
            mask[row, width - len(prompt) + shared:] = 1
        temperature = requests[0].temperature
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0} if temperature > 0 else \
            {"do_sample": False}
        device = self.model.device
        with torch.no_grad(), torch.random.fork_rng():
            seed = int(requests[0].key(self.identity)[:8], 16)
            torch.manual_seed(seed)
            if shared:
                # Positions come from the mask's running sum, so each row's own tokens sit right
                # after the prefix, as they would unpadded.
                forward = self.model.hf_model(input_ids=ids[:1, :shared].to(device), use_cache=True)
                # transformers renamed past_key_values to cache (5.x); name it as this version does.
                key = "cache" if "cache" in forward else "past_key_values"
                forward[key].batch_repeat_interleave(len(prompts))
                sampling[key] = forward[key]
            output = self.model.hf_model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device),
                max_new_tokens=max(r.max_tokens for r in requests), pad_token_id=pad, output_logits=True,
                return_dict_in_generate=True, **sampling)
        generated = output.sequences[:, width:].cpu()  # [batch, steps]
        logits = torch.stack(output.logits, 1).float().cpu()  # [batch, steps, vocab]
        eos = self.model.tokenizer.eos_token_id
        completions = []
        for row, request in enumerate(requests):
            tokens = generated[row, :request.max_tokens].tolist()
            if eos in tokens:
                tokens = tokens[:tokens.index(eos)]
            logprobs = torch.log_softmax(logits[row, :len(tokens)], -1)
            scored = tuple(TokenLogprobs(self._text(token), float(logprobs[step, token]),
                                         _top(logprobs[step], request.top_logprobs, self._text))
                           for step, token in enumerate(tokens))
            completions.append(Completion(self.model.tokenizer.decode(tokens, skip_special_tokens=True), scored,
                                          len(prompts[row]), len(tokens)))
        return completions

    def _answer(self, requests: Sequence[ChatRequest], progress: bool) -> list[Completion]:
        prompts = [self._prompt_ids(request) for request in requests]
        # Batches share a temperature and hold rows in token order, so that requests with a long
        # common prefix fall together (and, asked about windows of one length, pad little).
        order = sorted(range(len(requests)), key=lambda i: (requests[i].temperature, prompts[i]))
        batches, current = [], []
        for index in order:
            if current and (len(current) == self.batch_size
                            or requests[current[0]].temperature != requests[index].temperature):
                batches.append(current)
                current = []
            current.append(index)
        batches.append(current)
        answers: list[Completion | None] = [None] * len(requests)
        for batch in tqdm(batches, desc="generating", unit="batch", disable=not progress):
            for index, completion in zip(batch, self._generate([prompts[i] for i in batch],
                                                               [requests[i] for i in batch])):
                answers[index] = completion
        return answers  # type: ignore[return-value]

    def echo(self, texts: Sequence[str], top_logprobs: int = 5) -> list[list[TokenLogprobs]]:
        check_int("top_logprobs", top_logprobs, 0, 20)
        encoded = [self.model.tokenizer(text)["input_ids"] for text in texts]
        results: list[list[TokenLogprobs]] = []
        for start in range(0, len(encoded), self.batch_size):
            chunk = encoded[start:start + self.batch_size]
            width = max(map(len, chunk))
            ids = torch.full((len(chunk), width), self.model.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, tokens in enumerate(chunk):
                ids[row, :len(tokens)] = torch.tensor(tokens)
                mask[row, :len(tokens)] = 1
            with torch.no_grad():
                logits = self.model.hf_model(input_ids=ids.to(self.model.device),
                                             attention_mask=mask.to(self.model.device)).logits.float().cpu()
            for row, tokens in enumerate(chunk):
                logprobs = torch.log_softmax(logits[row, :len(tokens) - 1], -1)  # predicts tokens 1..
                scored = [TokenLogprobs(self._text(tokens[0]), None, {})]
                scored += [TokenLogprobs(self._text(token), float(logprobs[i, token]),
                                         _top(logprobs[i], top_logprobs, self._text))
                           for i, token in enumerate(tokens[1:])]
                results.append(scored)
        return results


__all__ = ["LocalBackend"]
