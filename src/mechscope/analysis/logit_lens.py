"""Logit lens: read the residual stream at every layer through the model's real final norm and
unembedding."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mechscope.hooks.cache import ActivationCache
from mechscope.models.hooked_model import HookedModel
from mechscope.validate import check_int


@dataclass
class LogitLens:
    """Predictions decoded from the residual stream before each block and after the last.

    ``log_probs``: [n_points, d_vocab] at one position of one prompt; ``labels[i]`` names point i
    ("L{l}" = residual entering block l, "final" = after the last block, equal to the model's
    output). ``top_tokens[i]`` lists the k most likely (token string, probability) pairs.
    """

    labels: list[str]
    log_probs: torch.Tensor
    top_tokens: list[list[tuple[str, float]]]

    def rank_of(self, token_id: int) -> torch.Tensor:
        """[n_points] rank (0 = top) of ``token_id`` at every point."""
        target = self.log_probs[:, token_id : token_id + 1]
        return (self.log_probs > target).sum(-1)


@torch.no_grad()
def logit_lens(model: HookedModel, cache: ActivationCache, position: int = -1, batch_index: int = 0,
               k: int = 5) -> LogitLens:
    """Decode ``cache``'s residual stream at ``position`` of prompt ``batch_index`` (negative
    positions count from the prompt's last real token when the batch was padded).
    ``log_probs`` are returned on the CPU."""
    check_int("k", k, minimum=1, maximum=model.cfg.d_vocab)
    position = cache.resolve_position(position, batch_index)
    stack, labels = cache.accumulated_resid(pos_slice=position, return_labels=True)  # [n, batch, d]
    resid = stack[:, batch_index].to(model.device)
    log_probs = model.unembed(resid).float().log_softmax(-1).cpu()
    labels = [label.replace("_pre", "").replace("final_post", "final") for label in labels]
    labels = [f"L{label}" if label[0].isdigit() else label for label in labels]
    top = log_probs.topk(k, dim=-1)
    top_tokens = [
        [(model.tokenizer.decode([int(t)]), float(p.exp())) for t, p in zip(ids, values)]
        for ids, values in zip(top.indices, top.values)
    ]
    return LogitLens(labels, log_probs, top_tokens)


@dataclass
class LensGrid:
    """The logit lens at every position: ``labels`` [n_points] as in :class:`LogitLens`,
    ``top_ids`` and ``top_probs`` [n_points, pos] the most likely token and its probability."""

    labels: list[str]
    top_ids: torch.Tensor
    top_probs: torch.Tensor


@torch.no_grad()
def logit_lens_grid(model: HookedModel, cache: ActivationCache, batch_index: int = 0) -> LensGrid:
    """The top prediction decoded from the residual stream at every layer and position of prompt
    ``batch_index`` (one layer at a time, so memory holds [pos, d_vocab], not every layer's)."""
    stack, labels = cache.accumulated_resid(return_labels=True)  # [n, batch, pos, d]
    ids, probs = [], []
    for resid in stack[:, batch_index]:
        best = model.unembed(resid.to(model.device)).float().softmax(-1).max(-1)
        ids.append(best.indices.cpu())
        probs.append(best.values.cpu())
    labels = [label.replace("_pre", "").replace("final_post", "final") for label in labels]
    labels = [f"L{label}" if label[0].isdigit() else label for label in labels]
    return LensGrid(labels, torch.stack(ids), torch.stack(probs))
