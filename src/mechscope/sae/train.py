"""Training several dictionaries from one stream of activations, resumable after a crash.

Data: any object with ``batch(step) -> x [batch, d_in]`` (or ``(x, target)`` for transcoders)
that is a deterministic function of the step, so a resumed run sees exactly the batches the
interrupted one would have. Inputs are scaled by one constant per dictionary (so that
E||x|| = sqrt(d_in), making coefficients transferable across models) and the scale is folded
into the weights at the end. Adam with linear warm-up and a linear decay over the last
``decay_fraction`` of the steps; unit-norm decoder rows; latents that have not fired for
``dead_after_tokens`` tokens are dead and, for the TopK family, revived by the AuxK loss.

Checkpoints (every ``checkpoint_every`` steps) are folders of safetensors (weights, Adam state,
dead-latent counters) and JSON, written to a temporary folder and renamed into place, so a
kill -9 never leaves a half-written checkpoint; re-running with the same folder resumes.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from mechscope.errors import MechscopeError
from mechscope.files import atomic_text
from mechscope.sae.config import SAEConfig
from mechscope.sae.model import SAE


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    lr: float = 1e-3
    warmup_steps: int = 50
    decay_fraction: float = 0.2
    dead_after_tokens: int = 100_000
    aux_k: int | None = None  # default: d_in // 2, as for TopK SAEs (Gao et al. 2024)
    aux_coefficient: float = 1 / 32
    checkpoint_every: int = 0
    normalise_inputs: bool = True
    seed: int = 0


def _lr_factor(step: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    decay_start = int(config.steps * (1 - config.decay_fraction))
    if step >= decay_start and config.decay_fraction > 0:
        return max(0.0, (config.steps - step) / (config.steps - decay_start))
    return 1.0


def _split(batch) -> tuple[torch.Tensor, torch.Tensor]:
    return batch if isinstance(batch, tuple | list) else (batch, batch)


class _Run:
    """One dictionary's training state: model, optimiser, dead-latent counters, scales."""

    def __init__(self, cfg: SAEConfig, seed: int, lr: float):
        self.sae = SAE(cfg, seed=seed)
        self.optimiser = torch.optim.Adam(self.sae.parameters(), lr=lr, betas=(0.9, 0.999))
        self.since_fired = torch.zeros(cfg.d_sae, dtype=torch.long)
        self.scale_in = self.scale_out = 1.0
        self.last: dict[str, float] = {}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"model.{k}": v.detach().clone().contiguous() for k, v in self.sae.state_dict().items()}
        names = {id(p): n for n, p in self.sae.named_parameters()}
        for group in self.optimiser.param_groups:
            for param in group["params"]:
                for key, value in self.optimiser.state.get(param, {}).items():
                    tensors[f"adam.{names[id(param)]}.{key}"] = torch.as_tensor(value).clone().contiguous()
        tensors["since_fired"] = self.since_fired.clone()
        return tensors

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.sae.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        by_name = dict(self.sae.named_parameters())
        for key, value in tensors.items():
            if key.startswith("adam."):
                name, field = key[5:].rsplit(".", 1)
                self.optimiser.state.setdefault(by_name[name], {})[field] = value.clone()
        self.since_fired = tensors["since_fired"].clone()


def _save_checkpoint(folder: Path, step: int, runs: list[_Run], config: TrainConfig) -> None:
    temporary = folder / f".step-{step}.tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    for index, run in enumerate(runs):
        save_file(run.state_tensors(), temporary / f"dictionary_{index}.safetensors")
    meta = {"step": step, "train": asdict(config), "configs": [run.sae.cfg.to_dict() for run in runs],
            "scales": [[run.scale_in, run.scale_out] for run in runs]}
    (temporary / "state.json").write_text(json.dumps(meta))
    final = folder / f"step-{step}"
    shutil.rmtree(final, ignore_errors=True)
    os.replace(temporary, final)
    atomic_text(folder / "latest", final.name)
    for old in folder.glob("step-*"):  # keep the newest complete checkpoint only
        if old.name != final.name:
            shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(folder: Path, runs: list[_Run], configs: list[SAEConfig]) -> int:
    """Restore the runs from ``folder``'s latest checkpoint; returns the next step (0 if none)."""
    pointer = folder / "latest"
    if not pointer.exists():
        return 0
    checkpoint = folder / pointer.read_text().strip()
    meta = json.loads((checkpoint / "state.json").read_text())
    saved = [SAEConfig.from_dict(c) for c in meta["configs"]]
    if saved != list(configs):
        raise MechscopeError(f"checkpoint in {folder} was made for other dictionaries ({len(saved)} configs differ "
                         "from these); use another folder or delete it")
    for index, run in enumerate(runs):
        run.load_tensors(load_file(checkpoint / f"dictionary_{index}.safetensors"))
        run.scale_in, run.scale_out = meta["scales"][index]
    return meta["step"] + 1


