"""The run behind ``mechscope diff BASE FT``: what fine-tuning changed, in one folder.

Options are checked when :class:`DiffOptions` is built and the output folder is claimed by
:func:`prepare_diff_folder`, both before any model loads. :func:`run_diff` then refuses models
that cannot be diffed (:func:`~mechscope.diff.check_comparable`) before any work, and computes:
the weight diff, the activation-difference lens on neutral corpus contexts and (with a chat
template) at the last positions of generic chat prompts, where a reply is about to start,
greedy generations of the base steered by that difference, the per-token KL of the two next-token distributions,
and, when asked, an SAE diff and a crosscoder (harvest, resumable training, latent classes,
Latent Scaling, dashboards). It writes ``diff.json`` (every number), ``figures/*.json`` (plotly)
and ``report.html`` (self-contained) with :mod:`mechscope.report.diff_report`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mechscope import checks
from mechscope.data.contexts import default_contexts
from mechscope.diff import (
    AmplifyConfig,
    CrosscoderConfig,
    DifferenceLens,
    DifferenceMeans,
    PairedActivations,
    SAEDiff,
    SAEDiffConfig,
    TokenKL,
    WeightDiff,
    check_comparable,
    classify_latents,
    crosscoder_dashboards,
    difference_lens,
    difference_means,
    harvest_pair,
    latent_scaling,
    per_token_kl,
    sae_diff,
    save_crosscoder,
    steer_with_difference,
    train_crosscoder,
    weight_diff,
)
from mechscope.diff.corpus import acting_contexts, chat_prompt_tokens, generic_prompts
from mechscope.diff.lens import REST
from mechscope.errors import ConfigError, InputTypeError
from mechscope.files import OutputFolder, atomic_text, prepare_output_folder, staged_writes
from mechscope.hooks import names
from mechscope.models.hooked_model import HookedModel
from mechscope.models.weights import model_fingerprint
from mechscope.organisms.prompts import prompts
from mechscope.organisms.shipped import organism_path, resolve_model
from mechscope.report.diff_report import write_diff_report
from mechscope.sae.model import SAE
from mechscope.sae.runs import check_fits, load_dictionary
from mechscope.sae.train import TrainConfig
from mechscope.steering.apply import generate
from mechscope.validate import check_int, check_number

DIFF_OUTPUTS = ("diff.json", "report.html", "figures", "activations", "crosscoder-checkpoints", "crosscoder",
                "crosscoder-dashboards")
DIFF_RESUMABLE = ("activations", "crosscoder-checkpoints")  # an interrupted crosscoder run continues from these
MAX_CROSSCODER_STEPS = 1_000_000
MAX_CONTEXT_LENGTH = checks.MAX_POSITION
DASHBOARD_LATENTS = 10  # crosscoder latents given a dashboard
# A narrow fine-tune's change is a few percent of the activation; magnified ten times it gets
# latents of its own (docs/case-studies/organisms-diffing.md has the measurements).
DEFAULT_DELTA_SCALE = 10.0
# Designated ft-exclusive crosscoder latents, as a share of the width: on the backdoor organism
# 28 of 64 (of 1152) held its planted reply in their top contexts, 19 of them genuine by Latent
# Scaling, and none on the null.
FT_EXCLUSIVE_SHARE = 1 / 32
DEFAULT_CHAT_PROMPTS = 128  # generic chat prompts: the chat lens reads them, the crosscoder corpus adds them
CHAT_REPLY_TOKENS = 32
SCALING_ROWS = 4096  # paired rows per chunk read for Latent Scaling
MAX_LAST_POSITIONS = 16  # the assistant header is a few tokens; beyond it lies the user's text
SNIPPET_TOKENS = 12  # tokens of context shown before a high-KL position
TINY = 1e-12


def neutral_prompts(seed: int = 0) -> list[str]:
    """The steering prompts: held-out everyday requests of the organisms' neutral pool (no
    organism was trained on them), in a seeded order."""
    return prompts("neutral", "heldout", seed)


@dataclass(frozen=True)
class DiffOptions:
    """``mechscope diff``'s options; checked on creation, so before any model loads.

    ``base_name`` / ``ft_name``: the models as given (recorded, and compared on a resume).
    ``contexts`` neutral corpus contexts of ``context_length`` tokens feed the difference lens,
    the KL and the SAE diff; the first ``first_positions`` positions are averaged one by one.
    ``steer_prompts`` (0: skip) neutral prompts are generated ``steer_tokens`` tokens with and
    without the difference times ``steer_strength``. ``sae``: a base-model dictionary folder.
    ``crosscoder_steps`` > 0 trains a BatchTopK crosscoder of ``crosscoder_width`` latents
    (``crosscoder_k`` active) on ``crosscoder_contexts`` contexts at ``crosscoder_layer``'s
    resid_post (default: the middle layer), ``crosscoder_batch_size`` rows a step, with the
    fine-tune's change magnified ``crosscoder_delta_scale`` times in the rows it reads
    (:class:`~mechscope.diff.crosscoder.CrosscoderConfig`; 1: the plain crosscoder), and the
    last ``crosscoder_ft_exclusive`` latents designated fine-tune-exclusive (default: 1/32 of the
    width; 0: none). With a chat
    template, ``chat_prompts`` generic prompts (default 128; 0: none) are read by a second
    difference lens at their ``last_positions`` last positions (the assistant's header, where
    the reply starts), and, answered by the fine-tune greedily and from its logit difference to
    the base amplified ``amplify_alpha`` times, add the contexts where the fine-tune acts to the
    crosscoder corpus (:func:`mechscope.diff.corpus.acting_contexts`)."""

    base_name: str | None = None
    ft_name: str | None = None
    contexts: int = 32
    context_length: int = 64
    first_positions: int = 5
    last_positions: int = 3
    top_k: int = 20
    steer_prompts: int = 4
    steer_strength: float = 1.0
    steer_tokens: int = 24
    sae: str | None = None
    crosscoder_steps: int = 0
    crosscoder_layer: int | None = None
    crosscoder_width: int = 2048
    crosscoder_k: int = 32
    crosscoder_contexts: int = 256
    crosscoder_batch_size: int = 1024
    crosscoder_delta_scale: float = DEFAULT_DELTA_SCALE
    crosscoder_ft_exclusive: int | None = None
    chat_prompts: int | None = None
    amplify_alpha: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("base_name", "ft_name", "sae"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str | Path) or not str(value).strip()):
                raise ConfigError(f"{key} must be a non-empty name or path; got {value!r}")
            if isinstance(value, Path):
                object.__setattr__(self, key, str(value))  # JSON-ready, and equal on a resume
        check_int("contexts", self.contexts, 1, checks.MAX_CONTEXTS)
        check_int("context_length", self.context_length, 2, MAX_CONTEXT_LENGTH)
        check_int("first_positions", self.first_positions, 0)
        if self.first_positions >= self.context_length:
            raise ConfigError(f"first_positions ({self.first_positions}) must be below context_length "
                              f"({self.context_length}), so the 'rest' positions are not empty")
        check_int("last_positions", self.last_positions, 1, MAX_LAST_POSITIONS)
        check_int("top_k", self.top_k, 1, checks.MAX_TOP_K)
        check_int("steer_prompts", self.steer_prompts, 0, len(neutral_prompts(self.seed)))
        check_number("steer_strength", self.steer_strength)
        check_int("steer_tokens", self.steer_tokens, 1, checks.MAX_NEW_TOKENS)
        check_int("crosscoder_steps", self.crosscoder_steps, 0, MAX_CROSSCODER_STEPS)
        if self.crosscoder_layer is not None:
            check_int("crosscoder_layer", self.crosscoder_layer, 0)
            if not self.crosscoder_steps:
                raise ConfigError("crosscoder_layer is only used with crosscoder_steps > 0 (a crosscoder is "
                                  "trained only then); give both or neither")
        check_int("crosscoder_width", self.crosscoder_width, 1, checks.MAX_D_SAE)
        check_int("crosscoder_k", self.crosscoder_k, 1, self.crosscoder_width)
        check_int("crosscoder_contexts", self.crosscoder_contexts, 1, checks.MAX_CONTEXTS)
        check_int("crosscoder_batch_size", self.crosscoder_batch_size, 1, checks.MAX_BATCH)
        check_number("crosscoder_delta_scale", self.crosscoder_delta_scale, 1)
        if self.crosscoder_ft_exclusive is not None:
            check_int("crosscoder_ft_exclusive", self.crosscoder_ft_exclusive, 0,
                      self.crosscoder_width - self.crosscoder_k)
            if not self.crosscoder_steps:
                raise ConfigError("crosscoder_ft_exclusive is only used with crosscoder_steps > 0 (a crosscoder is "
                                  "trained only then)")
        if self.chat_prompts is not None:
            check_int("chat_prompts", self.chat_prompts, 0, len(generic_prompts()))
        check_number("amplify_alpha", self.amplify_alpha, 0)
        check_int("seed", self.seed, 0, checks.MAX_SEED)

    def check_models(self, base: HookedModel, ft: HookedModel | None = None) -> None:
        """What needs the (comparable) models: the context fits, top_k <= vocabulary, the
        crosscoder layer exists, the fine-tune has a chat template if chat prompts are asked
        for. Called before any work."""
        checks.check_context(base, self.context_length, "a corpus context (context_length)")
        check_int("top_k", self.top_k, 1, base.cfg.d_vocab)
        if self.crosscoder_steps:
            check_int("crosscoder_layer", self.crosscoder_layer_of(base), 0, base.cfg.n_layers - 1)
        self.chat_prompts_for(base if ft is None else ft)

    def chat_prompts_for(self, ft: HookedModel) -> int:
        """The generic chat prompts the chat lens reads and the crosscoder corpus adds for ``ft``:
        ``chat_prompts``, or by default 128 when ``ft`` has a chat template and none otherwise."""
        has_template = getattr(ft.tokenizer, "chat_template", None) is not None
        if self.chat_prompts is None:
            return DEFAULT_CHAT_PROMPTS if has_template else 0
        if self.chat_prompts and not has_template:
            raise ConfigError(f"chat_prompts={self.chat_prompts} needs a chat template, and the fine-tune has none; "
                              "pass chat_prompts=0 (no chat lens; the crosscoder then reads neutral text only)")
        return self.chat_prompts

    @property
    def ft_exclusive(self) -> int:
        """Designated ft-exclusive crosscoder latents (``crosscoder_ft_exclusive`` or its default)."""
        if self.crosscoder_ft_exclusive is not None:
            return self.crosscoder_ft_exclusive
        return min(int(self.crosscoder_width * FT_EXCLUSIVE_SHARE), self.crosscoder_width - self.crosscoder_k)

    def crosscoder_layer_of(self, model: HookedModel) -> int:
        return model.cfg.n_layers // 2 if self.crosscoder_layer is None else self.crosscoder_layer


def prepare_diff_folder(out: str | Path, options: DiffOptions, overwrite: bool = False) -> OutputFolder:
    """Check and claim ``out`` before any model loads. A rerun with the same options resumes an
    interrupted crosscoder harvest or training (``activations/``, ``crosscoder-checkpoints/``);
    other options are refused unless ``overwrite``."""
    if not isinstance(options, DiffOptions):
        raise InputTypeError(f"options must be DiffOptions; got {type(options).__name__}")
    return prepare_output_folder(out, "diff", DIFF_OUTPUTS, overwrite=overwrite, resumable=DIFF_RESUMABLE,
                                 options=asdict(options))


def is_organism(name: str | Path) -> bool:
    """Whether ``name`` is a shipped organism's name or an organism folder."""
    return organism_path(name) is not None


