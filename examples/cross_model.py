"""Cross-model comparison of SmolLM2-135M-Instruct and Gemma-3-270M; regenerates
docs/case-studies/cross-model.md.

    python examples/cross_model.py [--texts 48] [--n 16] [--out /tmp/cross-model]

Every number the page quotes is computed here: the layer grid on aligned tokens (raw and
standardised), head roles in both models with the relative-depth test, SmolLM2's IOI circuit
mapped by role onto Gemma-3 against random circuits, and (sections added by
``--features FILE``, written by examples/compare_features_smollm2.py) the SAE latents shared
across seeds and models. Intermediate results go to --out as JSON, so a rerun after a kill
skips the finished sections.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import mechscope
from mechscope import tasks
from mechscope.compare import (
    ROLES,
    aligned_activations,
    circuit_faithfulness,
    circuit_heads,
    compare_depths,
    grid_figure,
    head_roles,
    map_by_role,
    similarity_grid,
)
from mechscope.compare.roles import top_count
from mechscope.compare.runs import corpus_texts
from mechscope.compare.stitch import held_out_r2
from mechscope.compare.transfer import model_probe_transfer, steering_transfer
from mechscope.files import atomic_text
from mechscope.hooks import names
from mechscope.probes.datasets import probe_dataset
from mechscope.probes.sweep import prompt_activations_at
from mechscope.steering.direction import diff_in_means
from mechscope.steering.evaluate import LogitBehaviour

DOCS = Path(__file__).resolve().parents[1] / "docs" / "case-studies"
FIGURES = DOCS / "figures"
SMOL, GEMMA = "smollm2-135m-instruct", "gemma-3-270m"


def cached(out: Path, name: str, compute) -> dict:
    """The section's JSON from ``out`` when a previous run finished it, else computed and saved."""
    path = out / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    start = time.perf_counter()
    result = compute()
    result["seconds"] = round(time.perf_counter() - start, 1)
    atomic_text(path, json.dumps(result))
    return result


def grid_section(smol, gemma, texts: list[str], out: Path) -> tuple[str, dict]:
    def compute() -> dict:
        activations = aligned_activations(smol, gemma, texts)
        raw = similarity_grid(activations, "linear_cka", scaling="none", progress=False)
        grid = similarity_grid(activations, "linear_cka", permutations=20, scaling="standardise")
        FIGURES.mkdir(parents=True, exist_ok=True)
        atomic_text(FIGURES / "cross-model-grid.html",
                    grid_figure(grid, "SmolLM2-135M", "Gemma-3-270M").to_html(include_plotlyjs="directory"))
        return {"pairs": activations.pairs, "dropped": activations.dropped, "raw": raw.to_json(),
                "grid": grid.to_json(), "depth_match": grid.relative_depth_match(),
                "beyond_null": int(grid.beyond_null().sum())}

    result = cached(out, "grid", compute)
    raw, grid = torch.tensor(result["raw"]["values"]), torch.tensor(result["grid"]["values"])
    outliers = result["grid"]["outlier_dimensions"]
    smol_outlier_layers = sorted(int(layer) for layer, dims in outliers["a"].items() if dims)
    depth = result["depth_match"]
    own = [layer / 29 for layer in range(30)]
    depth_error = sum(abs(a - b) for a, b in zip(depth, own)) / len(own)
    rows = ["| SmolLM2 layer (relative depth) | best Gemma-3 layer, raw | best, standardised | CKA standardised |",
            "|---|---|---|---|"]
    for layer in range(0, 30, 3):
        rows.append(f"| {layer} ({layer / 29:.2f}) | {int(raw[layer].argmax())} | {int(grid[layer].argmax())} | "
                    f"{float(grid[layer].max()):.2f} |")
    text = f"""## Layer grid on aligned tokens

{len(texts)} corpus texts; {result['pairs']} positions where both tokenizers end a token at the
same character, {result['dropped']} of them dropped as outlier-norm tokens; linear CKA (unbiased)
for all 30 x 18 layer pairs, each cell with a permutation null (20 shuffles on
{result['grid']['null_rows']} rows). [Interactive grid](figures/cross-model-grid.html).

Raw activations: SmolLM2 layers {smol_outlier_layers} each have a dimension holding more than 20% of
the variance; their CKA with every Gemma-3 layer is at most {float(raw[smol_outlier_layers].max()):.2f}
when they are left raw, because CKA then measures that one dimension. Standardised (every dimension
to unit variance, the grid's default), the same layers reach
{float(grid[smol_outlier_layers].max(1).values.min()):.2f}-{float(grid[smol_outlier_layers].max()):.2f}.
{result['beyond_null']} of 540 standardised cells are above their null's 95th percentile (at most
{float(torch.tensor(result['grid']['null_high']).max()):.3f}): the two models share a great deal at every pair of
depths, so what the grid tells is where the similarity peaks.

{chr(10).join(rows)}

Each SmolLM2 layer's best Gemma-3 layer sits on average {depth_error:.2f} away from it in relative
depth (0 = the same relative depth; an unrelated match would be about 0.33 away).
Time: {result['seconds']:.0f} s."""
    return text, result


