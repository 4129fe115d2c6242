"""Training a tuned lens: :class:`TunedLensConfig` and :func:`train_tuned_lens`, resumable after
a kill -9 from atomic checkpoints (the scheme of ``mechscope.sae.train``).

Each step runs the model on a batch of contexts (a function of the seed and the step only, so a
resumed run sees exactly the batches the interrupted one would have), then, one layer at a time,
reads the residual after block l through translator l, the final norm and the unembedding, and
takes a gradient step on KL(final || lens_l) averaged over the batch's tokens. The model's own
parameters are frozen for the duration (no .grad is computed or left on them).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from mechscope.analysis.tuned_lens import (
    TunedLens,
    check_contexts,
    kl_to_final,
    residuals_after,
    tuned_lens_logits,
)
from mechscope.errors import ConfigError, FileFormatError, InputTypeError, NonFiniteError, ResumeError
from mechscope.files import atomic_text, plain_name, read_json, read_safetensors, required_keys
from mechscope.models.hooked_model import HookedModel
from mechscope.models.weights import model_fingerprint
from mechscope.validate import check_choice, check_finite, check_int, check_number

Optimizer = Literal["adam", "sgd"]


@dataclass(frozen=True)
class TunedLensConfig:
    """Options of :func:`train_tuned_lens`, checked on construction.

    ``steps`` optimiser steps of ``batch_contexts`` contexts each (all of them when there are
    fewer); the learning rate rises linearly to ``lr`` over ``warmup_steps`` and falls linearly
    to 0 at the last step. ``optimizer``: "adam" (AdamW, the default) or "sgd" (Nesterov
    momentum 0.9, as Belrose et al. train it; its lr must suit the residual stream's scale:
    lr 1 diverges on SmolLM2, whose residuals are large). ``weight_decay`` pulls each translator towards
    the identity (the parameters are offsets from it). ``checkpoint_every``: steps between
    checkpoints when a checkpoint folder is given (the last step is always saved). ``seed``
    decides which contexts each step sees; nothing else is random. ``layers``: the translators
    to train (None: all); the others stay exactly the identity. Each trained layer costs a
    [tokens, d_model] x [d_model, d_vocab] matmul forward and backward per step, the bulk of
    the time, so on a CPU a subset of layers is the way to a quick look at a large vocabulary.
    """

    steps: int = 250
    batch_contexts: int = 4
    lr: float = 1e-3
    optimizer: Optimizer = "adam"
    warmup_steps: int = 10
    weight_decay: float = 0.0
    checkpoint_every: int = 50
    seed: int = 0
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        check_int("steps", self.steps)
        check_int("batch_contexts", self.batch_contexts)
        check_number("lr", self.lr, minimum=0, strict_minimum=True)
        check_choice("optimizer", self.optimizer, Optimizer)
        check_int("warmup_steps", self.warmup_steps, minimum=0)
        check_number("weight_decay", self.weight_decay, minimum=0)
        check_int("checkpoint_every", self.checkpoint_every, minimum=1)
        check_int("seed", self.seed, minimum=0)
        if self.layers is not None:
            layers = tuple(check_int("layers[]", layer, minimum=0) for layer in self.layers)
            if not layers or len(set(layers)) != len(layers):
                raise ConfigError(f"layers must be None (all) or distinct layer indices; got {self.layers!r}")
            object.__setattr__(self, "layers", tuple(sorted(layers)))


# Fields that decide the result: a resume must agree on all of them (checkpoint_every does not).
_RESULT_FIELDS = ("steps", "batch_contexts", "lr", "optimizer", "warmup_steps", "weight_decay", "seed", "layers")


def _lr_factor(step: int, config: TunedLensConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    return max(0.0, (config.steps - step) / max(1, config.steps - config.warmup_steps))


def _batch(contexts: torch.Tensor, step: int, config: TunedLensConfig) -> torch.Tensor:
    """The contexts of ``step``: a function of (seed, step) only, so a resumed run sees exactly
    the batches the interrupted one would have."""
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    return contexts[torch.randperm(len(contexts), generator=generator)[:config.batch_contexts]]


def _optimiser(lens: TunedLens, config: TunedLensConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(lens.parameters(), lr=config.lr, momentum=0.9, nesterov=True,
                               weight_decay=config.weight_decay)
    return torch.optim.AdamW(lens.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def _train_step(model: HookedModel, lens: TunedLens, optimiser: torch.optim.Optimizer, tokens: torch.Tensor,
                step: int, config: TunedLensConfig, layers: list[int]) -> torch.Tensor:
    """One step on ``tokens`` [batch, pos]; returns the KL [n_layers] of each trained layer
    before the step (NaN for layers not trained)."""
    for group in optimiser.param_groups:
        group["lr"] = config.lr * _lr_factor(step, config)
    # Position 0 (BOS in packed contexts) is the same state in every context: left out.
    resids = {layer: resid[:, 1:] for layer, resid in residuals_after(model, tokens, layers).items()}
    with torch.no_grad():
        # The target goes through the same function as the lens, so the last layer's identity
        # translator starts at its minimum (KL 0) and gets (almost) no gradient.
        log_p = model.unembed(resids[model.cfg.n_layers - 1]).float().log_softmax(-1)
    optimiser.zero_grad(set_to_none=True)
    kls = torch.full((model.cfg.n_layers,), float("nan"))
    with torch.enable_grad():
        # One layer at a time: each has its own parameters, and only one [tokens, d_vocab]
        # graph is alive at once.
        for layer in layers:
            log_q = tuned_lens_logits(model, lens, resids[layer], layer).float().log_softmax(-1)
            kl = kl_to_final(log_p, log_q).mean()
            if not torch.isfinite(kl):
                raise NonFiniteError(f"the tuned-lens KL at layer {layer} is {float(kl)} at step {step}: training "
                                     "stopped before any checkpoint holds it (lower the learning rate)")
            kl.backward()
            kls[layer] = float(kl.detach())
    optimiser.step()
    for name, param in lens.named_parameters():  # a finite loss can still overflow a weight
        check_finite(f"tuned lens {name} after step {step}", param.detach())
    return kls


def _state_tensors(lens: TunedLens, optimiser: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    tensors = {f"lens.{name}": p.detach().cpu().clone().contiguous() for name, p in lens.named_parameters()}
    names = {id(p): n for n, p in lens.named_parameters()}
    for group in optimiser.param_groups:
        for param in group["params"]:
            for key, value in optimiser.state.get(param, {}).items():
                tensors[f"optim.{names[id(param)]}.{key}"] = torch.as_tensor(value).detach().cpu().clone().contiguous()
    return tensors


def _kl_list(kls: torch.Tensor) -> list[float | None]:
    """Per-layer KL as JSON (None for layers not trained: JSON has no NaN)."""
    return [None if math.isnan(value) else value for value in kls.tolist()]


def _checkpoint_meta(model: HookedModel, config: TunedLensConfig, fingerprint: str) -> dict[str, Any]:
    cfg = model.cfg
    return {"config": asdict(config), "contexts_sha256": fingerprint,
            "model": {"name": cfg.name, "n_layers": cfg.n_layers, "d_model": cfg.d_model, "d_vocab": cfg.d_vocab,
                      # the weights themselves: a fine-tune saved under the same name must not resume
                      "weights_sha256": model_fingerprint(model)["model_sha256"]}}


def _save_checkpoint(folder: Path, step: int, lens: TunedLens, optimiser: torch.optim.Optimizer,
                     meta: dict[str, Any], kls: torch.Tensor) -> None:
    """Write folder/step-{step}/ in a temporary folder, rename it into place, then point
    folder/latest at it (atomically) and drop older checkpoints: a kill -9 at any moment
    leaves the previous complete checkpoint readable."""
    temporary = folder / f".step-{step}.tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    save_file(_state_tensors(lens, optimiser), str(temporary / "state.safetensors"))
    (temporary / "state.json").write_text(json.dumps({**meta, "step": step, "kl": _kl_list(kls)}))
    final = folder / f"step-{step}"
    shutil.rmtree(final, ignore_errors=True)
    os.replace(temporary, final)
    atomic_text(folder / "latest", final.name)
    for old in folder.glob("step-*"):
        if old.name != final.name:
            shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(folder: Path, lens: TunedLens, optimiser: torch.optim.Optimizer,
                     meta: dict[str, Any]) -> tuple[int, torch.Tensor | None]:
    """Restore ``folder``'s latest checkpoint; returns (next step, its per-layer KL), (0, None) if none."""
    pointer = folder / "latest"
    if not pointer.exists():
        return 0, None
    remedy = "delete the checkpoint folder (training starts over) or use another one"
    checkpoint = folder / plain_name(pointer.read_text(encoding="utf-8").strip(), pointer, "the latest pointer")
    saved = required_keys(read_json(checkpoint / "state.json", "a tuned-lens checkpoint", remedy),
                          ("config", "model", "contexts_sha256", "step", "kl"), checkpoint / "state.json")
    differ = [f"config.{key}" for key in _RESULT_FIELDS if saved["config"].get(key) != meta["config"][key]]
    differ += [f"model.{key}" for key in meta["model"] if saved["model"].get(key) != meta["model"][key]]
    if saved["contexts_sha256"] != meta["contexts_sha256"]:
        differ.append("contexts")
    if differ:
        raise ResumeError(f"the checkpoint in {folder} was made by another run ({', '.join(differ)} differ); "
                          "use another folder, delete it, or pass the same model, contexts and config")
    tensors = read_safetensors(checkpoint / "state.safetensors", "a tuned-lens checkpoint")
    by_name = dict(lens.named_parameters())
    with torch.no_grad():
        for name, param in by_name.items():
            saved_param = tensors.get(f"lens.{name}")
            if saved_param is None or saved_param.shape != param.shape or saved_param.dtype != param.dtype:
                found = "missing" if saved_param is None else f"{saved_param.dtype} {tuple(saved_param.shape)}"
                raise FileFormatError(f"{checkpoint / 'state.safetensors'}: lens.{name} is {found}, the lens needs "
                                      f"{param.dtype} {tuple(param.shape)}; {remedy}")
            check_finite(f"lens.{name} in {checkpoint}", saved_param)
            param.copy_(saved_param)
    for key, value in tensors.items():
        if key.startswith("optim."):
            name, slot = key[len("optim."):].rsplit(".", 1)
            if name not in by_name:
                raise FileFormatError(f"{checkpoint / 'state.safetensors'}: optimiser state for unknown parameter "
                                      f"{name!r}; {remedy}")
            param = by_name[name]
            optimiser.state.setdefault(param, {})[slot] = value.to(param.device) if slot != "step" else value.clone()
    return saved["step"] + 1, torch.tensor([math.nan if v is None else v for v in saved["kl"]])