def load_ft(name: str | Path, base: HookedModel) -> HookedModel:
    """The fine-tune ``name``; an organism trained on ``base`` is merged onto it instead of
    loading its base a second time (any other organism loads its own recorded base)."""
    return resolve_model(name, base=base)


@dataclass(frozen=True, eq=False)
class DiffResult:
    """Everything :func:`run_diff` computed. ``steering``, ``crosscoder``: plain JSON dicts
    (``{"skipped": reason}`` when not run); ``sae``: None without an SAE."""

    options: DiffOptions
    models: dict[str, dict[str, Any]]
    weights: WeightDiff
    means: DifferenceMeans
    lens: DifferenceLens
    steering: dict[str, Any]
    kl: TokenKL
    sae: SAEDiff | None = None
    crosscoder: dict[str, Any] | None = None
    chat_means: DifferenceMeans | None = None
    chat_lens: DifferenceLens | None = None
    files: dict[str, Any] = field(default_factory=dict)

    def relative_norms(self) -> tuple[list[str], list[list[float]]]:
        """(group labels, [n_layers][groups] ‖mean difference‖ / the base's mean ‖h‖ there)."""
        groups = [*range(self.means.first_positions), REST]
        table = [[self.lens.reading(layer, group).relative_norm for group in groups]
                 for layer in range(self.means.n_layers)]
        return [f"pos {g}" if g != REST else REST for g in groups], table

    def kl_top(self) -> list[dict[str, Any]]:
        """The top-``top_k`` KL positions, each with the text leading up to it."""
        rows = []
        for item in self.kl.top(self.options.top_k):
            tokens = self.kl.tokens[item.text_index]
            rows.append({**item.to_json(), "context": "".join(tokens[max(0, item.position - SNIPPET_TOKENS):
                                                                     item.position + 1])})
        return rows

    def to_json(self) -> dict[str, Any]:
        labels, table = self.relative_norms()
        summary = {
            "kind": "mechscope diff", "options": asdict(self.options), "models": self.models,
            "weights": self.weights.to_json(),
            "difference_lens": {"hook": "hook_resid_post", "groups": labels, "relative_norm": table,
                                "means": self.means.to_json(), **self.lens.to_json()},
            "chat_lens": ({"skipped": "no chat prompts (chat_prompts is 0, or the models have no chat template)"}
                          if self.chat_lens is None else
                          {"hook": "hook_resid_post", "prompts": self.chat_means.n_contexts,
                           "groups": self.chat_means.last_groups,
                           "means": self.chat_means.to_json(), **self.chat_lens.to_json()}),
            "steering": self.steering,
            "token_kl": {**self.kl.to_json(self.options.top_k), "top": self.kl_top()},
            "sae": None if self.sae is None else {"dictionary": self.options.sae, **self.sae.to_json()},
            "crosscoder": self.crosscoder, "files": self.files,
        }
        return finite_json(summary)