def organisms_section(smol, texts: list[str], out: Path) -> tuple[str, dict]:
    """SmolLM2 against its shipped organisms (same tokenizer: every position aligns): how far
    fine-tuning moved each layer, by the diagonal of the grid."""
    from mechscope.organisms.shipped import resolve_model

    def compute() -> dict:
        found = {}
        for name in ORGANISMS:
            organism = resolve_model(name, base=smol)
            activations = aligned_activations(smol, organism, texts, progress=False)
            grid = similarity_grid(activations, "linear_cka", progress=False)
            found[name] = {"diagonal": grid.values.diagonal().tolist(), "rows": grid.rows,
                           "off_diagonal_mean": float((grid.values.sum() - grid.values.diagonal().sum())
                                                      / (grid.values.numel() - len(grid.values)))}
        return found

    result = cached(out, "organisms", compute)
    rows = ["| organism | lowest same-layer CKA (layer) | last layer | mean CKA between different layers |",
            "|---|---|---|---|"]
    for name, found in result.items():
        if name == "seconds":
            continue
        diagonal = torch.tensor(found["diagonal"])
        rows.append(f"| {name} | {float(diagonal.min()):.3f} ({int(diagonal.argmin())}) | {float(diagonal[-1]):.3f} | "
                    f"{found['off_diagonal_mean']:.2f} |")
    text = f"""## SmolLM2 against its organisms

The same grid between SmolLM2 and each shipped organism (LoRA fine-tunes of it; one tokenizer, so
every position aligns): the diagonal says how far fine-tuning moved each layer's representation
of ordinary text.

{chr(10).join(rows)}

Time: {result['seconds']:.0f} s."""
    return text, result


def longer_seeds(paths: list[Path]) -> str:
    """A sentence per further seed comparison (``--seeds-only`` results)."""
    return "".join(_seed_sentence(json.loads(path.read_text())) for path in paths)


def _seed_sentence(result: dict) -> str:
    settings, seeds, control = result["settings"], result["seed_stability"], result["untrained_control"]
    return (f" Trained longer ({settings['expansion'] * 576:,} latents, {settings['train_steps']} "
            f"steps of {settings['batch_tokens']:,} tokens from {settings['harvest'] * 128:,} harvested tokens): "
            f"**{seeds['match']['shared']:.3f}** shared above cosine {seeds['match']['threshold']} (mean cosine "
            f"{seeds['match']['mean_similarity']:.3f}; untrained control {control['match']['shared']:.3f} / "
            f"{control['match']['mean_similarity']:.3f}).")


