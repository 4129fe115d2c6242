"""Activations of many prompts at chosen token positions, batched, for probes and directions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from mechscope.errors import MechscopeError, OutOfRangeError
from mechscope.models.hooked_model import HookedModel, HookSpec
from mechscope.validate import check_int


def _token_indices(lengths: torch.Tensor, positions: Sequence[int]) -> torch.Tensor:
    """[batch, n_positions] indices into right-padded rows: a negative position counts back from
    each row's own last real token, so -1 is every prompt's last token whatever its length."""
    index = torch.tensor(list(positions), dtype=torch.long, device=lengths.device)
    rows = torch.where(index < 0, lengths.unsqueeze(1) + index, index.expand(len(lengths), -1))
    bad = (rows < 0) | (rows >= lengths.unsqueeze(1))
    if bad.any():
        row = int(bad.any(1).nonzero()[0])
        raise OutOfRangeError(f"positions {list(positions)} out of range for prompt {row}, which has "
                         f"{int(lengths[row])} tokens")
    return rows


@torch.no_grad()
def prompt_activations(
    model: HookedModel,
    prompts: Sequence[str],
    hook_names: str | Sequence[str],
    positions: int | Sequence[int] = -1,
    chat: bool | None = False,
    responses: Sequence[str] | None = None,
    fwd_hooks: HookSpec = (),
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Activations of ``hook_names`` at ``positions`` of each prompt, in float32 on ``device``.

    Returns {hook name: [n_prompts, n_positions, *activation dims]} (e.g. [n, k, d_model] for
    residual points). ``positions`` index each prompt's own tokens; negative ones count back from
    its last token (padding is never read), so with ``chat=True`` the positions -1 ... -k are the
    chat template's post-instruction tokens (e.g. "<|im_end|>\\n<|im_start|>assistant\\n").
    ``chat=None`` uses the chat template when the tokenizer has one. ``responses`` (one per
    prompt) are appended as the start of the assistant's reply, e.g. "(A" to read a CAA answer.
    ``fwd_hooks`` (e.g. a steering intervention) run first, so the activations show their edits.
    """
    names = [hook_names] if isinstance(hook_names, str) else list(hook_names)
    position_list = [positions] if isinstance(positions, int) else list(positions)
    if not prompts:
        raise MechscopeError("no prompts given")
    if responses is not None and len(responses) != len(prompts):
        raise MechscopeError(f"{len(responses)} responses for {len(prompts)} prompts; give one per prompt")
    if not position_list:
        raise MechscopeError("positions is empty; pass at least one token position (e.g. -1)")
    check_int("batch_size", batch_size, minimum=1)
    for name in names:
        model.hook_point(name)  # unknown names fail here, with close matches, before any work
    gathered: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    batches = range(0, len(prompts), batch_size)
    for start in tqdm(batches, desc="activations", disable=not progress or len(batches) < 4):
        chunk = slice(start, start + batch_size)
        tokens, mask = model.tokenize_prompts(list(prompts[chunk]), chat, None if responses is None else responses[chunk])
        lengths = mask.sum(1) if mask is not None else torch.full((len(tokens),), tokens.shape[1], device=tokens.device)
        rows = _token_indices(lengths, position_list)
        _, cache = model.run_with_cache(tokens, names=names, attention_mask=mask, fwd_hooks=fwd_hooks)
        for name in names:
            activation = cache[name]
            pos_axis = model.hook_point(name).position_axis
            if pos_axis != 1:
                raise MechscopeError(f"{name!r} has axes {model.hook_point(name).axes}; prompt_activations reads "
                                 "points whose second axis is the token position")
            batch_index = torch.arange(len(tokens), device=activation.device).unsqueeze(1)
            gathered[name].append(activation[batch_index, rows.to(activation.device)].float().to(device))
    return {name: torch.cat(chunks) for name, chunks in gathered.items()}
