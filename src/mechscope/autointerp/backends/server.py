"""``mechscope serve-llm``'s server: an OpenAI-compatible HTTP API on loopback over any backend.

Endpoints, in OpenAI's JSON shapes:

- ``GET /v1/models``: the one model served.
- ``POST /v1/chat/completions``: ``messages`` (system, user and assistant turns; content a string
  or a list of text parts), ``max_tokens`` or ``max_completion_tokens`` (default 64),
  ``temperature`` (default 1, as OpenAI's; 0 is greedy), ``logprobs`` and ``top_logprobs`` (0-20).
- ``POST /v1/completions``: ``echo: true`` only (raw-text generation is not served): the prompt's
  own tokens with their logprobs and ``logprobs`` alternatives each, plus, with ``max_tokens: 1``,
  the greedy next token (what clients that drop one generated token, like lm-eval-harness and
  :class:`~mechscope.autointerp.backends.http.OpenAIBackend`, expect); ``max_tokens: 0`` (the
  default) returns the prompt's tokens alone.

What the server cannot do it refuses with a 400 naming the problem and what is supported:
``stream: true``, ``n`` other than 1, unknown roles, unknown fields, values out of range; another
model's name gets a 404, as vLLM answers. Errors have OpenAI's shape, ``{"error": {"message",
"type", "param", "code"}}``.

The model is not thread-safe, so one worker thread owns the backend: request handlers queue jobs
and await them, and the worker takes the first queued job and, for chat, whatever chat jobs are
queued behind it (up to ``batch_size``), answering them with one ``backend.chat`` call; requests
that arrive together are batched without any waiting. ``logprobs=False`` answers without logprobs,
like servers that drop them, to exercise (and demonstrate) the scorers' fallback.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import queue
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Literal

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from mechscope.autointerp.backends.base import (
    ROLES,
    Backend,
    BackendError,
    ChatRequest,
    Completion,
    Message,
    TokenLogprobs,
)
from mechscope.autointerp.backends.local import LocalBackend, _top
from mechscope.errors import ConfigError, MechscopeError
from mechscope.validate import check_int

logger = logging.getLogger(__name__)

LOOPBACK_NAMES = ("localhost",)
DEFAULT_MAX_TOKENS = 64  # a ChatRequest's default (OpenAI's, "up to the context", suits no tiny model)
DEFAULT_TEMPERATURE = 1.0  # OpenAI's default; mechscope's own client always sends its temperature
_STOP = object()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is refused, never silently ignored


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessageIn(_Strict):
    role: str
    content: str | list[TextPart]


class ChatCompletionIn(_Strict):
    model: str | None = None
    messages: list[ChatMessageIn]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = None
    stream: bool | None = False
    n: int | None = 1


class CompletionIn(_Strict):
    model: str | None = None
    prompt: str | list[str]
    echo: bool | None = False
    logprobs: int | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    stream: bool | None = False
    n: int | None = 1


BODIES = {"/v1/chat/completions": ChatCompletionIn, "/v1/completions": CompletionIn}


class ApiError(Exception):
    """An answer other than 200, in OpenAI's error shape."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.kind, "param": self.param,
                                       "code": self.code}}, status_code=self.status)


def _validation_message(error: RequestValidationError, path: str) -> str:
    """Pydantic's complaints as one line; an unknown field is named with the supported ones."""
    parts = []
    for item in error.errors():
        where = ".".join(str(part) for part in item.get("loc", ())[1:]) or "body"
        if item.get("type") == "extra_forbidden" and path in BODIES:
            supported = ", ".join(BODIES[path].model_fields)
            parts.append(f"unknown field {where!r}; mechscope serve-llm supports: {supported}")
        else:
            parts.append(f"{where}: {item.get('msg', 'invalid')}")
    return "; ".join(parts)


