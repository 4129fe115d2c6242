"""The OpenAI-compatible client against a real ``mechscope serve-llm`` server (uvicorn on loopback,
in a background thread) over a tiny random chat model: its answers, logprobs and echo equal the
in-process backend's, concurrent requests come back in order, the disk cache spares the server,
a dead or silent endpoint fails in bounded time keeping what was cached, the API key is sent and
never stored or shown, a server without logprobs is noticed, and what the server cannot serve is
refused with a clear 400. Two small stand-ins for third-party servers (one refusing logprobs and
echo, one quoting the key back) cover what serve-llm itself never does."""

import logging
import socket
import threading
import time
from collections import Counter
from contextlib import contextmanager

import httpx
import pytest
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from typer.testing import CliRunner

from mechscope.autointerp.backends import (
    Backend,
    BackendError,
    CachedBackend,
    ChatRequest,
    LocalBackend,
    OpenAIBackend,
    create_app,
    serve,
)
from mechscope.autointerp.backends.server import check_host, listen
from mechscope.cli.main import app as cli_app
from mechscope.errors import ConfigError
from mechscope.models.tiny import load_tiny

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("one_thread")]

MODEL = "tiny-llama"
SECRET = "sk-mechscope-test-SECRET-7f3a9c"
KEY_ENV = "MECHSCOPE_HTTP_TEST_KEY"
TOL = 1e-4


@contextmanager
def running(app):
    """``app`` served by uvicorn on a free loopback port in a background thread: yields
    (base_url, uvicorn server); stopped on exit."""
    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1", server
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def direct():
    """The in-process backend the answers over HTTP must equal (its own copy of the weights: the
    server's worker thread owns the served one)."""
    return LocalBackend(load_tiny("llama", chat=True))


@pytest.fixture(scope="module")
def served():
    """(base_url, per-path POST counts, Authorization headers seen) of a serve-llm app over the
    tiny chat model, counted server-side by a middleware."""
    backend = LocalBackend(load_tiny("llama", chat=True))
    app = create_app(backend, MODEL, batch_size=4)
    counts, authorizations = Counter(), []
    answer = backend._answer

    def recorded(requests, progress):  # the sizes of the batches the worker answers
        counts["batch sizes"] += len(requests)
        counts[f"batch of {len(requests)}"] += 1
        return answer(requests, progress)

    backend._answer = recorded

    @app.middleware("http")
    async def record(request: Request, call_next):
        counts[request.url.path] += 1
        authorizations.append(request.headers.get("authorization"))
        return await call_next(request)

    with running(app) as (url, _):
        yield url, counts, authorizations


def client(url, **options) -> OpenAIBackend:
    return OpenAIBackend(url, MODEL, **{"api_key_env": None, "retries": 1, "backoff": 0.05, "timeout": 10,
                                        **options})


def assert_same(got, want):
    """Two completions agree: text, token counts, and each token's text, logprob and top alternatives."""
    assert got.text == want.text
    assert (got.prompt_tokens, got.completion_tokens) == (want.prompt_tokens, want.completion_tokens)
    assert_same_tokens(got.tokens, want.tokens)


def assert_same_tokens(got, want):
    assert [t.text for t in got] == [t.text for t in want]
    for a, b in zip(got, want):
        assert (a.logprob is None) == (b.logprob is None)
        if a.logprob is not None:
            assert a.logprob == pytest.approx(b.logprob, abs=TOL)
        assert list(a.top) == list(b.top)
        assert list(a.top.values()) == pytest.approx(list(b.top.values()), abs=TOL)


