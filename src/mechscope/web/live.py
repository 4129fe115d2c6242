"""Views that run the model, through the app's one :class:`~mechscope.web.worker.ModelWorker`:

- the prompt view (``GET /prompt``, ``POST /api/prompt``, ``POST /api/attention``): a prompt's
  tokens shaded by chosen dictionary features or MLP neurons, the logit lens at every layer and
  position, and each head's attention pattern;
- the steering playground (``GET /steer``, ``POST /api/steer``): a prompt, a direction (a
  contrast of two texts, a dictionary feature, or a saved direction) and a strength; unsteered and
  steered continuations streamed side by side (``application/x-ndjson``, one line per token).
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mechscope.errors import ConfigError, MechscopeError, NotFoundError
from mechscope.hooks import names as hook_names
from mechscope.store import RunRecord, RunStore
from mechscope.web.artifacts import run_file
from mechscope.web.pages import page
from mechscope.web.worker import ModelWorker, WorkerBusyError

logger = logging.getLogger(__name__)
MAX_PROMPT_TOKENS = 256
MAX_UNITS = 16
MAX_STRENGTH = 1e4
_NEURON = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PromptIn(_Body):
    prompt: str = Field(min_length=1, max_length=4000)
    sae_run: int | None = None
    latents: list[int] = Field(default_factory=list, max_length=MAX_UNITS)
    neurons: list[str] = Field(default_factory=list, max_length=MAX_UNITS)


class AttentionIn(_Body):
    prompt: str = Field(min_length=1, max_length=4000)
    layer: int = Field(ge=0)


class SteerIn(_Body):
    prompt: str = Field(min_length=1, max_length=4000)
    source: Literal["contrast", "feature", "file"]
    positive: str = Field(default="", max_length=4000)
    negative: str = Field(default="", max_length=4000)
    sae_run: int | None = None
    latent: int | None = Field(default=None, ge=0)
    direction_run: int | None = None
    direction_artifact: int | None = None
    layer: int | None = Field(default=None, ge=0)
    strength: float = Field(allow_inf_nan=False, ge=-MAX_STRENGTH, le=MAX_STRENGTH)
    max_new_tokens: int = Field(default=32, ge=1, le=128)

    @model_validator(mode="after")
    def _source_fields(self) -> SteerIn:
        needed = {"contrast": ("positive", "negative"), "feature": ("sae_run", "latent"),
                  "file": ("direction_run", "direction_artifact")}[self.source]
        missing = [name for name in needed if getattr(self, name) in (None, "") or
                   (isinstance(getattr(self, name), str) and not getattr(self, name).strip())]
        if missing:
            raise ValueError(f"a {self.source} direction needs {' and '.join(needed)}; missing: {', '.join(missing)}")
        return self


def sae_layer(hook_name: str) -> int:
    """The block before which a dictionary read at ``hook_name`` steers: its own block for a
    ``hook_resid_pre``, the next one for anything a block writes (resid_post, attn/MLP out)."""
    found = _BLOCK.match(hook_name)
    if found is None:
        raise ConfigError(f"cannot tell the layer of hook {hook_name!r}; give the layer to steer at")
    layer, rest = int(found.group(1)), found.group(2)
    return layer if rest == "hook_resid_pre" else layer + 1


class Dictionaries:
    """The dictionaries of the store's runs, loaded once each (per app): a ``sae train`` run's own
    ``sae/`` folder, or the dictionary a ``sae dashboard`` run was built from (the folder its
    configuration recorded; the request never names a path). A few are kept, each under its
    folder and its files' modification times, so a retrained dictionary is read again."""

    KEEP = 4

    def __init__(self, store_path: Path) -> None:
        self.store_path = store_path
        self.loaded: OrderedDict[tuple, object] = OrderedDict()
        self.lock = threading.Lock()

    def folder(self, run_id: int) -> Path:
        with RunStore(self.store_path) as store:
            try:
                record = store.get(run_id)
            except NotFoundError:
                raise ConfigError(f"no run {run_id} in the store") from None
        config = run_file(record, "sae/cfg.json")
        if record.kind == "sae train" and config is not None:
            return config.parent
        if record.kind == "sae dashboard" and isinstance(record.config.get("sae"), str):
            return Path(record.config["sae"])
        raise ConfigError(f"run {run_id} ({record.kind}) holds no dictionary; choose a 'sae train' or "
                          "'sae dashboard' run")

    def get(self, run_id: int, model):
        """Run ``run_id``'s dictionary, checked to read ``model`` (its hook and width)."""
        from mechscope.sae.runs import check_fits, load_dictionary

        folder = self.folder(run_id)
        stamps = tuple(path.stat().st_mtime_ns if path.exists() else 0
                       for path in (folder / "cfg.json", folder / "sae_weights.safetensors"))
        key = (str(folder), stamps)
        with self.lock:
            sae = self.loaded.pop(key, None)
            if sae is None:
                sae = load_dictionary(folder)
            self.loaded[key] = sae
            while len(self.loaded) > self.KEEP:
                self.loaded.popitem(last=False)
        check_fits(model, sae)
        return sae


