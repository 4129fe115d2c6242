"""Feature dashboards: static HTML pages for dictionary latents (or neurons, or directions).

Each page: density, an activation histogram, the top activating contexts with tokens shaded by
activation, samples from activation quantiles, and the logit effects of the feature's output
direction (through the final norm's weight and the unembedding: the tokens it promotes most and
least), and the feature's explanation in words when one is given. An index page links them.
Plotly is written once beside the pages (works offline).
"""

from __future__ import annotations

import hashlib
import html
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mechscope.distributed import (
    Ranks,
    check_ranks,
    check_same_settings,
    contiguous_share,
    merge_top_k_many,
    merged_histograms,
)
from mechscope.errors import MechscopeError
from mechscope.files import atomic_text
from mechscope.models.hooked_model import HookedModel
from mechscope.validate import check_int


@dataclass
class Feature:
    """What a dashboard shows for one feature (shapes in the docstring of :func:`collect`)."""

    label: str
    density: float
    max_activation: float
    top: list[tuple[int, int]]  # (context, position) of the highest activations
    quantiles: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    histogram: tuple[list[float], list[int]] = ((), ())
    promoted: list[tuple[str, float]] = field(default_factory=list)
    suppressed: list[tuple[str, float]] = field(default_factory=list)
    explanation: str = ""  # in words, with its score (mechscope explain), shown on the page and the index


@torch.no_grad()
def collect(model: HookedModel, contexts: torch.Tensor, hook_name: str,
            activation_fn: Callable[[torch.Tensor], torch.Tensor], batch_contexts: int = 8,
            progress: bool = True) -> torch.Tensor:
    """[n_contexts, pos, n_features] feature activations: ``activation_fn`` maps the hook's
    activations [batch, pos, d] to [batch, pos, n_features]. BOS (position 0) is set to 0."""
    parts = []
    for start in tqdm(range(0, len(contexts), batch_contexts), desc="feature activations", disable=not progress):
        _, cache = model.run_with_cache(contexts[start:start + batch_contexts], names=[hook_name])
        values = activation_fn(cache[hook_name].float()).cpu()
        values[:, 0] = 0
        parts.append(values)
    return torch.cat(parts)


@torch.no_grad()
def logit_effects(model: HookedModel, directions: torch.Tensor, k: int = 10) -> list[tuple[list, list]]:
    """For each residual direction [n, d_model]: (top k promoted, top k suppressed) tokens with
    their logit effect, through the final norm's weight and the unembedding."""
    weight, _ = model.final_norm_affine()
    effects = (directions.float().to(weight.device) * weight) @ model.W_U.float()
    rows = []
    for row in effects:
        up, down = row.topk(k), (-row).topk(k)
        rows.append(([(model.tokenizer.decode([int(i)]), float(v)) for v, i in zip(up.values, up.indices)],
                     [(model.tokenizer.decode([int(i)]), float(-v)) for v, i in zip(down.values, down.indices)]))
    return rows


QUANTILE_BANDS = ((0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))  # fractions of the feature's maximum
QUANTILE_PICKS = 3  # contexts sampled per band
HISTOGRAM_BINS = 30


