"""The sparse dictionary: one ``SAE`` module for every architecture and for transcoders.

Shapes: x [..., d_in] -> latents [..., d_sae] -> reconstruction [..., d_out] (d_out = d_in for
an SAE). Weights follow SAELens' layout: W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae,
d_out], b_dec [d_out]; JumpReLU and BatchTopK also have a threshold [d_sae].
"""

from __future__ import annotations

import torch
from torch import nn

from mechscope.distributed import Ranks, global_kth_largest, global_mean
from mechscope.errors import ConfigError, MechscopeError
from mechscope.sae.config import SAEConfig
from mechscope.sae.sparse import gathered_pre_activations, sparse_decode, top_k_sparse

# AuxK for TopK runs densely over the dead latents' columns while there are at most this many
# times aux_k of them, and through the sparse gathers beyond (see SAE._aux_k_loss).
DENSE_AUX_FACTOR = 8


class _JumpReLU(torch.autograd.Function):
    """pre * (pre > threshold); the threshold's gradient uses a rectangle-kernel
    straight-through estimate of width ``bandwidth`` (Rajamanoharan et al. 2024)."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        near = ((pre - threshold).abs() < ctx.bandwidth / 2).to(grad.dtype)
        grad_threshold = -(threshold / ctx.bandwidth) * near * grad
        return grad * (pre > threshold), grad_threshold.reshape(-1, threshold.shape[-1]).sum(0), None


class _Step(torch.autograd.Function):
    """Heaviside(pre - threshold), with the same straight-through estimate for the threshold."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        near = ((pre - threshold).abs() < ctx.bandwidth / 2).to(grad.dtype)
        grad_threshold = -(1.0 / ctx.bandwidth) * near * grad
        return torch.zeros_like(pre), grad_threshold.reshape(-1, threshold.shape[-1]).sum(0), None


