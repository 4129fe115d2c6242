"""Running a model with a dictionary in the loop: the reconstruction replaces the activation.

Hooks for ``model.run_with_hooks`` / ``model.hooks``: an SAE reads and writes ``hook_name``; a
transcoder reads ``cfg.hook_name`` and writes its prediction at ``cfg.hook_name_out``.
``keep_error`` adds back what the dictionary misses (x - sae(x)), so only the interventions on
latents change the run; ``clamp`` fixes latents to values, ``steer`` adds alpha x a latent's
decoder direction.
"""

from __future__ import annotations

import torch

from mechscope.errors import MechscopeError
from mechscope.hooks.points import HookPoint
from mechscope.sae.model import SAE
from mechscope.validate import check_int, check_number


def splice_hooks(sae: SAE, hook_name: str | None = None, keep_error: bool = False,
                 clamp: dict[int, float] | None = None, steer: dict[int, float] | None = None,
                 skip_first: int = 0) -> list[tuple[str, object]]:
    """Forward hooks that splice ``sae`` into a run (see the module docstring); the first
    ``skip_first`` positions keep their activations (1 leaves BOS alone, whose outlier
    activations dictionaries are not trained on)."""
    cfg = sae.cfg
    read_at = hook_name or cfg.hook_name
    if not read_at:
        raise MechscopeError("which hook point? pass hook_name=... or set the SAE config's hook_name")
    write_at = (cfg.hook_name_out or None) if cfg.is_transcoder else read_at
    if cfg.is_transcoder and write_at is None:
        raise MechscopeError("a transcoder needs cfg.hook_name_out: the activation it predicts")
    for index in list(clamp or {}) + list(steer or {}):
        if not 0 <= index < cfg.d_sae:
            raise MechscopeError(f"latent {index} out of range: the dictionary has {cfg.d_sae} latents")
    for kind, values in (("clamp", clamp or {}), ("steer", steer or {})):
        for index, value in values.items():
            check_number(f"{kind} value of latent {index}", value)  # NaN would give NaN logits silently
    check_int("skip_first", skip_first, minimum=0)
    captured: dict[str, torch.Tensor] = {}

    def reconstruct(x: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
        if skip_first:
            head = original[:, :skip_first]
            return torch.cat([head, reconstruct_all(x[:, skip_first:], original[:, skip_first:])], dim=1)
        return reconstruct_all(x, original)

    def reconstruct_all(x: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
        x = x.to(sae.W_enc.dtype)
        latents = sae.encode(x)
        reconstruction = sae.decode(latents, x)  # before interventions: what the error is measured against
        out = reconstruction
        if clamp:
            latents = latents.clone()
            for index, value in clamp.items():
                latents[..., index] = value
            out = sae.decode(latents, x)
        for index, alpha in (steer or {}).items():
            out = out + alpha * sae.W_dec[index]
        if keep_error:
            out = out + (original.to(out.dtype) - reconstruction)
        return out.to(original.dtype)

    if not cfg.is_transcoder:
        return [(read_at, lambda activation, hook: reconstruct(activation, activation))]

    def read(activation: torch.Tensor, hook: HookPoint) -> None:
        captured["x"] = activation

    def write(activation: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        return reconstruct(captured.pop("x"), activation)

    return [(read_at, read), (write_at, write)]
