"""Attach hook functions to a HF model for the length of one call or context, then detach.

Only the modules that carry a requested hook point get a PyTorch hook; one PyTorch hook per
(module, input/output) runs all hook points there in order. Every handle this session adds is
removed on exit, also after an exception; hooks others registered are never touched.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from mechscope.hooks.attention import CaptureConfigView, ensure_capture_registered
from mechscope.hooks.points import HookPoint
from mechscope.hooks.prefix import PrefixReuse, return_cached, shrink_to_one_row
from mechscope.hooks.sites import AttentionInternalSite, ResidMidSite

# TransformerLens' signature: fn(activation, hook) -> replacement | None
HookFn = Callable[[torch.Tensor, HookPoint], torch.Tensor | None]


class _PointEntry:
    """Runs the forward hook functions of one hook point and arms its backward hooks."""

    def __init__(self, point: HookPoint, fwd: list[HookFn], bwd: list[HookFn], session: HookSession):
        self.point = point
        self.fwd = fwd
        self.bwd = bwd
        self.session = session

    @property
    def order(self) -> int:
        return self.point.site.order

    def run_on_activation(self, activation: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Apply forward fns (and arm backward fns) to a canonical activation."""
        changed = False
        for fn in self.fwd:
            returned = fn(activation, self.point)
            if returned is not None:
                self.point.check_shape(returned, activation)
                activation = returned.to(dtype=activation.dtype, device=activation.device)
                changed = True
        if self.bwd and torch.is_grad_enabled():
            if not activation.requires_grad:
                # Nothing upstream is differentiable; make this point a leaf so its gradient exists.
                activation = activation.detach().requires_grad_(True)
            else:
                # A distinct autograd node: an input site's tensor may also flow elsewhere (the
                # MLP input is also the residual that skips the MLP); its gradient must be that
                # of this site's use only.
                activation = activation.view_as(activation)
            for fn in self.bwd:
                activation.register_hook(self._grad_hook(fn))
            changed = True  # the rebuilt tensor must flow downstream for gradients to reach here
        return activation, changed

    def _grad_hook(self, fn: HookFn):
        point = self.point

        def on_grad(grad: torch.Tensor):
            returned = fn(grad, point)
            if returned is not None:
                point.check_shape(returned, grad)
            return returned

        return on_grad

    def apply(self, native: torch.Tensor, inputs: tuple) -> torch.Tensor:
        site = self.point.site
        activation = site.read(native, inputs)
        new_activation, changed = self.run_on_activation(activation)
        if not changed:
            return native
        new_native = site.write(native, new_activation, inputs)
        if isinstance(site, ResidMidSite):
            self.session.pending_resid_delta[site.layer_module] = new_native - native
        return new_native


class _ResidMidCarry:
    """Adds a resid_mid write's difference to the block output, ahead of hook_resid_post."""

    order = 0

    def __init__(self, layer_module: str, session: HookSession):
        self.layer_module = layer_module
        self.session = session

    def apply(self, native: torch.Tensor, inputs: tuple) -> torch.Tensor:
        delta = self.session.pending_resid_delta.pop(self.layer_module, None)
        return native if delta is None else native + delta


def _first_input(args: tuple, kwargs: dict) -> tuple[torch.Tensor, bool]:
    if args:
        return args[0], True
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"], False
    for value in kwargs.values():
        if isinstance(value, torch.Tensor):
            return value, False
    raise RuntimeError("mechscope: module was called without a tensor input")


def _remove_view(module: torch.nn.Module, view: CaptureConfigView) -> None:
    """Unlink ``view`` from the module's chain of config views, wherever it sits in it, so
    sessions may close in any order and the real config is back once all have closed."""
    if module.config is view:
        module.config = view.base
        return
    outer = module.config
    while isinstance(outer, CaptureConfigView):
        if outer.base is view:
            outer.base = view.base
            return
        outer = outer.base