# ------------------------------------------------------------------ answers equal the in-process model's
def test_chat_over_http_equals_the_in_process_answer(served, direct):
    url, counts, _ = served
    requests = [ChatRequest.user("hello there", max_tokens=6, top_logprobs=3),
                ChatRequest.user("what is 2+2?", system="be brief", max_tokens=5),
                ChatRequest.user("sample me", max_tokens=5, temperature=0.8, top_logprobs=2)]
    backend = client(url, concurrency=1)  # one at a time, so the sampled one is alone in its batch, as here
    before = counts["/v1/chat/completions"]
    answers = backend.chat(requests)
    assert counts["/v1/chat/completions"] - before == 3
    for request, answer in zip(requests, answers):
        want = direct.chat([request])[0]
        assert_same(answer, want)
        assert len(answer.tokens) == want.completion_tokens > 0 and not answer.cached
        assert all(len(token.top) <= request.top_logprobs for token in answer.tokens)
    assert any(token.top for token in answers[0].tokens)
    assert backend.logprobs and backend.usage.requests == 3
    assert backend.usage.prompt_tokens == sum(a.prompt_tokens for a in answers) > 0
    assert backend.identity == f"openai:{url}:{MODEL}"


def test_concurrent_requests_come_back_in_order(served, direct):
    url, counts, _ = served
    requests = [ChatRequest.user(f"question number {i}" + "!" * (i % 5), max_tokens=3 + i % 4, top_logprobs=i % 3)
                for i in range(16)]
    backend = client(url, concurrency=4)
    before = counts["/v1/chat/completions"]
    answers = backend.chat(requests)
    assert counts["/v1/chat/completions"] - before == 16
    for got, want in zip(answers, direct.chat(requests), strict=True):
        assert_same(got, want)
    # Requests that arrived together were answered in batches, of at most batch_size (4).
    sizes = {int(key.split()[-1]) for key in counts if key.startswith("batch of ")}
    assert max(sizes) > 1 and max(sizes) <= 4


def test_echo_over_http_equals_the_in_process_echo(served, direct):
    url, counts, _ = served
    texts = ["The cat sat on the mat.", "é ü 2+2=4", "a"] + [f"text {i} " * (i + 1) for i in range(8)]
    backend = client(url, concurrency=2)
    before = counts["/v1/completions"]
    got = backend.echo(texts, top_logprobs=3)
    assert counts["/v1/completions"] - before == 2  # chunks of 8 texts
    want = direct.echo(texts, top_logprobs=3)
    assert len(got) == len(want) == len(texts)
    for a, b in zip(got, want):
        assert a[0].logprob is None and a[0].top == {}
        assert_same_tokens(a, b)
    assert backend.echoes


