"""An OpenAI-compatible HTTP backend: chat completions with logprobs, and completions with ``echo``,
from vLLM, llama.cpp's llama-server, Ollama, a hosted API or ``mechscope serve-llm``.

Each :class:`~mechscope.autointerp.backends.base.ChatRequest` is one POST to
``{base_url}/chat/completions``; up to ``concurrency`` are in flight at once (a thread pool over one
shared ``httpx.Client`` whose connection pool has the same size), and answers come back in request
order. Connection errors, timeouts, 429 and 5xx answers are retried ``retries`` times after
``backoff * 2**attempt`` seconds (longer when the server's ``Retry-After`` asks for it); any other
4xx is the request's own fault and fails at once, quoting the server's message. Wrap the backend in
:class:`~mechscope.autointerp.backends.cache.CachedBackend` for the disk cache.

The API key is read from the environment variable ``api_key_env`` at each request and sent only as
the ``Authorization`` header. It is never stored on the backend, so it cannot reach its identity,
repr, the cache or a log line; a server message that quotes it back is redacted.

Logprobs: every chat request asks for them (``logprobs: true``, and ``top_logprobs: k`` when the
request wants k alternatives). A server that answers without them (Ollama's compatibility layer has
dropped them; a ``serve-llm --no-logprobs`` server does) gives completions whose ``tokens`` is None,
and one that refuses the parameter (a 400 naming ``logprobs``, as some hosted models do) is asked
again without it; either way :attr:`OpenAIBackend.logprobs` turns False, so scorers fall back to
parsed labels and say so.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from tqdm.auto import tqdm

from mechscope.autointerp.backends.base import Backend, BackendError, ChatRequest, Completion, TokenLogprobs
from mechscope.errors import ConfigError
from mechscope.validate import check_int, check_number

logger = logging.getLogger(__name__)

ECHO_CHUNK = 8  # texts per /completions request of echo (chunks are sent concurrently)
MAX_RETRY_AFTER = 60.0  # seconds: the longest Retry-After a server gets to impose per retry
HINT = "is the server running? start one with `mechscope serve-llm`, or check base_url"
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
T = TypeVar("T")
R = TypeVar("R")


class _Refused(BackendError):
    """A 4xx answer other than 429: the request itself is wrong, so it is not retried."""

    def __init__(self, message: str, status: int, server_message: str):
        super().__init__(message)
        self.status = status
        self.server_message = server_message


def _server_message(response: httpx.Response) -> str:
    """The error message in an answer: OpenAI's ``{"error": {"message"}}``, vLLM's older
    ``{"message"}``, FastAPI's ``{"detail"}``, or the start of the body."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str) and error:
            return error
        if data.get("message"):
            return str(data["message"])
        detail = data.get("detail")
        if isinstance(detail, str):
            return detail
        if isinstance(detail, list):
            return "; ".join(str(item.get("msg", item)) if isinstance(item, dict) else str(item) for item in detail)
    return response.text.strip()[:300] or response.reason_phrase


def _retry_after(response: httpx.Response) -> float:
    """The seconds a 429/503 answer's ``Retry-After`` header asks for (0 when absent or a date)."""
    try:
        return min(max(float(response.headers.get("retry-after", 0)), 0.0), MAX_RETRY_AFTER)
    except ValueError:
        return 0.0


def _logaddexp(a: float, b: float) -> float:
    high, low = max(a, b), min(a, b)
    return high + math.log1p(math.exp(low - high))


def _top_of(entries: Any) -> dict[str, float]:
    """{token text: logprob} from a chat answer's ``top_logprobs`` list; tokens that decode to the
    same text share one entry (their probabilities added), as the in-process backend reports them."""
    top: dict[str, float] = {}
    for entry in entries or []:
        text, value = str(entry["token"]), float(entry["logprob"])
        top[text] = _logaddexp(top[text], value) if text in top else value
    return top


def _chat_tokens(logprobs: Any) -> tuple[TokenLogprobs, ...] | None:
    """The generated tokens of a chat answer's ``choices[0].logprobs`` (None: the server gave none)."""
    if not isinstance(logprobs, dict) or logprobs.get("content") is None:
        return None
    return tuple(TokenLogprobs(str(entry["token"]), float(entry["logprob"]), _top_of(entry.get("top_logprobs")))
                 for entry in logprobs["content"])