def finite_json(value: Any) -> Any:
    """``value`` with NaN and infinities as None: strict JSON, which every reader accepts."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(item) for item in value]
    return value


def describe_model(model: HookedModel, given: str | None) -> dict[str, Any]:
    """Name as given, configured name, fingerprint and shape of one side of the diff."""
    cfg = model.cfg
    return {"given": given, **model_fingerprint(model), "family": cfg.family, "n_layers": cfg.n_layers,
            "d_model": cfg.d_model, "d_vocab": cfg.d_vocab}


def steering_layer(means: DifferenceMeans) -> tuple[int | None, list[float]]:
    """The layer whose "rest" mean difference is largest relative to the base's residual norm
    there (where adding it back changes the most per unit of activation), with every layer's
    ratio; None when the difference is zero everywhere."""
    ratios = (means.rest.norm(dim=-1) / means.norm_reference.clamp_min(TINY)).tolist()
    best = max(range(len(ratios)), key=ratios.__getitem__)
    return (best if ratios[best] > 0 else None), ratios


def run_steering(base: HookedModel, means: DifferenceMeans, options: DiffOptions, progress: bool = True) -> dict:
    """Greedy generations of ``options.steer_prompts`` neutral prompts by the base, plain and
    with the difference added at :func:`steering_layer`'s layer."""
    layer, ratios = steering_layer(means)
    record: dict[str, Any] = {"relative_norm_by_layer": ratios, "strength": options.steer_strength,
                              "max_new_tokens": options.steer_tokens, "position_group": REST}
    if not options.steer_prompts:
        return {**record, "skipped": "steer_prompts is 0"}
    if layer is None:
        return {**record, "skipped": "the mean difference is zero at every layer: the models' residual streams do "
                                     "not differ on these contexts, so there is nothing to steer with"}
    chosen = neutral_prompts(options.seed)[:options.steer_prompts]
    plain = generate(base, chosen, None, max_new_tokens=options.steer_tokens, progress=progress)
    steered = steer_with_difference(base, means, layer, chosen, options.steer_strength,
                                    max_new_tokens=options.steer_tokens, progress=progress)
    return {**record, "layer": layer, "hook": names.resid_post(layer),
            "chosen_by": "largest ||mean difference|| / mean ||h_base|| at hook_resid_post (rest positions)",
            "samples": [{"prompt": p, "unsteered": u, "steered": s} for p, u, s in zip(chosen, plain, steered)]}


