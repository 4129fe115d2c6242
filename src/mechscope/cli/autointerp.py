"""``mechscope serve-llm``: a local chat model behind an OpenAI-compatible HTTP API on loopback
(chat completions with logprobs, completions with echo), for the autointerp HTTP client
(:class:`~mechscope.autointerp.backends.OpenAIBackend`) or any OpenAI client."""

from __future__ import annotations

from typing import Annotated

import typer

from mechscope.autointerp.backends import LocalBackend, create_app, serve
from mechscope.autointerp.backends.server import check_host
from mechscope.cli.core import console, load_model
from mechscope.cli.options import ModelName


def serve_llm(
    model: ModelName = None,
    host: Annotated[str, typer.Option(help="address to listen on: 127.0.0.1, ::1 or localhost unless "
                                           "--allow-remote")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="port to listen on")] = 8000,
    batch_size: Annotated[int, typer.Option(min=1, max=1024, help="chat requests that arrive together are "
                                                                  "answered in batches of up to this many")] = 8,
    no_logprobs: Annotated[bool, typer.Option("--no-logprobs", help="answer without logprobs, as servers that "
                                                                    "drop them do (to try the scorers' "
                                                                    "fallback)")] = False,
    allow_remote: Annotated[bool, typer.Option("--allow-remote", help="allow a non-loopback --host (the server "
                                                                      "has no authentication)")] = False,
) -> None:
    """Serve a chat model at http://HOST:PORT/v1 (OpenAI-compatible: /models, /chat/completions with
    logprobs, /completions with echo) until interrupted; the model answers under its --model name."""
    import mechscope

    check_host(host, allow_remote)  # before the model loads
    name = model or mechscope.DEFAULT_MODEL
    backend = LocalBackend(load_model(model), batch_size=batch_size)
    app = create_app(backend, name, batch_size=batch_size, logprobs=not no_logprobs)
    console.print(f"serving {name} at http://{host}:{port}/v1 (logprobs {'off' if no_logprobs else 'on'}); "
                  f"point OpenAIBackend(base_url=..., model={name!r}) at it; Ctrl-C stops", highlight=False,
                  markup=False)
    serve(app, host, port, allow_remote)