def features_section(path: Path, seeds_paths: list[Path] = ()) -> str:
    """The SAE results written by examples/compare_features_smollm2.py (results.json), and a
    second seed comparison (``--seeds-only``) when given."""
    result = json.loads(path.read_text())
    settings, seeds, control = result["settings"], result["seed_stability"], result["untrained_control"]
    cross, transfer, aligned = result["cross_model"], result["transfer"], result["aligned"]

    def svcca(entry: dict | None) -> str:
        if entry is None:
            return "not computed (too few pairs for the dimensions)"
        return (f"{entry['value']:.3f} against random pairings {entry['null_mean']:.3f} (95th percentile "
                f"{entry['null_high']:.3f}, p = {entry['p_value']:.3f})")

    rows = ["| A latent | B latent | correlation | top contexts shared | A explained | B explained | agree |",
            "|---|---|---|---|---|---|---|"]
    for feature in transfer["features"][:10]:
        rows.append(f"| {feature['latent_a']} | {feature['latent_b']} | {feature['correlation']:.2f} | "
                    f"{feature['shared_top']:.2f} | {feature['explanation_a'] or '-'} | {feature['explanation_b'] or '-'} | "
                    f"{'yes' if feature['agree'] else 'no' if feature['agree'] is not None else '-'} |")
    width_a, width_b = settings["expansion"] * 576, settings["expansion"] * 640
    distinct = settings["harvest"] * 128
    passes = settings["train_steps"] * settings["batch_tokens"] / distinct
    caveats = []
    if seeds["match"]["shared"] < 0.1:
        caveats.append(
            f"The seed result measures the training budget more than the model: {settings['train_steps']} steps on "
            f"{distinct:,} distinct tokens ({passes:.0f} passes) leave the decoders close to their random starts "
            f"(mean matched cosine {seeds['match']['mean_similarity']:.2f}, against "
            f"{control['match']['mean_similarity']:.2f} for an untrained SAE); published comparisons of SAEs trained "
            "on far more tokens find about 30% shared at the least. Training longer raises it (the runs above); "
            "`--harvest` and `--tokens` scale it up.")
    if cross["firing_b"] < 0.1 * width_b:
        caveats.append(
            f"Only {cross['firing_b']} of Gemma-3's {width_b:,} latents fire on 10 or more typical aligned tokens: at "
            f"this layer one residual dimension holds over 20% of the variance (the grid's outlier report), and the "
            "SAE spends its latents on it and on the outlier tokens the alignment drops. The cross-model shared "
            "fraction is over those pairs only.")
    return f"""## SAE latents across seeds and across the models

From `examples/compare_features_smollm2.py` (TopK, k = {settings['k']}, {settings['expansion']} latents per dimension,
{settings['train_steps']} steps of {settings['batch_tokens']:,} tokens per SAE from {distinct:,} harvested tokens;
`{settings['hook_a']}` of SmolLM2 and `{settings['hook_b']}` of Gemma-3, the layer of the same relative depth).

**Seeds.** Two SmolLM2 SAEs ({width_a:,} latents each) trained with different seeds, matched by
decoder cosine (Hungarian): **{seeds['match']['shared']:.3f}** of latents shared above cosine
{seeds['match']['threshold']} (mean cosine of the pairs {seeds['match']['mean_similarity']:.3f}; random pairing
{seeds['match']['null_mean']:.3f}); paired-decoder SVCCA {svcca(seeds['svcca'])}. An untrained SAE against a
trained one (the negative control): shared {control['match']['shared']:.3f}, mean cosine
{control['match']['mean_similarity']:.3f}.{longer_seeds(list(seeds_paths))}

**Across models.** {aligned['rows']:,} aligned tokens of {aligned['texts']} texts ({aligned['outliers_dropped']} outlier rows
dropped). Latents firing on at least {cross['min_firing']} of them: {cross['firing_a']:,} of SmolLM2's
({cross['silent_a']:,} left out) and {cross['firing_b']:,} of Gemma-3's ({cross['silent_b']:,} left out). Matched by
activation correlation: **{cross['match']['shared']:.3f}** of the {cross['match']['pairs']:,} pairs above
{cross['match']['threshold']}, MCC {cross['match']['mean_similarity']:.3f} (random pairing
{cross['match']['null_mean']:.3f}; the same matching with Gemma's rows shuffled: shared {cross['control_shared']:.3f},
MCC {cross['control_mean']:.3f}); {cross['match']['unmatched_a']:,} firing latents of SmolLM2 and
{cross['match']['unmatched_b']:,} of Gemma-3 left unmatched; paired-decoder SVCCA {svcca(cross['svcca'])}.

**Feature transfer**, the best matched pairs: top contexts shared on average
{sum(f['shared_top'] for f in transfer['features']) / len(transfer['features']):.2f} (chance
{transfer['chance_shared_top']:.4f}); offline explanations agree for {transfer['agree_rate'] or 0:.2f} of the
pairs (mismatched pairs: {transfer['null_agree_rate'] or 0:.2f}).

{chr(10).join(rows)}

{(chr(10) * 2).join(caveats)}"""


