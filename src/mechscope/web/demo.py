"""``mechscope serve --demo``: a ready example store built from a model (by default the bundled
SmolLM2): IOI heads (attribution patching), an IOI circuit (EAP), a small dictionary with a
dashboard whose latents are explained and scored, and a saved steering direction.

Built once into a folder of its own (``~/.mechscope/demo``) with its own store, so the user's
store is untouched; each step is a normal run folder, skipped when already complete, and the
dictionary's training resumes from its checkpoints, so a build killed half-way goes on where it
stopped."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mechscope.checks import MAX_D_SAE
from mechscope.errors import ConfigError, MechscopeError
from mechscope.files import atomic_text, prepare_output_folder, read_json, read_run_marker
from mechscope.hooks import names
from mechscope.models.hooked_model import HookedModel
from mechscope.models.loading import weight_files
from mechscope.store import RunStore
from mechscope.validate import check_int

DEFAULT_DEMO_DIR = Path("~/.mechscope/demo")
STORE = "runs.sqlite"
MANIFEST = "demo.json"  # the model (name, weights hash) and sizes the folder's runs were built with
# A sentiment contrast: what the saved direction reads (any two sets of texts would do).
POSITIVE = ("I love this, it is wonderful.", "What a great and happy day.", "This is excellent work, thank you!")
NEGATIVE = ("I hate this, it is awful.", "What a terrible and sad day.", "This is dreadful work, no thanks.")


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo's runs (the defaults take a few minutes on 2 CPU cores, once)."""

    task: str = "ioi"
    prompts: int = 8
    circuit_edges: int = 60
    sae_layer: int | None = None  # default: a third of the way up
    d_sae: int = 1024
    k: int = 16
    sae_tokens: int = 300_000
    harvest_contexts: int = 256
    explained_latents: int = 12
    explain_contexts: int = 96

    def __post_init__(self) -> None:
        from mechscope.tasks import TASKS
        from mechscope.validate import check_choice

        check_choice("task", self.task, TASKS)
        check_int("prompts", self.prompts, 1, 64)
        check_int("circuit_edges", self.circuit_edges, 1)
        check_int("d_sae", self.d_sae, 2, MAX_D_SAE)
        check_int("k", self.k, 1, self.d_sae)
        check_int("sae_tokens", self.sae_tokens, 1024)
        check_int("harvest_contexts", self.harvest_contexts, 1)
        check_int("explained_latents", self.explained_latents, 1, self.d_sae)
        check_int("explain_contexts", self.explain_contexts, 4)


