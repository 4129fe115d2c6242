"""Training a cross-layer transcoder from one forward pass per step, resumable after a crash.

Each step runs the model on ``batch_contexts`` contexts (:class:`~mechscope.data.ModelActivations`
with every layer's MLP input and output), predicts every layer's MLP output from every layer's
input at once and minimises the mean over layers of each layer's fraction of variance
unexplained (so quiet and loud layers count alike). Inputs and outputs are scaled per layer to
E||x|| = sqrt(d_model) (scales folded into the weights at the end, as :mod:`mechscope.sae.train`
does). Adam with the warm-up and decay of :class:`~mechscope.sae.TrainConfig`.

Checkpoints (every ``checkpoint_every`` steps) hold the weights, Adam's state, the dead-feature
counters and the scales, written atomically; a rerun with the same folder resumes, and one with
another config, settings or data is refused naming each difference.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mechscope.checkpoints import (
    as_json,
    differences,
    latest_checkpoint,
    load_optimiser_tensors,
    optimiser_tensors,
    save_checkpoint,
)
from mechscope.data.store import ModelActivations
from mechscope.errors import ConfigError, FileFormatError, NonFiniteError, ResumeError
from mechscope.files import read_json, read_safetensors
from mechscope.graphs.crosslayer import CrossLayerConfig, CrossLayerTranscoder
from mechscope.graphs.replacement import mlp_input, mlp_output
from mechscope.locks import folder_lock
from mechscope.models.hooked_model import HookedModel
from mechscope.sae.train import TrainConfig, lr_factor
from mechscope.validate import check_finite

REMEDY = "delete the checkpoint folder (training starts over) or use another one"
WEIGHTS = "crosslayer.safetensors"


class _Run:
    """The training state: the CLT, Adam, per-layer scales and dead-feature counters."""

    def __init__(self, cfg: CrossLayerConfig, config: TrainConfig):
        self.clt = CrossLayerTranscoder(cfg, seed=config.seed)
        self.optimiser = torch.optim.Adam(self.clt.parameters(), lr=config.lr)
        self.scale_in = torch.ones(cfg.n_layers)
        self.scale_out = torch.ones(cfg.n_layers)
        self.since_fired = torch.zeros(cfg.n_layers, cfg.d_sae, dtype=torch.long)
        self.last = {"fvu": float("nan"), "dead": 0.0}

    def tensors(self) -> dict[str, torch.Tensor]:
        found = {f"model.{k}": v.detach().clone() for k, v in self.clt.state_dict().items()}
        names = {id(p): n for n, p in self.clt.named_parameters()}
        found.update({f"adam.{k}": v for k, v in optimiser_tensors(self.optimiser, names).items()})
        return {**found, "since_fired": self.since_fired, "scale_in": self.scale_in, "scale_out": self.scale_out}

    def load(self, tensors: dict[str, torch.Tensor], path: Path) -> None:
        try:
            self.clt.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        except RuntimeError as error:
            raise FileFormatError(f"{path} does not hold this transcoder's weights ({str(error)[:300]}); "
                                  f"{REMEDY}") from error
        load_optimiser_tensors(self.optimiser, dict(self.clt.named_parameters()),
                               {k[5:]: v for k, v in tensors.items() if k.startswith("adam.")}, path, REMEDY)
        for name in ("since_fired", "scale_in", "scale_out"):
            value = tensors.get(name)
            if value is None or value.shape != getattr(self, name).shape:
                raise FileFormatError(f"{path}: {name} is missing or of another shape; {REMEDY}")
            setattr(self, name, value.clone())


def _pairs(batch: dict[str, torch.Tensor], n_layers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, outputs) [n_layers, rows, d_model] of a {hook: rows} batch."""
    return (torch.stack([batch[mlp_input(layer)] for layer in range(n_layers)]),
            torch.stack([batch[mlp_output(layer)] for layer in range(n_layers)]))


def _step(run: _Run, inputs: torch.Tensor, outputs: torch.Tensor, step: int, config: TrainConfig) -> None:
    x = inputs * run.scale_in[:, None, None]
    y = outputs * run.scale_out[:, None, None]
    for group in run.optimiser.param_groups:
        group["lr"] = config.lr * lr_factor(step, config)
    features = run.clt.encode(x)
    predicted = run.clt.decode(features, x)
    variance = (y - y.mean(1, keepdim=True)).pow(2).sum(-1).mean(1).clamp_min(1e-12)  # [n_layers]
    fvu = (predicted - y).pow(2).sum(-1).mean(1) / variance
    loss = fvu.mean()
    if not bool(torch.isfinite(loss.detach())):
        raise NonFiniteError(f"the cross-layer transcoder's loss is {float(loss.detach())} at step {step}: lower "
                             f"lr={config.lr}. Training stopped before this update; checkpoints hold earlier steps")
    run.optimiser.zero_grad(set_to_none=True)
    loss.backward()
    run.optimiser.step()
    with torch.no_grad():
        fired = (features > 0).any(1)  # [n_layers, d_sae]
        run.since_fired = torch.where(fired, torch.zeros_like(run.since_fired), run.since_fired + x.shape[1])
        run.last = {"fvu": float(fvu.mean()), "dead": float((run.since_fired >= config.dead_after_tokens).float().mean())}


