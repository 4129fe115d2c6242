"""SAE diffing: one SAE (usually trained on the base model) read in both models.

Both models run on the same contexts; the SAE encodes each model's activations at its hook, and
every latent's firing frequency and mean activation are compared between the two. Latents whose
statistics move most are what fine-tuning changed at that point, in the base model's vocabulary of
features; their top contexts in the fine-tune (found with :mod:`mechscope.sae.dashboard`'s
``collect`` and ``summarise``) say what they respond to there. BOS (position 0) is left out of
every statistic, as the dashboards and stores do.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from tqdm.auto import tqdm

from mechscope.diff.compat import check_comparable
from mechscope.errors import ConfigError, InputTypeError
from mechscope.models.hooked_model import HookedModel
from mechscope.sae.dashboard import collect, summarise
from mechscope.sae.model import SAE
from mechscope.validate import check_choice, check_int, check_number

RankBy = Literal["mean_delta", "abs_mean_delta", "frequency_delta", "abs_frequency_delta", "log_frequency_ratio",
                 "abs_log_frequency_ratio"]
SNIPPET_TOKENS = 12  # tokens of context shown before each top activation


@dataclass(frozen=True)
class SAEDiffConfig:
    """``rank_by``: the change that orders latents (signed ones put increases first; ``abs_``
    ones rank by size either way). ``epsilon`` is added to both frequencies before the log ratio,
    so a latent that never fires in one model has a finite ratio. ``top_latents`` latents get
    ``top_contexts`` top contexts each."""

    rank_by: RankBy = "abs_mean_delta"
    top_latents: int = 10
    top_contexts: int = 5
    epsilon: float = 1e-4
    batch_contexts: int = 8

    def __post_init__(self) -> None:
        check_choice("rank_by", self.rank_by, RankBy)
        check_int("top_latents", self.top_latents, 0)
        check_int("top_contexts", self.top_contexts, 1)
        check_number("epsilon", self.epsilon, 0, strict_minimum=True)
        check_int("batch_contexts", self.batch_contexts, 1)


@dataclass
class SAEDiff:
    """Per-latent statistics [d_sae] over ``n_tokens`` tokens (BOS excluded): frequency (fraction
    of tokens where the latent is > 0) and mean activation (over all tokens, zeros included) in
    each model; ``top`` the ``top_latents`` first by ``config.rank_by``; ``contexts`` their top
    fine-tune contexts: {latent: [{context, position, token, text, ft_activation, base_activation}]}."""

    hook_name: str
    n_tokens: int
    frequency_base: torch.Tensor
    frequency_ft: torch.Tensor
    mean_base: torch.Tensor
    mean_ft: torch.Tensor
    config: SAEDiffConfig
    top: list[int] = field(default_factory=list)
    contexts: dict[int, list[dict]] = field(default_factory=dict)

    @property
    def mean_delta(self) -> torch.Tensor:
        return self.mean_ft - self.mean_base

    @property
    def frequency_delta(self) -> torch.Tensor:
        return self.frequency_ft - self.frequency_base

    @property
    def log_frequency_ratio(self) -> torch.Tensor:
        """log((f_ft + epsilon) / (f_base + epsilon)) [d_sae]."""
        eps = self.config.epsilon
        return torch.log((self.frequency_ft.double() + eps) / (self.frequency_base.double() + eps)).float()

    def score(self, by: RankBy) -> torch.Tensor:
        """[d_sae] the change ``by`` names (signed, or its absolute value for ``abs_`` names)."""
        check_choice("rank_by", by, RankBy)
        values = getattr(self, by.removeprefix("abs_"))
        return values.abs() if by.startswith("abs_") else values

    def ranking(self, by: RankBy | None = None) -> list[int]:
        """Every latent, largest change first (ties keep index order, so identical models rank
        0, 1, 2, ...)."""
        score = self.score(by or self.config.rank_by)
        return torch.sort(score, descending=True, stable=True).indices.tolist()

    def to_json(self) -> dict:
        return {"hook_name": self.hook_name, "n_tokens": self.n_tokens, "config": asdict(self.config),
                "frequency_base": self.frequency_base.tolist(), "frequency_ft": self.frequency_ft.tolist(),
                "mean_base": self.mean_base.tolist(), "mean_ft": self.mean_ft.tolist(),
                "mean_delta": self.mean_delta.tolist(), "frequency_delta": self.frequency_delta.tolist(),
                "log_frequency_ratio": self.log_frequency_ratio.tolist(), "top": self.top,
                "contexts": {str(latent): rows for latent, rows in self.contexts.items()}}


def _check_contexts(contexts) -> torch.Tensor:
    if not isinstance(contexts, torch.Tensor) or contexts.dim() != 2 or contexts.is_floating_point():
        described = (f"{contexts.dtype} {tuple(contexts.shape)}" if isinstance(contexts, torch.Tensor)
                     else type(contexts).__name__)
        raise InputTypeError(f"contexts must be integer token ids [n, pos]; got {described}")
    if contexts.shape[0] < 1 or contexts.shape[1] < 2:
        raise ConfigError(f"contexts must hold at least one context of 2+ positions (BOS is left out); got "
                          f"{tuple(contexts.shape)}")
    return contexts


@torch.no_grad()
def sae_diff(sae: SAE, base: HookedModel, ft: HookedModel, contexts: torch.Tensor, config: SAEDiffConfig | None = None,
             hook_name: str | None = None, progress: bool = False) -> SAEDiff:
    """Encode both models' activations at ``hook_name`` (default ``sae.cfg.hook_name``) on
    ``contexts`` [n, pos] with the same ``sae`` and compare every latent's statistics (see
    :class:`SAEDiff`). Refuses models that cannot be diffed and an SAE of another width."""
    if not isinstance(sae, SAE):
        raise InputTypeError(f"sae must be an SAE; got {type(sae).__name__}")
    config = config or SAEDiffConfig()
    if not isinstance(config, SAEDiffConfig):
        raise InputTypeError(f"config must be an SAEDiffConfig; got {type(config).__name__}")
    check_comparable(base, ft)
    contexts = _check_contexts(contexts)
    hook = hook_name or sae.cfg.hook_name
    if not hook:
        raise ConfigError("the SAE records no hook_name: pass hook_name= (the point it reads)")
    width = base.hook_point(hook).shape[-1]
    if width != sae.cfg.d_in:
        raise ConfigError(f"the SAE reads d_in={sae.cfg.d_in}, but {hook} has width {width}")

    def encode(x: torch.Tensor) -> torch.Tensor:
        return sae.encode(x.to(sae.W_enc.dtype)).float()

    counts = {name: torch.zeros(sae.cfg.d_sae, dtype=torch.float64) for name in ("base", "ft")}
    sums = {name: torch.zeros(sae.cfg.d_sae, dtype=torch.float64) for name in ("base", "ft")}
    n_tokens = 0
    starts = range(0, len(contexts), config.batch_contexts)
    for start in tqdm(starts, desc="SAE diff", disable=not progress):
        chunk = contexts[start:start + config.batch_contexts]
        for name, model in (("base", base), ("ft", ft)):
            _, cache = model.run_with_cache(chunk, names=[hook], device="cpu")
            latents = encode(cache[hook][:, 1:]).flatten(0, 1)  # [tokens, d_sae], BOS left out
            counts[name] += (latents > 0).sum(0).double()
            sums[name] += latents.sum(0).double()
        n_tokens += chunk.shape[0] * (chunk.shape[1] - 1)
    result = SAEDiff(hook, n_tokens, (counts["base"] / n_tokens).float(), (counts["ft"] / n_tokens).float(),
                     (sums["base"] / n_tokens).float(), (sums["ft"] / n_tokens).float(), config)
    result.top = result.ranking()[:config.top_latents]
    if result.top:
        result.contexts = _top_contexts(sae, base, ft, contexts, hook, result.top, config, encode, progress)
    return result


def _top_contexts(sae: SAE, base: HookedModel, ft: HookedModel, contexts: torch.Tensor, hook: str, latents: list[int],
                  config: SAEDiffConfig, encode, progress: bool) -> dict[int, list[dict]]:
    """The top fine-tune contexts of ``latents``, with the base model's activation at the same place."""
    index = torch.tensor(latents)
    values = {name: collect(model, contexts, hook, lambda x: encode(x)[..., index], config.batch_contexts, progress)
              for name, model in (("ft", ft), ("base", base))}  # [n, pos, len(latents)] each
    features = summarise(values["ft"], [f"latent {j}" for j in latents], None, k=config.top_contexts)
    rows: dict[int, list[dict]] = {}
    for column, (latent, feature) in enumerate(zip(latents, features)):
        rows[latent] = []
        for context, position in feature.top:
            snippet = contexts[context, max(1, position - SNIPPET_TOKENS):position + 1].tolist()
            ft_value, base_value = (float(values[name][context, position, column]) for name in ("ft", "base"))
            rows[latent].append({"context": context, "position": position,
                                 "token": ft.tokenizer.decode([int(contexts[context, position])]),
                                 "text": ft.tokenizer.decode(snippet), "ft_activation": ft_value,
                                 "base_activation": base_value})
    return rows


__all__ = ["RankBy", "SAEDiff", "SAEDiffConfig", "sae_diff"]