ORGANISMS = ("smollm2-backdoor", "smollm2-refusal", "smollm2-null")


def roles_section(smol, gemma, n: int, out: Path) -> tuple[str, dict]:
    def compute() -> dict:
        task_smol, task_gemma = tasks.ioi(smol, n=n), tasks.ioi(gemma, n=n)
        roles_smol = head_roles(smol, ROLES, task=task_smol)
        roles_gemma = head_roles(gemma, ROLES, task=task_gemma)
        depths = compare_depths(roles_smol, roles_gemma)
        source = circuit_heads(smol, task_smol, top_count(30 * 9, 0.05))
        mapping = map_by_role(source, roles_smol, roles_gemma)
        transferred = circuit_faithfulness(gemma, task_gemma, mapping.target_heads, random_circuits=50)
        native = circuit_faithfulness(smol, task_smol, source, random_circuits=50)
        own = circuit_heads(gemma, task_gemma, len(mapping.target_heads))
        gemma_own = circuit_faithfulness(gemma, task_gemma, own, random_circuits=10)
        return {"roles_smol": roles_smol.to_json(), "roles_gemma": roles_gemma.to_json(), "depths": depths.to_json(),
                "source": source, "mapping": mapping.to_json(), "transferred": transferred.to_json(),
                "native": native.to_json(), "gemma_own": {"heads": own, **gemma_own.to_json()}}

    result = cached(out, "roles", compute)
    depths = result["depths"]
    rows = ["| role | SmolLM2 top heads | mean relative depth | Gemma-3 top heads | mean relative depth | gap | "
            "gap under shuffled layers | p |", "|---|---|---|---|---|---|---|---|"]
    for role in depths["roles"]:
        rows.append(f"| {role['role']} | {', '.join(role['heads_a'][:5])}{' ...' if len(role['heads_a']) > 5 else ''} "
                    f"| {role['depth_a']:.2f} | {', '.join(role['heads_b'])} | {role['depth_b']:.2f} | "
                    f"{role['gap']:.2f} | {role['null_mean']:.2f} | {role['p_value']:.3f} |")
    same = [role["role"] for role in depths["roles"] if role["p_value"] < 0.05]
    mapping, transferred, native, own = result["mapping"], result["transferred"], result["native"], result["gemma_own"]
    roles_of = ", ".join(f"{head} {role or '(no role)'}" for head, role in mapping["source_roles"].items())
    mapped = "; ".join(f"{role}: {', '.join(heads)}" for role, heads in mapping["mapped"].items())

    def verdict(entry: dict) -> str:
        return (f"faithfulness **{entry['faithfulness']:.2f}** against {entry['random_mean']:.2f} for random head sets "
                f"of the same size (95th percentile {entry['random_95th']:.2f}; p = {entry['p_value']:.3f})")

    text = f"""## Head roles and where they sit

Every head of both models scored for five roles: previous-token, induction and duplicate-token
attention on repeated random tokens; name movers by direct logit attribution to
logit(IO) - logit(S) on IOI ({n} prompts per model, mechscope's own templates); S-inhibition by path
patching into the top three name movers' queries. The top 5% of each model's heads
({top_count(270, 0.05)} of 270 in SmolLM2, {top_count(72, 0.05)} of 72 in Gemma-3) stand for the role; the gap is
between their mean relative depths, against 1,000 shuffles of each model's layers.

{chr(10).join(rows)}

Roles at the same relative depth beyond chance (p < 0.05): {', '.join(same) or 'none'}. Over all roles
at once: mean gap {depths['mean_gap']:.2f} against {depths['null_mean_gap']:.2f} under shuffled
layers (p = {depths['p_value']:.3f}).

## SmolLM2's IOI circuit, mapped by role onto Gemma-3

The {len(result['source'])} SmolLM2 heads with the largest EAP-IG node scores on IOI, with the role each
is among the top 5% of: {roles_of}. On SmolLM2 itself (node level, every MLP live, other heads
patched from the corrupted run) this circuit has {verdict(native)}.

Mapped onto Gemma-3 by role (scaled by the head counts, 72/270): {mapped}
({len(mapping['unmapped'])} source heads had no role and are not carried). On Gemma-3's own IOI
prompts the mapped circuit has {verdict(transferred)}. For reference, Gemma-3's own top
{len(own['heads'])} heads by EAP-IG reach {own['faithfulness']:.2f}.

Time: {result['seconds']:.0f} s."""
    return text, result