def dictionary_runs(store_path: Path) -> list[RunRecord]:
    with RunStore(store_path) as store:
        return store.find(None, "sae train", 200) + store.find(None, "sae dashboard", 200)


def direction_files(store_path: Path) -> list[tuple[RunRecord, int, str]]:
    """(run, artifact id, path) of every saved direction in the store (a ``*.json`` of format
    mechscope-direction beside its ``.safetensors``)."""
    found = []
    with RunStore(store_path) as store:
        records: dict[int, RunRecord] = {}
        for run_id, key, relpath in store.artifact_pairs(".json", ".safetensors"):
            record = records.setdefault(run_id, store.get(run_id))
            path = run_file(record, relpath)
            if path is not None and '"mechscope-direction"' in path.read_text(errors="replace")[:400]:
                found.append((record, key, relpath))
    return found


def _finite(values) -> list[float]:
    return [round(float(v), 5) if math.isfinite(float(v)) else 0.0 for v in values]


def prompt_job(body: PromptIn, dictionaries: Dictionaries) -> Callable:
    """The worker job of the prompt view: tokens, lens grid, chosen features' and neurons' values."""
    def job(model) -> dict:
        from mechscope.analysis.logit_lens import logit_lens_grid

        tokens = model.to_tokens(body.prompt)
        if tokens.shape[1] > MAX_PROMPT_TOKENS:
            raise ConfigError(f"the prompt is {tokens.shape[1]} tokens; the prompt view takes at most "
                              f"{MAX_PROMPT_TOKENS}")
        neurons = []
        for text in body.neurons:
            match = _NEURON.match(text)
            if match is None:
                raise ConfigError(f"neuron {text!r} must be LAYER:INDEX, e.g. 3:117")
            neurons.append((int(match.group(1)), int(match.group(2))))
        names = {hook_names.short("post", layer) for layer, _ in neurons}
        sae = None
        if body.sae_run is not None:
            sae = dictionaries.get(body.sae_run, model)
            bad = [i for i in body.latents if not 0 <= i < sae.cfg.d_sae]
            if bad:
                raise ConfigError(f"latents {bad} out of range: the dictionary has {sae.cfg.d_sae}")
            names.add(sae.cfg.hook_name)
        elif body.latents:
            raise ConfigError("latents need a dictionary: choose its run (sae_run)")
        for name in names:
            model.hook_point(name)  # the model's own check: layer range, hook kind
        readout = {name for name in model.hook_names() if name.endswith("hook_resid_pre")
                   or name.endswith("hook_resid_post")}
        _, cache = model.run_with_cache(tokens, names=sorted(names | readout))
        grid = logit_lens_grid(model, cache)
        units = []
        for layer, index in neurons:
            values = cache[hook_names.short("post", layer)][0]
            if not 0 <= index < values.shape[-1]:
                raise ConfigError(f"neuron {layer}:{index} out of range: the MLP has {values.shape[-1]} neurons")
            units.append({"name": f"neuron {layer}:{index}", "values": _finite(values[:, index])})
        if sae is not None and body.latents:
            acts = sae.encode(cache[sae.cfg.hook_name][0].to(sae.W_enc.dtype))
            units += [{"name": f"latent {i}", "values": _finite(acts[:, i])} for i in body.latents]
        decode = model.tokenizer.decode
        return {"tokens": model.to_str_tokens(tokens[0]), "units": units,
                "lens": {"labels": grid.labels, "probs": [_finite(row) for row in grid.top_probs],
                         "tokens": [[decode([int(t)]) for t in row] for row in grid.top_ids]},
                "n_layers": model.cfg.n_layers, "n_heads": model.cfg.n_heads}
    return job


