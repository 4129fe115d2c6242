"""What every language-model backend takes and gives: chat requests in, completions with logprobs out.

A backend answers :class:`ChatRequest` s (a conversation, a token budget, a temperature and how
many top alternatives to report per generated token) with :class:`Completion` s. Backends that
can score a given text token by token (the completions API's ``echo``; the in-process model)
also answer :meth:`Backend.echo`, which the simulation scorer reads at placeholder positions.
A backend that cannot give logprobs says so (:attr:`Backend.logprobs` False, or a completion
whose ``tokens`` is None); scorers then fall back to parsed labels and say so in their output.
Each backend counts what it spent in its own :class:`Usage` (no global state).
"""

from __future__ import annotations

import hashlib
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

from mechscope.errors import ConfigError, MechscopeError
from mechscope.validate import check_choice, check_int, check_number

Role = Literal["system", "user", "assistant"]
ROLES = ("system", "user", "assistant")


class BackendError(MechscopeError):
    """A backend could not answer: unreachable, timed out, refused, or answered malformed."""


@dataclass(frozen=True)
class Message:
    role: Role
    content: str

    def __post_init__(self) -> None:
        check_choice("role", self.role, ROLES)
        if not isinstance(self.content, str):
            raise ConfigError(f"message content must be a string, got {type(self.content).__name__}")


@dataclass(frozen=True)
class ChatRequest:
    """A conversation to continue: ``messages`` (the last one a user turn), at most ``max_tokens``
    new tokens, ``temperature`` 0 for greedy, and ``top_logprobs`` alternatives reported per
    generated token (0: logprobs not asked for)."""

    messages: tuple[Message, ...]
    max_tokens: int = 64
    temperature: float = 0.0
    top_logprobs: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "messages", tuple(self.messages))
        if not self.messages:
            raise ConfigError("a chat request needs at least one message")
        if self.messages[-1].role != "user":
            raise ConfigError(f"the last message must be the user's, got {self.messages[-1].role!r}")
        check_int("max_tokens", self.max_tokens, 1)
        check_number("temperature", self.temperature, 0)
        check_int("top_logprobs", self.top_logprobs, 0, 20)

    @classmethod
    def user(cls, content: str, system: str | None = None, **options) -> ChatRequest:
        """One user turn, after an optional system prompt."""
        messages = ([Message("system", system)] if system else []) + [Message("user", content)]
        return cls(tuple(messages), **options)

    def to_json(self) -> dict:
        return {"messages": [asdict(m) for m in self.messages], "max_tokens": self.max_tokens,
                "temperature": self.temperature, "top_logprobs": self.top_logprobs}

    def key(self, backend_identity: str) -> str:
        """The cache key: a hash of the backend's identity (model, endpoint) and the request."""
        text = json.dumps({"backend": backend_identity, "request": self.to_json()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class TokenLogprobs:
    """One token: its ``text``, its ``logprob`` (None for the first token of an echoed text, which
    has no context), and the ``top`` alternatives {text: logprob} at its position."""

    text: str
    logprob: float | None
    top: dict[str, float]

    def to_json(self) -> dict:
        return {"text": self.text, "logprob": self.logprob, "top": self.top}

    @classmethod
    def from_json(cls, data: dict) -> TokenLogprobs:
        return cls(data["text"], data["logprob"], dict(data["top"]))


@dataclass(frozen=True)
class Completion:
    """The answer to one request: the generated ``text``, its ``tokens`` with logprobs (None when
    the backend gave none), the tokens spent, and whether it came from the disk cache."""

    text: str
    tokens: tuple[TokenLogprobs, ...] | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False

    def first_token_probabilities(self, choices: Sequence[str], aliases: dict[str, Sequence[str]] | None = None
                                  ) -> dict[str, float] | None:
        """{choice: probability} of each choice as the first generated token, renormalised over the
        choices, read from the first token's top alternatives (compared stripped and case folded;
        ``aliases`` adds other spellings of a choice, e.g. {"1": ["yes"]}). A choice absent from
        the alternatives is given the probability of the least likely one listed, the most it can
        have: counting it as 0 would saturate the other choice at 1 and tie every answer. None
        when there are no logprobs or no choice is among the alternatives."""
        if not self.tokens:
            return None
        spellings = {choice.lower(): choice for choice in choices}
        for choice, others in (aliases or {}).items():
            spellings.update({other.lower(): choice for other in others})
        mass = dict.fromkeys(choices, 0.0)
        top = self.tokens[0].top
        for text, logprob in top.items():
            choice = spellings.get(text.strip().lower())
            if choice is not None:
                mass[choice] += math.exp(logprob)
        if not any(mass.values()):
            return None
        floor = math.exp(min(top.values()))
        mass = {choice: value if value > 0 else floor for choice, value in mass.items()}
        total = sum(mass.values())
        return {choice: value / total for choice, value in mass.items()}

    def to_json(self) -> dict:
        return {"text": self.text, "tokens": None if self.tokens is None else [t.to_json() for t in self.tokens],
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}

    @classmethod
    def from_json(cls, data: dict, cached: bool = False) -> Completion:
        tokens = data.get("tokens")
        return cls(data["text"], None if tokens is None else tuple(TokenLogprobs.from_json(t) for t in tokens),
                   int(data.get("prompt_tokens", 0)), int(data.get("completion_tokens", 0)), cached)


@dataclass
class Usage:
    """What a backend has spent: requests answered (``cached`` of them from disk), tokens read and written."""

    requests: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, completion: Completion) -> None:
        self.requests += 1
        if completion.cached:
            self.cached += 1
        else:
            self.prompt_tokens += completion.prompt_tokens
            self.completion_tokens += completion.completion_tokens

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Backend(ABC):
    """A chat model the explainers and scorers talk to. Subclasses set :attr:`identity` (what the
    cache keys on), :attr:`logprobs` and :attr:`echoes`, and implement :meth:`_answer`."""

    usage: Usage = field(default_factory=Usage, init=False)

    @property
    @abstractmethod
    def identity(self) -> str:
        """Names the model and where it runs, so cached answers of one model never serve another."""

    @property
    def logprobs(self) -> bool:
        """Whether completions carry token logprobs (False: scorers fall back to parsed labels)."""
        return True

    @property
    def echoes(self) -> bool:
        """Whether :meth:`echo` works (per-token logprobs of a given text)."""
        return False

    @abstractmethod
    def _answer(self, requests: Sequence[ChatRequest], progress: bool) -> list[Completion]:
        """The completions of ``requests``, in order."""

    def chat(self, requests: Sequence[ChatRequest], progress: bool = False) -> list[Completion]:
        """Answer ``requests`` (batched or concurrent as the backend can), in order."""
        requests = list(requests)
        for index, request in enumerate(requests):
            if not isinstance(request, ChatRequest):
                raise ConfigError(f"request {index} is a {type(request).__name__}, not a ChatRequest")
        if not requests:
            return []
        completions = self._answer(requests, progress)
        for completion in completions:
            self.usage.add(completion)
        return completions

    def echo(self, texts: Sequence[str], top_logprobs: int = 5) -> list[list[TokenLogprobs]]:
        """Per token of each raw text (no chat template): its logprob given what precedes it and the
        ``top_logprobs`` alternatives at its position."""
        raise BackendError(f"{self.identity} cannot score a given text token by token (no echo); "
                           "use a backend whose echoes is True (the in-process model or mechscope serve-llm)")


__all__ = ["ROLES", "Backend", "BackendError", "ChatRequest", "Completion", "Message", "Role", "TokenLogprobs",
           "Usage"]