def transfer_section(smol, gemma, texts: list[str], layer_smol: int, layer_gemma: int, out: Path) -> tuple[str, dict]:
    def compute() -> dict:
        probes = {name: model_probe_transfer(smol, gemma, texts, layer_smol, layer_gemma, dataset=name).to_json()
                  for name in ("sentiment", "facts")}
        activations = aligned_activations(smol, gemma, texts, [layer_smol], [layer_gemma], progress=False)
        stitch, r2 = held_out_r2(activations.a[layer_smol], activations.b[layer_gemma])
        train = probe_dataset("sentiment", "train")
        positive = [text for text, label in zip(train.texts, train.labels.tolist()) if label == 1]
        negative = [text for text, label in zip(train.texts, train.labels.tolist()) if label == 0]
        directions = {}
        for name, model, layer in (("smol", smol, layer_smol), ("gemma", gemma, layer_gemma)):
            hook = names.resid_post(layer)
            pos = prompt_activations_at(model, positive, [hook], -1, False, 16, False)[hook]
            neg = prompt_activations_at(model, negative, [hook], -1, False, 16, False)[hook]
            directions[name] = diff_in_means(pos, neg, layer)
        words = {"good": [" good", " great", " wonderful"], "bad": [" bad", " terrible", " awful"]}
        ids = {key: [gemma.to_single_token(word) for word in value] for key, value in words.items()}
        behaviour = LogitBehaviour(NEUTRAL_PROMPTS, ids["good"], ids["bad"], chat=False)
        steering = {f"{kl}": steering_transfer(gemma, layer_gemma, directions["smol"], stitch, directions["gemma"],
                                               behaviour, NEUTRAL_PROMPTS, target_kl=kl).to_json()
                    for kl in (0.1, 0.3)}
        return {"probes": probes, "stitch_r2": r2, "steering": steering, "words": words}

    result = cached(out, "transfer", compute)
    rows = ["| probe | SmolLM2's own (layer {0}) | Gemma-3's own (layer {1}) | SmolLM2's through the stitch | "
            "shuffled-stitch null | chance |".format(layer_smol, layer_gemma), "|---|---|---|---|---|---|"]
    for name, found in result["probes"].items():
        rows.append(f"| {name} | {found['source']:.2f} | {found['native']:.2f} | {found['transferred']:.2f} | "
                    f"{found['null']:.2f} | {found['chance']:.2f} |")
    steer = ["| target KL | native direction: effect | transferred: effect | random: effect | cosine transferred-native |",
             "|---|---|---|---|---|"]
    for kl, found in result["steering"].items():
        steer.append(f"| {kl} | {found['native']['effect']:+.2f} | {found['transferred']['effect']:+.2f} | "
                     f"{found['random']['effect']:+.2f} | {found['cosine']:.2f} |")
    text = f"""## Stitching, probes and steering across the models

An affine map from SmolLM2's residual stream after layer {layer_smol} to Gemma-3's after layer
{layer_gemma} (the grid's match; ridge, fitted on aligned corpus tokens) predicts
{result['stitch_r2']:.2f} of Gemma-3's variance on held-out tokens (R²).

Probes (logistic, last token of each text) trained on SmolLM2 and carried through a stitch fitted
the other way (Gemma-3 -> SmolLM2) score Gemma-3's activations; the null uses a stitch fitted on
shuffled pairs:

{chr(10).join(rows)}

Steering: the sentiment direction (difference in means of positive and negative training texts)
found in SmolLM2 and mapped through the stitch into Gemma-3, against Gemma-3's own direction and a
random one, each added at the scale that moves Gemma-3's next-token distribution by the same KL on
{len(NEUTRAL_PROMPTS)} neutral prompts. Effect: change of log p({', '.join(result['words']['good'])}) - log
p({', '.join(result['words']['bad'])}).

{chr(10).join(steer)}

Time: {result['seconds']:.0f} s."""
    return text, result


