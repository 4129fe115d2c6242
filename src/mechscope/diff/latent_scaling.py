"""Latent Scaling (Minder et al. 2025): whether a crosscoder's fine-tune-only latents are genuine
or artifacts of the sparsity penalty (complete shrinkage, latent decoupling); definitions in
:func:`latent_scaling`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from mechscope.diff.crosscoder import TINY, Crosscoder, classify_latents
from mechscope.diff.paired import split_pair
from mechscope.errors import InputTypeError
from mechscope.validate import check_int, check_number

ScalingVerdict = Literal["ft-specific", "complete-shrinkage", "latent-decoupling", "shrinkage-and-decoupling",
                         "inactive"]


@dataclass
class LatentScaling:
    """Latent Scaling of ``latents``: each tensor is [len(latents)] (NaN where undefined, None
    in JSON). ``betas`` holds base_error, ft_error, base_reconstruction, ft_reconstruction."""

    latents: list[int]
    betas: dict[str, torch.Tensor]
    nu_error: torch.Tensor
    nu_reconstruction: torch.Tensor
    active_tokens: torch.Tensor
    verdicts: list[str]
    threshold: float

    def to_json(self) -> dict:
        def plain(tensor: torch.Tensor) -> list:
            return [None if value != value else value for value in tensor.tolist()]  # NaN -> null

        return {"threshold": self.threshold, "latents": self.latents, "verdicts": self.verdicts,
                "nu_error": plain(self.nu_error), "nu_reconstruction": plain(self.nu_reconstruction),
                "active_tokens": self.active_tokens.tolist(), "betas": {k: plain(v) for k, v in self.betas.items()}}


def _row_chunks(activations, width: int, rows: int = 4096) -> Iterable[torch.Tensor]:
    chunks = [activations] if isinstance(activations, torch.Tensor) else activations
    for chunk in chunks:
        if not isinstance(chunk, torch.Tensor) or chunk.dim() != 2 or chunk.shape[1] != width:
            described = tuple(chunk.shape) if isinstance(chunk, torch.Tensor) else type(chunk).__name__
            raise InputTypeError(f"latent_scaling needs paired rows [tokens, {width}] (a tensor or an iterable of "
                                 f"them); got {described}")
        yield from chunk.float().split(rows)


@torch.no_grad()
def latent_scaling(crosscoder: Crosscoder, activations: torch.Tensor | Iterable[torch.Tensor],
                   latents: Sequence[int] | None = None, threshold: float = 0.3) -> LatentScaling:
    """Latent Scaling (Minder et al. 2025) of ``latents`` (default: the ft-only ones of
    :func:`classify_latents`) over paired rows ``activations`` [tokens, 2 * n * d] (a tensor or an
    iterable of them, e.g. ``(data.batch(s) for s in range(8))``).

    For latent j with activation f_j(t), ft decoder half d_j (flattened over hooks, the direction
    it writes in ft) and base half b_j, and per model M the activation h_M(t) and the crosscoder's
    reconstruction r_M(t) (latents and bias), the least-squares scale of f_j d_j explaining a
    target y(t) is  beta = sum_t f_j(t) <d_j, y(t)> / (||d_j||^2 sum_t f_j(t)^2).  Targets:

    * base_error  y = h_base - r_base + f_j b_j  (base activation minus its reconstruction by all
      OTHER latents);  ft_error  y = h_ft - r_ft + f_j d_j  (the same for ft; ~1 for a latent that
      carries its direction in ft).
    * base_reconstruction  y = r_base - f_j b_j  (what the OTHER latents reconstruct in base);
      ft_reconstruction  y = r_ft  (the full ft reconstruction, j included, so it is ~1 and a fair
      denominator; excluding j there would make a genuine latent's denominator ~0).

    nu_error = beta_base_error / beta_ft_error and nu_reconstruction = beta_base_reconstruction /
    beta_ft_reconstruction. A genuinely ft-only latent has both near 0. nu_error > ``threshold``:
    its direction is in the base activation though its base decoder half is ~0 ("complete
    shrinkage", the L1 penalty zeroed it). nu_reconstruction > ``threshold``: other latents
    reconstruct its direction in base ("latent decoupling"). A latent inactive on these tokens,
    or whose ft beta is ~0, is "inactive" (ratios NaN).
    """
    check_number("threshold", threshold, 0, strict_minimum=True)
    cfg, sae = crosscoder.config, crosscoder.sae
    if latents is None:
        latents = classify_latents(crosscoder).indices("ft-only")
    latents = [check_int("latent", j, 0, cfg.d_sae - 1) for j in latents]
    base_rows, ft_rows = (half.flatten(1).float() for half in crosscoder.decoder_halves())
    index = torch.tensor(latents, dtype=torch.long)
    d, b = ft_rows[index], base_rows[index]  # [m, n * d]
    d_norm2, d_dot_b = (d * d).sum(1), (d * b).sum(1)
    targets = ("base_error", "ft_error", "base_reconstruction", "ft_reconstruction")
    numerators = {name: torch.zeros(len(latents), dtype=torch.float64) for name in targets}
    squares = torch.zeros(len(latents), dtype=torch.float64)
    active = torch.zeros(len(latents), dtype=torch.long)
    for x in _row_chunks(activations, cfg.d_in):
        x = crosscoder.rows(x)  # h_ft below is the magnified fine-tune's where delta_scale > 1
        f_all = sae.encode(x.to(sae.W_enc.dtype)).float()
        h_base, h_ft = (part.flatten(-2) for part in split_pair(x, cfg.n_layers_in))
        r_base, r_ft = (part.flatten(-2) for part in split_pair(sae.decode(f_all).float(), cfg.n_layers_in))
        f = f_all[:, index]  # [T, m]
        # <d_j, y(t)> for every token and latent, with latent j's own term added or removed.
        projections = {"base_error": (h_base - r_base) @ d.T + f * d_dot_b, "ft_error": (h_ft - r_ft) @ d.T + f * d_norm2,
                       "base_reconstruction": r_base @ d.T - f * d_dot_b, "ft_reconstruction": r_ft @ d.T}
        for name, projection in projections.items():
            numerators[name] += (f * projection).sum(0).double()
        squares += (f * f).sum(0).double()
        active += (f > 0).sum(0)
    denominator = d_norm2.double() * squares
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    betas = {name: torch.where(denominator > TINY, value / denominator.clamp_min(TINY), nan).float()
             for name, value in numerators.items()}

    def ratio(top: torch.Tensor, bottom: torch.Tensor) -> torch.Tensor:
        return torch.where(bottom.abs() > TINY, top / torch.where(bottom.abs() > TINY, bottom, 1.0), float("nan"))

    nu_error = ratio(betas["base_error"], betas["ft_error"])
    nu_reconstruction = ratio(betas["base_reconstruction"], betas["ft_reconstruction"])
    verdicts = []
    for e, r in zip(nu_error.tolist(), nu_reconstruction.tolist()):
        if e != e or r != r:
            verdicts.append("inactive")
        else:
            shrunk, decoupled = e > threshold, r > threshold
            verdicts.append("shrinkage-and-decoupling" if shrunk and decoupled else "complete-shrinkage" if shrunk
                            else "latent-decoupling" if decoupled else "ft-specific")
    return LatentScaling(latents, betas, nu_error, nu_reconstruction, active, verdicts, float(threshold))


__all__ = ["LatentScaling", "ScalingVerdict", "latent_scaling"]
