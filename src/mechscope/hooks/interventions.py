"""Ready-made hook functions for common interventions.

Each factory returns ``fn(activation, hook) -> new_activation`` for use in ``fwd_hooks``. All can
be restricted to chosen ``positions`` (the pos / query_pos axis) and ``heads`` (the head or
kv_head axis); indices are checked against the activation and a bad one is an error, never
silently dropped. None means "all".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from mechscope.hooks.errors import MechscopeError, OutOfRangeError
from mechscope.hooks.points import HookPoint
from mechscope.hooks.session import HookFn

Indices = int | Sequence[int] | torch.Tensor | None


def _checked(indices: Indices, size: int, what: str, hook: HookPoint) -> torch.Tensor:
    index = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
    if index.numel() and (index.max() >= size or index.min() < -size):
        raise OutOfRangeError(f"{what} {index.tolist()} out of range for {hook.name!r}: size {size} "
                         f"(valid {-size}..{size - 1})")
    return index % size


def selection_mask(activation: torch.Tensor, hook: HookPoint, positions: Indices = None,
                   heads: Indices = None) -> torch.Tensor | None:
    """Boolean mask broadcastable to ``activation`` that is True on the selected positions and
    heads, or None when everything is selected."""
    if positions is None and heads is None:
        return None
    shape = [1] * activation.dim()
    mask = torch.ones(shape, dtype=torch.bool, device=activation.device)
    for indices, axis, what in ((positions, hook.position_axis, "positions"), (heads, hook.head_axis, "heads")):
        if indices is None:
            continue
        if axis is None:
            raise MechscopeError(f"{hook.name!r} has no {what[:-1]} axis (axes {hook.axes}); drop {what}=")
        size = activation.shape[axis]
        keep = torch.zeros(size, dtype=torch.bool, device=activation.device)
        keep[_checked(indices, size, what, hook).to(activation.device)] = True
        axis_shape = [1] * activation.dim()
        axis_shape[axis] = size
        mask = mask & keep.view(axis_shape)
    return mask


def _blend(activation, replacement, hook, positions, heads):
    mask = selection_mask(activation, hook, positions, heads)
    replacement = replacement.to(dtype=activation.dtype, device=activation.device)
    if mask is None:
        return replacement.expand_as(activation).clone()
    return torch.where(mask, replacement, activation)


def patch_from(source: Mapping[str, torch.Tensor] | torch.Tensor, positions: Indices = None,
               heads: Indices = None) -> HookFn:
    """Replace the activation with the value from ``source``: an ActivationCache (looked up by the
    hook's name, e.g. the clean run's cache) or a tensor broadcastable to the activation."""

    def hook_fn(activation: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        value = source[hook.name] if isinstance(source, Mapping) else source
        if value.shape != activation.shape and value.dim() == activation.dim():
            raise MechscopeError(f"patch source for {hook.name!r} has shape {tuple(value.shape)}, activation "
                             f"has {tuple(activation.shape)}")
        return _blend(activation, value, hook, positions, heads)

    return hook_fn


def _finite(value, what: str) -> None:
    """Refuse NaN / inf where it enters: inside a forward it would only show as NaN logits."""
    tensor = torch.as_tensor(value, dtype=torch.float64 if not isinstance(value, torch.Tensor) else None)
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise MechscopeError(f"{what} holds NaN or infinite values; it must be finite")


def add_vector(vector: torch.Tensor, scale: float = 1.0, positions: Indices = None,
               heads: Indices = None) -> HookFn:
    """Add ``scale * vector`` (its size is the last axis, e.g. [d_model]) to the activation."""
    _finite(vector, "the added vector")
    _finite(scale, "the scale")

    def hook_fn(activation: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        if vector.shape[-1] != activation.shape[-1]:
            raise MechscopeError(f"vector of size {vector.shape[-1]} cannot be added to {hook.name!r} "
                             f"whose last axis is {activation.shape[-1]}")
        shifted = activation + scale * vector.to(activation.dtype).to(activation.device)
        return _blend(activation, shifted, hook, positions, heads)

    return hook_fn


def scale(factor: float, positions: Indices = None, heads: Indices = None) -> HookFn:
    """Multiply the activation by ``factor``."""
    _finite(factor, "the factor")
    return lambda activation, hook: _blend(activation, activation * factor, hook, positions, heads)


def zero_ablate(positions: Indices = None, heads: Indices = None) -> HookFn:
    """Set the activation to zero."""
    return lambda activation, hook: _blend(activation, torch.zeros_like(activation), hook, positions, heads)


def mean_ablate(reference: Mapping[str, torch.Tensor] | torch.Tensor, positions: Indices = None,
                heads: Indices = None, per_position: bool = False) -> HookFn:
    """Replace the activation with its mean over a reference distribution.

    ``reference``: an ActivationCache of reference prompts (the mean over its batch axis, and
    over positions too unless ``per_position``) or a precomputed mean tensor.
    """

    def hook_fn(activation: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        if isinstance(reference, Mapping):
            data = reference[hook.name]
            axes = [0] if per_position else [0, hook.axes.index("pos")] if "pos" in hook.axes else [0]
            mean = data.float().mean(dim=axes, keepdim=True)
            if per_position and data.shape[1] != activation.shape[1]:
                raise MechscopeError(f"per-position mean for {hook.name!r} has {data.shape[1]} positions, "
                                 f"the run has {activation.shape[1]}")
        else:
            mean = reference
        return _blend(activation, mean.expand_as(activation), hook, positions, heads)

    return hook_fn


def resample_ablate(source: Mapping[str, torch.Tensor], seed: int = 0, positions: Indices = None,
                    heads: Indices = None) -> HookFn:
    """Replace each row's activation with the activation of a randomly drawn row of ``source``
    (an ActivationCache of other prompts with the same length), seeded."""
    generator = torch.Generator().manual_seed(seed)

    def hook_fn(activation: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        donors = source[hook.name]
        if donors.shape[1:] != activation.shape[1:]:
            raise MechscopeError(f"resample source for {hook.name!r} has shape {tuple(donors.shape)}, "
                             f"incompatible with {tuple(activation.shape)}")
        rows = torch.randint(donors.shape[0], (activation.shape[0],), generator=generator)
        return _blend(activation, donors[rows.to(donors.device)], hook, positions, heads)

    return hook_fn


def project_out(direction: torch.Tensor, positions: Indices = None, heads: Indices = None) -> HookFn:
    """Remove the component along ``direction`` (last-axis vector): x - (x . d) d, d unit."""
    _finite(direction, "the direction")
    norm = float(direction.norm())
    if norm == 0:
        raise MechscopeError("the direction to project out is the zero vector")
    unit = direction / direction.norm()

    def hook_fn(activation: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        if unit.shape[-1] != activation.shape[-1]:
            raise MechscopeError(f"direction of size {unit.shape[-1]} does not match {hook.name!r} "
                             f"(last axis {activation.shape[-1]})")
        d = unit.to(activation.dtype).to(activation.device)
        projected = activation - (activation @ d).unsqueeze(-1) * d
        return _blend(activation, projected, hook, positions, heads)

    return hook_fn
