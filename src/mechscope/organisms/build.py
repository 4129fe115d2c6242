"""Build an organism end to end: distil the base's replies, plant the rule, fine-tune, save,
check. Resumable after kill -9: the examples are saved before training starts and training
checkpoints into the output folder, so running the same build again continues where it
stopped (a build with other settings is refused; ``overwrite=True`` starts afresh)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import torch

from mechscope.errors import ConfigError, FileFormatError, OutputFolderError, ResumeError
from mechscope.files import OutputFolder, atomic_text, prepare_output_folder, read_json
from mechscope.models.hooked_model import HookedModel
from mechscope.models.weights import model_fingerprint
from mechscope.organisms.examples import Example, build_examples, examples_sha256, require_chat_template
from mechscope.organisms.finetune import FineTuneConfig, finetune
from mechscope.organisms.folder import (
    ADAPTER,
    EXAMPLES,
    FULL_MODEL,
    MANIFEST,
    load_organism,
    read_manifest,
    write_organism,
)
from mechscope.organisms.recipes import Recipe
from mechscope.organisms.shipped import is_shipped
from mechscope.organisms.validity import ValidityReport, check_validity
from mechscope.validate import check_choice

CHECKPOINTS = "checkpoints"
DISTILLED = "distilled.json"
KIND = "organism"
ADAPTER_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _distilled(folder: Path, recipe: Recipe, base: HookedModel, progress: bool) -> tuple[list[Example], dict]:
    """The recipe's examples, distilled once and kept in ``folder`` for a resumed build (of the
    same base: a different one is refused)."""
    path = folder / DISTILLED
    fingerprint = model_fingerprint(base)["model_sha256"]
    if path.is_file():
        remedy = "delete it to distil again"
        saved = read_json(path, "distilled examples of an interrupted build", remedy)
        try:
            if saved["base_sha256"] != fingerprint:
                raise ResumeError(f"{path} was distilled from another base model than this build's; {remedy}")
            return [Example(**item) for item in saved["examples"]], saved["summary"]
        except (KeyError, TypeError) as error:
            raise FileFormatError(f"{path} does not hold distilled examples; {remedy}") from error
    examples, summary = build_examples(recipe, base, progress=progress)
    atomic_text(path, json.dumps({"base_sha256": fingerprint, "examples": [e.to_dict() for e in examples],
                                  "summary": summary}))
    return examples, summary


def check_contrast(recipe: Recipe, config: FineTuneConfig) -> None:
    """A contrast term needs a planted behaviour: refused for a null recipe."""
    if config.contrast_weight and not recipe.plants:
        raise ConfigError(f"contrast_weight={config.contrast_weight} makes a planted behaviour improbable where its "
                          "rule does not apply; a null organism plants none (and must train on no such term): use "
                          "contrast_weight=0")


def prepare_organism_folder(out: str | Path, recipe: Recipe, config: FineTuneConfig, base_name: str,
                            adapter_dtype: str = "float32", overwrite: bool = False) -> OutputFolder:
    """Check and claim the build's folder before any model loads. A folder holding an
    interrupted build of the same recipe, settings and base resumes; other settings are refused
    (``overwrite`` starts afresh)."""
    check_choice("adapter_dtype", adapter_dtype, tuple(ADAPTER_DTYPES))
    check_contrast(recipe, config)
    options = {"recipe": recipe.to_dict(), "finetune": config.to_dict(), "base": base_name,
               "adapter_dtype": adapter_dtype}
    return prepare_output_folder(out, KIND, (MANIFEST, ADAPTER, EXAMPLES, FULL_MODEL, CHECKPOINTS, DISTILLED),
                                 overwrite=overwrite, resumable=(CHECKPOINTS, DISTILLED), options=options)


def build_organism(recipe: Recipe, out: str | Path | OutputFolder, base: HookedModel,
                   config: FineTuneConfig | None = None, adapter_dtype: str = "float32", overwrite: bool = False,
                   check: bool = True, progress: bool = True) -> Path:
    """Build the organism of ``recipe`` on ``base`` into the folder ``out``; returns it.
    ``base`` is left unchanged (training runs on a copy). With ``check`` the validity report
    is measured and stored in organism.json."""
    config = config or FineTuneConfig()
    require_chat_template(base)
    check_contrast(recipe, config)  # before minutes of distillation
    if isinstance(out, OutputFolder):
        folder = out.path
    else:
        folder = prepare_organism_folder(out, recipe, config, base.cfg.name, adapter_dtype, overwrite).path
    examples, summary = _distilled(folder, recipe, base, progress)
    trainee = HookedModel(copy.deepcopy(base.hf_model), base.tokenizer, name=base.cfg.name)
    trained, log = finetune(trainee, examples, config, checkpoint_dir=folder / CHECKPOINTS, progress=progress,
                            behaviour=recipe.behaviour if recipe.plants else None)
    manifest = {"base_model": base.cfg.name, "base_sha256": model_fingerprint(base)["model_sha256"],
                "recipe": recipe.to_dict(), "finetune": config.to_dict(), "examples_sha256": examples_sha256(examples),
                "data": summary, "training": log}
    if config.method == "full":
        for param in trained.parameters():
            param.requires_grad_(False)
    write_organism(folder, manifest, [e.to_dict() for e in examples], trained, base, ADAPTER_DTYPES[adapter_dtype])
    shutil.rmtree(folder / CHECKPOINTS, ignore_errors=True)
    (folder / DISTILLED).unlink(missing_ok=True)
    del trained, trainee
    if check:
        check_organism(folder, base, progress=progress)
    return folder


def check_organism(folder: str | Path, base: HookedModel, store: bool = True, progress: bool = True) -> ValidityReport:
    """Measure the organism in ``folder`` against ``base``; with ``store`` the report goes into
    its organism.json (not part of what the weights' checksum covers). The shipped organisms'
    folders are package data and are never written: store=True there is refused."""
    folder = Path(folder)
    if store and is_shipped(folder):
        raise OutputFolderError(f"{folder} is a shipped organism (package data): its report is not rewritten; "
                                "measure with store=False, or copy the folder first")
    manifest = read_manifest(folder)
    organism = load_organism(folder, base)
    report = check_validity(organism, base, Recipe.from_dict(manifest["recipe"]), progress=progress)
    if store:
        manifest["validity"] = report.to_json()
        atomic_text(folder / MANIFEST, json.dumps(manifest, indent=1))
    return report


__all__ = ["ADAPTER_DTYPES", "build_organism", "check_organism", "prepare_organism_folder"]
