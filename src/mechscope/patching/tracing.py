"""Causal tracing (ROME-style): corrupt the subject's token embeddings with Gaussian noise, then
restore one clean state at a time and measure how much of the answer's probability returns.

Restored states: the residual stream after a block ("resid"), or the attention / MLP outputs of
a window of blocks centred on a layer ("attn", "mlp"), at one position. All (layer, position)
units run batched, with several noise samples per unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from tqdm.auto import tqdm

from mechscope import checks
from mechscope.errors import MechscopeError
from mechscope.hooks.names import EMBED, residual
from mechscope.hooks.points import HookPoint
from mechscope.models.hooked_model import HookedModel
from mechscope.patching.activation import resid_post_by_layer, resid_post_names, slot_hooks
from mechscope.patching.prefix import prefix_reuse
from mechscope.patching.result import PatchingResult
from mechscope.patching.sites import PatchUnit
from mechscope.validate import check_choice, check_int, check_number, options_from

TraceKind = Literal["resid", "attn", "mlp"]
KINDS = {"resid": "resid_post", "attn": "attn_out", "mlp": "mlp_out"}


def subject_positions(model: HookedModel, prompt: str, subject: str) -> list[int]:
    """Token positions of ``subject`` (its first occurrence) in ``prompt``."""
    start = prompt.find(subject)
    if start < 0:
        raise MechscopeError(f"subject {subject!r} does not occur in the prompt {prompt!r}")
    end = start + len(subject)
    encoded = model.tokenizer(prompt, return_offsets_mapping=True)
    positions = [i for i, (a, b) in enumerate(encoded["offset_mapping"]) if b > a and a < end and b > start]
    if not positions:
        raise MechscopeError(f"no token of the prompt covers the subject {subject!r}")
    return positions


def _window(layer: int, window: int, n_layers: int) -> range:
    """Blocks [layer - window // 2, layer + ceil(window / 2)), cut off at the model's ends (as
    in ROME), so layers near the ends restore fewer blocks rather than a shifted window."""
    return range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))


@dataclass(frozen=True)
class TraceConfig:
    """The options of :func:`causal_trace`, checked on construction (before any model runs)."""

    kind: TraceKind = "resid"
    window: int = 10
    noise_scale: float | None = None
    samples: int = 8
    seed: int = 0
    units_per_forward: int = 16

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, TraceKind)
        check_int("window", self.window, minimum=1, maximum=checks.MAX_WINDOW)
        if self.noise_scale is not None:
            check_number("noise_scale", self.noise_scale, minimum=0, strict_minimum=True)  # 0: nothing noised
        check_int("samples", self.samples, minimum=1, maximum=checks.MAX_SAMPLES)
        check_int("seed", self.seed, minimum=None)
        check_int("units_per_forward", self.units_per_forward, minimum=1)


@torch.no_grad()
def causal_trace(
    model: HookedModel,
    prompt: str,
    subject: str,
    kind: TraceKind = "resid",
    answer: str | None = None,
    window: int = 10,
    noise_scale: float | None = None,
    samples: int = 8,
    seed: int = 0,
    units_per_forward: int = 16,
    progress: bool = True,
    config: TraceConfig | None = None,
) -> PatchingResult:
    """Trace ``prompt``'s prediction of ``answer`` (default: the clean top token) with the
    ``subject`` tokens noised. ``noise_scale`` defaults to 3x the std of the prompt's token
    embeddings as they enter the residual stream (ROME uses 3x the embeddings' std). Result axes (layer, position); ``raw`` is the answer's probability with that
    state restored, averaged over ``samples`` noise draws; ``scores`` rescale it so the noised
    run is 0 and the clean run 1. ``window`` applies to "attn" / "mlp" (1 restores one block).
    ``config``: a :class:`TraceConfig` in place of the separate options."""
    options = options_from(TraceConfig, config, kind=kind, window=window, noise_scale=noise_scale, samples=samples,
                           seed=seed, units_per_forward=units_per_forward)
    kind, window, noise_scale, samples = options.kind, options.window, options.noise_scale, options.samples
    seed, units_per_forward = options.seed, options.units_per_forward
    tokens = model.to_tokens(prompt)
    n_pos, n_layers = tokens.shape[1], model.cfg.n_layers
    noised_positions = subject_positions(model, prompt, subject)
    names = [residual(KINDS[kind], layer) for layer in range(n_layers)]
    resid_names = resid_post_names(model)
    clean_logits, clean = model.run_with_cache(tokens, names=list(dict.fromkeys(names + resid_names + [EMBED])))
    answer_id = int(clean_logits[0, -1].argmax()) if answer is None else model.to_single_token(answer)
    # The std of what is noised (hook_embed), which for Gemma includes its sqrt(d_model) scale.
    scale = 3 * float(clean[EMBED].float().std()) if noise_scale is None else noise_scale
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(samples, len(noised_positions), model.cfg.d_model, generator=generator) * scale
    noise = noise.to(model.device, model.dtype)

    def add_noise(activation: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        noised = activation.clone()
        rows = noised.shape[0] // samples
        noised[:, noised_positions] += noise.repeat(rows, 1, 1)
        return noised

    def answer_prob(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, -1].float().softmax(-1)[:, answer_id]

    noised_logits, noised = model.run_with_cache(tokens.repeat(samples, 1), names=resid_names,
                                                 fwd_hooks=[(EMBED, add_noise)])
    base_resid = resid_post_by_layer(model, noised)
    clean_prob = float(answer_prob(clean_logits))
    noised_prob = float(answer_prob(noised_logits).mean())
    source = {name: clean[name].expand(samples, *clean[name].shape[1:]) for name in names}

    spans = [_window(layer, window if kind != "resid" else 1, n_layers) for layer in range(n_layers)]
    cells = [(layer, position) for layer in range(n_layers) for position in range(n_pos)]
    raw = torch.empty(n_layers, n_pos)
    chunks = [cells[i : i + units_per_forward] for i in range(0, len(cells), units_per_forward)]
    for chunk in tqdm(chunks, desc=f"causal trace ({kind})", disable=not progress, leave=False):
        slots = [[PatchUnit(names[restored], None, position) for restored in spans[layer]] for layer, position in chunk]
        first = min(spans[layer][0] for layer, _ in chunk)
        logits = model.run_with_hooks(tokens.repeat(len(chunk) * samples, 1), logits_to_keep=1,
                                      fwd_hooks=[(EMBED, add_noise)] + slot_hooks(slots, source, samples),
                                      prefix=prefix_reuse(model, first, base_resid, len(chunk)))
        probs = answer_prob(logits).view(len(chunk), samples).mean(1).cpu()
        for (layer, position), prob in zip(chunk, probs):
            raw[layer, position] = prob
    gap = clean_prob - noised_prob
    scores = (raw - noised_prob) / gap if gap != 0 else raw.clone()
    str_tokens = model.to_str_tokens(tokens)
    labels = {"layer": [str(layer) for layer in range(n_layers)],
              "position": [f"{i}:{tok!r}" + ("*" if i in noised_positions else "") for i, tok in enumerate(str_tokens)]}
    return PatchingResult(f"trace-{kind}", "restore", "prob", ("layer", "position"), labels, scores, raw,
                          clean_prob, noised_prob, normalised=gap != 0,
                          info={"prompt": prompt, "subject": subject, "answer": model.tokenizer.decode([answer_id]),
                                "answer_id": answer_id, "noised_positions": noised_positions, "noise_scale": scale, "samples": samples,
                                "window": window if kind != "resid" else 1})