def summarise(values: torch.Tensor, labels: list[str], effects: list[tuple[list, list]] | None, k: int = 10,
              seed: int = 0, *, ranks: Ranks | None = None, first_context: int = 0) -> list[Feature]:
    """Features from activations ``values`` [n_contexts, pos, n_features] (BOS excluded from
    statistics), one per label. A token's global index is ``context * (pos - 1) + position - 1``:
    the top ``k`` contexts are the highest activations, equal ones in order of that index (so a
    tie has one answer); the quantile samples are ``QUANTILE_PICKS`` random active tokens per
    band of the maximum, drawn with ``seed``.

    With ``ranks`` of several, ``values`` holds this rank's contiguous share of the contexts,
    the first of them context ``first_context`` of the whole (shares in rank order, as
    :func:`~mechscope.distributed.contiguous_share` gives), and every number is over all ranks'
    contexts: density and maximum all-reduced, the top contexts merged by
    :func:`~mechscope.distributed.merge_top_k_many`, the histograms by
    :func:`~mechscope.distributed.merged_histograms`, and the quantile samples drawn at the same
    global positions of each band as one process draws them. The features, equal on every rank,
    are exactly those of one process on all the contexts; ``(context, position)`` pairs name
    global contexts. About ten collectives in all, whatever the number of features."""
    ranks = check_ranks(ranks)
    first_context = check_int("first_context", first_context, 0)
    if not labels:
        return []
    positions = values.shape[1] - 1
    flat = values[:, 1:].flatten(0, 1)[:, :len(labels)]  # [tokens, n_features]
    tokens = first_context * positions + torch.arange(flat.shape[0])  # global token index [tokens]
    active = flat > 0
    counts = ranks.all_reduce(torch.cat([active.sum(0), torch.tensor([flat.shape[0]])]), what="the densities")
    total = int(counts[-1])
    local_max = flat.max(0).values if len(flat) else torch.full((flat.shape[1],), -math.inf, dtype=flat.dtype)
    maxima = ranks.all_reduce(local_max, op="max", what="the maximum activations").tolist()
    columns = [flat[active[:, j], j] for j in range(flat.shape[1])]
    tops = merge_top_k_many(ranks, columns, [tokens[active[:, j]] for j in range(flat.shape[1])], k)
    histograms = merged_histograms(ranks, columns, HISTOGRAM_BINS)
    quantiles = _quantile_samples(ranks, flat, active, tokens, maxima, counts[:-1].tolist(), seed)

    def where(token: int) -> tuple[int, int]:
        return token // positions, token % positions + 1

    features = []
    for index, label in enumerate(labels):
        histogram: tuple[list, list] = ([], [])
        if counts[index] > 0:
            edges, hist = histograms[index]
            histogram = (edges.tolist(), hist.long().tolist())
        bands = {band: [where(t) for t in picks if t >= 0] for band, picks in quantiles[index].items()}
        promoted, suppressed = effects[index] if effects is not None else ([], [])
        # The density as a float32 mean of 0/1 flags (what one process computed before): the
        # count divided by the total in float32, whatever the split.
        density = float(torch.tensor(float(counts[index])) / total)
        features.append(Feature(label, density, maxima[index], [where(int(t)) for t in tops[index][1]], bands,
                                histogram, promoted, suppressed))
    return features


def _quantile_samples(ranks: Ranks, flat: torch.Tensor, active: torch.Tensor, tokens: torch.Tensor,
                      maxima: list[float], active_counts: list[int], seed: int) -> list[dict[str, list[int]]]:
    """Per feature: {band: global token indices of up to ``QUANTILE_PICKS`` random active tokens
    whose activation lies in that band of the maximum} (-1 where the band has fewer). One process
    draws positions in the band's tokens in increasing index order; the ranks' shares are
    contiguous and in rank order, so rank r holds positions [offset_r, offset_r + size_r) of that
    order: every rank draws the same positions and the owner of each fills it in."""
    generator = torch.Generator().manual_seed(seed)
    n_features, n_bands = flat.shape[1], len(QUANTILE_BANDS)
    members = [[(active[:, j] & (flat[:, j] > low * maxima[j]) & (flat[:, j] <= high * maxima[j])).nonzero().flatten()
                for low, high in QUANTILE_BANDS] for j in range(n_features)]
    sizes = torch.tensor([[len(band) for band in bands] for bands in members], dtype=torch.long).reshape(n_features,
                                                                                                         n_bands)
    every = torch.stack(ranks.all_gather(sizes, what="the quantile bands' sizes"))  # [world, features, bands]
    offsets = every.cumsum(0)[ranks.rank] - sizes  # [features, bands]: positions before this rank's
    totals = every.sum(0)
    picks = torch.full((n_features, n_bands, QUANTILE_PICKS), -1, dtype=torch.long)
    for j in range(n_features):
        if active_counts[j] == 0:
            continue  # one process draws nothing for a feature that never fires
        for b in range(n_bands):
            drawn = torch.randperm(int(totals[j, b]), generator=generator)[:QUANTILE_PICKS]
            for slot, position in enumerate(drawn.tolist()):
                mine = position - int(offsets[j, b])
                if 0 <= mine < int(sizes[j, b]):
                    picks[j, b, slot] = tokens[members[j][b][mine]]
    picks = ranks.all_reduce(picks, op="max", what="the quantile samples")  # each slot has one owner
    return [{f"{low:.2f}-{high:.2f} of max": picks[j, b].tolist() for b, (low, high) in enumerate(QUANTILE_BANDS)}
            if active_counts[j] > 0 else {} for j in range(n_features)]


