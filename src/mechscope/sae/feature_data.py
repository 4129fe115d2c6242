"""A dashboard's features as data: ``features.jsonl``, what ``mechscope serve`` shows and indexes.

One JSON object per line, so a reader can jump to one feature by byte offset (the results store
keeps each line's offset): a header line ``{"format": "mechscope-features", "version": 1, "hook",
"d_sae", "architecture", "model", "contexts", "tokens_per_context"}``, then one line per feature: ``latent``, ``density``,
``max_activation``, ``histogram`` {edges, counts}, ``top`` and ``quantiles`` (context windows:
tokens, their values, the index of the activating token), ``promoted``/``suppressed`` [[token,
logit effect]], ``explanation`` ({text, scores} from an explain run, or null) and ``nearest``
[{latent, cosine}] (decoder directions closest to this one, over the whole dictionary)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import torch

from mechscope.files import atomic_file
from mechscope.store.features import FEATURES_FILE, FORMAT  # the store indexes what this writes

WINDOW_BEFORE, WINDOW_AFTER = 12, 4


def _number(value: float) -> float:
    return round(float(value), 5) if math.isfinite(float(value)) else 0.0


def context_window(tokenizer, contexts: torch.Tensor, values: torch.Tensor, feature: int,
                   where: tuple[int, int]) -> dict:
    """Tokens around ``where`` = (context, position) with feature ``feature``'s values
    (``values`` [n_contexts, pos, n_features]); ``at``: the activating token's index."""
    context, position = where
    start, stop = max(1, position - WINDOW_BEFORE), min(values.shape[1], position + WINDOW_AFTER)
    return {"tokens": [tokenizer.decode([int(t)]) for t in contexts[context, start:stop]],
            "values": [_number(v) for v in values[context, start:stop, feature]], "at": position - start}


@torch.no_grad()
def nearest_latents(decoder: torch.Tensor, latents: list[int], k: int = 8) -> list[list[dict]]:
    """For each of ``latents``: the ``k`` other latents whose decoder rows (``decoder`` [d_sae,
    d]) have the highest cosine with its own."""
    unit = torch.nn.functional.normalize(decoder.detach().float(), dim=-1)
    rows = []
    for start in range(0, len(latents), 256):
        chosen = torch.tensor(latents[start:start + 256])
        cosines = unit[chosen] @ unit.T  # [chunk, d_sae]
        cosines[torch.arange(len(chosen)), chosen] = -math.inf
        best = cosines.topk(min(k, unit.shape[0] - 1), dim=-1)
        rows += [[{"latent": int(i), "cosine": _number(c)} for c, i in zip(values, indices)]
                 for values, indices in zip(best.values, best.indices)]
    return rows


def write_feature_file(path: str | Path, header: Mapping, tokenizer, contexts: torch.Tensor, values: torch.Tensor,
                       features: list, latents: list[int], nearest: list[list[dict]] | None = None,
                       explanations: Mapping[int, Mapping] | None = None) -> Path:
    """Write ``features.jsonl`` (atomically) for dashboard ``features`` (``sae.dashboard.Feature``,
    one per entry of ``latents``) over ``contexts`` [n, pos] and ``values`` [n, pos, n_features];
    ``explanations``: {latent: explain result with "explanation" and "scores"}."""
    lines = [json.dumps({"format": FORMAT, "version": 1, **header})]
    for index, (latent, feature) in enumerate(zip(latents, features)):
        result = (explanations or {}).get(latent)
        explanation = None if result is None else {"text": result.get("explanation") or result.get("status", ""),
                                                   "scores": result.get("scores", {})}
        edges, counts = feature.histogram
        lines.append(json.dumps({
            "latent": latent, "density": _number(feature.density), "max_activation": _number(feature.max_activation),
            "histogram": {"edges": [_number(e) for e in edges], "counts": list(counts)},
            "top": [context_window(tokenizer, contexts, values, index, where) for where in feature.top],
            "quantiles": [{"band": band, "contexts": [context_window(tokenizer, contexts, values, index, where)
                                                      for where in picks]}
                          for band, picks in feature.quantiles.items()],
            "promoted": [[token, _number(v)] for token, v in feature.promoted],
            "suppressed": [[token, _number(v)] for token, v in feature.suppressed],
            "explanation": explanation, "nearest": (nearest or [[]] * len(latents))[index]}, allow_nan=False))
    return atomic_file(path, lambda temporary: temporary.write_text("\n".join(lines) + "\n", encoding="utf-8"))


__all__ = ["FEATURES_FILE", "FORMAT", "context_window", "nearest_latents", "write_feature_file"]