NEUTRAL_PROMPTS = ["I watched the film last night and it was", "The food at the new place was",
                   "My week at work has been", "The weather this weekend looks", "Honestly, the book I read was",
                   "The service at the hotel was", "Our trip to the coast was", "The concert yesterday was"]


def verdict_section(results: dict) -> str:
    """Which findings carry over, each judged against its own null (computed, not written by hand)."""
    lines = []
    grid = results.get("grid")
    if grid:
        depth = grid["depth_match"]
        error = sum(abs(found - layer / 29) for layer, found in enumerate(depth)) / len(depth)
        lines.append(f"- **Layer correspondence: carries over.** Standardised, every SmolLM2 layer's best Gemma-3 layer "
                     f"sits {error:.2f} from it in relative depth on average. Raw, SmolLM2's outlier dimension hides "
                     "it: every layer from 0 to 21 matches the same Gemma-3 layer.")
    organisms = results.get("organisms")
    if organisms:
        lowest = min(min(found["diagonal"]) for name, found in organisms.items() if name != "seconds")
        null = min(organisms["smollm2-null"]["diagonal"])
        lines.append(f"- **Organisms keep their base's representations of ordinary text**: same-layer CKA at least "
                     f"{lowest:.3f} for every shipped organism and layer, as for the null organism ({null:.3f}): CKA "
                     "on ordinary text cannot tell an organism from a harmless fine-tune; finding what training hid "
                     "takes the diffing and audit tools (docs/organisms.md, docs/audit.md).")
    transfer = results.get("transfer")
    if transfer:
        for name, found in transfer["probes"].items():
            carries = found["transferred"] - found["null"] > 0.1 and found["transferred"] > found["chance"] + 0.1
            lines.append(f"- **The {name} probe {'carries over' if carries else 'does not carry over'}** through the "
                         f"stitch: {found['transferred']:.2f} against Gemma-3's own {found['native']:.2f}, the "
                         f"shuffled stitch {found['null']:.2f} and chance {found['chance']:.2f}"
                         + (f" (SmolLM2's own probe reaches only {found['source']:.2f} at this layer: there is little "
                            "to carry)." if found["source"] < found["chance"] + 0.15 else "."))
        for kl, found in transfer["steering"].items():
            native, moved, random = (found[arm]["effect"] for arm in ("native", "transferred", "random"))
            share = moved / native if native else float("nan")
            lines.append(f"- **Steering at KL {kl}**: the transferred direction moves the sentiment log-odds "
                         f"{moved:+.2f}, {share:.0%} of Gemma-3's own direction ({native:+.2f}); a random direction "
                         f"{random:+.2f}.")
    roles = results.get("roles")
    if roles:
        same = [role["role"] for role in roles["depths"]["roles"] if role["p_value"] < 0.05]
        other = [role["role"] for role in roles["depths"]["roles"] if role["p_value"] >= 0.05]
        lines.append(f"- **Head roles by relative depth**: at the same depth beyond chance: {', '.join(same) or 'none'}; "
                     f"not distinguishable from shuffled layers: {', '.join(other) or 'none'}.")
        moved, native = roles["transferred"], roles["native"]
        lines.append(f"- **SmolLM2's IOI circuit mapped by role onto Gemma-3**: faithfulness {moved['faithfulness']:.2f} "
                     f"against random circuits' {moved['random_mean']:.2f} (p = {moved['p_value']:.3f}); on SmolLM2 "
                     f"itself the source circuit reaches {native['faithfulness']:.2f} (p = {native['p_value']:.3f}).")
    features = results.get("features")
    if features:
        longer = "".join(f"; {run['seed_stability']['match']['shared']:.3f} for {run['settings']['expansion'] * 576:,} "
                         f"latents at {run['settings']['train_steps']} steps" for run in results.get("more_seeds", []))
        lines.append(f"- **SAE latents**: {features['seed_stability']['match']['shared']:.3f} shared between two seeds "
                     f"on one model at {features['settings']['train_steps']} steps{longer} (short training: see the "
                     f"caveats); {features['cross_model']['match']['shared']:.2f} "
                     f"of the firing pairs across models (shuffled-rows control "
                     f"{features['cross_model']['control_shared']:.2f}), their explanations agreeing for "
                     f"{features['transfer']['agree_rate'] or 0:.2f} of the top pairs against "
                     f"{features['transfer']['null_agree_rate'] or 0:.2f} for mismatched pairs.")
    return "## What carries over\n\n" + "\n".join(lines)