class _Worker:
    """The one thread that owns the backend: jobs are ``(kind, payload, future)``; chat jobs queued
    together are answered by one ``backend.chat`` call."""

    def __init__(self, backend: Backend, batch_size: int):
        self.backend, self.batch_size = backend, batch_size
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def start(self) -> None:
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="mechscope-serve-llm", daemon=True)
                self.thread.start()

    def stop(self) -> None:
        with self.lock:
            thread, self.thread = self.thread, None
        if thread is not None:
            self.jobs.put(_STOP)
            thread.join(timeout=30)  # a batch in progress ends first

    def submit(self, kind: str, payload: Any) -> Future:
        self.start()  # started by the app's lifespan; this covers an app run without one
        future: Future = Future()
        self.jobs.put((kind, payload, future))
        return future

    def _run(self) -> None:
        held = None
        while True:
            job = held if held is not None else self.jobs.get()
            held = None
            if job is _STOP:
                return
            if job[0] != "chat":
                self._settle([job], lambda payloads: [self._echo(*payloads[0])])
                continue
            batch = [job]
            while len(batch) < self.batch_size:
                try:
                    queued = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if queued is _STOP or queued[0] != "chat":
                    held = queued  # answered after this batch
                    break
                batch.append(queued)
            self._settle(batch, self.backend.chat)

    @staticmethod
    def _settle(jobs: list, answer) -> None:
        live = [job for job in jobs if job[2].set_running_or_notify_cancel()]  # a gone client's job is dropped
        if not live:
            return
        try:
            results = answer([job[1] for job in live])
        except Exception as error:  # any failure of the model goes back to its requests; the worker lives on
            for job in live:
                job[2].set_exception(error)
            return
        for job, result in zip(live, results):
            job[2].set_result(result)

    def _echo(self, texts: list[str], top_logprobs: int, generate: bool) -> tuple:
        scored = self.backend.echo(texts, top_logprobs)
        generated = _next_tokens(self.backend, texts, top_logprobs) if generate else None
        return scored, generated, [_text_offsets(self.backend, text, row) for text, row in zip(texts, scored)]


def _text_offsets(backend: Backend, text: str, scored: list[TokenLogprobs]) -> list[int]:
    """Where each echoed token starts in ``text``, in characters: the tokenizer's own offsets for
    the in-process model (special tokens such as BOS start at 0), else the token texts' running length."""
    tokenizer = getattr(backend.model, "tokenizer", None) if isinstance(backend, LocalBackend) else None
    if tokenizer is not None and tokenizer.is_fast:
        starts = [start for start, _ in tokenizer(text, return_offsets_mapping=True)["offset_mapping"]]
        if len(starts) == len(scored):  # tokenized as LocalBackend.echo does
            return starts
    offsets, offset = [], 0
    for token in scored:
        offsets.append(offset)
        offset += len(token.text)
    return offsets