def test_echo_with_one_generated_token_adds_the_greedy_next_token(served, direct):
    url, _, _ = served
    answer = httpx.post(f"{url}/completions", json={"model": MODEL, "prompt": ["hello"], "echo": True,
                                                    "logprobs": 2, "max_tokens": 1}, timeout=10).json()
    logprobs = answer["choices"][0]["logprobs"]
    model = direct.model
    ids = model.tokenizer("hello")["input_ids"]
    assert len(logprobs["tokens"]) == len(ids) + 1 and logprobs["token_logprobs"][0] is None
    with torch.no_grad():
        last = torch.log_softmax(model.hf_model(torch.tensor([ids])).logits[0, -1].float(), -1)
    assert logprobs["tokens"][-1] == model.tokenizer.decode([int(last.argmax())])
    assert logprobs["token_logprobs"][-1] == pytest.approx(float(last.max()), abs=TOL)
    assert answer["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 1, "total_tokens": len(ids) + 1}
    assert logprobs["text_offset"] == [0, 0, 1, 2, 3, 4, 5]  # <bos>, h, e, l, l, o in "hello", the new token
    assert answer["choices"][0]["text"] == "hello" + logprobs["tokens"][-1]
    alone = httpx.post(f"{url}/completions", json={"prompt": "hello", "echo": True, "logprobs": 0},
                       timeout=10).json()
    assert len(alone["choices"][0]["logprobs"]["tokens"]) == len(ids)  # max_tokens 0: the prompt only


# ------------------------------------------------------------------ the cache, dead and silent endpoints
def test_a_second_run_is_answered_from_the_cache(served, tmp_path):
    url, counts, _ = served
    requests = [ChatRequest.user(f"cache me {i}", max_tokens=4, top_logprobs=2) for i in range(5)]
    inner = client(url)
    cached = CachedBackend(inner, tmp_path / "cache", chunk=2)
    first = cached.chat(requests)
    asked = counts["/v1/chat/completions"]
    second = CachedBackend(client(url), tmp_path / "cache").chat(requests)  # a new run, the same folder
    assert counts["/v1/chat/completions"] == asked  # the server was asked nothing
    assert all(answer.cached for answer in second) and not any(answer.cached for answer in first)
    for got, want in zip(second, first):
        assert got.text == want.text and got.tokens == want.tokens
    assert inner.usage.requests == 5 and cached.usage.requests == 5


class DyingBackend(Backend):
    """Answers ``limit`` requests through ``inner``, then stops its server and fails, as a server
    that dies midway."""

    def __init__(self, inner, limit):
        super().__init__()
        self.inner, self.limit, self.answered, self.die = inner, limit, 0, lambda: None

    @property
    def identity(self):
        return self.inner.identity

    def _answer(self, requests, progress):
        if self.answered + len(requests) > self.limit:
            self.die()
            raise RuntimeError("the model process crashed")
        self.answered += len(requests)
        return self.inner.chat(requests)


def test_an_endpoint_dying_midway_fails_in_bounded_time_and_keeps_the_cached_answers(tmp_path):
    dying = DyingBackend(LocalBackend(load_tiny("llama", chat=True)), limit=4)
    requests = [ChatRequest.user(f"die {i}", max_tokens=3) for i in range(6)]
    with running(create_app(dying, MODEL)) as (url, server):
        dying.die = lambda: setattr(server, "should_exit", True)
        cached = CachedBackend(client(url, concurrency=1, timeout=2), tmp_path / "cache", chunk=2)
        start = time.monotonic()
        with pytest.raises(BackendError) as failure:
            cached.chat(requests)
        assert time.monotonic() - start < 15
    message = str(failure.value)
    assert f"{url}/chat/completions did not answer after 2 tries" in message
    assert "mechscope serve-llm" in message and "4 of 6 answers are cached" in message
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 4
    # The server is gone; the answered requests are still served, from disk.
    kept = CachedBackend(client(url, retries=0), tmp_path / "cache").chat(requests[:4])
    assert all(answer.cached for answer in kept)


def test_an_unreachable_endpoint_fails_fast_naming_the_url_and_the_cause():
    url = f"http://127.0.0.1:{free_port()}/v1"
    backend = client(url, retries=2, backoff=0.01, timeout=2)
    start = time.monotonic()
    with pytest.raises(BackendError, match="did not answer after 3 tries") as failure:
        backend.chat([ChatRequest.user("anyone there?")])
    assert time.monotonic() - start < 10
    message = str(failure.value)
    assert f"{url}/chat/completions" in message and "ConnectError" in message
    assert "is the server running? start one with `mechscope serve-llm`" in message


def test_a_silent_endpoint_times_out():
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        start = time.monotonic()
        with pytest.raises(BackendError, match=r"no answer within the 0.3 s timeout"):
            client(url, timeout=0.3, retries=1, backoff=0.01).chat([ChatRequest.user("hello?")])
        assert time.monotonic() - start < 5


# ------------------------------------------------------------------ the API key
@pytest.fixture
def hosted():
    """A stand-in for a hosted API: it refuses the logprobs parameter and echo as some hosted models
    do, answers chat without logprobs, and quotes the Authorization header back in one error."""
    app, seen = FastAPI(), []

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        seen.append(body)
        if body.get("top_logprobs", 0) > 5:
            return JSONResponse({"error": {"message": "Invalid 'top_logprobs': expected a value <= 5"}}, 400)
        if "logprobs" in body:
            return JSONResponse({"error": {"message": "logprobs is not supported with this model"}}, 400)
        return {"choices": [{"message": {"role": "assistant", "content": "yes"}}],
                "usage": {"prompt_tokens": 7, "completion_tokens": 1}}

    @app.post("/v1/completions")
    async def completions():
        return JSONResponse({"error": {"message": "echo is not supported"}}, 400)

    @app.post("/v1/leak")
    async def leak(request: Request):
        return JSONResponse({"error": {"message": f"bad key: {request.headers.get('authorization')}"}}, 401)

    with running(app) as (url, _):
        yield url, seen


def test_the_api_key_is_sent_but_never_stored_or_shown(served, hosted, tmp_path, monkeypatch, caplog):
    url, _, authorizations = served
    monkeypatch.setenv(KEY_ENV, SECRET)
    backend = client(url, api_key_env=KEY_ENV)
    cached = CachedBackend(backend, tmp_path / "cache")
    cached.chat([ChatRequest.user("a secret conversation", max_tokens=3, top_logprobs=2)])
    assert authorizations[-1] == f"Bearer {SECRET}"
    for path in (tmp_path / "cache").rglob("*"):
        assert not path.is_file() or SECRET not in path.read_text()
    assert SECRET not in repr(backend) + repr(cached) + backend.identity + str(backend.__dict__)
    messages = []
    with caplog.at_level(logging.WARNING):
        with pytest.raises(BackendError) as refused:  # a 4xx quoting the key back: redacted
            OpenAIBackend(hosted[0], MODEL, api_key_env=KEY_ENV, retries=0).post_json("leak", {})
        messages.append(str(refused.value))
        with pytest.raises(BackendError) as dead:  # retried (logged) and failed
            client(f"http://127.0.0.1:{free_port()}/v1", api_key_env=KEY_ENV, backoff=0.01).chat(
                [ChatRequest.user("hi")])
        messages.append(str(dead.value))
    assert "bad key: Bearer ***" in messages[0] and "retrying" in caplog.text
    assert all(SECRET not in text for text in messages + [caplog.text])
    monkeypatch.delenv(KEY_ENV)
    backend.chat([ChatRequest.user("no key now", max_tokens=2)])
    assert authorizations[-1] is None  # an unset variable sends no header


def test_the_key_variable_must_be_a_name_and_the_url_must_not_hold_credentials():
    with pytest.raises(ConfigError, match="api_key_env must name an environment variable") as bad:
        OpenAIBackend("http://127.0.0.1:8000/v1", MODEL, api_key_env=SECRET)
    assert SECRET not in str(bad.value)
    with pytest.raises(ConfigError, match="must not hold credentials") as bad:
        OpenAIBackend(f"http://user:{SECRET}@127.0.0.1:8000/v1", MODEL)
    assert SECRET not in str(bad.value)
    with pytest.raises(ConfigError, match="http:// or https:// URL"):
        OpenAIBackend("127.0.0.1:8000/v1", MODEL)
    with pytest.raises(ConfigError, match="concurrency must be at least 1"):
        OpenAIBackend("http://127.0.0.1:8000/v1", MODEL, concurrency=0)


# ------------------------------------------------------------------ servers without logprobs or echo
def test_a_server_without_logprobs_gives_none_and_the_client_says_so(direct, caplog):
    app = create_app(LocalBackend(load_tiny("llama", chat=True)), MODEL, logprobs=False)
    request = ChatRequest.user("hello there", max_tokens=5, top_logprobs=3)
    with running(app) as (url, _):
        backend = client(url)
        assert backend.logprobs
        with caplog.at_level(logging.WARNING):
            answer = backend.chat([request])[0]
        assert answer.tokens is None and not backend.logprobs
        assert "answered without logprobs; scorers fall back to parsed labels" in caplog.text
        assert answer.text == direct.chat([request])[0].text  # the same answer, without logprobs
        assert answer.first_token_probabilities(["a", "b"]) is None
        with pytest.raises(BackendError, match="answered without the prompt's tokens.*echo .* is needed for "
                                               "simulation by logprobs"):
            backend.echo(["some text"])
        assert not backend.echoes


def test_a_server_refusing_logprobs_and_echo_is_asked_without_them(hosted):
    url, seen = hosted
    backend = client(url, concurrency=1)  # (requests already in flight would each be refused once)
    answers = backend.chat([ChatRequest.user("is it?", max_tokens=2, top_logprobs=2)] * 2)
    assert [answer.text for answer in answers] == ["yes", "yes"] and answers[0].tokens is None
    assert not backend.logprobs and (answers[0].prompt_tokens, answers[0].completion_tokens) == (7, 1)
    assert ["logprobs" in body for body in seen] == [True, False, False]  # refused once, then not asked
    with pytest.raises(BackendError, match="HTTP 400: echo is not supported; echo .* is needed for simulation"):
        backend.echo(["text"])
    assert not backend.echoes
    # Too many alternatives is the request's own fault, not a missing feature: no fallback.
    fresh = client(url)
    with pytest.raises(BackendError, match="HTTP 400: Invalid 'top_logprobs'"):
        fresh.chat([ChatRequest.user("is it?", top_logprobs=10)])
    assert fresh.logprobs


# ------------------------------------------------------------------ what the server refuses
def test_unsupported_requests_get_a_clear_400(served):
    url, _, _ = served
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    cases = [({**chat, "stream": True}, "stream: true is not supported"),
             ({**chat, "n": 2}, "n=2 is not supported"),
             ({**chat, "messages": [{"role": "tool", "content": "x"}]},
              "unknown role 'tool'; mechscope serve-llm supports the roles: system, user, assistant"),
             ({**chat, "seed": 3}, "unknown field 'seed'; mechscope serve-llm supports: model, messages"),
             ({**chat, "top_logprobs": 2}, "top_logprobs needs logprobs: true"),
             ({**chat, "logprobs": True, "top_logprobs": 21}, "top_logprobs must be at most 20"),
             ({**chat, "messages": [{"role": "assistant", "content": "x"}]}, "the last message must be the user's")]
    for body, message in cases:
        answer = httpx.post(f"{url}/chat/completions", json=body, timeout=10)
        assert answer.status_code == 400, body
        error = answer.json()["error"]
        assert message in error["message"] and error["type"] == "invalid_request_error"
    answer = httpx.post(f"{url}/completions", json={"prompt": "hi", "max_tokens": 5}, timeout=10)
    assert answer.status_code == 400 and "only with echo: true" in answer.json()["error"]["message"]
    answer = httpx.post(f"{url}/chat/completions", json={**chat, "model": "gpt-4o"}, timeout=10)
    assert answer.status_code == 404 and "this server serves 'tiny-llama'" in answer.json()["error"]["message"]
    assert httpx.get(f"{url}/models", timeout=10).json()["data"][0]["id"] == MODEL
    with pytest.raises(BackendError, match=r"HTTP 404: Not Found: POST /chat/completions.*base_url end in /v1"):
        client(url.removesuffix("/v1")).chat([ChatRequest.user("hi")])
    # Through the client: at once (a 4xx is not retried), as a BackendError quoting the server.
    backend = client(url, retries=3, backoff=5)
    start = time.monotonic()
    with pytest.raises(BackendError, match=r"refused the request: HTTP 400: stream: true is not supported"):
        backend.post_json("chat/completions", {**chat, "stream": True})
    with pytest.raises(BackendError, match=r"HTTP 400: n=2 is not supported"):
        backend.post_json("chat/completions", {**chat, "n": 2})
    assert time.monotonic() - start < 5


def test_the_server_listens_only_on_loopback_unless_allowed():
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert check_host(host) == host
    with pytest.raises(ConfigError, match="host '0.0.0.0' is not a loopback address.*--allow-remote"):
        serve(FastAPI(), "0.0.0.0", 8000)
    with pytest.raises(ConfigError, match="not a loopback address"):
        listen("192.168.1.10", 8000)
    assert check_host("0.0.0.0", allow_remote=True) == "0.0.0.0"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        with pytest.raises(ConfigError, match="cannot listen on 127.0.0.1:.*choose another with --port"):
            listen("127.0.0.1", taken.getsockname()[1])


def test_serve_llm_refuses_a_remote_host_before_loading_the_model():
    result = CliRunner().invoke(cli_app, ["serve-llm", "--host", "0.0.0.0", "--model", "/nonexistent/model"])
    assert result.exit_code == 2
    assert "host '0.0.0.0' is not a loopback address" in result.output
