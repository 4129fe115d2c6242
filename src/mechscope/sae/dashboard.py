"""Feature dashboards: static HTML pages for dictionary latents (or neurons, or directions).

Each page: density, an activation histogram, the top activating contexts with tokens shaded by
activation, samples from activation quantiles, and the logit effects of the feature's output
direction (through the final norm's weight and the unembedding: the tokens it promotes most and
least), and the feature's explanation in words when one is given. An index page links them.
Plotly is written once beside the pages (works offline).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mechscope.errors import MechscopeError
from mechscope.files import atomic_text
from mechscope.models.hooked_model import HookedModel


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


def summarise(values: torch.Tensor, labels: list[str], effects: list[tuple[list, list]] | None, k: int = 10,
              seed: int = 0) -> list[Feature]:
    """Features from activations [n_contexts, pos, n_features] (BOS excluded from statistics)."""
    generator = torch.Generator().manual_seed(seed)
    flat = values[:, 1:].flatten(0, 1)  # [tokens, n_features]
    positions = values.shape[1] - 1
    features = []
    for index, label in enumerate(labels):
        column = flat[:, index]
        active = column > 0
        order = column.argsort(descending=True)[:k]
        top = [(int(t) // positions, int(t) % positions + 1) for t in order if column[t] > 0]
        quantiles = {}
        if active.any():
            maximum = float(column.max())
            for low, high in ((0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)):
                band = (active & (column > low * maximum) & (column <= high * maximum)).nonzero().flatten()
                picks = band[torch.randperm(len(band), generator=generator)[:3]]
                quantiles[f"{low:.2f}-{high:.2f} of max"] = [(int(t) // positions, int(t) % positions + 1) for t in picks]
            counts, edges = torch.histogram(column[active], bins=30)
            histogram = (edges.tolist(), counts.long().tolist())
        else:
            histogram = ([], [])
        promoted, suppressed = effects[index] if effects is not None else ([], [])
        features.append(Feature(label, float(active.float().mean()), float(column.max()), top, quantiles, histogram,
                                promoted, suppressed))
    return features


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
                   explanation_results: Mapping[int, Mapping] | None = None) -> Path:
    """Dashboards for ``latents`` of ``sae`` on ``contexts`` [n, pos], and the same data as
    ``features.jsonl`` (see :mod:`mechscope.sae.feature_data`); ``explanations``: {latent: text}
    shown with each latent, ``explanation_results``: {latent: explain result} (explanation and
    scores, e.g. from a ``mechscope explain`` run) kept in the data file."""
    from mechscope.sae.feature_data import FEATURES_FILE, nearest_latents, write_feature_file

    bad = [i for i in latents if not 0 <= i < sae.cfg.d_sae]
    if bad:
        raise MechscopeError(f"latents {bad} out of range: the dictionary has {sae.cfg.d_sae}")
    hook = hook_name or sae.cfg.hook_name
    index = torch.tensor(latents)
    values = collect(model, contexts, hook, lambda x: sae.encode(x.to(sae.W_enc.dtype))[..., index], progress=progress)
    directions = sae.W_dec.detach()[index] if sae.cfg.output_dim == model.cfg.d_model else None
    effects = logit_effects(model, directions) if directions is not None else None
    features = summarise(values, [f"latent {i}" for i in latents], effects)
    for latent, feature in zip(latents, features):
        feature.explanation = (explanations or {}).get(latent, "")
    header = {"hook": hook, "d_sae": sae.cfg.d_sae, "architecture": sae.cfg.architecture, "model": model.cfg.name,
              "contexts": int(contexts.shape[0]), "tokens_per_context": int(contexts.shape[1]) - 1}
    write_feature_file(Path(out) / FEATURES_FILE, header, model.tokenizer, contexts, values, features, latents,
                       nearest_latents(sae.W_dec, latents), explanation_results)
    return write_dashboards(model, contexts, values, features, out, f"{sae.cfg.architecture} dictionary at {hook}")
