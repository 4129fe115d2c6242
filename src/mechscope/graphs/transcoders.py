"""Transcoders for a whole model: one per layer, all trained from the same forward passes.

A per-layer transcoder reads the MLP's normalised input (``blocks.L.ln2.hook_normalized``) and
predicts the MLP's output (``blocks.L.hook_mlp_out``), which is what the replacement model of
:mod:`mechscope.graphs.replacement` splices in. :func:`train_transcoders` runs the model once per
batch of contexts and gives every layer's transcoder its own (input, output) rows of that run, so
n layers cost one model pass, not n (the on-the-fly stream; a stored harvest of every layer's
input and output would take 2 x n_layers x d_model values per token of disk).

:func:`evaluate_transcoders` scores each layer on held-out contexts (L0, FVU, dead fraction) and
the set as a whole: the cross-entropy with every MLP replaced by its transcoder at once (errors
dropped), against the clean model and against every MLP output zeroed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

from mechscope.data.store import ModelActivations
from mechscope.distributed import Ranks, check_ranks
from mechscope.errors import ConfigError
from mechscope.graphs.replacement import mlp_input, mlp_output
from mechscope.models.hooked_model import HookedModel
from mechscope.sae.config import TOPK_ARCHITECTURES, Architecture, SAEConfig
from mechscope.sae.evaluate import fraction_of_variance_unexplained, output_scores, zero_after
from mechscope.sae.model import SAE
from mechscope.sae.spread import train_spread
from mechscope.sae.train import TrainConfig, train
from mechscope.validate import check_choice, check_int, literal_choices

# How a many-layer run uses several ranks: split each batch ("data") or give each rank whole layers.
Placement = Literal["data", "layers"]
PLACEMENTS: tuple[str, ...] = literal_choices(Placement)


@dataclass(frozen=True)
class TranscoderSetConfig:
    """The transcoder every layer gets: ``d_sae`` latents, ``architecture`` (TopK keeps ``k``
    per token; JumpReLU learns thresholds) and an optional linear ``skip_connection``."""

    d_sae: int = 2048
    architecture: Architecture = "topk"
    k: int = 32
    skip_connection: bool = False

    def __post_init__(self) -> None:
        check_int("d_sae", self.d_sae, 1)
        check_choice("architecture", self.architecture, Architecture)
        check_int("k", self.k, 1, self.d_sae if self.architecture in TOPK_ARCHITECTURES else None)
        if not isinstance(self.skip_connection, bool):
            raise ConfigError(f"skip_connection must be True or False; got {self.skip_connection!r}")

    def layer_config(self, model: HookedModel, layer: int) -> SAEConfig:
        d_model = model.cfg.d_model
        return SAEConfig(d_model, self.d_sae, self.architecture, k=self.k, d_out=d_model,
                         skip_connection=self.skip_connection, hook_name=mlp_input(layer),
                         hook_name_out=mlp_output(layer), model_name=model.cfg.name)


def train_transcoders(model: HookedModel, contexts: torch.Tensor, config: TranscoderSetConfig, train_config: TrainConfig,
                      batch_contexts: int = 16, checkpoint_dir: str | Path | None = None,
                      progress: bool = True, ranks: Ranks | None = None,
                      placement: Placement = "data") -> dict[int, SAE]:
    """{layer: transcoder} for every layer of ``model``, trained on ``contexts`` [n, pos] (BOS
    rows dropped), ``batch_contexts`` contexts per step, all layers from one forward pass per
    step. Resumable after a crash through ``checkpoint_dir`` (see :func:`mechscope.sae.train`).

    With ``ranks`` of several: ``placement="data"`` splits each step's contexts over the ranks
    (data-parallel, gradients averaged; ``batch_contexts`` must split evenly), ``"layers"``
    gives each rank whole layers (layer i on rank i % world_size, its own checkpoint folder
    under ``checkpoint_dir``, which is then required; see :mod:`mechscope.sae.spread`)."""
    check_choice("placement", placement, Placement)
    ranks = check_ranks(ranks)
    layers = range(model.cfg.n_layers)
    configs = [config.layer_config(model, layer) for layer in layers]
    hooks = [name for layer in layers for name in (mlp_input(layer), mlp_output(layer))]
    if placement == "layers":
        if checkpoint_dir is None:
            raise ConfigError("placement='layers' needs a checkpoint_dir every rank can reach (each layer's "
                              "transcoder is saved there and read back by every rank)")
        data = ModelActivations(model, contexts, hooks, batch_contexts=batch_contexts, seed=train_config.seed)
        return dict(zip(layers, train_spread(configs, data, train_config, checkpoint_dir, ranks, progress)))
    data = ModelActivations(model, contexts, hooks, batch_contexts=batch_contexts, seed=train_config.seed,
                            rank=ranks.rank, world_size=ranks.world_size)
    return dict(zip(layers, train(configs, data, train_config, checkpoint_dir, progress, ranks=ranks)))


@dataclass(frozen=True)
class LayerScore:
    """One layer's transcoder on held-out tokens: mean active latents, fraction of the MLP
    output's variance unexplained, and the fraction of latents that never fired."""

    layer: int
    l0: float
    fvu: float
    dead: float


