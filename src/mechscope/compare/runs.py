"""The run behind ``mechscope compare MODEL_A MODEL_B``: the layer-by-layer similarity grid of two
models on texts from the default corpus, on positions aligned across their tokenizers, with each
cell's permutation null (grid.json, grid.html); head roles in both models, where each sits by
relative depth, and A's IOI circuit mapped by role onto B against random circuits (roles.json);
with an SAE for each model, their latents matched by activation correlation on aligned tokens,
with the matched pairs' top contexts and offline explanations side by side (matches.json); and a
summary (summary.json)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from mechscope import checks
from mechscope.compare.grid import Scaling, aligned_activations, grid_figure, similarity_grid
from mechscope.compare.similarity import Metric
from mechscope.errors import ConfigError, MechscopeError
from mechscope.files import OutputFolder, atomic_text, prepare_output_folder
from mechscope.models.hooked_model import HookedModel
from mechscope.validate import check_choice, check_int, check_number

COMPARE_OUTPUTS = ("grid.json", "grid.html", "roles.json", "matches.json", "summary.json")


@dataclass(frozen=True)
class CompareOptions:
    """``mechscope compare``'s options; checked on creation, before any model loads."""

    metric: Metric = "linear_cka"
    texts: int = 64
    max_chars: int = 600
    permutations: int = 20
    scaling: Scaling = "standardise"
    roles: bool = True
    ioi_prompts: int = 16
    role_fraction: float = 0.05
    random_circuits: int = 50
    sae_a: str | None = None
    sae_b: str | None = None
    match_threshold: float = 0.5
    min_firing: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("metric", self.metric, Metric)
        check_choice("scaling", self.scaling, Scaling)
        check_int("texts", self.texts, 1, 10_000)
        check_int("max_chars", self.max_chars, 20, 100_000)
        check_int("permutations", self.permutations, 0, 10_000)
        check_int("ioi_prompts", self.ioi_prompts, 0, 1_000)
        check_number("role_fraction", self.role_fraction, 0, 1, strict_minimum=True)
        check_int("random_circuits", self.random_circuits, 1, 10_000)
        check_int("seed", self.seed, 0, checks.MAX_SEED)
        check_number("match_threshold", self.match_threshold, -1, 1)
        check_int("min_firing", self.min_firing, 1)
        if (self.sae_a is None) != (self.sae_b is None):
            raise ConfigError("matching latents needs an SAE for each model: give both sae_a and sae_b (or neither)")
        for name in ("sae_a", "sae_b"):
            folder = getattr(self, name)
            if folder is not None and not Path(folder).is_dir():
                raise ConfigError(f"{name} {folder!r} is not a folder holding a saved SAE (mechscope sae train --out)")


def prepare_compare_folder(out: str | Path, options: CompareOptions, overwrite: bool = False,
                           extra: dict | None = None) -> OutputFolder:
    return prepare_output_folder(out, "compare", COMPARE_OUTPUTS, overwrite=overwrite,
                                 options={**asdict(options), **(extra or {})})


def corpus_texts(count: int, max_chars: int) -> list[str]:
    """``count`` texts of the default corpus (standard-library docstrings), each cut to
    ``max_chars`` characters at a space."""
    from mechscope.data.corpus import stdlib_docstrings

    texts = []
    for text in stdlib_docstrings(limit=count):
        cut = text[:max_chars]
        if len(text) > max_chars and " " in cut:
            cut = cut[:cut.rindex(" ")]
        texts.append(cut)
    return texts


def _ioi(model: HookedModel, prompts: int, seed: int):
    """IOI prompts for ``model``, or the reason it cannot have them (e.g. too few one-token names)."""
    from mechscope.tasks.ioi import ioi

    try:
        return ioi(model, n=prompts, seed=seed), None
    except MechscopeError as error:
        return None, str(error)


def compare_roles(model_a: HookedModel, model_b: HookedModel, options: CompareOptions, progress: bool = True) -> dict:
    """Head roles of both models and their relative-depth comparison; with IOI prompts for both,
    the name-mover and S-inhibition roles too, and A's IOI circuit (its top ``role_fraction`` of
    heads by EAP-IG) mapped by role onto B, its faithfulness there against random circuits."""
    from mechscope.compare.circuit_transfer import circuit_faithfulness, circuit_heads, map_by_role
    from mechscope.compare.roles import ATTENTION_ROLES, ROLES, compare_depths, head_roles, top_count

    task_a = task_b = None
    skipped = "ioi_prompts is 0"
    if options.ioi_prompts:
        (task_a, reason_a), (task_b, reason_b) = (_ioi(model, options.ioi_prompts, options.seed)
                                                  for model in (model_a, model_b))
        skipped = reason_a or reason_b
    with_ioi = task_a is not None and task_b is not None
    roles = ROLES if with_ioi else ATTENTION_ROLES
    roles_a = head_roles(model_a, roles, task=task_a, seed=options.seed, progress=progress)
    roles_b = head_roles(model_b, roles, task=task_b, seed=options.seed, progress=progress)
    depths = compare_depths(roles_a, roles_b, options.role_fraction, seed=options.seed)
    result = {"roles_a": roles_a.to_json(), "roles_b": roles_b.to_json(), "depths": depths.to_json(),
              "ioi": None if with_ioi else f"IOI roles and the circuit skipped: {skipped}"}
    if with_ioi:
        source = circuit_heads(model_a, task_a, top_count(roles_a.shape[0] * roles_a.shape[1], options.role_fraction),
                               progress=progress)
        mapping = map_by_role(source, roles_a, roles_b, options.role_fraction)
        result["circuit"] = {"source_heads": source, "mapping": mapping.to_json(), "native": circuit_faithfulness(
            model_a, task_a, source, options.random_circuits, options.seed).to_json()}
        result["circuit"]["transferred"] = (circuit_faithfulness(
            model_b, task_b, mapping.target_heads, options.random_circuits, options.seed).to_json()
            if mapping.target_heads else None)
    return result


