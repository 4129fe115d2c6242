"""Directions in the residual stream: built from contrasts, probes, dictionaries or by hand, kept
unit-norm, and saved as safetensors (the vector) plus JSON (what it is and where it came from)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from safetensors.torch import save_file

from mechscope.errors import (
    FileFormatError,
    MechscopeError,
    MissingFileError,
    NonFiniteError,
    OutOfRangeError,
)
from mechscope.files import atomic_file, atomic_text, read_json, read_safetensors, required_keys
from mechscope.validate import check_int, check_number

DirectionMethod = Literal["diff_in_means", "caa", "pca", "probe", "sae", "user"]
METHODS: tuple[str, ...] = get_args(DirectionMethod)


@dataclass
class Direction:
    """A unit vector [d_model] in the residual stream before block ``layer`` (hook_resid_pre).

    ``scale`` is the length of the raw vector it was normalised from (for a difference in means,
    the distance between the two class means): a natural unit for steering strengths, since
    ``alpha = scale`` moves an activation from one class mean to the other. ``metadata`` holds
    JSON-serialisable provenance (model, dataset, position, ...).
    """

    vector: torch.Tensor
    layer: int | None = None
    method: str = "user"
    scale: float = 1.0
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise MechscopeError(f"unknown direction method {self.method!r}; valid: {', '.join(METHODS)}")
        if not isinstance(self.vector, torch.Tensor) or self.vector.dim() != 1:
            raise MechscopeError(f"a direction is one vector [d_model], got {getattr(self.vector, 'shape', self.vector)!r}")
        if not torch.isfinite(self.vector).all():
            raise NonFiniteError("direction has NaN or infinite entries")
        self.scale = check_number("scale", self.scale, minimum=0, strict_minimum=True)
        if self.layer is not None:
            self.layer = check_int("layer", self.layer, minimum=0)
        norm = float(self.vector.float().norm())
        if abs(norm - 1.0) > 1e-4:
            raise MechscopeError(f"direction vector must be unit-norm (has norm {norm:.6f}); build it with "
                             "Direction.from_vector, which normalises and records the length as scale")
        self.vector = self.vector.detach().float().cpu()

    @classmethod
    def from_vector(cls, vector: torch.Tensor, layer: int | None = None, method: str = "user",
                    metadata: dict[str, Any] | None = None) -> Direction:
        """Normalise ``vector`` [d_model]; its length becomes ``scale``."""
        vector = torch.as_tensor(vector).detach().float()
        if vector.dim() != 1:
            raise MechscopeError(f"a direction is one vector [d_model], got shape {tuple(vector.shape)}")
        norm = float(vector.norm())
        if not (norm > 0 and math.isfinite(norm)):
            raise MechscopeError(f"cannot make a direction from a vector of norm {norm}")
        return cls(vector / norm, layer=layer, method=method, scale=norm, metadata=dict(metadata or {}))

    @property
    def d_model(self) -> int:
        return self.vector.shape[0]

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write ``path``.safetensors (the vector) and ``path``.json (everything else); returns both."""
        base = Path(path).expanduser()
        if base.suffix in (".safetensors", ".json"):
            base = base.with_suffix("")
        base.parent.mkdir(parents=True, exist_ok=True)
        tensors, meta = base.with_suffix(".safetensors"), base.with_suffix(".json")
        atomic_file(tensors, lambda temporary: save_file({"direction": self.vector.contiguous()}, str(temporary)))
        info = {"format": "mechscope-direction", "version": 1, "layer": self.layer, "method": self.method,
                "scale": self.scale, "d_model": self.d_model, "metadata": self.metadata}
        atomic_text(meta, json.dumps(info, indent=1))
        return tensors, meta

    @classmethod
    def load(cls, path: str | Path) -> Direction:
        """Read a direction written by :meth:`save` (either file's path, or the shared stem)."""
        base = Path(path)
        if base.suffix in (".safetensors", ".json"):
            base = base.with_suffix("")
        tensors, meta = base.with_suffix(".safetensors"), base.with_suffix(".json")
        missing = [str(p) for p in (tensors, meta) if not p.exists()]
        if missing:
            raise MissingFileError(f"a saved direction is two files; missing: {', '.join(missing)}")
        info = read_json(meta, "direction's metadata")
        if not isinstance(info, dict) or info.get("format") != "mechscope-direction":
            found = info.get("format") if isinstance(info, dict) else type(info).__name__
            raise FileFormatError(f"{meta} is not a mechscope direction (format {found!r})")
        required_keys(info, ("d_model", "layer", "method", "scale", "metadata"), meta, "direction's metadata")
        stored = read_safetensors(tensors, "direction's vector")
        if set(stored) != {"direction"}:
            raise FileFormatError(f"{tensors} must hold exactly one tensor named 'direction'; it holds "
                                  f"{', '.join(sorted(stored)) or 'none'}")
        vector = stored["direction"]
        if vector.shape != (info["d_model"],) or not vector.is_floating_point():
            raise FileFormatError(f"{tensors} holds a {vector.dtype} vector of shape {tuple(vector.shape)}, the JSON "
                                  f"says a float vector of d_model {info['d_model']}")
        try:
            return cls(vector, layer=info["layer"], method=info["method"], scale=info["scale"],
                       metadata=info["metadata"])
        except MechscopeError as error:
            raise FileFormatError(f"{meta}: {error}") from error


