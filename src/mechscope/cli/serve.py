"""``mechscope serve``: the web app over the results store, on loopback, until interrupted."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mechscope.cli.core import console
from mechscope.cli.options import ModelName
from mechscope.cli.runs import StoreOption, store_path


def serve(
    store: StoreOption = None,
    host: Annotated[str, typer.Option(help="address to listen on: 127.0.0.1 (default), ::1 or localhost; any "
                                           "other needs --allow-remote")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="port to listen on (0: a free one)")] = 8765,
    allow_remote: Annotated[bool, typer.Option("--allow-remote", help="listen on a non-loopback --host (prints a "
                                                                      "warning; the session token still guards "
                                                                      "every request)")] = False,
    model: ModelName = None,
    no_model: Annotated[bool, typer.Option("--no-model", help="serve the store only: no prompt view or steering "
                                                              "playground, no model loaded")] = False,
    demo: Annotated[bool, typer.Option("--demo", help="open on a ready example built from --model (default: the "
                                                      "bundled SmolLM2): IOI heads, a circuit, a dictionary with "
                                                      "explained latents, a steering direction; built once (a few "
                                                      "minutes) into --demo-dir with its own store")] = False,
    demo_dir: Annotated[Path | None, typer.Option(help="where --demo builds and keeps its runs and store "
                                                       "(default ~/.mechscope/demo)")] = None,
) -> None:
    """Browse, search and open the runs of the results store in a browser (offline; the URL
    printed carries this session's token). The prompt view and the steering playground run
    --model (default: the bundled default model), loaded on their first use."""
    import uvicorn

    from mechscope.autointerp.backends.server import listen
    from mechscope.models.loading import DEFAULT_MODEL
    from mechscope.web import Guard, check_bind, create_app
    from mechscope.web.worker import ModelWorker, model_loader

    if no_model and (model is not None or demo):
        raise typer.BadParameter(f"--no-model and {'--demo' if demo else '--model'} contradict each other; give one",
                                 param_hint="--no-model")
    if demo and store is not None:
        raise typer.BadParameter("--demo serves its own store (in --demo-dir); leave out --store",
                                 param_hint="--store")
    warning = check_bind(host, allow_remote)  # before anything else: a refused address costs nothing
    if warning:
        console.print(warning, style="bold red", highlight=False, markup=False, soft_wrap=True)
    sock = listen(host, port, allow_remote=True)  # the address was checked just above
    port = sock.getsockname()[1]
    guard = Guard.for_address(host, port)
    name = model or DEFAULT_MODEL
    if demo:
        from mechscope.models.loading import load as load_model
        from mechscope.web.demo import DEFAULT_DEMO_DIR, build_demo

        loaded = load_model(name)
        served = build_demo(loaded, demo_dir or DEFAULT_DEMO_DIR, model_name=name,
                            say=lambda line: console.print(line, highlight=False, markup=False))
        worker = ModelWorker(lambda: loaded, name)
    else:
        served = store_path(store)
        worker = None if no_model else ModelWorker(model_loader(name), name)
    app = create_app(served, guard, worker, name)
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    console.print(f"mechscope serve: http://{shown}:{port}/?token={guard.token}  (store {served}; "
                  "Ctrl-C stops it)", highlight=False, markup=False, soft_wrap=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