@dataclass
class OpenAIBackend(Backend):
    """A model behind an OpenAI-compatible API at ``base_url`` (e.g. ``http://127.0.0.1:8000/v1``),
    asked for by the name ``model``. ``api_key_env`` names the environment variable holding the key
    (None: never send one); ``concurrency`` requests are in flight at once; each is tried
    ``retries + 1`` times, waiting ``backoff * 2**attempt`` seconds between tries; ``timeout`` is
    the seconds one try may take."""

    base_url: str
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"
    concurrency: int = 4
    retries: int = 3
    backoff: float = 0.5
    timeout: float = 30.0
    _no_logprobs: bool = field(default=False, init=False, repr=False, compare=False)
    _logprobs_refused: bool = field(default=False, init=False, repr=False, compare=False)
    _echo_refused: bool = field(default=False, init=False, repr=False, compare=False)
    _client: httpx.Client | None = field(default=None, init=False, repr=False, compare=False)
    _lock: Any = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.base_url, str) or not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base_url must be an http:// or https:// URL such as http://127.0.0.1:8000/v1; "
                              f"got {self.base_url!r}")
        if httpx.URL(self.base_url).userinfo:
            # Not quoted: the URL holds a credential, which would end up in the identity and messages.
            raise ConfigError("base_url must not hold credentials (user:password@); put the API key in the "
                              "environment variable named by api_key_env")
        self.base_url = self.base_url.rstrip("/")
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError(f"model must be the model's name on the server (GET {self.base_url}/models lists "
                              f"them); got {self.model!r}")
        if self.api_key_env is not None and (not isinstance(self.api_key_env, str)
                                             or not ENV_NAME.fullmatch(self.api_key_env)):
            # Not quoted either: a value that is no variable name may be the key itself.
            raise ConfigError("api_key_env must name an environment variable (letters, digits and underscores, "
                              "e.g. OPENAI_API_KEY), not hold the key itself; or be None to send no key")
        check_int("concurrency", self.concurrency, 1, 256)
        check_int("retries", self.retries, 0, 20)
        check_number("backoff", self.backoff, 0, 60)
        check_number("timeout", self.timeout, 0, strict_minimum=True)

    @property
    def identity(self) -> str:
        return f"openai:{self.base_url}:{self.model}"

    @property
    def logprobs(self) -> bool:
        """False once the server answered without logprobs or refused them."""
        return not self._no_logprobs

    @property
    def echoes(self) -> bool:
        """True until the server refused (or ignored) ``echo``: only a try tells."""
        return not self._echo_refused

    # ------------------------------------------------------------------ transport
    def _key(self) -> str | None:
        return (os.environ.get(self.api_key_env) or None) if self.api_key_env else None

    def _redact(self, text: str) -> str:
        key = self._key()
        return text.replace(key, "***") if key else text

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
                self._client = httpx.Client(timeout=self.timeout, limits=limits)
            return self._client

    def close(self) -> None:
        """Close the connections (a later request opens new ones)."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def post_json(self, path: str, payload: dict) -> dict:
        """POST ``payload`` to ``{base_url}/{path}`` with retries; the answer's JSON object. For
        requests the typed methods do not cover; raises BackendError as they do."""
        url = f"{self.base_url}/{path.lstrip('/')}"
        tries = self.retries + 1
        last = ""
        for attempt in range(tries):
            wait = 0.0
            key = self._key()
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            try:
                response = self._http().post(url, json=payload, headers=headers)
            except httpx.TimeoutException:
                last = f"no answer within the {self.timeout:g} s timeout"
            except httpx.TransportError as error:  # refused, reset, name not resolved, broken answer
                last = f"{type(error).__name__}: {error}"
            else:
                if response.status_code < 400:
                    return self._json(response, url)
                message = _server_message(response)
                if response.status_code != 429 and response.status_code < 500:
                    hint = " (does base_url end in /v1?)" if response.status_code == 404 else ""
                    raise _Refused(self._redact(f"{url} refused the request: HTTP {response.status_code}: "
                                                f"{message}{hint}"), response.status_code, message)
                last = f"HTTP {response.status_code}: {message}"
                wait = _retry_after(response)
            if attempt + 1 < tries:
                delay = max(self.backoff * 2 ** attempt, wait)
                logger.warning("%s", self._redact(f"{url}: {last}; retrying in {delay:.2g} s "
                                                  f"(try {attempt + 2} of {tries})"))
                time.sleep(delay)
        raise BackendError(self._redact(f"{url} did not answer after {tries} tries; "
                                        f"last error: {last}; {HINT}"))

    def _json(self, response: httpx.Response, url: str) -> dict:
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise BackendError(self._redact(f"{url} answered HTTP {response.status_code} with something other than "
                                            f"a JSON object: {response.text[:200]!r}"))
        return data

    def _each(self, work: Callable[[T], R], items: Sequence[T], progress: bool = False, what: str = "asking") -> list[R]:
        """``work`` on each item, ``concurrency`` at a time, results in the items' order; the first
        error cancels what has not started and is raised once the running ones end."""
        bar = tqdm(total=len(items), desc=what, unit="request", disable=not progress)
        try:
            if self.concurrency == 1 or len(items) <= 1:
                results = []
                for item in items:
                    results.append(work(item))
                    bar.update()
                return results
            with ThreadPoolExecutor(min(self.concurrency, len(items)), thread_name_prefix="mechscope-http") as pool:
                futures = [pool.submit(work, item) for item in items]
                try:
                    results = []
                    for future in futures:
                        results.append(future.result())
                        bar.update()
                    return results
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise
        finally:
            bar.close()

    # ------------------------------------------------------------------ chat
    def _chat_payload(self, request: ChatRequest) -> dict:
        payload: dict[str, Any] = {"model": self.model, "messages": request.to_json()["messages"],
                                   "max_tokens": request.max_tokens, "temperature": request.temperature}
        if not self._logprobs_refused:
            payload["logprobs"] = True
            if request.top_logprobs:
                payload["top_logprobs"] = request.top_logprobs
        return payload

    def _chat_one(self, request: ChatRequest) -> Completion:
        asked = not self._logprobs_refused
        try:
            data = self.post_json("chat/completions", self._chat_payload(request))
        except _Refused as error:
            said = error.server_message.lower()
            # "logprobs is not supported with this model", not "top_logprobs above the maximum": only
            # the first is answered by asking without them.
            if not asked or "logprobs" not in said or "support" not in said:
                raise
            self._logprobs_refused = self._no_logprobs = True
            logger.warning("%s", self._redact(f"{self.base_url} refuses logprobs ({error.server_message}); asking "
                                              "without them, so scorers fall back to parsed labels"))
            data = self.post_json("chat/completions", self._chat_payload(request))
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] or ""
            tokens = _chat_tokens(choice.get("logprobs"))
        except (KeyError, IndexError, TypeError, ValueError) as error:
            raise BackendError(self._redact(f"{self.base_url}/chat/completions answered in an unexpected shape "
                                            f"({type(error).__name__}: {error}): {str(data)[:300]}")) from error
        if tokens is None and not self._no_logprobs:
            self._no_logprobs = True
            logger.warning("%s answered without logprobs; scorers fall back to parsed labels", self.base_url)
        usage = data.get("usage") or {}
        return Completion(str(text), tokens, int(usage.get("prompt_tokens") or 0),
                          int(usage.get("completion_tokens") or (len(tokens) if tokens else 0)))

    def _answer(self, requests: Sequence[ChatRequest], progress: bool) -> list[Completion]:
        return self._each(self._chat_one, list(requests), progress)

    # ------------------------------------------------------------------ echo
    def _echo_chunk(self, texts: list[str], top_logprobs: int) -> list[list[TokenLogprobs]]:
        # max_tokens 1 and dropping the generated token, as lm-eval-harness does: the widest-supported
        # form (some servers refuse max_tokens 0).
        payload = {"model": self.model, "prompt": texts, "echo": True, "logprobs": top_logprobs, "max_tokens": 1,
                   "temperature": 0.0}
        needed = ("echo (the prompt's own token logprobs, from /completions with echo: true) is needed for "
                  "simulation by logprobs; use mechscope serve-llm or vLLM, or a scorer that does not simulate")
        try:
            data = self.post_json("completions", payload)
        except _Refused as error:
            self._echo_refused = True
            raise BackendError(f"{error}; {needed}") from error
        choices = data.get("choices")
        if not isinstance(choices, list) or len(choices) != len(texts):
            raise BackendError(f"{self.base_url}/completions answered {len(choices) if isinstance(choices, list) else 0}"
                               f" choices for {len(texts)} prompts")
        results = []
        for choice in sorted(choices, key=lambda choice: choice.get("index", 0)):
            logprobs = choice.get("logprobs") or {}
            tokens = logprobs.get("tokens") or []
            values = logprobs.get("token_logprobs") or []
            tops = logprobs.get("top_logprobs") or [None] * len(tokens)
            if len(tokens) < 2 or len(values) != len(tokens) or len(tops) != len(tokens):
                # One token is the generated one alone: the server ignored echo (llama-server does).
                self._echo_refused = True
                raise BackendError(f"{self.base_url}/completions answered without the prompt's tokens and "
                                   f"logprobs ({len(tokens)} token(s), {len(values)} logprob(s)); {needed}")
            tokens, values, tops = tokens[:-1], values[:-1], tops[:-1]  # the one generated token
            row = [TokenLogprobs(str(tokens[0]), None, {})]
            row += [TokenLogprobs(str(token), float(value), {str(k): float(v) for k, v in (top or {}).items()})
                    for token, value, top in zip(tokens[1:], values[1:], tops[1:])]
            results.append(row)
        usage = data.get("usage") or {}
        with self._lock:  # echo spends tokens too (a hosted API bills them)
            self.usage.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            self.usage.completion_tokens += int(usage.get("completion_tokens") or 0)
        return results

    def echo(self, texts: Sequence[str], top_logprobs: int = 5) -> list[list[TokenLogprobs]]:
        check_int("top_logprobs", top_logprobs, 0, 20)
        texts = list(texts)
        for index, text in enumerate(texts):
            if not isinstance(text, str) or not text:
                raise ConfigError(f"text {index} must be a non-empty string, got {text!r}")
        chunks = [texts[start:start + ECHO_CHUNK] for start in range(0, len(texts), ECHO_CHUNK)]
        answered = self._each(lambda chunk: self._echo_chunk(chunk, top_logprobs), chunks, what="echoing")
        return [row for chunk in answered for row in chunk]


__all__ = ["OpenAIBackend"]
