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
  an explanation cannot pass by naming the token alone;
- ``neighbours``: silent windows (not already ``same tokens``) whose text embedding is nearest
  (cosine) to the mean embedding of the unit's ``top`` windows (its strongest window when
  ``n_top`` is 0), most similar first: a contrast an explanation cannot pass by naming the
  topic alone.

Neighbours need every window's embedding: ``window_embeddings`` given to :func:`unit_records`
(:func:`window_texts_embeddings` computes them once for all units of the same contexts), or an
``embedder`` given to :func:`harvest_records`. Without them no neighbours are drawn, whatever
``n_neighbours`` says, and the records hold no ``neighbours`` kind (:attr:`UnitRecords.counts`
lacks it) rather than pretending: their other kinds are then exactly as with ``n_neighbours=0``.

Draws are deterministic for ``seed``; the neighbours are no draw (ties go to the earlier window)
and ``random`` draws from the silent windows left after them. A kind with fewer windows than
asked holds what there is, and :attr:`UnitRecords.counts` says how many. A unit that never
fires raises :class:`DeadUnitError`. Saved as safetensors (token ids, activations) beside a JSON
manifest; a manifest written before ``n_neighbours`` existed loads with its default (such
records hold no neighbours, as records drawn without embeddings).
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
from mechscope.validate import check_finite, check_int, check_number

MANIFEST, TENSORS = "records.json", "records.safetensors"
FORMAT = "mechscope.autointerp.records/1"


class DeadUnitError(MechscopeError):
    """The unit never fires on the windows given: there is nothing to explain."""


@dataclass(frozen=True)
class RecordsConfig:
    """``window`` tokens per window; ``n_top`` top windows; ``n_quantiles`` bins of
    ``per_quantile`` windows each; ``n_random``, ``n_same_tokens`` and ``n_neighbours`` negatives
    (see the module docstring; neighbours only where window embeddings are given);
    ``threshold``: the unit fires where its activation exceeds it."""

    window: int = 32
    n_top: int = 10
    n_quantiles: int = 4
    per_quantile: int = 5
    n_random: int = 20
    n_same_tokens: int = 10
    n_neighbours: int = 10
    threshold: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("window", self.window, 2)
        for name in ("n_top", "n_quantiles", "per_quantile", "n_random", "n_same_tokens", "n_neighbours"):
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


def _stop(contexts: torch.Tensor, window: int) -> int:
    """The end of the last whole window of ``contexts`` [n, pos] after BOS: windows are cut from
    ``contexts[:, 1:stop]``, in order, context by context."""
    per_context = (contexts.shape[1] - 1) // window
    if per_context == 0:
        raise MechscopeError(f"contexts of {contexts.shape[1]} tokens hold no window of {window} after BOS")
    return 1 + per_context * window


def cut_windows(contexts: torch.Tensor, window: int) -> torch.Tensor:
    """The windows of token ``contexts`` [n, pos] (position 0 BOS) as :func:`unit_records` cuts
    them: [n_windows, window], context by context, the tail that does not fill a window dropped."""
    if contexts.dim() != 2:
        raise MechscopeError(f"contexts must be [n_contexts, pos], got {tuple(contexts.shape)}")
    return contexts[:, 1:_stop(contexts, window)].reshape(-1, window)


def window_texts_embeddings(contexts: torch.Tensor, window: int, tokenizer, embedder,
                            progress: bool = False) -> torch.Tensor:
    """[n_windows, d] embeddings of every window of token ``contexts`` [n, pos], in the order
    :func:`unit_records` cuts them (:func:`cut_windows`): each window decoded to text by
    ``tokenizer`` (special tokens kept, as the model read them) and embedded by ``embedder``
    (anything with ``embed(texts, progress=...) -> [n, d]``, e.g. a
    :class:`~mechscope.autointerp.embedder.SentenceEmbedder`). Computed once, it serves every
    unit read from the same contexts (``unit_records(..., window_embeddings=...)``)."""
    texts = tokenizer.batch_decode(cut_windows(contexts, window).tolist())
    embeddings = embedder.embed(texts, progress=progress)
    if embeddings.dim() != 2 or len(embeddings) != len(texts):
        raise MechscopeError(f"the embedder gave {tuple(embeddings.shape)} for {len(texts)} windows; "
                             f"expected [{len(texts)}, d]")
    return embeddings


def _neighbours(embeddings: torch.Tensor, top: torch.Tensor, candidates: torch.Tensor, k: int
                ) -> torch.Tensor:
    """The ``k`` window indices of ``candidates`` (given in increasing order) whose rows of
    ``embeddings`` [n_windows, d] have the highest cosine with the mean of the ``top`` rows, most
    similar first (ties: the lower index)."""
    if k == 0 or len(candidates) == 0:
        return candidates[:0]
    unit = torch.nn.functional.normalize(embeddings.float(), dim=-1)
    centre = torch.nn.functional.normalize(unit[top].mean(0), dim=0)  # [d]
    similarity = unit[candidates] @ centre  # [len(candidates)]
    # A stable sort over candidates in increasing index, so equal similarities keep index order.
    order = torch.sort(similarity, descending=True, stable=True).indices
    return candidates[order[:k]]


