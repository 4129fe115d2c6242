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

import torch

from mechscope.data.store import ModelActivations
from mechscope.errors import ConfigError
from mechscope.graphs.replacement import check_transcoders, mlp_input, mlp_output
from mechscope.models.hooked_model import HookedModel
from mechscope.sae.config import TOPK_ARCHITECTURES, Architecture, SAEConfig
from mechscope.sae.evaluate import fraction_of_variance_unexplained
from mechscope.sae.model import SAE
from mechscope.sae.splice import splice_hooks
from mechscope.sae.train import TrainConfig, train
from mechscope.validate import check_choice, check_int


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
                      progress: bool = True) -> dict[int, SAE]:
    """{layer: transcoder} for every layer of ``model``, trained on ``contexts`` [n, pos] (BOS
    rows dropped), ``batch_contexts`` contexts per step, all layers from one forward pass per
    step. Resumable after a crash through ``checkpoint_dir`` (see :func:`mechscope.sae.train`)."""
    layers = range(model.cfg.n_layers)
    configs = [config.layer_config(model, layer) for layer in layers]
    hooks = [name for layer in layers for name in (mlp_input(layer), mlp_output(layer))]
    data = ModelActivations(model, contexts, hooks, batch_contexts=batch_contexts, seed=train_config.seed)
    return dict(zip(layers, train(configs, data, train_config, checkpoint_dir, progress)))


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


def _next_token_ce(logits: torch.Tensor, tokens: torch.Tensor) -> float:
    return float(torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten()))


@torch.no_grad()
def evaluate_transcoders(model: HookedModel, transcoders: dict[int, SAE], tokens: torch.Tensor,
                         skip_first: int = 1) -> TranscoderSetEvaluation:
    """Score ``transcoders`` {layer: transcoder} (one per layer, as the replacement model needs)
    on ``tokens`` [batch, pos]; the first ``skip_first`` positions (BOS) are neither scored nor
    replaced."""
    check_transcoders(model, transcoders)
    check_int("skip_first", skip_first, 0, tokens.shape[1] - 1)
    layers = sorted(transcoders)
    wanted = [name for layer in layers for name in (mlp_input(layer), mlp_output(layer))]
    clean_logits, cache = model.run_with_cache(tokens, names=wanted)
    scores = []
    for layer in layers:
        transcoder = transcoders[layer]
        x = cache[mlp_input(layer)][:, skip_first:].flatten(0, 1).to(transcoder.W_enc.dtype)
        target = cache[mlp_output(layer)][:, skip_first:].flatten(0, 1).float()
        latents = transcoder.encode(x)
        fired = latents > 0
        scores.append(LayerScore(layer, float(fired.sum(-1).float().mean()),
                                 fraction_of_variance_unexplained(transcoder.decode(latents, x).float(), target),
                                 float((fired.sum(0) == 0).float().mean())))
    spliced = [hook for layer in layers for hook in splice_hooks(transcoders[layer], skip_first=skip_first)]
    spliced_logits = model.run_with_hooks(tokens, fwd_hooks=spliced)

    def zero(activation: torch.Tensor, hook) -> torch.Tensor:
        ablated = activation.clone()
        ablated[:, skip_first:] = 0
        return ablated

    zero_logits = model.run_with_hooks(tokens, fwd_hooks=[(mlp_output(layer), zero) for layer in layers])
    ce_clean, ce_spliced, ce_zero = (_next_token_ce(logits, tokens) for logits in
                                     (clean_logits, spliced_logits, zero_logits))
    gap = ce_zero - ce_clean
    clean_logp = clean_logits.float().log_softmax(-1)
    kl = float((clean_logp.exp() * (clean_logp - spliced_logits.float().log_softmax(-1))).sum(-1).mean())
    return TranscoderSetEvaluation(tuple(scores), ce_clean, ce_spliced, ce_zero,
                                   float("nan") if gap == 0 else (ce_zero - ce_spliced) / gap, kl,
                                   int(tokens[:, skip_first:].numel()))


__all__ = ["LayerScore", "TranscoderSetConfig", "TranscoderSetEvaluation", "evaluate_transcoders", "train_transcoders"]