class HookSession:
    """Context manager that installs hook functions on a HF model and removes them on exit."""

    def __init__(
        self,
        hf_model: torch.nn.Module,
        fwd_hooks: Sequence[tuple[HookPoint, HookFn]] = (),
        bwd_hooks: Sequence[tuple[HookPoint, HookFn]] = (),
        prefix: PrefixReuse | None = None,
    ):
        self.hf_model = hf_model
        self.fwd_hooks = list(fwd_hooks)
        self.bwd_hooks = list(bwd_hooks)
        self.prefix = prefix
        self.pending_resid_delta: dict[str, torch.Tensor] = {}
        self._handles: list[RemovableHandle] = []
        self._swapped_configs: list[tuple[torch.nn.Module, Any]] = []

    def _entries(self) -> dict[tuple[str, str], list]:
        fwd: dict[HookPoint, list[HookFn]] = defaultdict(list)
        bwd: dict[HookPoint, list[HookFn]] = defaultdict(list)
        for point, fn in self.fwd_hooks:
            fwd[point].append(fn)
        for point, fn in self.bwd_hooks:
            bwd[point].append(fn)
        groups: dict[tuple[str, str], list] = defaultdict(list)
        for point in list(fwd) + [p for p in bwd if p not in fwd]:
            entry = _PointEntry(point, fwd.get(point, []), bwd.get(point, []), self)
            site = point.site
            if isinstance(site, AttentionInternalSite):
                groups[(site.module, "attention")].append(entry)
                continue
            groups[(site.module, site.phase)].append(entry)
            if isinstance(site, ResidMidSite):  # bwd-only points may rebuild the tensor too
                groups[(site.layer_module, "output")].append(_ResidMidCarry(site.layer_module, self))
        return groups

    def __enter__(self) -> HookSession:
        try:
            if self.prefix is not None:
                self._reuse_prefix(self.prefix)  # first, so hooks on the same modules see its values
            for (module_path, phase), entries in self._entries().items():
                module = self.hf_model.get_submodule(module_path)
                entries.sort(key=lambda e: e.order)
                if phase == "input":
                    handle = module.register_forward_pre_hook(self._pre_hook(entries), with_kwargs=True)
                elif phase == "output":
                    handle = module.register_forward_hook(self._post_hook(entries), with_kwargs=True)
                else:
                    self._capture_attention(module, entries)
                    continue
                self._handles.append(handle)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _reuse_prefix(self, prefix: PrefixReuse) -> None:
        rows = prefix.output.shape[0]
        for path in prefix.block_modules:
            block = self.hf_model.get_submodule(path)
            self._handles.append(block.register_forward_pre_hook(shrink_to_one_row(rows), with_kwargs=True))
        if prefix.block_modules:
            last = self.hf_model.get_submodule(prefix.block_modules[-1])
            self._handles.append(last.register_forward_hook(return_cached(prefix.output), with_kwargs=True))

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module, view in reversed(self._swapped_configs):
            _remove_view(module, view)
        self._swapped_configs.clear()
        self.pending_resid_delta.clear()

    @staticmethod
    def _pre_hook(entries: list):
        def hook(module, args, kwargs):
            native, positional = _first_input(args, kwargs)
            updated = native
            for entry in entries:
                updated = entry.apply(updated, args)
            if updated is native:
                return None
            if positional:
                return (updated, *args[1:]), kwargs
            key = "hidden_states" if "hidden_states" in kwargs else next(
                k for k, v in kwargs.items() if v is native
            )
            return args, {**kwargs, key: updated}

        return hook

    @staticmethod
    def _post_hook(entries: list):
        def hook(module, args, kwargs, output):
            native = output if isinstance(output, torch.Tensor) else output[0]
            updated = native
            for entry in entries:
                updated = entry.apply(updated, args)
            if updated is native:
                return None
            if isinstance(output, torch.Tensor):
                return updated
            return (updated, *output[1:])

        return hook

    def _capture_attention(self, module: torch.nn.Module, entries: list[_PointEntry]) -> None:
        ensure_capture_registered()
        by_kind = {entry.point.site.kind: entry for entry in entries}

        def callback(kind: str):
            entry = by_kind.get(kind)
            if entry is None:
                return lambda tensor: tensor
            return lambda tensor: entry.run_on_activation(tensor)[0]

        view = CaptureConfigView(module.config, callback("scores"), callback("pattern"))
        module.config = view
        self._swapped_configs.append((module, view))
