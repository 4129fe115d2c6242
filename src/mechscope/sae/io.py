"""Save and load dictionaries in SAELens' on-disk format: ``cfg.json`` + ``sae_weights.safetensors``.

Architecture names on disk are SAELens' ("standard", "topk", "jumprelu", "transcoder",
"skip_transcoder"). BatchTopK and Matryoshka dictionaries are stored as "jumprelu" with their
learned threshold for every latent, which is how SAELens stores them for inference. mechscope's
own full config rides along in ``metadata["mechscope"]`` so a round trip restores the exact
architecture; files written by SAELens load from the SAELens fields alone. Safetensors and JSON
only: nothing is unpickled.

Loading trusts nothing in the files: every key that decides the function must be present (no
default is guessed), the mechscope and SAELens fields must agree, and every tensor must be
present, floating, finite and exactly the shape the config implies, with no extra tensors
(a broadcastable wrong shape would otherwise load and change the outputs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from mechscope.errors import (
    ConfigError,
    FileFormatError,
    InputTypeError,
    MechscopeError,
    MissingFileError,
    NonFiniteError,
    OutputFolderError,
)
from mechscope.files import atomic_file, atomic_text, file_sha256, read_json, read_safetensors
from mechscope.sae.config import (
    SAELENS_ARCHITECTURES,
    SAEConfig,
    SAELensArchitecture,
    SAELensNormalisation,
    SAELensReshape,
)
from mechscope.sae.model import SAE
from mechscope.validate import check_choice, check_finite, literal_choices

CONFIG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
TO_SAELENS: dict[str, SAELensArchitecture] = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu",
                                              "batchtopk": "jumprelu", "matryoshka": "jumprelu"}
FROM_SAELENS = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "transcoder": "relu",
                "skip_transcoder": "relu"}
REMEDY = "delete the dictionary folder and save or download it again"
FLOAT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                "float64": torch.float64}


def _weights_of(sae: SAE) -> dict[str, torch.Tensor]:
    """The tensors a dictionary file holds: W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae,
    d_out], b_dec [d_out], threshold [d_sae] (JumpReLU family), W_skip [d_in, d_out] (skip)."""
    weights = {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    if sae.cfg.architecture in ("jumprelu", "batchtopk", "matryoshka"):
        weights["threshold"] = sae.activation_threshold()
    if sae.W_skip is not None:
        weights["W_skip"] = sae.W_skip
    return {name: tensor.detach().cpu().contiguous().clone() for name, tensor in weights.items()}


def _expected_shapes(cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
    shapes = {"W_enc": (cfg.d_in, cfg.d_sae), "b_enc": (cfg.d_sae,), "W_dec": (cfg.d_sae, cfg.output_dim),
              "b_dec": (cfg.output_dim,)}
    if cfg.architecture in ("jumprelu", "batchtopk", "matryoshka"):
        shapes["threshold"] = (cfg.d_sae,)
    if cfg.skip_connection:
        shapes["W_skip"] = (cfg.d_in, cfg.output_dim)
    return shapes


def _saelens_architecture(cfg: SAEConfig) -> str:
    if cfg.is_transcoder:
        return "skip_transcoder" if cfg.skip_connection else "transcoder"
    return TO_SAELENS[cfg.architecture]


def save_sae(sae: SAE, folder: str | Path) -> Path:
    """Write ``folder/cfg.json`` and ``folder/sae_weights.safetensors`` (each atomically; the
    config records the weights file's SHA-256, so a save interrupted between the two files is
    detected on load). Refuses non-finite weights before writing anything."""
    if not isinstance(sae, SAE):
        raise InputTypeError(f"save_sae needs an SAE; got {type(sae).__name__}")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"{folder} is a file, not a folder: save_sae writes {CONFIG_FILE} and {WEIGHTS_FILE} "
                                "into a folder")
    weights = _weights_of(sae)
    for name, tensor in weights.items():
        check_finite(f"{name} of the dictionary to save in {folder} (nothing was written)", tensor)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = sae.cfg
    config: dict[str, Any] = {
        "architecture": _saelens_architecture(cfg), "d_in": cfg.d_in, "d_sae": cfg.d_sae,
        "dtype": str(sae.W_enc.dtype).split(".")[-1], "device": "cpu", "apply_b_dec_to_input": not cfg.is_transcoder,
        "normalize_activations": "none", "reshape_activations": "none",
        "metadata": {"model_name": cfg.model_name, "hook_name": cfg.hook_name, "mechscope": cfg.to_dict()},
    }
    if cfg.architecture == "topk":
        config["k"] = cfg.k
    if cfg.is_transcoder:
        config["d_out"] = cfg.d_out
        config["metadata"]["hook_name_out"] = cfg.hook_name_out
    try:  # before any file is written: a config that cannot be saved must not leave new weights behind
        json.dumps(config)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"the dictionary's config cannot be saved as JSON ({error}); nothing was written") from error
    weights_path = atomic_file(folder / WEIGHTS_FILE, lambda path: save_file(weights, str(path)))
    config["metadata"]["weights_sha256"] = file_sha256(weights_path)
    atomic_text(folder / CONFIG_FILE, json.dumps(config, indent=1))
    return folder


def _with_source(source: Path, error: MechscopeError) -> MechscopeError:
    """The same kind of error, its message prefixed by the file it came from."""
    return error if str(source) in str(error) else type(error)(f"{source}: {error}")


def _require(config: dict, keys: list[str], path: Path, why: str) -> None:
    missing = [key for key in keys if config.get(key) is None]
    if missing:
        raise FileFormatError(f"{path} lacks {', '.join(missing)} ({why}); mechscope assumes no default for what "
                              f"decides the dictionary; {REMEDY}")


def _config_from_saelens(config: dict, metadata: dict, path: Path) -> SAEConfig:
    """The SAEConfig a SAELens-only ``cfg.json`` describes; architecture, d_in and d_sae are
    required, k for TopK, d_out for transcoders."""
    _require(config, ["architecture", "d_in", "d_sae"], path, "they decide the dictionary's shape")
    architecture = check_choice(f"{path}: architecture", config["architecture"], SAELensArchitecture)
    if architecture == "topk":
        _require(config, ["k"], path, "a TopK SAE's k decides how many latents fire")
    transcoder = architecture in ("transcoder", "skip_transcoder")
    if transcoder:
        _require(config, ["d_out"], path, "a transcoder's output width")
    elif config.get("d_out") not in (None, config["d_in"]):
        raise FileFormatError(f"{path}: d_out={config['d_out']!r} differs from d_in={config['d_in']!r}, but "
                              f"architecture {architecture!r} is an SAE (reconstructs its input); {REMEDY}")
    try:
        return SAEConfig(d_in=config["d_in"], d_sae=config["d_sae"], architecture=FROM_SAELENS[architecture],
                         k=config["k"] if architecture == "topk" else 32,
                         d_out=config["d_out"] if transcoder else None,
                         skip_connection=architecture == "skip_transcoder",
                         hook_name=metadata.get("hook_name") or config.get("hook_name") or "",
                         model_name=metadata.get("model_name") or config.get("model_name") or "")
    except MechscopeError as error:
        raise _with_source(path, error) from error


def _check_agreement(cfg: SAEConfig, config: dict, path: Path) -> None:
    """The SAELens fields of a mechscope file must describe its mechscope config: an edit of
    one without the other leaves it unclear which dictionary the file holds."""
    claims = {"architecture": _saelens_architecture(cfg), "d_in": cfg.d_in, "d_sae": cfg.d_sae}
    if cfg.architecture == "topk":
        claims["k"] = cfg.k
    if cfg.is_transcoder:
        claims["d_out"] = cfg.d_out
    differences = [f"{key}: {config.get(key)!r} vs metadata.mechscope's {value!r}"
                   for key, value in claims.items() if config.get(key) != value]
    if differences:
        raise FileFormatError(f"{path}: the SAELens fields disagree with metadata.mechscope ({'; '.join(differences)}); "
                              f"the file was edited or is corrupt; {REMEDY}")
    if config.get("rescale_acts_by_decoder_norm"):
        raise FileFormatError(f"{path}: rescale_acts_by_decoder_norm is set, but mechscope never saves with it; "
                              f"the file was edited; {REMEDY}")


def _check_preprocessing(cfg: SAEConfig, config: dict, path: Path) -> None:
    """Input transformations SAELens may apply that mechscope does not implement."""
    if not config.get("apply_b_dec_to_input", True) and not cfg.is_transcoder:
        raise ConfigError(f"{path}: SAEs with apply_b_dec_to_input=false are not supported (mechscope subtracts b_dec)")
    normalisation = config.get("normalize_activations") or "none"
    if normalisation not in literal_choices(SAELensNormalisation):
        raise ConfigError(f"{path}: normalize_activations={normalisation!r} is not supported: fold the scaling into "
                          "the weights first (SAELens does so at the end of training), leaving 'none'")
    check_choice(f"{path}: reshape_activations", config.get("reshape_activations") or "none", SAELensReshape)
    if config.get("rescale_acts_by_decoder_norm") and cfg.architecture != "topk":
        raise FileFormatError(f"{path}: rescale_acts_by_decoder_norm is set for a {config['architecture']!r} "
                              "dictionary; SAELens uses it for TopK only")


def _check_weights(weights: dict[str, torch.Tensor], cfg: SAEConfig, config: dict, path: Path) -> None:
    """Every tensor present, no extra one, floating, of the dtype cfg.json names, exactly the
    config's shape, finite; thresholds non-negative (BatchTopK's: one value for every latent)."""
    expected = _expected_shapes(cfg)
    missing, extra = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or extra:
        raise FileFormatError(f"{path} does not hold the tensors of a {cfg.architecture} dictionary"
                              f"{' transcoder' if cfg.is_transcoder else ''}: missing {missing or 'none'}, "
                              f"unexpected {extra or 'none'}; expected {sorted(expected)}; {REMEDY}")
    dtype_name = str(config.get("dtype") or "").removeprefix("torch.")
    named_dtype = FLOAT_DTYPES.get(dtype_name)
    for name, shape in expected.items():
        tensor = weights[name]
        if not tensor.is_floating_point():
            raise FileFormatError(f"{path}: tensor {name} is {tensor.dtype}; dictionary weights are floating; {REMEDY}")
        if named_dtype is not None and tensor.dtype != named_dtype:
            raise FileFormatError(f"{path}: tensor {name} is {tensor.dtype} but {CONFIG_FILE} says dtype "
                                  f"{dtype_name!r}; {REMEDY}")
        if tuple(tensor.shape) != shape:
            raise FileFormatError(f"{path}: tensor {name} has shape {tuple(tensor.shape)}; the config (d_in={cfg.d_in}, "
                                  f"d_sae={cfg.d_sae}, d_out={cfg.output_dim}) needs {shape}; {REMEDY}")
        try:
            check_finite(f"{path}: tensor {name}", tensor)
        except NonFiniteError as error:
            raise NonFiniteError(f"{error}; {REMEDY}") from error
    if "threshold" in weights:
        threshold = weights["threshold"]
        if bool((threshold < 0).any()):
            raise FileFormatError(f"{path}: threshold holds {int((threshold < 0).sum())} negative value(s); "
                                  f"activation thresholds are >= 0; {REMEDY}")
        if cfg.architecture in ("batchtopk", "matryoshka"):
            for columns, what in _threshold_groups(cfg):
                values = threshold[columns]
                if not bool((values == values[0]).all()):
                    raise FileFormatError(f"{path}: a {cfg.architecture} dictionary has one threshold for {what}, but "
                                          f"there threshold holds {values.unique().numel()} different values; {REMEDY}")


def _threshold_groups(cfg: SAEConfig) -> list[tuple[torch.Tensor, str]]:
    """(latent indices, description) of each set of latents sharing one BatchTopK threshold: the
    shared budget first, then each of ``cfg.k_groups``."""
    groups = [(torch.arange(first, end), f"latents {first}-{end - 1} (a budget group)") for first, end, _ in cfg.k_groups]
    shared = torch.tensor(cfg.shared_budget_latents(), dtype=torch.long)
    return [(shared, "every latent" if not groups else "the latents of the shared budget"), *groups]


def load_sae(folder: str | Path) -> SAE:
    """Load a dictionary saved by :func:`save_sae` or by SAELens (standard, topk, jumprelu,
    transcoder, skip_transcoder), checked as the module docstring says."""
    folder = Path(folder)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise MissingFileError(f"{folder / name} not found: a dictionary folder holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    config = read_json(config_path, "a dictionary's config", REMEDY)
    if not isinstance(config, dict):
        raise FileFormatError(f"{config_path} must hold a JSON object; got {type(config).__name__}; {REMEDY}")
    metadata = config.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise FileFormatError(f"{config_path}: metadata must be a JSON object; got {metadata!r}; {REMEDY}")
    if "mechscope" in metadata:
        cfg = SAEConfig.from_dict(metadata["mechscope"], source=f"{config_path} (metadata.mechscope)")
        _check_agreement(cfg, config, config_path)
    else:
        cfg = _config_from_saelens(config, metadata, config_path)
    _check_preprocessing(cfg, config, config_path)
    recorded = metadata.get("weights_sha256")
    if recorded is not None and recorded != file_sha256(weights_path):
        raise FileFormatError(f"{weights_path} does not match the weights_sha256 that {config_path} records: the two "
                              f"files come from different saves (one was interrupted or replaced); {REMEDY}")
    weights = read_safetensors(weights_path, "a dictionary's weights", REMEDY)
    _check_weights(weights, cfg, config, weights_path)
    sae = SAE(cfg)
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(sae, name).copy_(weights[name])
        if cfg.architecture == "jumprelu":
            sae.threshold.copy_(weights["threshold"])
        elif cfg.architecture in ("batchtopk", "matryoshka"):
            groups = _threshold_groups(cfg)
            sae.batch_threshold.copy_(weights["threshold"][groups[0][0]][0])
            for index, (columns, _) in enumerate(groups[1:]):
                sae.group_thresholds[index] = weights["threshold"][columns][0]
        if sae.W_skip is not None:
            sae.W_skip.copy_(weights["W_skip"])
        for first, end, first_column, end_column in cfg.zero_decoder_blocks:
            if bool((sae.W_dec[first:end, first_column:end_column] != 0).any()):
                raise FileFormatError(f"{weights_path}: W_dec[{first}:{end}, {first_column}:{end_column}] must be zero "
                                      f"(the config holds it at zero) but is not: the weights were edited or come from "
                                      f"another dictionary; {REMEDY}")
        if config.get("rescale_acts_by_decoder_norm") and "mechscope" not in metadata:
            # SAELens TopK: pre-activations are scaled by each decoder row's norm and the
            # latents divided by it before decoding; folding the norms in is exactly equivalent.
            norms = sae.W_dec.norm(dim=1).clamp_min(1e-8)
            sae.W_enc.mul_(norms)
            sae.b_enc.mul_(norms)
            sae.W_dec.div_(norms[:, None])
    return sae


__all__ = ["CONFIG_FILE", "FROM_SAELENS", "SAELENS_ARCHITECTURES", "TO_SAELENS", "WEIGHTS_FILE", "load_sae", "save_sae"]
