"""Crosscoder evidence for discovery: latents that exist only in the fine-tune, and the tokens
they fire on.

A small BatchTopK crosscoder is trained on paired residual activations (base, fine-tune) at
one middle layer, on neutral corpus text and on the transcripts discovery already generated
(generic prompts answered by the fine-tune, greedily and amplified), with the fine-tune's
change magnified and ``designated`` latents held fine-tune-exclusive (their base decoder half
is zero), as in the diffing case study, where free latents never reached the ft-only ratio.
Each fine-tune-only latent, strongest first, contributes the tokens at its top activations on
the transcripts, and its explanation in words, scored (mechscope.autointerp). Like every token tool, these only support a hypothesis whose words they
spell; they never make one, so a null fine-tune (which has ft-only latents too, carrying
whatever it changed) gains nothing from them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mechscope.autointerp.records import RecordsConfig
from mechscope.autointerp.run import explain_activations
from mechscope.data.contexts import default_contexts
from mechscope.diff import CrosscoderConfig, PairedActivations, classify_latents, collect_pair, harvest_pair
from mechscope.diff.corpus import transcript_contexts, transcripts
from mechscope.diff.crosscoder import train_crosscoder
from mechscope.hooks import names
from mechscope.models.hooked_model import HookedModel
from mechscope.sae import TrainConfig
from mechscope.validate import check_int, check_number


@dataclass(frozen=True)
class CrosscoderEvidenceConfig:
    """``depth``: the layer, as a share of the layers; ``width``: latents per d_model; ``k``
    active latents per token; ``designated`` fine-tune-exclusive latents; ``delta_scale``: how
    much the fine-tune's change is magnified in the rows it reads; ``steps`` of training;
    ``latents``: ft-only latents read, ``tokens`` top tokens each; ``neutral_contexts`` corpus
    contexts of 64 tokens beside the transcripts. ``steps=0`` turns the tool off."""

    depth: float = 0.5
    width: int = 2
    k: int = 16
    designated: int = 32
    delta_scale: float = 10.0
    steps: int = 200
    latents: int = 16
    tokens: int = 5
    neutral_contexts: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        check_number("depth", self.depth, 0, 1)
        for name in ("width", "k", "latents", "tokens", "neutral_contexts"):
            check_int(name, getattr(self, name), 1)
        check_int("designated", self.designated, 0)
        check_int("steps", self.steps, 0)
        check_number("delta_scale", self.delta_scale, 0, strict_minimum=True)
        check_int("seed", self.seed, None)


def ft_only_latent_tokens(base: HookedModel, ft: HookedModel, prompts: Sequence[str], replies: Sequence[str],
                          config: CrosscoderEvidenceConfig | None = None, progress: bool = True
                          ) -> list[tuple[int, float, tuple[str, ...], str]]:
    """(latent, its top activation, the tokens at its top activations, its explanation with its
    score) for the fine-tune-only latents of a crosscoder trained as the module docstring says,
    on neutral text and the transcripts of ``prompts`` answered with ``replies``; strongest
    first. The explanation is the ``tokens`` explainer's, scored by ``lexicon`` on transcript
    windows it was not written from (:func:`mechscope.autointerp.run.explain_activations`)."""
    config = config or CrosscoderEvidenceConfig()
    chats = transcript_contexts(ft, transcripts(ft, prompts, replies), 64, seed=config.seed)
    contexts = torch.cat([default_contexts(base, config.neutral_contexts, 64, config.seed), chats])
    layer = min(base.cfg.n_layers - 1, round(config.depth * (base.cfg.n_layers - 1)))
    hook = names.resid_post(layer)
    d_model = base.cfg.d_model
    crosscoder_config = CrosscoderConfig(d_model=d_model, d_sae=config.width * d_model, k=config.k,
                                         hook_names=(hook,), delta_scale=config.delta_scale,
                                         ft_exclusive=config.designated)
    with tempfile.TemporaryDirectory(prefix="mechscope-audit-crosscoder-") as folder:
        harvest_pair(base, ft, contexts, folder, [hook], progress=progress)
        data = PairedActivations(folder, [hook], batch_size=512, seed=config.seed)
        crosscoder = train_crosscoder(data, crosscoder_config,
                                      TrainConfig(steps=config.steps, lr=3e-4, seed=config.seed), progress=progress)
    found = classify_latents(crosscoder).ft_latents()
    if not found:
        return []
    values = collect_pair(base, ft, chats, crosscoder, found)  # [n, pos, m]
    peaks = values.flatten(0, 1).max(0).values  # [m]
    order = [j for j in peaks.argsort(descending=True).tolist() if peaks[j] > 0][:config.latents]
    result = []
    for j in order:
        top = values[..., j].flatten().topk(config.tokens).indices
        tokens = tuple(ft.tokenizer.decode([int(chats.flatten()[i])]) for i in top)
        # Its explanation (tokens explainer, lexicon-scored on held-out windows of the transcripts).
        explained = explain_activations(f"latent {int(found[j])}", chats, values[..., j], ft.tokenizer,
                                        RecordsConfig(window=16, n_neighbours=0, seed=config.seed), config.seed)
        result.append((int(found[j]), float(peaks[j]), tokens, explained["label"]))
    return result


__all__ = ["CrosscoderEvidenceConfig", "ft_only_latent_tokens"]