def _as_matrix(name: str, activations: torch.Tensor) -> torch.Tensor:
    activations = torch.as_tensor(activations).float()
    if activations.dim() != 2 or activations.shape[0] == 0:
        raise MechscopeError(f"{name} must be [n, d_model] with n >= 1, got shape {tuple(activations.shape)}")
    return activations


def diff_in_means(positive: torch.Tensor, negative: torch.Tensor, layer: int | None = None,
                  metadata: dict[str, Any] | None = None) -> Direction:
    """mean(positive) - mean(negative) of activations [n, d_model] and [m, d_model]."""
    positive, negative = _as_matrix("positive", positive), _as_matrix("negative", negative)
    if positive.shape[1] != negative.shape[1]:
        raise MechscopeError(f"positive has d_model {positive.shape[1]}, negative {negative.shape[1]}")
    meta = {"n_positive": len(positive), "n_negative": len(negative), **(metadata or {})}
    return Direction.from_vector(positive.mean(0) - negative.mean(0), layer, "diff_in_means", meta)


def pca_direction(positive: torch.Tensor, negative: torch.Tensor, layer: int | None = None, seed: int = 0,
                  metadata: dict[str, Any] | None = None) -> Direction:
    """RepE's reading vector: the first principal component of paired differences
    positive[i] - negative[i] ([n, d_model] each, row i a contrast pair).

    Each difference's sign is flipped at random (seeded) before the PCA, as RepE does, so the
    component follows the axis the pairs vary along rather than just their mean; the result is
    then signed to point from negative to positive. ``scale`` is the mean projected difference.
    """
    positive, negative = _as_matrix("positive", positive), _as_matrix("negative", negative)
    if positive.shape != negative.shape:
        raise MechscopeError(f"pca_direction takes paired rows; shapes differ: {tuple(positive.shape)} vs "
                         f"{tuple(negative.shape)}")
    if len(positive) < 2:
        raise MechscopeError("pca_direction needs at least 2 pairs")
    differences = positive - negative
    signs = torch.randint(0, 2, (len(differences), 1), generator=torch.Generator().manual_seed(seed)) * 2 - 1
    flipped = differences * signs
    _, _, right = torch.linalg.svd(flipped - flipped.mean(0), full_matrices=False)
    component = right[0]
    projected = float((differences @ component).mean())
    if projected < 0:
        component, projected = -component, -projected
    meta = {"n_pairs": len(differences), "seed": seed, **(metadata or {})}
    return Direction(component, layer, "pca", projected, meta)  # SVD rows are already unit-norm


def probe_direction(probe, layer: int | None = None, metadata: dict[str, Any] | None = None) -> Direction:
    """The direction of a linear probe, positive class up: a ``mechscope.probes.LinearProbe``
    (its ``direction``, with its ``info`` as metadata) or a weight vector [d_model]."""
    vector = getattr(probe, "direction", probe)
    meta = {**getattr(probe, "info", {}), **(metadata or {})}
    return Direction.from_vector(torch.as_tensor(vector).float(), layer, "probe", meta)


def sae_direction(sae, latent: int, layer: int | None = None) -> Direction:
    """Decoder row of dictionary latent ``latent``: what the latent writes when it fires."""
    if not 0 <= latent < sae.W_dec.shape[0]:
        raise OutOfRangeError(f"latent {latent} out of range; the dictionary has {sae.W_dec.shape[0]} latents")
    return Direction.from_vector(sae.W_dec[latent].detach().float(), layer, "sae", {"latent": latent})
