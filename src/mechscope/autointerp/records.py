"""Records of a unit: the windows an explainer reads and a scorer judges, with their activations.

A unit is anything with an activation per token: a dictionary latent, a neuron, a direction's
projection, a planted unit. From its activations over token contexts [n_contexts, pos], the
contexts are cut into windows of ``window`` tokens (BOS dropped, the tail that does not fill a
window too); a window's activation is its maximum. The records hold:

- ``top``: the windows of highest activation;
- ``quantile k/n``: windows drawn evenly from ``n_quantiles`` bins of the activating windows'
  maxima, so an explanation is judged on weak activations too, not only on the strongest;
- ``random``: silent windows drawn at random (the plain negatives);
- ``same tokens``: silent windows that hold one of the tokens the unit fires on most: a contrast
  an explanation cannot pass by naming the token alone.

Draws are deterministic for ``seed``. A kind with fewer windows than asked holds what there is,
and :attr:`UnitRecords.counts` says how many. A unit that never fires raises
:class:`DeadUnitError`. Saved as safetensors (token ids, activations) beside a JSON manifest.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mechscope.errors import FileFormatError, MechscopeError, MissingFileError
from mechscope.files import atomic_file, atomic_text
from mechscope.models.hooked_model import HookedModel
from mechscope.validate import check_int, check_number

MANIFEST, TENSORS = "records.json", "records.safetensors"
FORMAT = "mechscope.autointerp.records/1"


class DeadUnitError(MechscopeError):
    """The unit never fires on the windows given: there is nothing to explain."""


@dataclass(frozen=True)
class RecordsConfig:
    """``window`` tokens per window; ``n_top`` top windows; ``n_quantiles`` bins of
    ``per_quantile`` windows each; ``n_random`` and ``n_same_tokens`` negatives (see the module
    docstring); ``threshold``: the unit fires where its activation exceeds it."""

    window: int = 32
    n_top: int = 10
    n_quantiles: int = 4
    per_quantile: int = 5
    n_random: int = 20
    n_same_tokens: int = 10
    threshold: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("window", self.window, 2)
        for name in ("n_top", "n_quantiles", "per_quantile", "n_random", "n_same_tokens"):
            check_int(name, getattr(self, name), 0)
        check_number("threshold", self.threshold)
        check_int("seed", self.seed, None)


@dataclass
class UnitRecords:
    """One unit's windows: ``tokens`` [n, window] token ids, ``activations`` [n, window], the
    ``kinds`` of each window (see the module docstring), the unit's ``density`` (share of
    tokens above the threshold) over all windows cut, and the ``config`` it was drawn with."""

    unit: str
    tokens: torch.Tensor
    activations: torch.Tensor
    kinds: list[str]
    density: float
    config: RecordsConfig

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(self.kinds))

    def of_kind(self, prefix: str) -> list[int]:
        """Indices of the windows whose kind starts with ``prefix`` ("top", "quantile", ...)."""
        return [i for i, kind in enumerate(self.kinds) if kind.startswith(prefix)]

    def texts(self, tokenizer) -> list[list[str]]:
        """Each window as its token texts."""
        return [[tokenizer.decode([int(t)]) for t in row] for row in self.tokens]

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"tokens": self.tokens.contiguous(), "activations": self.activations.float().contiguous()}
        atomic_file(folder / TENSORS, lambda path: save_file(tensors, str(path)))
        atomic_text(folder / MANIFEST, json.dumps({"format": FORMAT, "unit": self.unit, "kinds": self.kinds,
                                                   "density": self.density, "config": asdict(self.config)}))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> UnitRecords:
        folder = Path(folder)
        if not (folder / MANIFEST).exists() or not (folder / TENSORS).exists():
            raise MissingFileError(f"{folder} holds no unit records ({MANIFEST} and {TENSORS})")
        manifest = json.loads((folder / MANIFEST).read_text())
        if manifest.get("format") != FORMAT:
            raise FileFormatError(f"{folder / MANIFEST} is not {FORMAT} records (format {manifest.get('format')!r})")
        tensors = load_file(str(folder / TENSORS))
        if len(manifest["kinds"]) != len(tensors["tokens"]):
            raise FileFormatError(f"{folder}: {len(manifest['kinds'])} kinds for {len(tensors['tokens'])} windows")
        return cls(manifest["unit"], tensors["tokens"], tensors["activations"], manifest["kinds"],
                   manifest["density"], RecordsConfig(**manifest["config"]))


def _draw(pool: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Up to ``k`` of the indices ``pool`` at random, in increasing order."""
    return pool[torch.randperm(len(pool), generator=generator)[:k]].sort().values


