"""Applying a direction: add it (steering) or project it out (directional ablation), in forward
passes and in batched generation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from tqdm.auto import tqdm

from mechscope.errors import MechscopeError
from mechscope.hooks.interventions import add_vector, project_out
from mechscope.hooks.names import attn_out, mlp_out, resid_pre
from mechscope.models.hooked_model import HookedModel, HookSpec
from mechscope.steering.capping import ActivationCap
from mechscope.steering.direction import Direction
from mechscope.validate import check_choice, check_int, check_number

Phase = Literal["all", "prompt", "generated"]
PHASES: tuple[str, ...] = get_args(Phase)


def checked_layers(model: HookedModel, layers: int | Sequence[int] | None) -> list[int]:
    """``layers`` as a list (None: every layer), each checked against the model's depth."""
    layers = list(range(model.cfg.n_layers)) if layers is None else [layers] if isinstance(layers, int) else list(layers)
    bad = [layer for layer in layers if not 0 <= layer < model.cfg.n_layers]
    if bad or not layers:
        raise MechscopeError(f"layers {bad or layers} invalid; the model has layers 0..{model.cfg.n_layers - 1}")
    return layers


def _check_width(model: HookedModel, direction: Direction) -> None:
    if direction.d_model != model.cfg.d_model:
        raise MechscopeError(f"direction has d_model {direction.d_model}, the model {model.cfg.d_model}")


@dataclass
class Steering:
    """Add ``alpha * direction`` to the residual stream before each of ``layers`` (hook_resid_pre;
    default: the direction's own layer).

    ``positions``: "all"; "prompt" (only the prompt's tokens: in generation, only the first,
    prefill pass); "generated" (only tokens produced during generation); or explicit token
    indices (forward passes only).
    """

    direction: Direction
    alpha: float
    layers: int | Sequence[int] | None = None
    positions: Phase | Sequence[int] = "all"

    def __post_init__(self) -> None:
        # A NaN or infinite strength would give NaN logits (or garbage text) without an error.
        self.alpha = check_number("alpha", self.alpha)
        if isinstance(self.positions, str):
            check_choice("positions", self.positions, PHASES)

    def hooks(self, model: HookedModel, generating: bool = False) -> HookSpec:
        """fwd_hooks for ``model``. With ``generating=True`` the hooks count their calls, so a
        fresh set is needed for each generation (``generate`` below makes them)."""
        _check_width(model, self.direction)
        if self.layers is None and self.direction.layer is None:
            raise MechscopeError("the direction records no layer; pass layers=")
        layers = checked_layers(model, self.direction.layer if self.layers is None else self.layers)
        if isinstance(self.positions, str) and self.positions not in PHASES:
            raise MechscopeError(f"positions must be one of {PHASES} or a list of token indices, got {self.positions!r}")
        if self.positions == "generated" and not generating:
            raise MechscopeError('positions="generated" applies only during generation; use steering.generate')
        if not isinstance(self.positions, str) and generating:
            raise MechscopeError("explicit token positions apply to forward passes only; in generation use "
                             f"one of {PHASES}")
        indices = None if isinstance(self.positions, str) else list(self.positions)
        adder = add_vector(self.direction.vector, self.alpha, positions=indices)
        if not generating or self.positions == "all":
            return [(resid_pre(layer), adder) for layer in layers]
        # With a KV cache, generate runs the whole prompt once (the prefill), then one token per
        # step; counting each hook's calls tells the two apart whatever the prompt's length.
        calls: dict[str, int] = {}

        def phased(activation: torch.Tensor, hook) -> torch.Tensor:
            first = calls.get(hook.name, 0) == 0
            calls[hook.name] = calls.get(hook.name, 0) + 1
            return adder(activation, hook) if first == (self.positions == "prompt") else activation

        return [(resid_pre(layer), phased) for layer in layers]


@dataclass
class DirectionalAblation:
    """Remove the component along ``direction`` from everything written to the residual stream:
    the embeddings (blocks.0.hook_resid_pre) and every attention and MLP output, at all
    positions, so no layer ever reads it. Weight orthogonalisation bakes the same edit into
    the weights (:func:`mechscope.steering.orthogonalise`)."""

    direction: Direction

    def hooks(self, model: HookedModel, generating: bool = False) -> HookSpec:
        _check_width(model, self.direction)
        remove = project_out(self.direction.vector)
        # The embeddings enter as block 0's input; every attention and MLP output is a writer.
        names = [resid_pre(0)] + [writer(layer) for layer in range(model.cfg.n_layers) for writer in (attn_out, mlp_out)]
        return [(name, remove) for name in names]


Intervention = Steering | DirectionalAblation | ActivationCap


def left_padded(tokens: torch.Tensor, mask: torch.Tensor | None, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded rows [batch, pos] moved to the right end (generation appends after the last
    column, so every prompt must end there). Returns (tokens, attention_mask)."""
    if mask is None:
        return tokens, torch.ones_like(tokens)
    lengths = mask.sum(1)
    shifted, shifted_mask = torch.full_like(tokens, pad), torch.zeros_like(mask)
    for row, length in enumerate(lengths.tolist()):
        shifted[row, tokens.shape[1] - length:] = tokens[row, :length]
        shifted_mask[row, tokens.shape[1] - length:] = 1
    return shifted, shifted_mask


@torch.no_grad()
def generate(
    model: HookedModel,
    prompts: str | Sequence[str],
    intervention: Intervention | Sequence[Intervention] | None = None,
    max_new_tokens: int = 32,
    chat: bool | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> list[str]:
    """Greedy continuations (new text only) of ``prompts`` with the interventions active,
    batched with left padding. ``chat=None`` wraps prompts in the chat template when the
    tokenizer has one."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise MechscopeError("no prompts given")
    check_int("max_new_tokens", max_new_tokens, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    interventions = [] if intervention is None else (
        [intervention] if isinstance(intervention, Steering | DirectionalAblation | ActivationCap) else list(intervention))
    pad = model.pad_token_id
    outputs: list[str] = []
    batches = range(0, len(prompts), batch_size)
    for start in tqdm(batches, desc="generating", disable=not progress or len(batches) < 2):
        tokens, mask = model.tokenize_prompts(prompts[start:start + batch_size], chat)
        tokens, mask = left_padded(tokens, mask, pad)
        hooks = [hook for item in interventions for hook in item.hooks(model, generating=True)]
        with model.hooks(hooks):
            generated = model.hf_model.generate(input_ids=tokens, attention_mask=mask, max_new_tokens=max_new_tokens,
                                                do_sample=False, pad_token_id=pad, use_cache=True)
        outputs.extend(model.tokenizer.decode(row, skip_special_tokens=True)
                       for row in generated[:, tokens.shape[1]:])
    return outputs