def _context_html(model: HookedModel, contexts: torch.Tensor, values: torch.Tensor, feature: int, where: tuple[int, int],
                  scale: float, window: int = 12) -> str:
    context, position = where
    start, stop = max(1, position - window), min(values.shape[1], position + 4)
    pieces = []
    for pos in range(start, stop):
        value = float(values[context, pos, feature])
        alpha = 0.0 if scale <= 0 else max(0.0, min(1.0, value / scale))
        token = html.escape(model.tokenizer.decode([int(contexts[context, pos])]))
        border = "border-bottom:2px solid #000;" if pos == position else ""
        pieces.append(f'<span title="{value:.3f}" style="background:rgba(230,80,30,{alpha:.2f});{border}">{token}</span>')
    return "<div class=ctx>" + "".join(pieces) + "</div>"


def write_dashboards(model: HookedModel, contexts: torch.Tensor, values: torch.Tensor, features: list[Feature],
                     out: str | Path, title: str = "Feature dashboards") -> Path:
    """One page per feature plus ``index.html`` under ``out``; returns the index's path."""
    import plotly.graph_objects as go

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    style = ("<style>body{font-family:sans-serif;margin:18px;max-width:1100px} .ctx{font-family:monospace;"
             "white-space:pre-wrap;margin:4px 0;padding:3px;border:1px solid #eee} td{padding:2px 8px}</style>")
    links = []
    for index, feature in enumerate(features):
        name = f"feature_{index:04d}.html"
        links.append(f'<tr><td><a href="{name}">{html.escape(feature.label)}</a></td><td>{feature.density:.4f}</td>'
                     f'<td>{feature.max_activation:.3f}</td><td>{html.escape(feature.explanation)}</td></tr>')
        explained = (f"<p class=explanation><b>explanation:</b> {html.escape(feature.explanation)}</p>"
                     if feature.explanation else "")
        histogram = ""
        if feature.histogram[1]:
            edges, counts = feature.histogram
            figure = go.Figure(go.Bar(x=[(a + b) / 2 for a, b in pairwise(edges)], y=counts))
            figure.update_layout(height=260, margin={"t": 30, "b": 30}, title="activation histogram (active tokens)")
            histogram = figure.to_html(full_html=False, include_plotlyjs=False)
        top = "".join(_context_html(model, contexts, values, index, where, feature.max_activation) for where in feature.top)
        quantiles = "".join(f"<h4>{html.escape(band)}</h4>" + "".join(
            _context_html(model, contexts, values, index, where, feature.max_activation) for where in picks)
            for band, picks in feature.quantiles.items())
        effects = "".join(
            f"<td><b>{heading}</b><br>" + "<br>".join(f"{html.escape(repr(tok))} {val:+.3f}" for tok, val in rows) + "</td>"
            for heading, rows in (("promotes", feature.promoted), ("suppresses", feature.suppressed)) if rows)
        page = (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(feature.label)}</title>"
                f'<script src="plotly.min.js"></script>{style}</head><body><a href="index.html">index</a>'
                f"<h2>{html.escape(feature.label)}</h2>{explained}<p>density {feature.density:.5f} of tokens, max activation "
                f"{feature.max_activation:.3f}</p>{histogram}<table><tr>{effects}</tr></table>"
                f"<h3>top activations</h3>{top or '<p>never active on these contexts</p>'}"
                f"<h3>samples by activation quantile</h3>{quantiles}</body></html>")
        atomic_text(out / name, page)
    _write_plotly(out)
    index = (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>{style}</head><body>"
             f"<h2>{html.escape(title)}</h2><p>{values.shape[0]} contexts x {values.shape[1] - 1} tokens</p>"
             f"<table><tr><th>feature</th><th>density</th><th>max</th><th>explanation</th></tr>{''.join(links)}"
             "</table></body></html>")
    atomic_text(out / "index.html", index)
    return out / "index.html"


def _write_plotly(out: Path) -> None:
    from plotly.offline import get_plotlyjs

    target, script = out / "plotly.min.js", get_plotlyjs()
    # Written atomically; an existing copy is kept only if it is complete (an older, killed run
    # could have left a truncated one that every page would load).
    if not target.exists() or target.stat().st_size != len(script.encode("utf-8")):
        atomic_text(target, script)