def attention_job(body: AttentionIn) -> Callable:
    def job(model) -> dict:
        if body.layer >= model.cfg.n_layers:
            raise ConfigError(f"layer {body.layer} out of range: the model has {model.cfg.n_layers} layers")
        tokens = model.to_tokens(body.prompt)
        if tokens.shape[1] > MAX_PROMPT_TOKENS:
            raise ConfigError(f"the prompt is {tokens.shape[1]} tokens; at most {MAX_PROMPT_TOKENS}")
        name = hook_names.short("pattern", body.layer)
        _, cache = model.run_with_cache(tokens, names=[name])
        pattern = cache[name][0].float()  # [heads, query, key]
        return {"tokens": model.to_str_tokens(tokens[0]), "layer": body.layer,
                "patterns": [[_finite(row) for row in head] for head in pattern]}
    return job


def steering_direction(body: SteerIn, model, dictionaries: Dictionaries, store_path: Path):
    """The request's Direction (built on the worker: a contrast needs the model); the fields each
    source needs were checked when the request was read (SteerIn)."""
    from mechscope.steering import Direction, contrast_directions, sae_direction

    if body.source == "contrast":
        layer = model.cfg.n_layers // 2 if body.layer is None else body.layer
        if layer >= model.cfg.n_layers:
            raise ConfigError(f"layer {layer} out of range: the model has {model.cfg.n_layers} layers")
        return contrast_directions(model, [body.positive], [body.negative], layers=layer, progress=False)[(layer, -1)]
    if body.source == "feature":
        sae = dictionaries.get(body.sae_run, model)
        layer = sae_layer(sae.cfg.hook_name) if body.layer is None else body.layer
        return sae_direction(sae, body.latent, layer)
    with RunStore(store_path) as store:
        try:
            record = store.get(body.direction_run)
        except NotFoundError:
            raise ConfigError(f"no run {body.direction_run} in the store") from None
    from mechscope.web.artifacts import artifact_file

    path = artifact_file(record, str(body.direction_artifact))
    if path is None:
        raise ConfigError(f"run {record.id} has no artifact {body.direction_artifact}")
    direction = Direction.load(path)
    if body.layer is not None:
        direction = Direction(direction.vector, body.layer, direction.method, direction.scale, direction.metadata)
    return direction


def steer_job(body: SteerIn, dictionaries: Dictionaries, store_path: Path) -> Callable:
    def job(model, emit, cancelled) -> None:
        from mechscope.steering import Steering
        from mechscope.steering.stream import stream_side_by_side

        try:
            direction = steering_direction(body, model, dictionaries, store_path)
            steering = Steering(direction, body.strength)
            emit({"direction": {"layer": direction.layer, "method": direction.method, "scale": direction.scale}})
            for step in stream_side_by_side(model, body.prompt, steering, body.max_new_tokens,
                                            should_stop=cancelled):
                emit({"unsteered": step.unsteered, "steered": step.steered})
        except MechscopeError as error:  # said in the stream: the response has already begun
            emit({"error": str(error)})
        except Exception as error:  # noqa: BLE001  anything else too, or the stream would just stop
            logger.exception("steering job failed")
            emit({"error": f"the model failed: {type(error).__name__}: {error}"})
        emit({"done": True})
    return job


def _options(records: list[RunRecord], chosen: int | None = None) -> str:
    return "".join(f"<option value={r.id}{' selected' if r.id == chosen else ''}>{r.id}: {html.escape(r.name)}</option>"
                   for r in records)


def prompt_page(store_path: Path, model_name: str) -> str:
    runs = _options(dictionary_runs(store_path))
    body = (f"<h1>Prompt view</h1><p>Model: <code>{html.escape(model_name)}</code>. Token activations of "
            "dictionary features or MLP neurons, the logit lens at every layer and position, attention by head."
            "</p><form id=prompt-form class=stack><textarea name=prompt rows=3 required>When Mary and John went to "
            "the store, John gave a drink to</textarea><label>dictionary <select name=sae_run><option value=''>none"
            f"</option>{runs}</select></label><label>latents <input name=latents placeholder='e.g. 3, 17'></label>"
            "<label>neurons <input name=neurons placeholder='LAYER:INDEX, e.g. 2:117, 5:9'></label>"
            "<button>run</button></form><p id=prompt-status></p><div id=unit-rows></div>"
            "<h2>Logit lens</h2><div id=lens class=figure></div><h2>Attention</h2><label>layer <select id=att-layer>"
            "</select></label> <label>head <select id=att-head></select></label><div id=attention class=figure></div>")
    return page("prompt view", body, ["plotly", "prompt"])