@dataclass(frozen=True)
class TranscoderSetEvaluation:
    """Per-layer scores, and next-token cross-entropy of the clean model, of the model with every
    MLP replaced by its transcoder at once (``ce_spliced``; no error terms), and with every MLP
    output zeroed (``ce_zero``). ``ce_recovered`` = (ce_zero - ce_spliced) / (ce_zero - ce_clean);
    ``kl`` the mean KL(clean || spliced) per token."""

    layers: tuple[LayerScore, ...]
    ce_clean: float
    ce_spliced: float
    ce_zero: float
    ce_recovered: float
    kl: float
    tokens: int

    def to_json(self) -> dict:
        return {**asdict(self), "layers": [asdict(score) for score in self.layers]}


def _as_layers(model: HookedModel, transcoders) -> tuple[dict[int, SAE], dict[tuple[int, int], torch.Tensor]]:
    """({layer: transcoder}, {(source, target): cross decoder}) of a per-layer set (no cross
    decoders) or a cross-layer transcoder, checked against ``model``."""
    from mechscope.graphs.replacement import ReplacementModel

    replacement = ReplacementModel(model, transcoders)  # the one place sets are checked and unpacked
    return replacement.transcoders, replacement.cross


def _splice_all(layers: dict[int, SAE], cross: dict[tuple[int, int], torch.Tensor],
                skip_first: int) -> list[tuple[str, object]]:
    """Hooks replacing every MLP output by its transcoder's prediction (earlier layers' cross
    writes included, from the features this same run computes); the first ``skip_first``
    positions keep the real output."""
    features: dict[int, torch.Tensor] = {}
    inputs: dict[int, torch.Tensor] = {}

    def read(activation: torch.Tensor, hook, layer: int) -> None:
        inputs[layer] = activation[:, skip_first:].to(layers[layer].W_enc.dtype)
        features[layer] = layers[layer].encode(inputs[layer])

    def write(activation: torch.Tensor, hook, layer: int) -> torch.Tensor:
        out = layers[layer].decode(features[layer], inputs[layer])
        for (source, target), decoder in cross.items():
            if target == layer:
                out = out + features[source] @ decoder
        replaced = activation.clone()
        replaced[:, skip_first:] = out.to(activation.dtype)
        return replaced

    hooks: list[tuple[str, object]] = []
    for layer in sorted(layers):
        hooks += [(mlp_input(layer), lambda a, h, layer=layer: read(a, h, layer)),
                  (mlp_output(layer), lambda a, h, layer=layer: write(a, h, layer))]
    return hooks


@torch.no_grad()
def evaluate_transcoders(model: HookedModel, transcoders, tokens: torch.Tensor,
                         skip_first: int = 1) -> TranscoderSetEvaluation:
    """Score ``transcoders`` ({layer: transcoder}, one per layer, or a cross-layer transcoder)
    on ``tokens`` [batch, pos]; the first ``skip_first`` positions (BOS) are neither scored nor
    replaced. A cross-layer transcoder's layer t is scored on everything written to it."""
    layers, cross = _as_layers(model, transcoders)
    check_int("skip_first", skip_first, 0, tokens.shape[1] - 1)
    order = sorted(layers)
    wanted = [name for layer in order for name in (mlp_input(layer), mlp_output(layer))]
    clean_logits, cache = model.run_with_cache(tokens, names=wanted)
    inputs = {layer: cache[mlp_input(layer)][:, skip_first:].flatten(0, 1).to(layers[layer].W_enc.dtype)
              for layer in order}
    features = {layer: layers[layer].encode(inputs[layer]) for layer in order}
    scores = []
    for layer in order:
        target = cache[mlp_output(layer)][:, skip_first:].flatten(0, 1).float()
        predicted = layers[layer].decode(features[layer], inputs[layer]).float()
        for (source, into), decoder in cross.items():
            if into == layer:
                predicted = predicted + (features[source] @ decoder).float()
        fired = features[layer] > 0
        scores.append(LayerScore(layer, float(fired.sum(-1).float().mean()),
                                 fraction_of_variance_unexplained(predicted, target),
                                 float((fired.sum(0) == 0).float().mean())))
    spliced_logits = model.run_with_hooks(tokens, fwd_hooks=_splice_all(layers, cross, skip_first))

    zero_logits = model.run_with_hooks(tokens, fwd_hooks=[(mlp_output(layer), zero_after(skip_first))
                                                          for layer in order])
    return TranscoderSetEvaluation(tuple(scores), *output_scores(tokens, clean_logits, spliced_logits, zero_logits),
                                   int(tokens[:, skip_first:].numel()))


__all__ = ["LayerScore", "TranscoderSetConfig", "TranscoderSetEvaluation", "evaluate_transcoders", "train_transcoders"]