def sae_dashboards(model: HookedModel, sae, contexts: torch.Tensor, latents: list[int], out: str | Path,
                   hook_name: str | None = None, progress: bool = True,
                   explanations: Mapping[int, str] | None = None,
                   explanation_results: Mapping[int, Mapping] | None = None, *, ranks: Ranks | None = None,
                   batch_contexts: int = 8) -> Path:
    """Dashboards for ``latents`` of ``sae`` on ``contexts`` [n, pos], and the same data as
    ``features.jsonl`` (see :mod:`mechscope.sae.feature_data`); ``explanations``: {latent: text}
    shown with each latent, ``explanation_results``: {latent: explain result} (explanation and
    scores, e.g. from a ``mechscope explain`` run) kept in the data file.

    With ``ranks`` of several, every rank passes the same arguments (checked); each runs the
    model on its contiguous share of the contexts (whole batches of ``batch_contexts``, so each
    forward is one of the one-process run's), :func:`summarise` merges the statistics, and rank 0
    receives the contexts the pages show and writes them: the same pages and ``features.jsonl`` as
    one process. Every rank returns the index's path."""
    from mechscope.sae.feature_data import FEATURES_FILE, nearest_latents, write_feature_file

    ranks = check_ranks(ranks)
    bad = [i for i in latents if not 0 <= i < sae.cfg.d_sae]
    if bad:
        raise MechscopeError(f"latents {bad} out of range: the dictionary has {sae.cfg.d_sae}")
    batch_contexts = check_int("batch_contexts", batch_contexts, 1)
    hook = hook_name or sae.cfg.hook_name
    if ranks.distributed:  # ranks given other contexts would merge statistics of different data
        check_same_settings(ranks, "dashboard inputs", {
            "latents": list(latents), "hook": hook, "shape": list(contexts.shape), "batch_contexts": batch_contexts,
            "contexts_sha256": hashlib.sha256(contexts.cpu().contiguous().numpy().tobytes()).hexdigest()})
    index = torch.tensor(latents)
    share = contiguous_share(ranks, len(contexts), batch_contexts)
    # A rank left without contexts (fewer blocks than ranks) sends the dtype the others send.
    values = torch.zeros((0, contexts.shape[1], len(latents)), dtype=sae.W_enc.dtype)
    if len(share):
        values = collect(model, contexts[share.start:share.stop], hook,
                         lambda x: sae.encode(x.to(sae.W_enc.dtype))[..., index], batch_contexts=batch_contexts,
                         progress=progress and ranks.is_main)
    directions = sae.W_dec.detach()[index] if sae.cfg.output_dim == model.cfg.d_model else None
    effects = logit_effects(model, directions) if directions is not None else None
    features = summarise(values, [f"latent {i}" for i in latents], effects, ranks=ranks, first_context=share.start)
    for latent, feature in zip(latents, features):
        feature.explanation = (explanations or {}).get(latent, "")
    if ranks.distributed:
        values = _shown_contexts(ranks, values, features, share, len(contexts))
    header = {"hook": hook, "d_sae": sae.cfg.d_sae, "architecture": sae.cfg.architecture, "model": model.cfg.name,
              "contexts": int(contexts.shape[0]), "tokens_per_context": int(contexts.shape[1]) - 1}

    def write() -> str:
        write_feature_file(Path(out) / FEATURES_FILE, header, model.tokenizer, contexts, values, features, latents,
                           nearest_latents(sae.W_dec, latents), explanation_results)
        return str(write_dashboards(model, contexts, values, features, out,
                                    f"{sae.cfg.architecture} dictionary at {hook}"))

    return Path(ranks.on_main(write, f"writing the dashboards in {out}"))


def _shown_contexts(ranks: Ranks, values: torch.Tensor, features: list[Feature], share: range,
                    n_contexts: int) -> torch.Tensor:
    """[n_contexts, pos, n_features]: the rows of the contexts the pages show (top and quantile
    samples), gathered from the ranks that hold them; zeros elsewhere (the pages read no other
    row). Only these rows travel, not every rank's activations."""
    shown = sorted({context for feature in features
                    for context, _ in [*feature.top, *(w for picks in feature.quantiles.values() for w in picks)]})
    full = torch.zeros((n_contexts, *values.shape[1:]), dtype=values.dtype)
    if not shown:  # no latent fired anywhere (the same on every rank: the features are)
        return full
    mine = torch.tensor([c for c in shown if c in share], dtype=torch.long)
    rows = ranks.all_gather_rows(values[mine - share.start].contiguous(), what="the dashboards' contexts")
    which = ranks.all_gather_rows(mine, what="the dashboards' contexts (indices)")
    full[torch.cat(which)] = torch.cat(rows)
    return full
