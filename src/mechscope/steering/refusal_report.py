"""Evaluating a refusal direction on held-out prompts, and the whole pipeline behind
``mechscope refusal --out DIR``: search, evaluate, write direction, numbers, generations, plots."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from mechscope.data.contexts import default_contexts
from mechscope.errors import NotFoundError
from mechscope.files import atomic_text
from mechscope.models.hooked_model import HookedModel
from mechscope.steering.apply import DirectionalAblation, Steering, generate
from mechscope.steering.evaluate import kl_divergence, last_token_logits, perplexity
from mechscope.steering.orthogonalise import orthogonalise, save_orthogonalised
from mechscope.steering.refusal import (
    RefusalConfig,
    RefusalSearch,
    find_refusal_direction,
    is_refusal,
    refusal_log_odds,
)


@dataclass
class Condition:
    """One model variant on one prompt set: string-match refusal rate of greedy generations,
    mean refusal score (log-odds), and the generations themselves."""

    name: str
    prompts: str
    refusal_rate: float
    refusal_score: float
    generations: list[str] = field(repr=False)


@dataclass
class RefusalReport:
    search: RefusalSearch
    conditions: list[Condition]
    kl_harmless_ablated: float
    kl_harmless_orthogonalised: float
    max_logit_gap_orthogonalised_vs_ablation: float
    perplexity: dict[str, float]
    n_harmful_test: int
    n_harmless_test: int

    def condition(self, name: str, prompts: str) -> Condition:
        for item in self.conditions:
            if (item.name, item.prompts) == (name, prompts):
                return item
        raise NotFoundError(f"no condition {name!r} on {prompts!r}")

    def to_json(self) -> dict:
        return {
            "search": self.search.to_json(), "kl_harmless_ablated": self.kl_harmless_ablated,
            "kl_harmless_orthogonalised": self.kl_harmless_orthogonalised,
            "max_logit_gap_orthogonalised_vs_ablation": self.max_logit_gap_orthogonalised_vs_ablation,
            "perplexity": self.perplexity, "n_harmful_test": self.n_harmful_test,
            "n_harmless_test": self.n_harmless_test,
            "conditions": [{k: v for k, v in asdict(c).items() if k != "generations"} for c in self.conditions],
        }


def evaluate_refusal(model: HookedModel, search: RefusalSearch, harmful: Sequence[str], harmless: Sequence[str],
                     progress: bool = True) -> RefusalReport:
    """Refusal rates and scores on held-out ``harmful`` prompts for the unedited model, the runtime
    ablation and the orthogonalised weights; on ``harmless`` prompts for the unedited model and
    with the direction added (at its layer, strength = its scale); KL on harmless prompts and
    perplexity on the default corpus for each edit."""
    config, direction = search.config, search.direction
    ablation = DirectionalAblation(direction)
    addition = Steering(direction, direction.scale, layers=search.chosen.layer)
    edited = orthogonalise(model, direction)
    gen = dict(max_new_tokens=config.max_new_tokens, chat=True, progress=progress)
    runs = {"baseline": (model, None), "ablated": (model, ablation), "orthogonalised": (edited, None),
            "added": (model, addition)}

    def hooks_of(name: str):
        runner, intervention = runs[name]
        return () if intervention is None else intervention.hooks(runner)

    prompt_sets = {"harmful": harmful, "harmless": harmless}
    logits: dict[tuple[str, str], torch.Tensor] = {}

    def next_token_logits(name: str, label: str) -> torch.Tensor:  # each forward once, shared by score and KL
        if (name, label) not in logits:
            logits[(name, label)] = last_token_logits(runs[name][0], prompt_sets[label], hooks_of(name), chat=True)
        return logits[(name, label)]

    conditions = []
    for name, label in (("baseline", "harmful"), ("ablated", "harmful"), ("orthogonalised", "harmful"),
                        ("baseline", "harmless"), ("added", "harmless")):
        runner, intervention = runs[name]
        texts = generate(runner, prompt_sets[label], intervention, **gen)
        score = refusal_log_odds(runner, next_token_logits(name, label))
        conditions.append(Condition(name, label, sum(map(is_refusal, texts)) / len(texts), score, texts))
    base_harmless = next_token_logits("baseline", "harmless")
    ablated_harmless = next_token_logits("ablated", "harmless")
    edited_harmless = next_token_logits("orthogonalised", "harmless")
    contexts = default_contexts(model, n_contexts=config.n_perplexity_contexts)
    ppl = {name: perplexity(runner, contexts, hooks_of(name)) for name, (runner, _) in runs.items()}
    return RefusalReport(search, conditions, kl_divergence(base_harmless, ablated_harmless),
                         kl_divergence(base_harmless, edited_harmless),
                         float((edited_harmless - ablated_harmless).abs().max()), ppl, len(harmful), len(harmless))


def candidate_figure(search: RefusalSearch):
    """Plotly heatmap of each candidate's ablated refusal score by layer and position."""
    import plotly.graph_objects as go

    layers = sorted({c.layer for c in search.candidates})
    positions = sorted({c.position for c in search.candidates})
    grid = [[None] * len(layers) for _ in positions]
    for c in search.candidates:
        grid[positions.index(c.position)][layers.index(c.layer)] = c.ablated_refusal_score
    figure = go.Figure(go.Heatmap(z=grid, x=layers, y=[str(p) for p in positions], colorscale="RdBu",
                                  colorbar_title="refusal score<br>under ablation"))
    figure.update_layout(title=f"refusal score on harmful prompts with each candidate ablated "
                               f"(unedited: {search.baseline_harmful_score:.2f})",
                         xaxis_title="layer", yaxis_title="post-instruction position")
    return figure


