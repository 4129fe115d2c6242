"""How good a dictionary is on a model's activations: reconstruction, sparsity, and what
splicing it in does to the model's predictions."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from mechscope.models.hooked_model import HookedModel
from mechscope.sae.model import SAE
from mechscope.sae.splice import splice_hooks


@dataclass(frozen=True)
class SAEEvaluation:
    """l0: mean active latents per token; fvu: fraction of variance unexplained; cosine: mean
    cosine of reconstruction and input; ce_*: next-token cross-entropy of the clean run, with
    the dictionary spliced in, and with the activation zero-ablated; ce_recovered = (zero -
    spliced) / (zero - clean) (1 = as good as the model, 0 = as bad as zero-ablation);
    kl: mean KL(clean || spliced) per token; dead / dense: fractions of latents that never fire
    / fire on more than ``dense_threshold`` of tokens; log10_density: per latent, log10 of its
    firing frequency (-inf where it never fires), for a histogram. fvu_typical: the FVU over the
    tokens :func:`typical_tokens` keeps, ``outlier_tokens`` being how many it leaves out (a few
    massive-activation tokens can carry most of the variance and make the plain FVU look small)."""

    l0: float
    fvu: float
    fvu_typical: float
    outlier_tokens: int
    cosine: float
    ce_clean: float
    ce_spliced: float
    ce_zero: float
    ce_recovered: float
    kl: float
    dead: float
    dense: float
    tokens: int
    log10_density: list[float]

    def to_json(self) -> dict:
        data = asdict(self)
        data["log10_density"] = [x if x != float("-inf") else None for x in self.log10_density]
        return data


def fraction_of_variance_unexplained(reconstruction: torch.Tensor, target: torch.Tensor) -> float:
    """FVU of ``reconstruction`` against ``target`` (both [tokens, d]): summed squared error over
    the summed squared deviation from the target's mean (0 = perfect, 1 = as good as the mean)."""
    return float((reconstruction - target).pow(2).sum() / (target - target.mean(0)).pow(2).sum().clamp_min(1e-12))


def typical_tokens(target: torch.Tensor, norm_ratio: float = 10.0) -> torch.Tensor:
    """[tokens] bool: tokens whose norm is at most ``norm_ratio`` times the median norm of
    ``target`` [tokens, d]; the rest are outliers such as SmolLM2's massive activations."""
    norms = target.norm(dim=-1)
    return norms <= norm_ratio * norms.median()


def _next_token_ce(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting tokens[:, 1:] from logits[:, :-1]."""
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten())


def zero_after(skip_first: int):
    """A hook that zeroes its activation [batch, pos, ...] past the first ``skip_first`` positions."""
    def zero(activation: torch.Tensor, hook) -> torch.Tensor:
        ablated = activation.clone()
        ablated[:, skip_first:] = 0
        return ablated

    return zero


def output_scores(tokens: torch.Tensor, clean_logits: torch.Tensor, spliced_logits: torch.Tensor,
                  zero_logits: torch.Tensor) -> tuple[float, float, float, float, float]:
    """(ce_clean, ce_spliced, ce_zero, ce_recovered, kl) of a splice: next-token cross-entropy
    of the clean, spliced and zero-ablated runs on ``tokens`` [batch, pos]; CE recovered =
    (ce_zero - ce_spliced) / (ce_zero - ce_clean) (NaN when zeroing changes nothing); the mean
    KL(clean || spliced) per token."""
    ce_clean, ce_spliced, ce_zero = (float(_next_token_ce(logits, tokens)) for logits in
                                     (clean_logits, spliced_logits, zero_logits))
    gap = ce_zero - ce_clean
    clean_logp = clean_logits.float().log_softmax(-1)
    kl = float((clean_logp.exp() * (clean_logp - spliced_logits.float().log_softmax(-1))).sum(-1).mean())
    return ce_clean, ce_spliced, ce_zero, float("nan") if gap == 0 else (ce_zero - ce_spliced) / gap, kl


@torch.no_grad()
def evaluate_sae(model: HookedModel, sae: SAE, tokens: torch.Tensor, hook_name: str | None = None,
                 dense_threshold: float = 0.1, skip_first: int = 1) -> SAEEvaluation:
    """Evaluate ``sae`` at ``hook_name`` (default: its config's) on ``tokens`` [batch, pos].
    The first ``skip_first`` positions (BOS, whose activations are outliers that the harvest
    also drops) are neither scored nor spliced."""
    cfg = sae.cfg
    read_at = hook_name or cfg.hook_name
    write_at = cfg.hook_name_out if cfg.is_transcoder else read_at
    names = list(dict.fromkeys([read_at, write_at]))
    clean_logits, cache = model.run_with_cache(tokens, names=names)
    x = cache[read_at][:, skip_first:].to(sae.W_enc.dtype).flatten(0, -2)
    target = cache[write_at][:, skip_first:].to(sae.W_enc.dtype).flatten(0, -2)
    latents = sae.encode(x)
    out = sae.decode(latents, x)
    fvu = fraction_of_variance_unexplained(out, target)
    typical = typical_tokens(target)
    fvu_typical = fraction_of_variance_unexplained(out[typical], target[typical])
    cosine = float(torch.nn.functional.cosine_similarity(out, target, dim=-1).mean())
    fired = (latents > 0)
    frequency = fired.float().mean(0)
    spliced_logits = model.run_with_hooks(tokens, fwd_hooks=splice_hooks(sae, read_at, skip_first=skip_first))

    zero_logits = model.run_with_hooks(tokens, fwd_hooks=[(write_at, zero_after(skip_first))])
    ce_clean, ce_spliced, ce_zero, ce_recovered, kl = output_scores(tokens, clean_logits, spliced_logits, zero_logits)
    return SAEEvaluation(
        l0=float(fired.sum(-1).float().mean()), fvu=fvu, fvu_typical=fvu_typical,
        outlier_tokens=int((~typical).sum()), cosine=cosine, ce_clean=ce_clean, ce_spliced=ce_spliced,
        ce_zero=ce_zero, ce_recovered=ce_recovered, kl=kl,
        dead=float((frequency == 0).float().mean()), dense=float((frequency > dense_threshold).float().mean()),
        tokens=x.shape[0], log10_density=frequency.log10().tolist())