def train_tuned_lens(model: HookedModel, contexts: torch.Tensor, config: TunedLensConfig | None = None,
                     checkpoint_dir: str | Path | None = None, progress: bool = True) -> TunedLens:
    """Train a tuned lens for ``model`` on ``contexts`` [n, pos] (token ids, e.g.
    ``mechscope.data.pack(model.tokenizer, stdlib_docstrings(), 128)``), starting from the
    identity. Each step minimises sum over layers of mean over tokens of KL(final || lens_l),
    final = the model's output distribution; position 0 is left out (BOS in packed contexts).

    With ``checkpoint_dir``, checkpoints (lens, optimiser state, step) are written every
    ``config.checkpoint_every`` steps and at the end; calling again with the same folder, model,
    contexts and config resumes from the latest one (after a crash or kill -9) and gives the
    weights an uninterrupted run gives. Returns the lens on the CPU, its training recorded in
    ``lens.metadata["training"]`` (config, contexts, the last step's per-layer KL)."""
    config = config if config is not None else TunedLensConfig()
    if not isinstance(config, TunedLensConfig):
        raise InputTypeError(f"config must be a TunedLensConfig, got {type(config).__name__}")
    contexts = check_contexts(model, contexts)
    layers = list(config.layers) if config.layers is not None else list(range(model.cfg.n_layers))
    if layers[-1] >= model.cfg.n_layers:
        raise ConfigError(f"layers {list(config.layers or [])} include {layers[-1]}; the model's layers are "
                          f"0..{model.cfg.n_layers - 1}")
    fingerprint = hashlib.sha256(contexts.numpy().tobytes()).hexdigest()
    lens = TunedLens.for_model(model).to(model.device)
    optimiser = _optimiser(lens, config)
    # Compared with what a checkpoint's JSON holds, so in JSON's own types (tuples as lists).
    meta = json.loads(json.dumps(_checkpoint_meta(model, config, fingerprint)))
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    start, kls = _load_checkpoint(folder, lens, optimiser, meta) if folder is not None else (0, None)
    bar = tqdm(range(start, config.steps), desc="training tuned lens", disable=not progress, initial=start,
               total=config.steps)
    # Gradients flow through the model's final norm and unembedding to the lens, but no model
    # parameter gets a .grad (which would cost a [d_model, d_vocab] matmul per layer and step).
    with model.frozen_parameters():
        for step in bar:
            kls = _train_step(model, lens, optimiser, _batch(contexts, step, config), step, config, layers)
            if folder is not None and ((step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps):
                _save_checkpoint(folder, step, lens, optimiser, meta, kls)
            bar.set_postfix(kl=f"{float(kls[layers].mean()):.4f}", first=f"{float(kls[layers[0]]):.3f}")
    lens.metadata["training"] = {**meta, "n_contexts": len(contexts), "context_length": contexts.shape[1],
                                 "last_step_kl": _kl_list(kls) if kls is not None else None}
    return lens.cpu()