class SAE(nn.Module):
    """``encode``, ``decode``, ``forward``; ``loss`` for training. Build with a config and a
    seed (initialisation is deterministic): decoder rows random unit vectors, encoder their
    transpose (an SAE) or scaled random (a transcoder), biases zero."""

    def __init__(self, cfg: SAEConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        generator = torch.Generator().manual_seed(seed)
        d_out = cfg.output_dim
        decoder = _zero_blocks(torch.randn(cfg.d_sae, d_out, generator=generator), cfg)
        decoder = decoder / decoder.norm(dim=1, keepdim=True)
        if cfg.is_transcoder:
            encoder = torch.randn(cfg.d_in, cfg.d_sae, generator=generator) / cfg.d_in**0.5
        else:
            encoder = decoder.T.clone()
        self.W_enc = nn.Parameter(encoder)
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.W_dec = nn.Parameter(decoder)
        self.b_dec = nn.Parameter(torch.zeros(d_out))
        if cfg.architecture == "jumprelu":
            # Trained directly (kept positive after each step), stored under SAELens' name.
            self.threshold = nn.Parameter(torch.full((cfg.d_sae,), cfg.jumprelu_init_threshold))
        # BatchTopK's inference threshold: a running estimate of the smallest kept activation.
        self.register_buffer("batch_threshold", torch.zeros(()))
        if cfg.k_groups:  # each budget group's own threshold (absent otherwise: older files stay loadable)
            self.register_buffer("group_thresholds", torch.zeros(len(cfg.k_groups)))
        self.W_skip = nn.Parameter(torch.zeros(cfg.d_in, d_out)) if cfg.skip_connection else None

    # ------------------------------------------------------------------ inference
    def activation_threshold(self) -> torch.Tensor:
        """[d_sae] the activation threshold (JumpReLU: learned per latent; BatchTopK: one, and
        one per budget group of ``cfg.k_groups``)."""
        if self.cfg.architecture == "jumprelu":
            return self.threshold
        threshold = self.batch_threshold.expand(self.cfg.d_sae)
        if self.cfg.k_groups:
            threshold = threshold.clone()
            for (first, end, _), value in zip(self.cfg.k_groups, self.group_thresholds):
                threshold[first:end] = value
        return threshold

    def _check_width(self, tensor: torch.Tensor, width: int, what: str) -> None:
        # A clear message instead of a matmul error (or, for a width of 1, silent broadcasting).
        if tensor.dim() < 1 or tensor.shape[-1] != width:
            raise ConfigError(f"{what} must be [..., {width}] for this dictionary ({self.cfg.architecture}, d_in="
                              f"{self.cfg.d_in}, d_sae={self.cfg.d_sae}); got shape {tuple(tensor.shape)}")

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """[..., d_sae] encoder pre-activations (an SAE subtracts b_dec first, as SAELens does)."""
        self._check_width(x, self.cfg.d_in, "the input x")
        centred = x if self.cfg.is_transcoder else x - self.b_dec
        return centred @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[..., d_in] -> latents [..., d_sae] (inference: BatchTopK uses its learned threshold
        once it has one, per-row top-k before that)."""
        pre = self.pre_activations(x)
        architecture = self.cfg.architecture
        if architecture == "relu":
            return torch.relu(pre)
        if architecture == "jumprelu":
            return pre * (pre > self.threshold)
        if architecture in ("batchtopk", "matryoshka") and float(self.batch_threshold) > 0:
            return pre * (pre > self.activation_threshold())
        positive = torch.relu(pre)
        mask = torch.zeros_like(positive, dtype=torch.bool)
        for columns, k, _ in self._budgets():
            part = positive[..., columns]
            mask[..., columns] = torch.zeros_like(part).scatter(-1, part.topk(k, dim=-1).indices, 1.0) > 0
        return positive * mask

    def _budgets(self) -> list[tuple[slice | torch.Tensor, int, int | None]]:
        """(latent columns, k, group index or None for the shared budget) of every BatchTopK
        budget: the latents outside ``cfg.k_groups`` share ``cfg.k``."""
        if not self.cfg.k_groups:
            return [(slice(None), self.cfg.k, None)]
        shared = torch.tensor(self.cfg.shared_budget_latents(), dtype=torch.long)
        budgets: list[tuple[slice | torch.Tensor, int, int | None]] = [(shared, self.cfg.k, None)]
        budgets += [(slice(first, end), k, index) for index, (first, end, k) in enumerate(self.cfg.k_groups)]
        return budgets

    def decode(self, latents: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """latents [..., d_sae] -> [..., d_out]; a transcoder with a skip connection needs x."""
        self._check_width(latents, self.cfg.d_sae, "latents")
        out = latents @ self.W_dec + self.b_dec
        if self.W_skip is not None:
            if x is None:
                raise MechscopeError("this transcoder has a skip connection: decode(latents, x) needs its input x")
            self._check_width(x, self.cfg.d_in, "the input x")
            out = out + x @ self.W_skip
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), x)

    # ------------------------------------------------------------------ training
    def train_latents(self, x: torch.Tensor, ranks: Ranks | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents, pre-activations) of a training batch x [batch, d_in]; BatchTopK keeps the
        k x batch largest activations of the whole batch and updates its threshold. With
        ``ranks`` (data-parallel training, x this rank's share of an equal split), "the whole
        batch" is every rank's rows together: the cut-off is the (k x global batch)-th largest
        activation over all ranks, so each rank keeps exactly what one process would."""
        pre = self.pre_activations(x)
        architecture = self.cfg.architecture
        if architecture == "relu":
            return torch.relu(pre), pre
        if architecture == "jumprelu":
            return _JumpReLU.apply(pre, self.threshold, self.cfg.jumprelu_bandwidth), pre
        if architecture == "topk":
            return _top_k_rows(torch.relu(pre), self.cfg.k), pre
        positive = torch.relu(pre)
        mask = torch.zeros_like(positive, dtype=torch.bool)
        split = ranks is not None and ranks.distributed
        for columns, k, group in self._budgets():
            part = positive[:, columns]
            flat = part.flatten()
            if split:
                cut = global_kth_largest(ranks, flat.detach(), k * positive.shape[0] * ranks.world_size)
                keep = flat >= cut  # ties at a positive cut have probability zero; zeros add nothing
            else:
                keep = torch.zeros_like(flat, dtype=torch.bool)
                keep[flat.topk(min(flat.numel(), k * positive.shape[0])).indices] = True
            mask[:, columns] = keep.view_as(part)
            with torch.no_grad():
                if split and float(cut) > 0:
                    smallest = cut  # the whole batch's smallest kept activation is the cut itself
                else:
                    kept = flat[keep & (flat > 0)]
                    smallest = kept.min() if kept.numel() else flat.new_tensor(float("inf"))
                    if split:  # fewer positives than the budget: the smallest of them over every rank
                        smallest = ranks.all_reduce(smallest, op="min", what="the BatchTopK threshold")
                if bool(torch.isfinite(smallest)):
                    threshold = self.batch_threshold if group is None else self.group_thresholds[group]
                    threshold.copy_(smallest if float(threshold) == 0 else 0.99 * threshold + 0.01 * smallest)
        return positive * mask, pre

    def loss(self, x: torch.Tensor, target: torch.Tensor, dead: torch.Tensor | None = None,
             aux_k: int = 0, aux_coefficient: float = 1 / 32,
             ranks: Ranks | None = None) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """(total loss, its parts, fired [d_sae] bool) for x [batch, d_in] and target [batch,
        d_out]. Reconstruction is the squared error summed over dimensions, mean over the batch;
        ``parts`` also holds the batch's mean L0. ``dead`` [d_sae] bool marks latents to revive
        with the AuxK loss (TopK family). TopK trains through the sparse path (sae.sparse).
        ``ranks``: x is this rank's equal share of a data-parallel batch; BatchTopK's cut-off and
        AuxK's normaliser then come from the global batch, so the gradients averaged over ranks
        equal one process's on the whole batch (``fired`` stays this rank's: the trainer
        reduces it)."""
        cfg = self.cfg
        self._check_width(x, cfg.d_in, "the input x")
        self._check_width(target, cfg.output_dim, "the target")
        skip = 0 if self.W_skip is None else x @ self.W_skip
        if cfg.architecture == "topk":
            centred = x if cfg.is_transcoder else x - self.b_dec
            values, indices, pre = top_k_sparse(centred, self.W_enc, self.b_enc, cfg.k)
            out = sparse_decode(values, indices, self.W_dec) + self.b_dec + skip
            active = values > 0
            fired = torch.zeros(cfg.d_sae, dtype=torch.bool, device=x.device)
            fired[indices[active]] = True
            l0 = active.sum(-1).float().mean()
        else:
            latents, pre = self.train_latents(x, ranks)
            out = latents @ self.W_dec + self.b_dec + skip
            fired, l0 = (latents > 0).any(0), (latents > 0).sum(-1).float().mean()
        if cfg.architecture == "matryoshka":
            errors = [((latents[:, :width] @ self.W_dec[:width] + self.b_dec + skip - target) ** 2).sum(-1).mean()
                      for width in cfg.matryoshka_widths]
            reconstruction = torch.stack(errors).mean()
        else:
            reconstruction = ((out - target) ** 2).sum(-1).mean()
        parts = {"mse": float(reconstruction.detach()), "l0": float(l0)}
        total = reconstruction
        if cfg.architecture == "relu":
            sparsity = cfg.l1_coefficient * (latents * self.W_dec.norm(dim=1)).sum(-1).mean()
            parts["l1"] = float(sparsity.detach())
            total = total + sparsity
        elif cfg.architecture == "jumprelu":
            penalty = _Step.apply(pre, self.threshold, cfg.jumprelu_bandwidth).sum(-1).mean()
            parts["l0_penalty"] = float(cfg.l0_coefficient * penalty.detach())
            total = total + cfg.l0_coefficient * penalty
        elif dead is not None and aux_k > 0 and bool(dead.any()):
            aux = self._aux_k_loss(x, pre, (target - out).detach(), dead, min(aux_k, int(dead.sum())), ranks)
            parts["aux"] = float(aux.detach())
            total = total + aux_coefficient * aux
        return total, parts, fired

    def _aux_k_loss(self, x: torch.Tensor, pre: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor,
                    aux_k: int, ranks: Ranks | None = None) -> torch.Tensor:
        """AuxK (Gao et al. 2024): the top ``aux_k`` dead latents of each row must explain the
        residual [batch, d_out] the live ones missed; normalised by the residual's size (over
        the global batch when ``ranks`` splits it)."""
        if self.cfg.architecture == "topk":  # pre is detached there: recompute what needs gradients
            centred = x if self.cfg.is_transcoder else x - self.b_dec
            dead_latents = dead.nonzero().flatten()
            if len(dead_latents) <= DENSE_AUX_FACTOR * aux_k:
                # Few dead latents: dense products over just their columns are cheaper than
                # gathering aux_k decoder rows per token (which is memory-bound).
                with torch.no_grad():
                    chosen = torch.relu(pre[:, dead_latents]).topk(aux_k, dim=-1).indices
                    keep = torch.zeros(len(x), len(dead_latents), dtype=torch.bool, device=x.device)
                    keep.scatter_(1, chosen, True)
                dead_pre = centred @ self.W_enc[:, dead_latents] + self.b_enc[dead_latents]
                explained = (torch.relu(dead_pre) * keep) @ self.W_dec[dead_latents]
            else:
                with torch.no_grad():
                    indices = torch.relu(pre).masked_fill(~dead, 0.0).topk(aux_k, dim=-1).indices
                values = torch.relu(gathered_pre_activations(centred, self.W_enc, self.b_enc, pre, indices))
                explained = sparse_decode(values * dead[indices], indices, self.W_dec)
        else:
            explained = _top_k_rows(torch.relu(pre).masked_fill(~dead, 0.0), aux_k) @ self.W_dec
        size = residual.pow(2).sum(-1)
        normaliser = global_mean(ranks, size) if ranks is not None else size.mean()
        return ((explained - residual) ** 2).sum(-1).mean() / normaliser.clamp_min(1e-12)

    @torch.no_grad()
    def after_step(self) -> None:
        """The config's zero decoder blocks back at zero; unit-norm decoder rows (every
        architecture but ReLU, whose L1 is norm-weighted); JumpReLU thresholds stay positive."""
        _zero_blocks(self.W_dec, self.cfg)
        if self.cfg.architecture != "relu":
            self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))
        if self.cfg.architecture == "jumprelu":
            self.threshold.clamp_(min=1e-6)


def _zero_blocks(decoder: torch.Tensor, cfg: SAEConfig) -> torch.Tensor:
    """``decoder`` [d_sae, d_out] with ``cfg.zero_decoder_blocks`` set to zero (in place)."""
    for first, end, first_column, end_column in cfg.zero_decoder_blocks:
        decoder[first:end, first_column:end_column] = 0
    return decoder


def _top_k_rows(values: torch.Tensor, k: int) -> torch.Tensor:
    """Keep each row's k largest entries of non-negative ``values``, zero the rest."""
    top = values.topk(k, dim=-1)
    return torch.zeros_like(values).scatter(-1, top.indices, top.values)