def unit_records(unit: str, contexts: torch.Tensor, activations: torch.Tensor,
                 config: RecordsConfig | None = None, *, window_embeddings: torch.Tensor | None = None
                 ) -> UnitRecords:
    """The records of one unit (see the module docstring) from token ``contexts`` [n, pos]
    (position 0 BOS) and the unit's ``activations`` [n, pos]. ``window_embeddings``
    [n_windows, d] (one row per window as :func:`cut_windows` cuts them, e.g. from
    :func:`window_texts_embeddings`; compared by cosine, so rows need not be unit length) lets it
    draw the ``neighbours`` negatives; without it there are none."""
    config = config or RecordsConfig()
    if contexts.shape != activations.shape or contexts.dim() != 2:
        raise MechscopeError(f"contexts {tuple(contexts.shape)} and activations {tuple(activations.shape)} must be "
                             "the same [n_contexts, pos]")
    stop = _stop(contexts, config.window)
    tokens = contexts[:, 1:stop].reshape(-1, config.window)  # [windows, window]
    if window_embeddings is not None:
        if window_embeddings.dim() != 2 or len(window_embeddings) != len(tokens):
            raise MechscopeError(f"window_embeddings {tuple(window_embeddings.shape)} must be [n_windows, d] "
                                 f"with one row per window cut: {len(tokens)} windows of {config.window} "
                                 "tokens here (window_texts_embeddings with the same contexts and window "
                                 "gives them)")
        check_finite("window_embeddings", window_embeddings)
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
    if window_embeddings is not None:
        # The centre is the top windows' mean (the strongest window alone when n_top is 0).
        centre = top if len(top) else order[:1]
        near = _neighbours(window_embeddings, centre, rest, config.n_neighbours)
        chosen += [(int(i), "neighbours") for i in near]
        rest = rest[~torch.isin(rest, near)]
    chosen += [(int(i), "random") for i in _draw(rest, config.n_random, generator)]
    index = torch.tensor([i for i, _ in chosen], dtype=torch.long)
    return UnitRecords(unit, tokens[index].clone(), values[index].clone(), [kind for _, kind in chosen],
                       float(fires.float().mean()), config)


def harvest_records(model: HookedModel, contexts: torch.Tensor, hook_name: str,
                    activation_fn: Callable[[torch.Tensor], torch.Tensor], units: Sequence[str],
                    config: RecordsConfig | None = None, progress: bool = True, embedder=None
                    ) -> tuple[dict[str, UnitRecords], list[str]]:
    """({unit: records}, the dead units) of the units ``activation_fn`` computes from the hook's
    activations ([batch, pos, d] -> [batch, pos, len(units)], e.g. an SAE's encoder restricted to
    some latents), over token ``contexts`` [n, pos], read as the feature dashboards read them
    (:func:`mechscope.sae.dashboard.collect`: BOS set to 0); see :func:`records_from_values`."""
    from mechscope.sae.dashboard import collect

    values = collect(model, contexts, hook_name, activation_fn, progress=progress)  # [n, pos, units]
    if values.shape[-1] != len(units):
        raise MechscopeError(f"activation_fn gave {values.shape[-1]} units for {len(units)} names")
    return records_from_values(model.tokenizer, contexts, values, units, config, progress, embedder)


def records_from_values(tokenizer, contexts: torch.Tensor, values: torch.Tensor, units: Sequence[str],
                        config: RecordsConfig | None = None, progress: bool = True, embedder=None
                        ) -> tuple[dict[str, UnitRecords], list[str]]:
    """({unit: records}, the dead units) of units whose activations over token ``contexts`` [n,
    pos] are ``values`` [n, pos, len(units)]. A unit that never fires is listed as dead, not given
    records. With an ``embedder`` (e.g. a :class:`~mechscope.autointerp.embedder.SentenceEmbedder`)
    every window is decoded with ``tokenizer`` and embedded once, for all units (the embedder's
    ``embed(texts, progress=...)`` is called once), and the records hold ``neighbours``
    negatives; without one they hold none."""
    config = config or RecordsConfig()
    if values.shape[:2] != contexts.shape or values.shape[-1] != len(units):
        raise MechscopeError(f"values of shape {tuple(values.shape)} do not match contexts {tuple(contexts.shape)} "
                             f"and {len(units)} units")
    embeddings = None
    # With n_neighbours 0 the embeddings would go unused: the records are the same without them.
    if embedder is not None and config.n_neighbours > 0:
        embeddings = window_texts_embeddings(contexts, config.window, tokenizer, embedder, progress=progress)
    records, dead = {}, []
    for index, unit in enumerate(units):
        try:
            records[unit] = unit_records(unit, contexts, values[..., index], config,
                                         window_embeddings=embeddings)
        except DeadUnitError:
            dead.append(unit)
    return records, dead


__all__ = ["DeadUnitError", "RecordsConfig", "UnitRecords", "cut_windows", "harvest_records", "records_from_values",
           "unit_records", "window_texts_embeddings"]