def _resume(folder: Path, run: _Run, meta: dict, config: TrainConfig) -> int:
    checkpoint = latest_checkpoint(folder, REMEDY)
    if checkpoint is None:
        return 0
    state = read_json(checkpoint / "state.json", "a training checkpoint", REMEDY)
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise FileFormatError(f"{checkpoint / 'state.json'} is corrupt; {REMEDY}")
    changes = []
    for key in ("config", "train", "data"):
        changes += differences(f"{key} ", state.get(key), meta[key], skip=("checkpoint_every",))
    if changes:
        raise ResumeError(f"the checkpoint in {folder} was made with other settings or data ({'; '.join(changes)}); "
                          f"{REMEDY}, or repeat the original settings")
    if state["step"] >= config.steps:
        raise FileFormatError(f"{checkpoint}: step {state['step']} is past steps={config.steps}; {REMEDY}")
    path = checkpoint / WEIGHTS
    tensors = read_safetensors(path, "training checkpoint", REMEDY)
    for name, tensor in tensors.items():
        check_finite(f"{path}: {name}", tensor)
    run.load(tensors, path)
    return state["step"] + 1


def _folded(run: _Run) -> CrossLayerTranscoder:
    """A copy that takes raw activations: each layer's input scale folded into its encoder (and
    skip), each target layer's output scale into every decoder writing to it and its bias."""
    clt = CrossLayerTranscoder(run.clt.cfg)
    clt.load_state_dict(run.clt.state_dict())
    with torch.no_grad():
        for layer, transcoder in enumerate(clt.layers):
            s_in, s_out = float(run.scale_in[layer]), float(run.scale_out[layer])
            transcoder.W_enc.mul_(s_in)
            transcoder.W_dec.div_(s_out)
            transcoder.b_dec.div_(s_out)
            if transcoder.W_skip is not None:
                transcoder.W_skip.mul_(s_in / s_out)
        for (_, target), decoder in clt.cross_decoders().items():
            decoder.div_(float(run.scale_out[target]))
    return clt


def train_crosslayer(model: HookedModel, contexts: torch.Tensor, cfg: CrossLayerConfig, config: TrainConfig,
                     batch_contexts: int = 16, checkpoint_dir: str | Path | None = None,
                     progress: bool = True) -> CrossLayerTranscoder:
    """A cross-layer transcoder of ``model`` trained on ``contexts`` [n, pos] (see the module
    docstring); resumable through ``checkpoint_dir``."""
    if (cfg.n_layers, cfg.d_model) != (model.cfg.n_layers, model.cfg.d_model):
        raise ConfigError(f"the config is for {cfg.n_layers} layers of width {cfg.d_model}; the model has "
                          f"{model.cfg.n_layers} of {model.cfg.d_model}")
    hooks = [name for layer in range(cfg.n_layers) for name in (mlp_input(layer), mlp_output(layer))]
    data = ModelActivations(model, contexts, hooks, batch_contexts=batch_contexts, seed=config.seed)
    run = _Run(cfg, config)
    meta = as_json({"config": asdict(cfg), "train": asdict(config), "data": data.fingerprint()})
    if checkpoint_dir is None:
        return _train(run, data, config, meta, None, progress)
    folder = Path(checkpoint_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with folder_lock(folder, "cross-layer transcoder training"):
        return _train(run, data, config, meta, folder, progress)


def _train(run: _Run, data: ModelActivations, config: TrainConfig, meta: dict, folder: Path | None,
           progress: bool) -> CrossLayerTranscoder:
    n_layers = run.clt.cfg.n_layers
    start = _resume(folder, run, meta, config) if folder is not None else 0
    if start == 0 and config.normalise_inputs:
        inputs, outputs = _pairs(data.batch(0), n_layers)
        d_model = inputs.shape[-1]
        run.scale_in = d_model**0.5 / inputs.norm(dim=-1).mean(1).clamp_min(1e-12)
        run.scale_out = d_model**0.5 / outputs.norm(dim=-1).mean(1).clamp_min(1e-12)
    bar = tqdm(range(start, config.steps), desc="training a cross-layer transcoder", disable=not progress,
               initial=start, total=config.steps)
    for step in bar:
        inputs, outputs = _pairs(data.batch(step), n_layers)
        _step(run, inputs, outputs, step, config)
        if folder is not None and config.checkpoint_every and (step + 1) % config.checkpoint_every == 0:
            for name, tensor in run.clt.state_dict().items():
                check_finite(f"the cross-layer transcoder's {name} after step {step} (lower lr)", tensor)
            save_checkpoint(folder, step, {WEIGHTS: run.tensors()}, meta)
        bar.set_postfix(fvu=f"{run.last['fvu']:.3f}", dead=f"{run.last['dead']:.3f}")
    return _folded(run)


__all__ = ["train_crosslayer"]