def _paired_chunks(data, limit: int) -> Iterator[torch.Tensor]:
    """The first ``limit`` rows of the paired stream (epoch 0: each harvested token once), in
    chunks of [<= SCALING_ROWS, 2 * d] so memory stays flat."""
    total = min(limit, data.total_tokens)
    for start in range(0, total, SCALING_ROWS):
        yield data.rows(start, min(SCALING_ROWS, total - start))


def run_crosscoder(base: HookedModel, ft: HookedModel, folder: OutputFolder, options: DiffOptions,
                   contexts: torch.Tensor, progress: bool = True, log: Callable[[str], None] | None = None) -> dict:
    """Harvest both models' resid_post at the crosscoder layer on ``options.crosscoder_contexts``
    contexts into ``folder/activations`` (resumable), train a BatchTopK crosscoder with
    checkpoints in ``folder/crosscoder-checkpoints`` (a killed run resumes), save it to
    ``folder/crosscoder``, classify its latents, run Latent Scaling on the ft-only ones and
    write dashboards of the top ones on ``contexts`` [n, pos] to ``folder/crosscoder-dashboards``.
    Returns the JSON section."""
    say = log or (lambda line: None)
    layer = options.crosscoder_layer_of(base)
    hook = names.resid_post(layer)
    harvested = default_contexts(base, options.crosscoder_contexts, options.context_length, options.seed)
    chat_prompts = options.chat_prompts_for(ft)
    if chat_prompts:
        say(f"crosscoder: {chat_prompts} generic prompts answered by the fine-tune, plain and amplified")
        amplify = AmplifyConfig(alpha=options.amplify_alpha, max_new_tokens=CHAT_REPLY_TOKENS, seed=options.seed)
        acting = acting_contexts(base, ft, generic_prompts(chat_prompts), options.context_length, CHAT_REPLY_TOKENS,
                                 amplify, progress=progress)
        harvested = torch.cat([harvested, acting])
    say(f"crosscoder: harvesting {hook} of both models on {len(harvested)} contexts")
    harvest_pair(base, ft, harvested, folder / "activations", [hook], progress=progress)
    data = PairedActivations(folder / "activations", [hook], batch_size=options.crosscoder_batch_size,
                             seed=options.seed)
    config = CrosscoderConfig(d_model=base.cfg.d_model, d_sae=options.crosscoder_width, k=options.crosscoder_k,
                              hook_names=(hook,), delta_scale=options.crosscoder_delta_scale,
                              ft_exclusive=options.ft_exclusive)
    steps = options.crosscoder_steps
    # Checkpoints every tenth of the run: a kill loses at most that much.
    train_config = TrainConfig(steps=steps, warmup_steps=min(50, steps // 10), checkpoint_every=max(1, steps // 10),
                               seed=options.seed)
    say(f"crosscoder: training {steps} steps of {options.crosscoder_batch_size} rows")
    crosscoder = train_crosscoder(data, config, train_config, folder / "crosscoder-checkpoints", progress=progress)
    save_crosscoder(crosscoder, folder / "crosscoder")
    classes = classify_latents(crosscoder)
    found = classes.ft_latents()
    scaling = latent_scaling(crosscoder, _paired_chunks(data, 16 * SCALING_ROWS), found) if found else None
    verdicts = dict(zip(scaling.latents, scaling.verdicts)) if scaling is not None else {}
    # Those Latent Scaling calls genuine first. The latents of largest r when none is ft-only or
    # ft-leaning (a short run, or models that hardly differ), so the dashboards always show the
    # fine-tune's end of the dictionary.
    pool = (sorted(found, key=lambda j: verdicts.get(j) != "ft-specific") or
            sorted(range(config.d_sae), key=lambda j: (-float(classes.relative_norm[j]), j)))
    shown = pool[:DASHBOARD_LATENTS]
    say(f"crosscoder: dashboards of {len(shown)} latents")
    staged_writes(folder / "crosscoder-dashboards",
                  lambda staging: crosscoder_dashboards(base, ft, crosscoder, contexts, staging, latents=shown))
    return {
        "layer": layer, "hook": hook, "config": config.to_dict(), "train": asdict(train_config),
        "harvested_contexts": len(harvested), "harvested_tokens": data.total_tokens, "chat_prompts": chat_prompts,
        "counts": classes.counts, "ft_leaning": classes.leaning("ft"), "classes": classes.to_json(),
        "latent_scaling": None if scaling is None else scaling.to_json(),
        "dashboards": {
            "selection": ("ft-only, then ft-leaning, those genuine by Latent Scaling first" if found else
                          "largest relative norm (no latent is ft-only or ft-leaning)"),
            "index": "crosscoder-dashboards/index.html",
            "latents": [{"latent": j, "kind": classes.kinds[j], "relative_norm": float(classes.relative_norm[j]),
                         "cosine": float(classes.cosine[j]), "verdict": verdicts.get(j),
                         "page": f"crosscoder-dashboards/feature_{index:04d}.html"} for index, j in enumerate(shown)]},
        "files": {"crosscoder": "crosscoder/crosscoder.json", "dictionary": "crosscoder/dictionary",
                  "activations": "activations", "checkpoints": "crosscoder-checkpoints"},
    }


def run_diff(base: HookedModel, ft: HookedModel, folder: OutputFolder | str | Path, options: DiffOptions,
             progress: bool = True, sae: SAE | None = None, log: Callable[[str], None] | None = None,
             overwrite: bool = False) -> DiffResult:
    """Diff ``ft`` against ``base`` (see the module docstring) and write the results into
    ``folder``. ``sae``: the dictionary of ``options.sae``, when already loaded; ``log``
    receives one line per step (the command line prints them)."""
    if not isinstance(options, DiffOptions):
        raise InputTypeError(f"options must be DiffOptions; got {type(options).__name__}")
    check_comparable(base, ft)  # mismatched models fail before any work or file
    options.check_models(base, ft)
    if sae is None and options.sae is not None:
        sae = load_dictionary(options.sae)
    if sae is not None:
        check_fits(base, sae)
    folder = folder if isinstance(folder, OutputFolder) else prepare_diff_folder(folder, options, overwrite)
    say = log or (lambda line: None)

    say("weight diff")
    weights = weight_diff(base, ft, top_k_rows=options.top_k, progress=progress)
    contexts = default_contexts(base, options.contexts, options.context_length, options.seed)  # [n, pos]
    say(f"difference lens on {len(contexts)} contexts of {options.context_length} tokens")
    means = difference_means(base, ft, contexts, first_positions=options.first_positions, progress=progress)
    lens = difference_lens(base, means, [*range(options.first_positions), REST], None, options.top_k)
    chat_means = chat_lens = None
    chat_prompts = options.chat_prompts_for(ft)
    if chat_prompts:
        say(f"difference lens at the last {options.last_positions} positions of {chat_prompts} generic chat prompts")
        tokens, mask = chat_prompt_tokens(base, generic_prompts(chat_prompts))
        # first_positions=1: the template's opening token (an attention sink) stays out of the 'rest'
        # mean and of the norm that scales steering.
        chat_means = difference_means(base, ft, tokens, first_positions=1, attention_mask=mask,
                                      last_positions=options.last_positions, progress=progress)
        chat_lens = difference_lens(base, chat_means, chat_means.last_groups, None, options.top_k)
    say("steering the base with the difference")
    steering = run_steering(base, means, options, progress)
    say("per-token KL")
    kl = per_token_kl(base, ft, contexts, progress=progress)
    sae_result = None
    if sae is not None:
        say(f"SAE diff at {sae.cfg.hook_name}")
        sae_result = sae_diff(sae, base, ft, contexts, SAEDiffConfig(top_latents=min(options.top_k, sae.cfg.d_sae)),
                              progress=progress)
    crosscoder = {"skipped": "crosscoder_steps is 0"}
    if options.crosscoder_steps:
        crosscoder = run_crosscoder(base, ft, folder, options, contexts, progress, say)
    models = {"base": describe_model(base, options.base_name), "ft": describe_model(ft, options.ft_name)}
    models["same_weights"] = models["base"]["model_sha256"] == models["ft"]["model_sha256"]
    result = DiffResult(options, models, weights, means, lens, steering, kl, sae_result, crosscoder, chat_means,
                        chat_lens)
    summary = result.to_json()
    say("writing the report")
    files = write_diff_report(summary, folder.path)
    summary["files"] = files
    object.__setattr__(result, "files", files)
    atomic_text(folder / "diff.json", json.dumps(summary, indent=1, allow_nan=False))
    folder.record([name for name in DIFF_OUTPUTS if (folder / name).exists()])
    return result

