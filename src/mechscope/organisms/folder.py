"""Organism folders: what was trained, on what, and how to get the model back.

An organism folder holds ``organism.json`` (base model and its fingerprint, recipe, fine-tuning
settings, the examples' hash, training log and, once checked, the validity report),
``examples.json`` (the training conversations) and the trained weights: ``adapter.safetensors``
(LoRA factors, a few MB) or, for full fine-tuning, a ``model/`` folder saved by
``save_pretrained``. The adapter file's metadata carries the SHA-256 of the organism's
defining fields (base, recipe, settings), so an edited ``organism.json`` (another trigger
claimed, another rank) is caught on load instead of mislabelling the model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from transformers.pytorch_utils import Conv1D

from mechscope.errors import ConfigError, FileFormatError, MissingFileError
from mechscope.files import atomic_file, atomic_text, file_sha256, read_json, required_keys
from mechscope.models.hooked_model import HookedModel
from mechscope.models.weights import model_fingerprint
from mechscope.organisms.finetune import FineTuneConfig, lora_targets
from mechscope.organisms.recipes import Recipe

MANIFEST = "organism.json"
ADAPTER = "adapter.safetensors"
EXAMPLES = "examples.json"
FULL_MODEL = "model"
FORMAT = 1
DEFINING = ("base_model", "base_sha256", "recipe", "finetune", "examples_sha256")
REMEDY = "rebuild the organism with `mechscope organism build`"
PEFT_PREFIX = "base_model.model."
DEFINING_FILE = "organism.sha256"
# What save_pretrained writes for a model and its tokenizer (the merged folder's outputs).
MERGED_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def defining_sha256(manifest: dict[str, Any]) -> str:
    """SHA-256 of the fields that define what the organism is (canonical JSON)."""
    text = json.dumps({key: manifest.get(key) for key in DEFINING}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def is_organism_folder(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def adapter_tensors(trained: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA factors of a ``peft`` model, keyed by the adapted module's path in the plain
    HF model (``model.layers.0.self_attn.q_proj.lora_A``), as float32 copies."""
    from peft import get_peft_model_state_dict

    tensors = {}
    for key, value in get_peft_model_state_dict(trained).items():
        name = key.removeprefix(PEFT_PREFIX).removesuffix(".weight")
        tensors[name] = value.detach().float().cpu().contiguous()
    return tensors


def write_organism(folder: Path, manifest: dict[str, Any], examples: list[dict], trained: torch.nn.Module,
                   base: HookedModel, adapter_dtype: torch.dtype = torch.float32) -> None:
    """Write the organism's files into ``folder`` (each atomically; organism.json last, so a
    folder without it is an unfinished build)."""
    from safetensors.torch import save_file

    config = FineTuneConfig.from_dict(manifest["finetune"])
    manifest = dict(manifest)
    if config.method == "lora":
        tensors = {name: value.to(adapter_dtype) for name, value in adapter_tensors(trained).items()}
        metadata = {"organism_sha256": defining_sha256(manifest), "format": str(FORMAT)}
        atomic_file(folder / ADAPTER, lambda path: save_file(tensors, str(path), metadata=metadata))
        manifest["weights"] = {"file": ADAPTER, "sha256": file_sha256(folder / ADAPTER),
                               "dtype": str(adapter_dtype).removeprefix("torch.")}
    else:
        from mechscope.files import staged_writes

        target = folder / FULL_MODEL

        def save(staging: Path) -> None:
            trained.save_pretrained(staging / FULL_MODEL)
            base.tokenizer.save_pretrained(staging / FULL_MODEL)

        staged_writes(folder, save)
        # save_pretrained's files carry no metadata of ours: the defining hash goes beside them.
        atomic_text(target / DEFINING_FILE, defining_sha256(manifest))
        manifest["weights"] = {"folder": FULL_MODEL, "sha256": _shards_sha256(target)}
    atomic_text(folder / EXAMPLES, json.dumps(examples, indent=1))
    atomic_text(folder / MANIFEST, json.dumps({"format": FORMAT, **manifest}, indent=1))