def rates_figure(report: RefusalReport):
    """Plotly bar chart of refusal rates per condition."""
    import plotly.graph_objects as go

    labels = [f"{c.prompts}: {c.name}" for c in report.conditions]
    figure = go.Figure(go.Bar(x=labels, y=[c.refusal_rate for c in report.conditions],
                              text=[f"{c.refusal_rate:.0%}" for c in report.conditions]))
    figure.update_layout(title="string-match refusal rate of greedy generations (held-out prompts)",
                         yaxis_title="refusal rate", yaxis_range=[0, 1])
    return figure


def run_refusal(model: HookedModel, out: str | Path, config: RefusalConfig | None = None, save_model: bool = False,
                progress: bool = True) -> RefusalReport:
    """The whole pipeline on the bundled harmful / harmless datasets; writes into ``out``:
    direction.safetensors + direction.json, report.json, generations.json, refusal.html (both
    figures; plotly.js embedded so it opens offline) and, with ``save_model``, the orthogonalised model in ``out/model``."""
    from mechscope import datasets

    config = config or RefusalConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    search = find_refusal_direction(model, datasets.load("harmful"), datasets.load("harmless"), config, progress)
    search.direction.metadata.update({"dataset": "mechscope.datasets harmful - harmless",
                                      "chosen": asdict(search.chosen)})
    harmful_test = datasets.load("harmful", "test")[:config.n_test]
    harmless_test = datasets.load("harmless", "test")[:config.n_test]
    report = evaluate_refusal(model, search, harmful_test, harmless_test, progress)
    search.direction.save(out / "direction")
    atomic_text(out / "report.json", json.dumps(report.to_json(), indent=1))
    generations = [{"condition": c.name, "prompts": c.prompts, "prompt": prompt, "generation": text}
                   for c in report.conditions
                   for prompt, text in zip(harmful_test if c.prompts == "harmful" else harmless_test, c.generations)]
    atomic_text(out / "generations.json", json.dumps(generations, indent=1))
    figures = [rates_figure(report), candidate_figure(search)]
    parts = "".join(figure.to_html(full_html=False, include_plotlyjs=index == 0) for index, figure in enumerate(figures))
    atomic_text(out / "refusal.html", f'<!doctype html><html><head><meta charset="utf-8"><title>refusal direction'
                                      f'</title></head><body>{parts}</body></html>')
    if save_model:
        save_orthogonalised(model, search.direction, out / "model")
    return report