@torch.no_grad()
def lively_latents(model: HookedModel, sae, n: int, contexts: int = 32, seed: int = 0) -> list[int]:
    """``n`` latents worth a dashboard: those that fire, by density on ``contexts`` corpus
    contexts, skipping the densest twentieth (latents that fire on nearly everything read as noise).
    Fewer when fewer fire."""
    from mechscope.data.contexts import default_contexts

    tokens = default_contexts(model, contexts, 128, seed)
    _, cache = model.run_with_cache(tokens, names=[sae.cfg.hook_name])
    firing = (sae.encode(cache[sae.cfg.hook_name][:, 1:].to(sae.W_enc.dtype)) > 0).float().mean((0, 1))
    alive = [int(i) for i in firing.argsort(descending=True) if firing[i] > 0]
    return sorted(alive[len(alive) // 20:][:n])


def _claim(folder: Path, manifest: dict) -> None:
    """Record which model and sizes ``folder``'s demo is built from, or refuse when it holds
    another's: its finished runs would otherwise be served beside a different model."""
    path = folder / MANIFEST
    if path.exists():
        found = read_json(path, "the demo's manifest", f"delete {folder} to rebuild the demo")
        if found != manifest:
            differs = [key for key in ("model", "config") if found.get(key) != manifest[key]]
            raise ConfigError(f"{folder} holds the demo of {found.get('model', {}).get('name')!r} built with other "
                              f"{' and '.join(differs) or 'settings'}; pass another --demo-dir, or delete that "
                              "folder to rebuild it")
        return
    atomic_text(path, json.dumps(manifest, indent=1))


def _done(folder: Path) -> bool:
    marker = read_run_marker(folder) if folder.is_dir() else None
    return bool(marker and marker.get("complete"))


def build_demo(model: HookedModel, folder: str | Path = DEFAULT_DEMO_DIR, config: DemoConfig | None = None,
               say: Callable[[str], None] = print, progress: bool = True, model_name: str | None = None) -> Path:
    """Build (or finish) the demo runs of ``model`` under ``folder`` and register them in
    ``folder``/runs.sqlite, the model identified by ``model_name`` (what it was loaded as; default
    its config's name) and the hash of its weight files; returns the store's path."""
    from mechscope.autointerp.results import label, latent_results
    from mechscope.autointerp.run import ExplainOptions, prepare_explain_folder, run_explain
    from mechscope.autointerp.units import sae_units
    from mechscope.circuits.runs import CircuitOptions, run_circuit
    from mechscope.patching.runs import PatchOptions, run_patch
    from mechscope.sae.io import load_sae
    from mechscope.sae.runs import (
        TrainOptions,
        prepare_dashboard_folder,
        prepare_train_folder,
        run_dashboard,
        run_train,
    )
    from mechscope.steering import contrast_directions

    config = config or DemoConfig()
    folder = Path(folder).expanduser()
    marker = read_run_marker(folder) if folder.is_dir() else None
    if marker is not None:
        raise ConfigError(f"{folder} is a `mechscope {marker['kind']}` run folder; choose another --demo-dir")
    name = model.cfg.name
    layer = config.sae_layer if config.sae_layer is not None else max(1, model.cfg.n_layers // 3)
    if not 0 <= layer < model.cfg.n_layers - 1:  # the direction is read before the next block
        raise ConfigError(f"sae_layer {layer} out of range: the model has {model.cfg.n_layers} layers and the demo's "
                          f"direction is read one block later, so it must be below {model.cfg.n_layers - 1}")
    folder.mkdir(parents=True, exist_ok=True)
    store_path = folder / STORE
    with RunStore(store_path) as store:
        try:
            files = weight_files(model_name or name)
        except MechscopeError:  # a name that no longer resolves: the runs are still listed, without a hash
            files = []
        identity = {"model": {"name": model_name or name, "weights_sha256": store.weights_sha256(files)}}
    _claim(folder, {"model": identity["model"], "config": asdict(config)})
    steps = [f"{config.task}-heads", f"{config.task}-circuit", "dictionary", "dictionary-explained", "dictionary-dashboard", "direction"]

    built: set[str] = set()  # steps (re)built by this call: registered again, whatever the store knew

    def step(index: int, what: str) -> Path:
        say(f"demo {index + 1}/{len(steps)}: {what}")
        if not _done(folder / steps[index]):
            built.add(steps[index])
        return folder / steps[index]

    out = step(0, f"{config.task} heads (attribution patching)")
    if not _done(out):
        run_patch(model, PatchOptions(task=config.task, sites="heads", n=config.prompts, atp=True), out,
                  overwrite=True)
    out = step(1, f"{config.task} circuit (EAP)")
    if not _done(out):
        run_circuit(model, CircuitOptions(task=config.task, method="eap", n=config.prompts,
                                          edges=config.circuit_edges, curve=False), out, overwrite=True)
    out = step(2, f"a {config.d_sae}-latent dictionary at blocks.{layer}.hook_resid_post")
    train = TrainOptions(hook=names.short("resid_post", layer), d_sae=config.d_sae, k=config.k,
                         tokens=config.sae_tokens, batch_size=min(1024, config.sae_tokens),
                         harvest_contexts=config.harvest_contexts)
    if not _done(out):
        run_train(model, train, prepare_train_folder(out, train, model=name))
    sae = load_sae(out / "sae")
    out = step(3, f"{config.explained_latents} latents that fire, explained (tokens explainer, lexicon scorer)")
    options = ExplainOptions("tokens", ("lexicon",), config.explain_contexts, seed=0)
    if _done(out):
        latents = sorted(latent_results(out))
    else:
        latents = lively_latents(model, sae, config.explained_latents)
        if not latents:
            raise ConfigError("no latent of the demo's dictionary fires on the corpus; train it on more tokens")
        explain = prepare_explain_folder(out, [f"latent {i}" for i in latents], options, overwrite=True,
                                         extra={"source": str((folder / steps[2] / "sae").resolve()), "model": name})
        run_explain(model, sae_units(model, sae, latents), options, explain, progress=progress)
    results = latent_results(out)
    out = step(4, "their dashboard")
    if not _done(out):
        dashboard = prepare_dashboard_folder(out, latents, overwrite=True,
                                             options={"sae": str((folder / steps[2] / "sae").resolve()),
                                                      "contexts": 64, "model": name})
        run_dashboard(model, sae, latents, dashboard, explanations={k: label(r) for k, r in results.items()},
                      explanation_results=results)
    out = step(5, "a steering direction (positive minus negative sentiment)")
    if not _done(out):
        saved = prepare_output_folder(out, "direction", ["direction.json", "direction.safetensors"], overwrite=True,
                                      options={"positive": list(POSITIVE), "negative": list(NEGATIVE),
                                               "layer": layer + 1, "model": name})
        direction = contrast_directions(model, list(POSITIVE), list(NEGATIVE), layers=layer + 1,
                                        progress=progress)[(layer + 1, -1)]
        direction.save(out / "direction")
        saved.record()
    with RunStore(store_path) as store:
        known = {record.path for record in store.runs()}
        for run in steps:
            if run in built or (folder / run).resolve() not in known:
                store.register(folder / run, models=identity)
    return store_path


__all__ = ["DEFAULT_DEMO_DIR", "DemoConfig", "build_demo"]
