"""``mechscope explain``: explain and score dictionary or crosscoder latents, MLP neurons or attention
heads (resumable), and ``mechscope serve-llm``: a local chat model behind an OpenAI-compatible HTTP API
on loopback (chat completions with logprobs, completions with echo), for the autointerp HTTP client
(:class:`~mechscope.autointerp.backends.OpenAIBackend`) or any OpenAI client."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mechscope.autointerp.backends import CachedBackend, LocalBackend, OpenAIBackend, create_app, serve
from mechscope.autointerp.backends.server import check_host
from mechscope.cli.core import console, load_model, say
from mechscope.cli.options import Contexts, ModelName, Overwrite, Seed, checked, out_option

BACKEND_HELP = ("'local': a chat model in this process (--judge, default the bundled SmolLM2-135M-Instruct); or the "
                "base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (mechscope serve-llm, "
                "vLLM, llama.cpp), with --judge naming its model")


def _scorer_list(text: str) -> list[str]:
    from mechscope.autointerp.run import SCORERS
    from mechscope.errors import ConfigError

    names = [name.strip() for name in text.split(",") if name.strip()]
    bad = [name for name in names if name not in SCORERS]
    if bad:
        raise ConfigError(f"unknown scorer(s) {bad}; choose from {', '.join(SCORERS)}")
    return names


def _layer_indices(text: str, flag: str) -> tuple[int, str]:
    from mechscope.errors import ConfigError

    layer, _, indices = text.partition(":")
    if not layer.strip().isdigit() or not indices.strip():
        raise ConfigError(f"{flag} must look like LAYER:INDICES, e.g. 10:0-49, got {text!r}")
    return int(layer), indices


def explain(
    sae: Annotated[Path | None, typer.Option(help="dictionary folder (cfg.json + sae_weights.safetensors) whose "
                                                  "latents to explain")] = None,
    latents: Annotated[str, typer.Option(help="latents (with --sae or --crosscoder): e.g. 0-49 or 3,17,256")] = "0-49",
    crosscoder: Annotated[Path | None, typer.Option(help="crosscoder folder (mechscope diff --crosscoder-steps) whose "
                                                         "latents to explain, read through --base-model and --model "
                                                         "together")] = None,
    base_model: Annotated[str | None, typer.Option(help="with --crosscoder: the base model it was trained on "
                                                        "(--model is the fine-tune)")] = None,
    neurons: Annotated[str | None, typer.Option(help="MLP neurons instead of --sae: LAYER:INDICES, e.g. 10:0-49",
                                                callback=checked(lambda v: v is None or
                                                                 _layer_indices(v, "--neurons")))] = None,
    heads: Annotated[str | None, typer.Option(help="attention heads instead of --sae, each read along its output "
                                                   "direction: LAYER:INDICES, e.g. 5:0-8",
                                              callback=checked(lambda v: v is None or
                                                               _layer_indices(v, "--heads")))] = None,
    explainer: Annotated[str, typer.Option(help="tokens (no language model), output (what the unit makes the "
                                                "model say) or llm (a chat model reads a contrast)")] = "llm",
    scorers: Annotated[str, typer.Option(help="comma-separated: lexicon, embedding, detection, fuzzing, "
                                              "simulation, intruder, intervention",
                                         callback=checked(_scorer_list))] = "detection,embedding",
    backend: Annotated[str, typer.Option(help=BACKEND_HELP)] = "local",
    judge: Annotated[str | None, typer.Option(help="the chat model: a model name or folder with --backend local; "
                                                   "the server's model name with a URL")] = None,
    api_key_env: Annotated[str, typer.Option(help="environment variable holding the API key for a URL backend "
                                                  "(never written anywhere)")] = "OPENAI_API_KEY",
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="requests in flight at once (URL backend)")] = 4,
    contexts: Contexts = 256,
    model: ModelName = None,
    out: Annotated[Path, out_option("folder for records/, units/, cache/, summary.md")] = Path("mechscope-explain"),
    seed: Seed = 0,
    overwrite: Overwrite = False,
) -> None:
    """Explain units in words and score the explanations (each score with a 95% bootstrap interval).
    Rerunning with the same options resumes: finished units are kept, model answers come from the cache."""
    import mechscope
    from mechscope.autointerp.run import ExplainOptions, prepare_explain_folder, run_explain
    from mechscope.autointerp.units import crosscoder_units, head_units, neuron_units, sae_units
    from mechscope.checks import parse_indices
    from mechscope.diff.crosscoder import load_crosscoder
    from mechscope.errors import ConfigError
    from mechscope.sae.runs import load_dictionary, parse_latents

    if sum(given is not None for given in (sae, crosscoder, neurons, heads)) != 1:
        raise ConfigError("give one of --sae DIR or --crosscoder DIR (with --latents), --neurons LAYER:INDICES or "
                          "--heads LAYER:INDICES")
    if (crosscoder is None) != (base_model is None):
        raise ConfigError("--crosscoder and --base-model go together: a crosscoder reads the base model and the "
                          "fine-tune (--model)")
    options = ExplainOptions(explainer, tuple(_scorer_list(scorers)), contexts, seed=seed)
    # Folders are read before any model loads: a bad one costs no load.
    dictionary = load_dictionary(sae) if sae is not None else None
    paired = load_crosscoder(crosscoder) if crosscoder is not None else None
    if dictionary is not None or paired is not None:
        chosen = parse_latents(latents, dictionary if dictionary is not None else paired.sae)
        names = [f"latent {i}" for i in chosen]
    elif neurons is not None:
        layer, indices = _layer_indices(neurons, "--neurons")
        chosen = parse_indices(indices, "neurons")
        names = [f"L{layer} neuron {i}" for i in chosen]
    else:
        layer, indices = _layer_indices(heads, "--heads")
        chosen = parse_indices(indices, "heads")
        names = [f"L{layer}H{i}" for i in chosen]
    url = backend if backend != "local" else None
    if url is not None and not url.startswith(("http://", "https://")):
        raise ConfigError(f"--backend must be 'local' or a URL starting with http:// or https://, got {backend!r}")
    if url is not None and not judge:
        raise ConfigError("--backend URL needs --judge, the model name the server answers under")
    described = {"source": str(sae or crosscoder or neurons or heads), "model": model, "backend": backend,
                 "judge": judge}
    if base_model:
        described["base_model"] = base_model
    folder = prepare_explain_folder(out, names, options, overwrite, described)
    say(folder.describe())
    hooked = load_model(model)
    if dictionary is not None:
        source = sae_units(hooked, dictionary, chosen)
    elif paired is not None:
        source = crosscoder_units(load_model(base_model), hooked, paired, chosen)
    else:
        source = neuron_units(hooked, layer, chosen) if neurons is not None else head_units(hooked, layer, chosen)
    chat = None
    if options.needs_backend:
        if url is not None:
            inner = OpenAIBackend(url, judge, api_key_env=api_key_env, concurrency=concurrency)
        else:
            same = (judge or mechscope.DEFAULT_MODEL) == (model or mechscope.DEFAULT_MODEL)
            inner = LocalBackend(hooked if same else load_model(judge))
        chat = CachedBackend(inner, folder / "cache")
    summary = run_explain(hooked, source, options, folder, chat)
    explained = sum(r["status"] == "explained" for r in summary["units"])
    console.print(f"explained {explained} units ({len(summary['dead'])} dead); see {folder / 'summary.md'}",
                  highlight=False, markup=False)
    if summary["logprobs"] is False:
        console.print("the backend gave no logprobs: judged scores are balanced accuracies of parsed labels, "
                      "not AUROCs", highlight=False, markup=False)


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