def compare_latents(model_a: HookedModel, model_b: HookedModel, options: CompareOptions, texts: list[str],
                    progress: bool = True) -> dict:
    """The two SAEs' latents matched across the models on ``texts`` (see the module docstring)."""
    from mechscope.compare.latents import (
        aligned_rows,
        cross_model_matches,
        explain_by_tokens,
        feature_transfer,
    )
    from mechscope.sae.io import load_sae

    sae_a, sae_b = load_sae(options.sae_a), load_sae(options.sae_b)
    for sae, model, side in ((sae_a, model_a, "A"), (sae_b, model_b, "B")):
        if sae.cfg.d_in != model.cfg.d_model:
            raise ConfigError(f"the SAE for model {side} reads width {sae.cfg.d_in}, but the model's residual stream "
                              f"is {model.cfg.d_model} wide: was it trained on this model?")
    rows = aligned_rows(model_a, model_b, texts, sae_a.cfg.hook_name, sae_b.cfg.hook_name, progress=progress)
    found = cross_model_matches(sae_a, rows.a, sae_b, rows.b, options.match_threshold, options.min_firing,
                                seed=options.seed)
    transfer = feature_transfer(found.match, sae_a, sae_b, rows, explainer=explain_by_tokens)
    return {"hook_a": sae_a.cfg.hook_name, "hook_b": sae_b.cfg.hook_name, "width_a": sae_a.cfg.d_sae,
            "width_b": sae_b.cfg.d_sae, **found.to_json(),
            "pairs": [[int(a), int(b), round(float(value), 4)] for (a, b), value in zip(found.match.pairs.tolist(),
                                                                                        found.match.similarity)],
            "transfer": transfer.to_json()}


def run_compare(model_a: HookedModel, model_b: HookedModel, options: CompareOptions, out: OutputFolder | str | Path,
                overwrite: bool = False, texts: list[str] | None = None, progress: bool = True) -> dict:
    """Align, score every layer pair, write the grid (JSON and figure) and a summary; returns it."""
    folder = out if isinstance(out, OutputFolder) else prepare_compare_folder(out, options, overwrite)
    texts = texts if texts is not None else corpus_texts(options.texts, options.max_chars)
    activations = aligned_activations(model_a, model_b, texts, progress=progress)
    grid = similarity_grid(activations, options.metric, options.permutations, options.seed, options.scaling,
                           progress=progress)
    name_a, name_b = model_a.cfg.name or model_a.cfg.family, model_b.cfg.name or model_b.cfg.family
    atomic_text(folder / "grid.json", json.dumps(grid.to_json()))
    atomic_text(folder / "grid.html", grid_figure(grid, name_a, name_b).to_html(include_plotlyjs=True, full_html=True))
    roles = compare_roles(model_a, model_b, options, progress) if options.roles else None
    atomic_text(folder / "roles.json", json.dumps(roles))
    matches = compare_latents(model_a, model_b, options, texts, progress) if options.sae_a else None
    atomic_text(folder / "matches.json", json.dumps(matches if matches is not None else {
        "skipped": "no SAEs given: --sae-a and --sae-b match their latents across the models"}))
    above = grid.beyond_null()
    summary = {"model_a": name_a, "model_b": name_b, "metric": options.metric, "texts": len(texts),
               "aligned_positions": activations.pairs, "dropped_outliers": activations.dropped, "rows": grid.rows, "scaling": grid.scaling,
               "layers_with_outlier_dimensions": {side: sorted(layer for layer, dims in found.items() if dims)
                                                  for side, found in grid.outliers.items()},
               "layers_a": len(grid.layers_a), "layers_b": len(grid.layers_b),
               "cells_beyond_null": None if above is None else int(above.sum()),
               "best_match_relative_depth": [round(depth, 3) for depth in grid.relative_depth_match()],
               "roles": None if roles is None else _roles_summary(roles),
               "matches": None if matches is None else {
                   key: matches["match"][key] for key in ("shared", "mean_similarity", "null_shared", "null_mean")} | {
                   "control_shared": matches["control_shared"], "firing_a": matches["firing_a"],
                   "firing_b": matches["firing_b"], "unmatched_a": matches["match"]["unmatched_a"],
                   "unmatched_b": matches["match"]["unmatched_b"]}}
    atomic_text(folder / "summary.json", json.dumps(summary, indent=1))
    folder.record()
    return summary


def _roles_summary(roles: dict) -> dict:
    depths = roles["depths"]
    summary = {"mean_depth_gap": depths["mean_gap"], "null_mean_gap": depths["null_mean_gap"],
               "p_value": depths["p_value"], "by_role": {role["role"]: {key: role[key] for key in (
                   "depth_a", "depth_b", "gap", "p_value")} for role in depths["roles"]}, "ioi": roles["ioi"]}
    if "circuit" in roles:
        transferred = roles["circuit"]["transferred"]
        summary["circuit"] = {"native_faithfulness": roles["circuit"]["native"]["faithfulness"],
                              "transferred_faithfulness": None if transferred is None else transferred["faithfulness"],
                              "transferred_random_mean": None if transferred is None else transferred["random_mean"],
                              "transferred_p_value": None if transferred is None else transferred["p_value"],
                              "unmapped_heads": roles["circuit"]["mapping"]["unmapped"]}
    return summary


__all__ = ["compare_latents", "compare_roles", "COMPARE_OUTPUTS", "CompareOptions", "corpus_texts", "prepare_compare_folder", "run_compare"]
