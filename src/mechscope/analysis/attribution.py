"""Direct logit attribution: how much each component writes along a logit (difference)
direction, through the linearised final norm."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mechscope.hooks.cache import ActivationCache
from mechscope.hooks.names import resid_post
from mechscope.models.hooked_model import HookedModel


@dataclass
class DirectLogitAttribution:
    """Contributions to ``logit(token) - logit(other_token)`` at one position of one prompt.

    ``by_component``: [n_components] for the embeddings and every block's attn_out / mlp_out
    (``component_labels``); they add up, with ``bias``, to ``logit_diff`` (before any final
    soft-capping). ``by_head``: [n_layers, n_heads], each head's direct write (o_proj bias excluded).
    """

    token: str
    other_token: str | None
    component_labels: list[str]
    by_component: torch.Tensor
    by_head: torch.Tensor
    bias: float
    logit_diff: float
    # The block of each component (None for the embeddings), so nothing parses a label for it.
    component_layers: list[int | None] | None = None

    def by_layer(self) -> tuple[list[str], torch.Tensor]:
        """Attention and MLP contributions summed per block: labels and [n_layers + 1] values
        (first entry: embeddings)."""
        labels, values = ["embed"], [0.0]
        layers = self.component_layers if self.component_layers is not None else _layers_of_components(
            len(self.component_labels), self.by_head.shape[0])
        for block, value in zip(layers, self.by_component.tolist()):
            if block is None:
                values[0] += value
                continue
            layer = f"L{block}"
            if labels[-1] != layer:
                labels.append(layer)
                values.append(0.0)
            values[-1] += value
        return labels, torch.tensor(values)

    def top_heads(self, k: int = 10) -> list[tuple[int, int, float]]:
        """(layer, head, contribution) of the k heads with the largest absolute contribution."""
        flat = self.by_head.flatten()
        order = flat.abs().argsort(descending=True)[:k]
        n_heads = self.by_head.shape[1]
        return [(int(i) // n_heads, int(i) % n_heads, float(flat[i])) for i in order]


def _layers_of_components(n_components: int, n_layers: int) -> list[int | None]:
    """The block of each entry of ``decompose_resid(mode="all")``: the embeddings (1 or 2 of
    them, None) come first, then attn_out and mlp_out of every block in order."""
    n_embeds = n_components - 2 * n_layers
    return [None] * n_embeds + [layer for layer in range(n_layers) for _ in ("attn_out", "mlp_out")]


@torch.no_grad()
def direct_logit_attribution(
    model: HookedModel, cache: ActivationCache, token: int, other_token: int | None = None,
    position: int = -1, batch_index: int = 0,
) -> DirectLogitAttribution:
    """DLA of ``token`` (minus ``other_token``) at ``position``. Needs hook_embed, every
    hook_attn_out / hook_mlp_out / attn.hook_z and the final hook_resid_post in ``cache``
    (the default ``run_with_cache`` names include them)."""
    position = cache.resolve_position(position, batch_index)
    components, labels = cache.decompose_resid(pos_slice=position, return_labels=True)
    by_component = cache.logit_attrs(components, token, other_token, pos_slice=position)[:, batch_index]
    heads = cache.stack_head_results(pos_slice=position)
    by_head = cache.logit_attrs(heads, token, other_token, pos_slice=position)[:, batch_index]
    bias = float(model.logit_bias(token, other_token)[0])
    final = cache[resid_post(model.cfg.n_layers - 1)][batch_index, position].to(model.device)
    # Soft-capped logits are not linear in the residual: attribute the logits before the cap.
    logits = model.unembed(final, apply_soft_cap=False).float()
    diff = logits[token] - (logits[other_token] if other_token is not None else 0.0)
    return DirectLogitAttribution(
        token=model.tokenizer.decode([token]),
        other_token=None if other_token is None else model.tokenizer.decode([other_token]),
        component_labels=labels,
        by_component=by_component.float().cpu(),
        by_head=by_head.float().view(model.cfg.n_layers, model.cfg.n_heads).cpu(),
        bias=bias,
        logit_diff=float(diff),
        component_layers=_layers_of_components(len(labels), model.cfg.n_layers),
    )
