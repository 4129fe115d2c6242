"""The run behind ``mechscope lens train``: fit a tuned lens on the default corpus into a
checked, resumable output folder, then compare it with the logit lens on held-out contexts."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from mechscope.analysis import LensComparison, TunedLens, TunedLensConfig, compare_lenses, train_tuned_lens
from mechscope.data.contexts import default_contexts
from mechscope.files import OutputFolder, atomic_text, prepare_output_folder
from mechscope.models.hooked_model import HookedModel
from mechscope.validate import check_int

LENS_OUTPUTS = ("lens.safetensors", "lens.json", "checkpoints", "comparison.json")
LENS_RESUMABLE = ("checkpoints",)  # an interrupted training continues from these


def prepare_lens_folder(out: str | Path, config: TunedLensConfig, contexts: int, held_out: int,
                        model: str | None = None, overwrite: bool = False) -> OutputFolder:
    """Check and claim ``out`` before any model loads; a rerun with the same options resumes."""
    check_int("contexts", contexts, 1)
    check_int("held_out", held_out, 0)
    from mechscope.models.loading import DEFAULT_MODEL

    # The default spelled out, so "no --model" and "--model <the default>" resume each other.
    options = {**asdict(config), "layers": None if config.layers is None else list(config.layers),
               "contexts": contexts, "held_out": held_out, "model": model or DEFAULT_MODEL}
    return prepare_output_folder(out, "lens train", LENS_OUTPUTS, overwrite=overwrite, resumable=LENS_RESUMABLE,
                                 options=options)


def run_lens_train(model: HookedModel, folder: OutputFolder, config: TunedLensConfig, contexts: int = 256,
                   held_out: int = 16, progress: bool = True) -> tuple[TunedLens, LensComparison | None]:
    """Train on ``contexts`` corpus contexts (checkpoints in ``folder/checkpoints``), save
    ``folder/lens.safetensors`` + ``lens.json``, and, with ``held_out`` > 0, write the per-layer
    KL of both lenses on that many further contexts to ``comparison.json``."""
    corpus = default_contexts(model, contexts + held_out, seed=config.seed)
    lens = train_tuned_lens(model, corpus[:contexts], config, folder / "checkpoints", progress=progress)
    lens.save(folder / "lens")
    comparison = None
    if held_out:
        comparison = compare_lenses(model, lens, corpus[contexts:],
                                    layers=None if config.layers is None else list(config.layers))
        atomic_text(folder / "comparison.json", json.dumps(comparison.to_json(), indent=1))
    folder.record([name for name in LENS_OUTPUTS if (folder / name).exists()])
    return lens, comparison