def _next_tokens(backend: LocalBackend, texts: list[str], top_logprobs: int) -> list[TokenLogprobs]:
    """The greedy token after each raw text (tokenized as :meth:`LocalBackend.echo` does), with its
    logprob and ``top_logprobs`` alternatives."""
    model, tokens = backend.model, []
    decode = lambda token: model.tokenizer.decode([token])
    for start in range(0, len(texts), backend.batch_size):
        encoded = [model.tokenizer(text)["input_ids"] for text in texts[start:start + backend.batch_size]]
        width = max(map(len, encoded))
        ids = torch.full((len(encoded), width), model.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, row_ids in enumerate(encoded):
            ids[row, :len(row_ids)] = torch.tensor(row_ids)
            mask[row, :len(row_ids)] = 1
        with torch.no_grad():
            logits = model.hf_model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
        for row, row_ids in enumerate(encoded):
            logprobs = torch.log_softmax(logits[row, len(row_ids) - 1].float().cpu(), -1)
            token = int(logprobs.argmax())
            tokens.append(TokenLogprobs(decode(token), float(logprobs[token]), _top(logprobs, top_logprobs, decode)))
    return tokens


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _refuse_unsupported(body: ChatCompletionIn | CompletionIn) -> None:
    if body.stream:
        raise ApiError(400, "stream: true is not supported by mechscope serve-llm; send stream: false (or omit it) "
                            "for one JSON answer", param="stream")
    if body.n not in (None, 1):
        raise ApiError(400, f"n={body.n} is not supported by mechscope serve-llm: it answers one choice per "
                            "request (n: 1); send the request n times instead", param="n")


def _chat_request(body: ChatCompletionIn, serve_logprobs: bool) -> ChatRequest:
    _refuse_unsupported(body)
    messages = []
    for index, message in enumerate(body.messages):
        if message.role not in ROLES:
            raise ApiError(400, f"messages[{index}] has unknown role {message.role!r}; mechscope serve-llm "
                                f"supports the roles: {', '.join(ROLES)}", param=f"messages[{index}].role")
        content = message.content if isinstance(message.content, str) else "".join(p.text for p in message.content)
        messages.append(Message(message.role, content))
    if body.max_tokens is not None and body.max_completion_tokens is not None \
            and body.max_tokens != body.max_completion_tokens:
        raise ApiError(400, f"max_tokens ({body.max_tokens}) and max_completion_tokens "
                            f"({body.max_completion_tokens}) disagree; send one of them")
    if body.top_logprobs and not body.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    max_tokens = next((v for v in (body.max_completion_tokens, body.max_tokens) if v is not None), DEFAULT_MAX_TOKENS)
    temperature = DEFAULT_TEMPERATURE if body.temperature is None else body.temperature
    top = (body.top_logprobs or 0) if body.logprobs and serve_logprobs else 0
    try:
        return ChatRequest(tuple(messages), max_tokens, temperature, top)
    except MechscopeError as error:
        raise ApiError(400, str(error)) from None


def _chat_logprobs(completion: Completion) -> dict | None:
    if completion.tokens is None:
        return None
    return {"content": [{"token": token.text, "logprob": token.logprob, "bytes": list(token.text.encode()),
                         "top_logprobs": [{"token": text, "logprob": value, "bytes": list(text.encode())}
                                          for text, value in token.top.items()]}
                        for token in completion.tokens]}


def _echo_choice(index: int, prompt: str, scored: list[TokenLogprobs], generated: TokenLogprobs | None,
                 offsets: list[int], top_logprobs: int | None, serve_logprobs: bool) -> dict:
    tokens = scored + ([generated] if generated is not None else [])
    offsets = offsets + ([len(prompt)] if generated is not None else [])
    logprobs = None
    if top_logprobs is not None and serve_logprobs:
        logprobs = {"tokens": [token.text for token in tokens], "token_logprobs": [token.logprob for token in tokens],
                    "top_logprobs": [None] + [token.top for token in tokens[1:]], "text_offset": offsets}
    return {"index": index, "text": prompt + (generated.text if generated is not None else ""),
            "logprobs": logprobs, "finish_reason": "length"}


def create_app(backend: Backend, model_name: str, batch_size: int = 8, logprobs: bool = True) -> FastAPI:
    """An OpenAI-compatible app serving ``backend`` as ``model_name``; chat requests arriving
    together are answered in batches of up to ``batch_size``; ``logprobs=False`` never returns
    logprobs (as servers that drop them)."""
    if not isinstance(backend, Backend):
        raise ConfigError(f"create_app serves a Backend (e.g. LocalBackend(model)), got {type(backend).__name__}")
    if not isinstance(model_name, str) or not model_name.strip():
        raise ConfigError(f"model_name must be a non-empty string (the name clients ask for); got {model_name!r}")
    check_int("batch_size", batch_size, 1, 1024)
    if not isinstance(logprobs, bool):
        raise ConfigError(f"logprobs must be True or False; got {logprobs!r}")
    worker = _Worker(backend, batch_size)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        yield
        await asyncio.to_thread(worker.stop)

    app = FastAPI(title=f"mechscope serve-llm: {model_name}", lifespan=lifespan)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return ApiError(400, _validation_message(error, request.url.path)).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = f"{error.detail}: {request.method} {request.url.path}; mechscope serve-llm serves GET /v1/models, " \
                  "POST /v1/chat/completions and POST /v1/completions (echo)"
        return ApiError(error.status_code, message).response()

    def check_model(name: str | None) -> None:
        if name is not None and name != model_name:
            raise ApiError(404, f"model {name!r} is not served here; this server serves {model_name!r} "
                                "(GET /v1/models)", param="model", code="model_not_found")

    async def run(kind: str, payload: Any) -> Any:
        try:
            return await asyncio.wrap_future(worker.submit(kind, payload))
        except BackendError as error:  # the served backend could not answer (e.g. its own upstream is down)
            raise ApiError(502, f"the backend failed: {error}", kind="server_error") from None
        except MechscopeError as error:
            raise ApiError(400, str(error)) from None
        except Exception as error:
            logger.exception("the model failed on a %s request", kind)
            raise ApiError(500, f"the model failed: {type(error).__name__}: {error}", kind="server_error") from None

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "mechscope"}]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionIn) -> dict:
        check_model(body.model)
        request = _chat_request(body, logprobs)
        completion: Completion = await run("chat", request)
        finish = "length" if completion.completion_tokens >= request.max_tokens else "stop"
        choice = {"index": 0, "message": {"role": "assistant", "content": completion.text},
                  "logprobs": _chat_logprobs(completion) if body.logprobs and logprobs else None,
                  "finish_reason": finish}
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": model_name, "choices": [choice],
                "usage": _usage(completion.prompt_tokens, completion.completion_tokens)}

    @app.post("/v1/completions")
    async def completions(body: CompletionIn) -> dict:
        check_model(body.model)
        _refuse_unsupported(body)
        if not body.echo:
            raise ApiError(400, "mechscope serve-llm supports /v1/completions only with echo: true (the prompt's "
                                "tokens with their logprobs); for generation use /v1/chat/completions", param="echo")
        max_tokens = 0 if body.max_tokens is None else body.max_tokens
        if max_tokens not in (0, 1):
            raise ApiError(400, f"with echo, max_tokens must be 0 (the prompt's tokens only) or 1 (and the greedy "
                                f"next token); got {max_tokens}", param="max_tokens")
        if max_tokens == 1 and body.temperature not in (None, 0):
            raise ApiError(400, "the one token echo generates is the greedy one; send temperature 0 (or omit it)",
                           param="temperature")
        if max_tokens == 1 and not isinstance(backend, LocalBackend):
            raise ApiError(400, f"echo with max_tokens 1 needs the in-process model, and this server wraps a "
                                f"{type(backend).__name__}; send max_tokens 0", param="max_tokens")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts or not all(prompts):
            raise ApiError(400, "prompt must be a non-empty string or a non-empty list of non-empty strings",
                           param="prompt")
        try:
            top = check_int("logprobs", 0 if body.logprobs is None else body.logprobs, 0, 20)
        except ConfigError as error:
            raise ApiError(400, str(error), param="logprobs") from None
        scored, generated, offsets = await run("echo", (prompts, top, max_tokens == 1))
        choices = [_echo_choice(index, prompt, row, None if generated is None else generated[index], offsets[index],
                                body.logprobs, logprobs) for index, (prompt, row) in enumerate(zip(prompts, scored))]
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": model_name, "choices": choices,
                "usage": _usage(sum(map(len, scored)), max_tokens * len(prompts))}

    return app


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name, or an IPv4 or IPv6 address, bracketed or not) is this machine."""
    try:
        return host in LOOPBACK_NAMES or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_host(host: str, allow_remote: bool = False) -> str:
    """``host`` if it is a loopback address (or ``allow_remote``), else a ConfigError: the server
    has no authentication, so it is not offered to the network by default."""
    if not isinstance(host, str) or not host:
        raise ConfigError(f"host must be an address such as 127.0.0.1; got {host!r}")
    if not is_loopback(host) and not allow_remote:
        raise ConfigError(f"host {host!r} is not a loopback address; the server has no authentication, so it "
                          "listens only on 127.0.0.1, ::1 or localhost unless allowed: pass allow_remote=True "
                          "(--allow-remote) to listen on it anyway")
    return host


def listen(host: str = "127.0.0.1", port: int = 8000, allow_remote: bool = False) -> socket.socket:
    """A socket bound to ``host``:``port`` (0: a free port) for :func:`serve`, after :func:`check_host`;
    a port already taken is a ConfigError that says so."""
    check_host(host, allow_remote)
    check_int("port", port, 0, 65535)
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as error:
        raise ConfigError(f"cannot resolve host {host!r}: {error}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait for TIME_WAIT
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {error.strerror or error}; another server may hold "
                          "the port (choose another with --port)") from None
    return sock


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, allow_remote: bool = False,
          log_level: str = "info") -> None:
    """Run ``app`` with uvicorn on ``host``:``port`` until interrupted; ``host`` must be loopback
    unless ``allow_remote``."""
    import uvicorn

    sock = listen(host, port, allow_remote)
    uvicorn.Server(uvicorn.Config(app, log_level=log_level)).run(sockets=[sock])


@contextmanager
def background_server(app, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0,
                      sock: socket.socket | None = None) -> Iterator[str]:
    """Serve ``app`` (any ASGI app) with uvicorn in a daemon thread while the block runs; yields
    its base URL (``http://host:port``). ``sock``: one already bound with :func:`listen` (when the
    app must know its port), else a loopback one is bound here. For tests, benchmarks, notebooks."""
    import uvicorn

    sock = sock if sock is not None else listen(host, port)
    host, bound = sock.getsockname()[:2]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="mechscope-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise ConfigError(f"the server on {host}:{bound} did not start within {timeout:.0f} s")
        time.sleep(0.02)
    shown = f"[{host}]" if ":" in host else host
    try:
        yield f"http://{shown}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


__all__ = ["background_server", "create_app", "check_host", "is_loopback", "listen", "serve"]