def unit_records(unit: str, contexts: torch.Tensor, activations: torch.Tensor,
                 config: RecordsConfig | None = None) -> UnitRecords:
    """The records of one unit (see the module docstring) from token ``contexts`` [n, pos]
    (position 0 BOS) and the unit's ``activations`` [n, pos]."""
    config = config or RecordsConfig()
    if contexts.shape != activations.shape or contexts.dim() != 2:
        raise MechscopeError(f"contexts {tuple(contexts.shape)} and activations {tuple(activations.shape)} must be "
                             "the same [n_contexts, pos]")
    per_context = (contexts.shape[1] - 1) // config.window
    if per_context == 0:
        raise MechscopeError(f"contexts of {contexts.shape[1]} tokens hold no window of {config.window} after BOS")
    stop = 1 + per_context * config.window
    tokens = contexts[:, 1:stop].reshape(-1, config.window)  # [windows, window]
    values = activations[:, 1:stop].float().reshape(-1, config.window)
    fires = values > config.threshold
    peak = values.max(-1).values
    active = fires.any(-1)
    if not active.any():
        raise DeadUnitError(f"unit {unit!r} never fires (activation > {config.threshold}) in {len(tokens)} windows: "
                            "it is dead there, nothing to explain")
    generator = torch.Generator().manual_seed(config.seed)
    chosen: list[tuple[int, str]] = []
    order = torch.argsort(peak, descending=True)
    top = order[:min(config.n_top, int(active.sum()))]
    chosen += [(int(i), "top") for i in top]
    firing = active.nonzero()[:, 0]
    firing = firing[~torch.isin(firing, top)]  # the quantile bins draw from the rest
    if config.n_quantiles and len(firing):
        edges = torch.quantile(peak[firing], torch.linspace(0, 1, config.n_quantiles + 1))
        for k in range(config.n_quantiles):
            low, high = edges[k], edges[k + 1]
            inside = firing[(peak[firing] >= low) & ((peak[firing] < high) if k < config.n_quantiles - 1 else
                                                     (peak[firing] <= high))]
            chosen += [(int(i), f"quantile {k + 1}/{config.n_quantiles}")
                       for i in _draw(inside, config.per_quantile, generator)]
    silent = (~active).nonzero()[:, 0]
    firing_tokens = Counter(tokens[fires].tolist())
    common = torch.tensor([t for t, _ in firing_tokens.most_common(10)])
    holds_common = torch.isin(tokens[silent], common).any(-1) if len(silent) else torch.zeros(0, dtype=torch.bool)
    same = _draw(silent[holds_common], config.n_same_tokens, generator)
    chosen += [(int(i), "same tokens") for i in same]
    rest = silent[~torch.isin(silent, same)]
    chosen += [(int(i), "random") for i in _draw(rest, config.n_random, generator)]
    index = torch.tensor([i for i, _ in chosen], dtype=torch.long)
    return UnitRecords(unit, tokens[index].clone(), values[index].clone(), [kind for _, kind in chosen],
                       float(fires.float().mean()), config)


def harvest_records(model: HookedModel, contexts: torch.Tensor, hook_name: str,
                    activation_fn: Callable[[torch.Tensor], torch.Tensor], units: Sequence[str],
                    config: RecordsConfig | None = None, progress: bool = True
                    ) -> tuple[dict[str, UnitRecords], list[str]]:
    """({unit: records}, the dead units) of the units ``activation_fn`` computes from the hook's
    activations ([batch, pos, d] -> [batch, pos, len(units)], e.g. an SAE's encoder restricted to
    some latents), over token ``contexts`` [n, pos], read as the feature dashboards read them
    (:func:`mechscope.sae.dashboard.collect`: BOS set to 0). A unit that never fires is listed
    as dead, not given records."""
    from mechscope.sae.dashboard import collect

    values = collect(model, contexts, hook_name, activation_fn, progress=progress)  # [n, pos, units]
    if values.shape[-1] != len(units):
        raise MechscopeError(f"activation_fn gave {values.shape[-1]} units for {len(units)} names")
    records, dead = {}, []
    for index, unit in enumerate(units):
        try:
            records[unit] = unit_records(unit, contexts, values[..., index], config)
        except DeadUnitError:
            dead.append(unit)
    return records, dead


__all__ = ["DeadUnitError", "RecordsConfig", "UnitRecords", "harvest_records", "unit_records"]