def steer_page(store_path: Path, model_name: str, sae_run: int | None, latent: int | None) -> str:
    runs = _options(dictionary_runs(store_path), sae_run)
    saved = "".join(f"<option value='{r.id}:{key}'>{r.id}: {html.escape(r.name)} / {html.escape(path)}</option>"
                    for r, key, path in direction_files(store_path))
    source = "feature" if sae_run is not None else "contrast"
    checked = {name: " checked" if name == source else "" for name in ("contrast", "feature", "file")}
    body = (f"<h1>Steering playground</h1><p>Model: <code>{html.escape(model_name)}</code>. The same prompt is "
            "continued twice in one batch, greedily: without and with the direction added to the residual stream "
            "before the chosen block. Strength 0 gives the unsteered text exactly.</p>"
            "<form id=steer-form class=stack><textarea name=prompt rows=3 required>I think that the weather today is"
            "</textarea><fieldset><legend>direction</legend>"
            f"<label><input type=radio name=source value=contrast{checked['contrast']}> contrast of two texts</label> "
            "<input name=positive placeholder='positive text, e.g. I love this'> <input name=negative "
            "placeholder='negative text, e.g. I hate this'><br>"
            f"<label><input type=radio name=source value=feature{checked['feature']}> dictionary feature</label> "
            f"<select name=sae_run><option value=''>choose a dictionary</option>{runs}</select> <input name=latent "
            f"type=number min=0 placeholder=latent value='{'' if latent is None else latent}'><br>"
            f"<label><input type=radio name=source value=file{checked['file']}> saved direction</label> "
            f"<select name=saved><option value=''>choose a direction</option>{saved}</select></fieldset>"
            "<label>layer <input name=layer type=number min=0 placeholder='default: the direction\u2019s own'></label>"
            "<label>strength <input name=strength type=number step=any value=8 required></label>"
            "<label>new tokens <input name=max_new_tokens type=number min=1 max=128 value=32></label>"
            "<button>generate</button></form><p id=steer-status></p><div class=side-by-side><section><h3>unsteered"
            "</h3><pre id=unsteered></pre></section><section><h3>steered</h3><pre id=steered></pre></section></div>")
    return page("steering playground", body, ["steer"])


def add_live_routes(app, store_path: Path, worker: ModelWorker, model_name: str) -> None:
    """The prompt view and the steering playground on ``app``, running on ``worker``'s model."""
    from fastapi import HTTPException, Query
    from fastapi.responses import HTMLResponse, StreamingResponse

    dictionaries = Dictionaries(store_path)

    def run(job):
        try:
            return worker.run(job)
        except WorkerBusyError as error:
            raise HTTPException(503, str(error)) from None
        except MechscopeError as error:
            raise HTTPException(400, str(error)) from None
        except Exception as error:  # noqa: BLE001  the model's own failure, named rather than a bare 500
            logger.exception("model job failed")
            raise HTTPException(500, f"the model could not run: {type(error).__name__}: {error}") from None

    @app.get("/prompt", response_class=HTMLResponse)
    def prompt_view():
        return prompt_page(store_path, model_name)

    @app.post("/api/prompt")
    def api_prompt(body: PromptIn):
        return run(prompt_job(body, dictionaries))

    @app.post("/api/attention")
    def api_attention(body: AttentionIn):
        return run(attention_job(body))

    @app.get("/steer", response_class=HTMLResponse)
    def steer_view(sae: int | None = Query(None, ge=0), latent: int | None = Query(None, ge=0)):
        return steer_page(store_path, model_name, sae, latent)

    @app.post("/api/steer")
    def api_steer(body: SteerIn):
        try:
            items = worker.stream(steer_job(body, dictionaries, store_path))
        except WorkerBusyError as error:
            raise HTTPException(503, str(error)) from None
        def lines():
            try:
                for item in items:
                    yield json.dumps(item) + "\n"
            except Exception as error:  # noqa: BLE001  e.g. the model failed to load: said, then ended
                logger.exception("steering stream failed")
                yield json.dumps({"error": f"the model could not run: {type(error).__name__}: {error}"}) + "\n"
                yield json.dumps({"done": True}) + "\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")


__all__ = ["AttentionIn", "Dictionaries", "PromptIn", "SteerIn", "add_live_routes", "sae_layer"]
