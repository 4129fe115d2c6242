"""The run behind ``mechscope sae train-transcoders``: a transcoder for every layer of a model
(or, with ``window`` > 1, a cross-layer transcoder), trained in one pass per batch over the
default corpus (resumable), saved as ``transcoders/`` (``layer_{l}/`` each, or
``crosslayer.json`` + weights: what ``mechscope graph --transcoders`` reads) and scored on held-out
contexts (``eval.json``: per-layer L0 / FVU / dead fraction, CE with every layer spliced)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mechscope import checks
from mechscope.data.contexts import CONTEXT_LENGTH, default_contexts
from mechscope.distributed import Ranks, check_ranks, output_folder_on_ranks
from mechscope.errors import ConfigError
from mechscope.files import OutputFolder, atomic_text, prepare_output_folder
from mechscope.graphs.crosslayer import CrossLayerConfig, save_crosslayer
from mechscope.graphs.crosslayer_train import train_crosslayer
from mechscope.graphs.export import save_transcoders
from mechscope.graphs.transcoders import (
    Placement,
    TranscoderSetConfig,
    TranscoderSetEvaluation,
    evaluate_transcoders,
    train_transcoders,
)
from mechscope.models.hooked_model import HookedModel
from mechscope.sae.config import Architecture
from mechscope.sae.train import TrainConfig
from mechscope.validate import check_choice, check_int, check_number

TRANSCODER_OUTPUTS = ("checkpoints", "transcoders", "eval.json")
RESUMABLE = ("checkpoints",)  # an interrupted training continues from these
EVAL_CONTEXTS = 16


@dataclass(frozen=True)
class TranscoderOptions:
    """``mechscope sae train-transcoders``' options; checked on creation, before any model loads."""

    d_sae: int = 2048
    arch: Architecture = "topk"
    k: int = 32
    skip: bool = False
    tokens: int = 400_000
    batch_contexts: int = 16
    contexts: int = 2048
    lr: float = 1e-3
    seed: int = 0
    window: int = 1  # 1: a transcoder per layer; more: a cross-layer transcoder writing this many layers
    placement: Placement = "data"  # under torchrun: split each batch over the ranks, or whole layers per rank

    def __post_init__(self) -> None:
        TranscoderSetConfig(self.d_sae, self.arch, self.k, self.skip)  # its own checks
        check_int("window", self.window, 1, 1000)
        check_choice("placement", self.placement, Placement)
        if self.window > 1 and self.placement != "data":
            raise ConfigError(f"--placement {self.placement} gives each rank whole per-layer transcoders; a cross-layer "
                              f"transcoder (--window {self.window}) is one dictionary: use --window 1")
        if self.window > 1 and self.arch != "topk":
            raise ConfigError(f"a cross-layer transcoder (--window {self.window}) is TopK; got --arch {self.arch}")
        check_int("tokens", self.tokens, 1, checks.MAX_TOKENS)
        check_int("batch_contexts", self.batch_contexts, 1, 1024)
        check_int("contexts", self.contexts, 1, checks.MAX_CONTEXTS)
        check_number("lr", self.lr, minimum=0.0, strict_minimum=True)
        check_int("seed", self.seed, 0, checks.MAX_SEED)
        if self.batch_contexts > self.contexts:
            raise ConfigError(f"batch_contexts ({self.batch_contexts}) must be at most contexts ({self.contexts})")
        if self.tokens < self.step_tokens:
            raise ConfigError(f"tokens ({self.tokens:,}) must be at least one step: {self.batch_contexts} contexts of "
                              f"{CONTEXT_LENGTH - 1} tokens = {self.step_tokens:,}")

    @property
    def step_tokens(self) -> int:
        return self.batch_contexts * (CONTEXT_LENGTH - 1)  # BOS rows are dropped

    @property
    def steps(self) -> int:
        return self.tokens // self.step_tokens