ALL_SECTIONS = ("grid", "organisms", "transfer", "roles")
HEADER = """# Cross-model comparison: SmolLM2-135M against Gemma-3-270M

Which findings on one model carry over to another of a different family, tokenizer, width and
depth? Regenerated by `python examples/cross_model.py --features DIR/results.json --seeds
DIR2/results.json DIR3/results.json` after `python examples/compare_features_smollm2.py --harvest 512
--out DIR` and two `--seeds-only --tokens 4000000` runs (`--expansion 2 --out DIR2`, `--expansion 8
--out DIR3`); every number below is computed there on 2 CPU cores. The methods are in [docs/compare.md](../compare.md).

"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=48)
    parser.add_argument("--max-chars", type=int, default=500)
    parser.add_argument("--n", type=int, default=16, help="IOI prompts per model")
    parser.add_argument("--out", type=Path, default=Path("/tmp/cross-model"))
    parser.add_argument("--features", type=Path, default=None,
                        help="results.json of examples/compare_features_smollm2.py, for the SAE section")
    parser.add_argument("--seeds", type=Path, nargs="*", default=[],
                        help="results.json of further compare_features_smollm2.py --seeds-only runs")
    parser.add_argument("--sections", default=",".join(ALL_SECTIONS),
                        help="comma-separated: grid, organisms, transfer, roles")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    smol, gemma = mechscope.load(SMOL), mechscope.load(GEMMA)
    sections = args.sections.split(",")
    parts, results = [], {}
    texts = corpus_texts(args.texts, args.max_chars)
    if "grid" in sections:
        text, results["grid"] = grid_section(smol, gemma, texts, args.out)
        parts.append(text)
    if "organisms" in sections:
        text, results["organisms"] = organisms_section(smol, texts, args.out)
        parts.append(text)
    if "transfer" in sections:
        grid = json.loads((args.out / "grid.json").read_text())["grid"] if (args.out / "grid.json").exists() else None
        layer_gemma = int(torch.tensor(grid["values"])[15].argmax()) if grid else 9
        text, results["transfer"] = transfer_section(smol, gemma, texts, 15, layer_gemma, args.out)
        parts.append(text)
    if "roles" in sections:
        text, results["roles"] = roles_section(smol, gemma, args.n, args.out)
        parts.append(text)
    if args.features is not None:
        parts.append(features_section(args.features, args.seeds))
        results["more_seeds"] = [json.loads(path.read_text()) for path in args.seeds]
        results["features"] = json.loads(args.features.read_text())
    parts.insert(0, verdict_section(results))
    page = HEADER + "\n\n".join(parts) + "\n"
    if set(sections) == set(ALL_SECTIONS) and args.features is not None:
        atomic_text(DOCS / "cross-model.md", page)
        print(f"wrote {DOCS / 'cross-model.md'}")
    print(page)


if __name__ == "__main__":
    main()