def train(configs: SAEConfig | list[SAEConfig], data, config: TrainConfig,
          checkpoint_dir: str | Path | None = None, progress: bool = True) -> list[SAE]:
    """Train one dictionary per config on the same batches; returns them with the input
    scaling folded into their weights (they take raw activations)."""
    configs = [configs] if isinstance(configs, SAEConfig) else list(configs)
    runs = [_Run(cfg, seed=config.seed + index, lr=config.lr) for index, cfg in enumerate(configs)]
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    start = _load_checkpoint(folder, runs, configs) if folder is not None else 0
    if start == 0 and config.normalise_inputs:
        x, target = _split(data.batch(0))
        for run in runs:
            run.scale_in = float(run.sae.cfg.d_in**0.5 / x.norm(dim=-1).mean().clamp_min(1e-12))
            run.scale_out = float(run.sae.cfg.output_dim**0.5 / target.norm(dim=-1).mean().clamp_min(1e-12))
    bar = tqdm(range(start, config.steps), desc="training dictionaries", disable=not progress,
               initial=start, total=config.steps)
    for step in bar:
        x, target = _split(data.batch(step))
        for run in runs:
            _train_step(run, x, target, step, config)
        if folder is not None and config.checkpoint_every and (step + 1) % config.checkpoint_every == 0:
            _save_checkpoint(folder, step, runs, config)
        first = runs[0].last
        bar.set_postfix(l0=f"{first.get('l0', 0):.1f}", fvu=f"{first.get('fvu', 0):.3f}")
    return [_folded(run) for run in runs]


def _train_step(run: _Run, x: torch.Tensor, target: torch.Tensor, step: int, config: TrainConfig) -> None:
    sae, cfg = run.sae, run.sae.cfg
    x_scaled, target_scaled = x * run.scale_in, target * run.scale_out
    for group in run.optimiser.param_groups:
        group["lr"] = config.lr * _lr_factor(step, config)
    dead = run.since_fired >= config.dead_after_tokens
    aux_k = config.aux_k if config.aux_k is not None else max(1, cfg.d_in // 2)
    loss, parts, fired = sae.loss(x_scaled, target_scaled, dead, aux_k, config.aux_coefficient)
    run.optimiser.zero_grad(set_to_none=True)
    loss.backward()
    run.optimiser.step()
    sae.after_step()
    with torch.no_grad():
        run.since_fired = torch.where(fired, torch.zeros_like(run.since_fired), run.since_fired + x.shape[0])
        variance = (target_scaled - target_scaled.mean(0)).pow(2).sum(-1).mean()
        run.last = {**parts, "fvu": parts["mse"] / float(variance.clamp_min(1e-12)), "dead": float(dead.float().mean())}


def _folded(run: _Run) -> SAE:
    """A copy of the run's SAE that takes raw activations: the input / output scales folded in."""
    sae = SAE(run.sae.cfg)
    sae.load_state_dict(run.sae.state_dict())
    s_in, s_out = run.scale_in, run.scale_out
    with torch.no_grad():
        # pre = (s x - b) W + c = (x - b / s) (s W) + c for an SAE (s_in = s_out); outputs are / s_out.
        sae.W_enc.mul_(s_in)
        sae.b_dec.div_(s_out)
        sae.W_dec.div_(s_out)
        if sae.W_skip is not None:
            sae.W_skip.mul_(s_in / s_out)
    return sae