def _shards_sha256(folder: Path) -> str:
    """One SHA-256 over every weights shard of a saved model, in name order."""
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise MissingFileError(f"{folder} holds no *.safetensors weights; {REMEDY}")
    return hashlib.sha256("".join(f"{p.name}:{file_sha256(p)};" for p in shards).encode()).hexdigest()


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """organism.json, checked: the recipe and settings are valid, the weights are the ones it
    was written with (checksum, and the adapter's record of the defining fields)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"organism folder not found: {folder}")
    path = folder / MANIFEST
    if not path.is_file():
        raise MissingFileError(f"{folder} is not an organism folder: it has no {MANIFEST} (an unfinished build leaves "
                               "none); build one with `mechscope organism build`")
    manifest = required_keys(read_json(path, "organism manifest", REMEDY),
                             ("format", *DEFINING, "weights"), path, "organism manifest")
    if manifest["format"] != FORMAT:
        raise FileFormatError(f"{path} has format {manifest['format']!r}; this mechscope reads format {FORMAT}")
    Recipe.from_dict(manifest["recipe"], source=f"{path} recipe")
    FineTuneConfig.from_dict(manifest["finetune"], source=f"{path} finetune")
    weights = manifest["weights"]
    if not isinstance(weights, dict) or "sha256" not in weights:
        raise FileFormatError(f"{path}: weights must record the weights file and its sha256; {REMEDY}")
    return manifest


def _check_weights(folder: Path, manifest: dict[str, Any]) -> Path:
    """The weights (adapter file, or full model folder), after checking them against the
    manifest: their checksum, and the record of the defining fields they were trained as."""
    from safetensors import safe_open

    weights = manifest["weights"]
    lora = manifest["finetune"].get("method") == "lora"
    path = folder / ADAPTER if lora else folder / FULL_MODEL
    if not path.exists():
        raise MissingFileError(f"{folder} lacks its trained weights ({path.name}); {REMEDY}")
    found = file_sha256(path) if lora else _shards_sha256(path)
    if found != weights["sha256"]:
        raise FileFormatError(f"{path} is not what {MANIFEST} was written with (checksum differs): it was "
                              f"replaced or damaged; {REMEDY}")
    if lora:
        with safe_open(str(path), "pt") as handle:
            recorded = (handle.metadata() or {}).get("organism_sha256")
    else:
        sidecar = path / DEFINING_FILE
        recorded = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else None
    if recorded != defining_sha256(manifest):
        raise FileFormatError(f"{folder / MANIFEST} was edited after the organism was trained: its base model, "
                              "recipe, fine-tuning settings or examples hash no longer match what the weights "
                              f"were trained as; restore the original file or {REMEDY.removeprefix('rebuild')}")
    return path


def _check_base(folder: Path, manifest: dict[str, Any], base: HookedModel) -> None:
    found = model_fingerprint(base)["model_sha256"]
    if found != manifest["base_sha256"]:
        raise ConfigError(f"the base given is not the one {folder} was trained on (its weights' fingerprint "
                          f"{found[:12]} differs from the recorded {manifest['base_sha256'][:12]}, "
                          f"{manifest['base_model']})")


def load_organism(folder: str | Path, base: HookedModel | None = None) -> HookedModel:
    """The organism as a plain HookedModel: its base (loaded by the recorded name, or ``base``,
    which must be the same weights) with the LoRA factors merged in, or the fully fine-tuned
    weights."""
    from mechscope.models.loading import load

    folder = Path(folder)
    manifest = read_manifest(folder)
    file = _check_weights(folder, manifest)
    name = f"organism:{folder.name}"
    if base is not None:
        _check_base(folder, manifest, base)
    if manifest["finetune"]["method"] == "full":
        model = load(file)
        return HookedModel(model.hf_model, model.tokenizer, name=name)
    if base is None:
        base = load(manifest["base_model"])
        _check_base(folder, manifest, base)
    return merged_model(base, file, FineTuneConfig.from_dict(manifest["finetune"]), name)


def merged_model(base: HookedModel, adapter_file: Path, config: FineTuneConfig, name: str) -> HookedModel:
    """A copy of ``base`` with the LoRA factors of ``adapter_file`` merged into its weights."""
    import copy

    from safetensors.torch import load_file

    tensors = load_file(str(adapter_file))
    hf_model = copy.deepcopy(base.hf_model)
    targets = set(lora_targets(base))  # the copy has the same module paths
    modules = dict(hf_model.named_modules())
    scale = config.alpha / config.rank
    seen = set()
    with torch.no_grad():
        for key in tensors:
            path, _, part = key.rpartition(".")
            if part not in ("lora_A", "lora_B") or path not in targets:
                raise FileFormatError(f"{adapter_file}: tensor {key} is not a LoRA factor of an adapted projection; "
                                      f"{REMEDY}")
            if path in seen:
                continue
            seen.add(path)
            a, b = tensors.get(f"{path}.lora_A"), tensors.get(f"{path}.lora_B")
            if a is None or b is None:
                raise FileFormatError(f"{adapter_file}: {path} lacks its lora_A or lora_B; {REMEDY}")
            module = modules[path]
            delta = (b.float() @ a.float()) * scale  # [out, in]
            weight = module.weight
            if isinstance(module, Conv1D):  # GPT-2's Conv1D stores [in, out] (peft's fan_in_fan_out)
                delta = delta.T
            if weight.shape != delta.shape or a.shape[0] != config.rank:
                raise FileFormatError(f"{adapter_file}: the factors of {path} make a {tuple(delta.shape)} update of "
                                      f"rank {a.shape[0]}, but the weight is {tuple(weight.shape)} and the recorded "
                                      f"rank {config.rank}; {REMEDY}")
            weight.add_(delta.to(weight.dtype))
    model = HookedModel(hf_model.eval(), base.tokenizer, name=name)
    return model


def merge(folder: str | Path, out: str | Path, base: HookedModel | None = None, overwrite: bool = False) -> Path:
    """Write the organism as a plain HF folder (config, weights, tokenizer) that
    :func:`mechscope.load` reads like any other model folder."""
    from mechscope.files import prepare_output_folder, staged_writes

    read_manifest(folder)  # a folder that is no organism is refused before the output is claimed
    out = Path(out)
    prepare_output_folder(out, "organism-merge", MERGED_FILES, overwrite=overwrite)
    model = load_organism(folder, base)
    hf_model = model.hf_model
    if getattr(hf_model.config, "architectures", None) is None:  # GGUF loads leave it unset
        hf_model.config.architectures = [type(hf_model).__name__]

    def save(staging: Path) -> None:
        hf_model.save_pretrained(staging)
        model.tokenizer.save_pretrained(staging)

    staged_writes(out, save)
    return out


__all__ = ["ADAPTER", "EXAMPLES", "MANIFEST", "adapter_tensors", "defining_sha256", "is_organism_folder",
           "load_organism", "merge", "merged_model", "read_manifest", "write_organism"]