def prepare_transcoders_folder(out: str | Path, options: TranscoderOptions, overwrite: bool = False,
                               model: str | None = None) -> OutputFolder:
    """A folder that resumes an earlier run with the same options and refuses other options."""
    from mechscope.models.loading import DEFAULT_MODEL

    recorded = asdict(options)
    if options.placement == "data":  # recorded only when not the default: earlier folders still resume
        del recorded["placement"]
    return prepare_output_folder(out, "sae train-transcoders", TRANSCODER_OUTPUTS, overwrite=overwrite,
                                 resumable=RESUMABLE, options={**recorded, "model": model or DEFAULT_MODEL})


def run_train_transcoders(model: HookedModel, options: TranscoderOptions, out: OutputFolder | str | Path,
                          overwrite: bool = False, progress: bool = True,
                          ranks: Ranks | None = None) -> TranscoderSetEvaluation | None:
    """Train (resumable), save ``transcoders/layer_{l}/`` and write ``eval.json`` (with the
    training time of this call and the tokens per second). With ``ranks`` (torchrun; rank 0
    prepares ``out`` for all), per-layer transcoders train by ``options.placement``; rank 0
    saves, scores and returns the evaluation, the others None."""
    ranks = check_ranks(ranks)
    folder = out if isinstance(out, OutputFolder) else \
        output_folder_on_ranks(ranks, lambda: prepare_transcoders_folder(out, options, overwrite), str(out))
    if options.window > 1 and ranks.distributed:
        raise ConfigError(f"a cross-layer transcoder (--window {options.window}) trains in one process; per-layer "
                          "transcoders (--window 1) train on several ranks")
    if options.window > model.cfg.n_layers:
        raise ConfigError(f"--window {options.window} is more than the model's {model.cfg.n_layers} layers (the full "
                          f"cross-layer transcoder is --window {model.cfg.n_layers})")
    contexts = default_contexts(model, options.contexts, CONTEXT_LENGTH, options.seed)
    steps = options.steps
    settings = TrainConfig(steps=steps, lr=options.lr, warmup_steps=min(50, steps // 10),
                           checkpoint_every=max(1, steps // 50), seed=options.seed)
    started = time.perf_counter()
    if options.window > 1:
        cfg = CrossLayerConfig(model.cfg.n_layers, model.cfg.d_model, options.d_sae, options.k, options.window,
                               options.skip, model.cfg.name)
        transcoders = train_crosslayer(model, contexts, cfg, settings, options.batch_contexts, folder / "checkpoints",
                                       progress)
        seconds = time.perf_counter() - started
    else:
        config = TranscoderSetConfig(options.d_sae, options.arch, options.k, options.skip)
        transcoders = train_transcoders(model, contexts, config, settings, options.batch_contexts,
                                        folder / "checkpoints", progress, ranks=ranks, placement=options.placement)
        seconds = time.perf_counter() - started
    evaluation: list[TranscoderSetEvaluation] = []

    def save_and_score() -> None:
        (save_crosslayer if options.window > 1 else save_transcoders)(transcoders, folder / "transcoders")
        held_out = default_contexts(model, EVAL_CONTEXTS, CONTEXT_LENGTH, options.seed, skip=options.contexts)
        evaluation.append(evaluate_transcoders(model, transcoders, held_out))
        record = {**evaluation[0].to_json(), "training": {
            "steps": steps, "tokens": steps * options.step_tokens, "seconds_this_call": round(seconds, 1),
            "window": options.window, "kind": "cross-layer" if options.window > 1 else "per-layer",
            "ranks": ranks.world_size, "placement": options.placement}}
        atomic_text(folder / "eval.json", json.dumps(record, indent=1))
        folder.record()

    ranks.on_main(save_and_score, "saving and scoring the transcoders")
    return evaluation[0] if evaluation else None


__all__ = ["TRANSCODER_OUTPUTS", "TranscoderOptions", "prepare_transcoders_folder", "run_train_transcoders"]
