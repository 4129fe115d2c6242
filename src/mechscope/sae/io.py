"""Save and load dictionaries in SAELens' on-disk format: ``cfg.json`` + ``sae_weights.safetensors``.

Architecture names on disk are SAELens' ("standard", "topk", "jumprelu", "transcoder",
"skip_transcoder"). BatchTopK and Matryoshka dictionaries are stored as "jumprelu" with their
learned threshold for every latent, which is how SAELens stores them for inference. mechscope's
own full config rides along in ``metadata["mechscope"]`` so a round trip restores the exact
architecture; files written by SAELens load from the SAELens fields alone. Safetensors and JSON
only: nothing is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mechscope.errors import MechscopeError, MissingFileError
from mechscope.files import atomic_file, atomic_text
from mechscope.sae.config import SAEConfig
from mechscope.sae.model import SAE

CONFIG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
TO_SAELENS = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu", "batchtopk": "jumprelu",
              "matryoshka": "jumprelu"}
FROM_SAELENS = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "transcoder": "relu",
                "skip_transcoder": "relu"}


def save_sae(sae: SAE, folder: str | Path) -> Path:
    """Write ``folder/cfg.json`` and ``folder/sae_weights.safetensors`` (each atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = sae.cfg
    architecture = TO_SAELENS[cfg.architecture]
    if cfg.is_transcoder:
        architecture = "skip_transcoder" if cfg.skip_connection else "transcoder"
    config = {
        "architecture": architecture, "d_in": cfg.d_in, "d_sae": cfg.d_sae, "dtype": str(sae.W_enc.dtype).split(".")[-1],
        "device": "cpu", "apply_b_dec_to_input": not cfg.is_transcoder, "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"model_name": cfg.model_name, "hook_name": cfg.hook_name, "mechscope": cfg.to_dict()},
    }
    if cfg.architecture == "topk":
        config["k"] = cfg.k
    if cfg.is_transcoder:
        config["d_out"] = cfg.d_out
        config["metadata"]["hook_name_out"] = cfg.hook_name_out
    weights = {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    if cfg.architecture in ("jumprelu", "batchtopk", "matryoshka"):
        weights["threshold"] = sae.activation_threshold()
    if sae.W_skip is not None:
        weights["W_skip"] = sae.W_skip
    weights = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in weights.items()}
    atomic_file(folder / WEIGHTS_FILE, lambda path: save_file(weights, str(path)))
    atomic_text(folder / CONFIG_FILE, json.dumps(config, indent=1))
    return folder


def load_sae(folder: str | Path) -> SAE:
    """Load a dictionary saved by :func:`save_sae` or by SAELens (standard, topk, jumprelu,
    transcoder, skip_transcoder)."""
    folder = Path(folder)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise MissingFileError(f"{folder / name} not found: a dictionary folder holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    config = json.loads((folder / CONFIG_FILE).read_text())
    weights = load_file(folder / WEIGHTS_FILE)
    metadata = config.get("metadata") or {}
    if "mechscope" in metadata:
        cfg = SAEConfig.from_dict(metadata["mechscope"])
    else:
        architecture = config.get("architecture", "standard")
        if architecture not in FROM_SAELENS:
            raise MechscopeError(f"SAELens architecture {architecture!r} is not supported; supported: {', '.join(FROM_SAELENS)}")
        cfg = SAEConfig(d_in=config["d_in"], d_sae=config["d_sae"], architecture=FROM_SAELENS[architecture],
                        k=config.get("k", 32) or 32, d_out=config.get("d_out"),
                        skip_connection=architecture == "skip_transcoder",
                        hook_name=metadata.get("hook_name") or config.get("hook_name", ""),
                        model_name=metadata.get("model_name") or config.get("model_name", ""))
        if not config.get("apply_b_dec_to_input", True) and not cfg.is_transcoder:
            raise MechscopeError("SAEs with apply_b_dec_to_input=false are not supported (mechscope subtracts b_dec)")
        normalisation = config.get("normalize_activations") or "none"
        if normalisation != "none":
            raise MechscopeError(f"normalize_activations={normalisation!r} is not supported: fold the scaling into the "
                             "weights first (SAELens does so at the end of training), leaving 'none'")
    sae = SAE(cfg)
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(sae, name).copy_(weights[name])
        if cfg.architecture == "jumprelu":
            sae.threshold.copy_(weights["threshold"])
        elif cfg.architecture in ("batchtopk", "matryoshka"):
            sae.batch_threshold.copy_(weights["threshold"][0])
        if sae.W_skip is not None:
            sae.W_skip.copy_(weights["W_skip"])
        if config.get("rescale_acts_by_decoder_norm") and "mechscope" not in metadata:
            # SAELens TopK: pre-activations are scaled by each decoder row's norm and the
            # latents divided by it before decoding; folding the norms in is exactly equivalent.
            norms = sae.W_dec.norm(dim=1).clamp_min(1e-8)
            sae.W_enc.mul_(norms)
            sae.b_enc.mul_(norms)
            sae.W_dec.div_(norms[:, None])
    return sae

