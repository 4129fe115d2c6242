"""Per-head views of a model's attention input projections, for every adapter layout."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Literal, get_args

import torch

from mechscope.errors import MechscopeError

if TYPE_CHECKING:
    from mechscope.models.hooked_model import HookedModel

ProjectionPart = Literal["q", "k", "v"]
PARTS: tuple[str, ...] = get_args(ProjectionPart)


def input_projection(model: HookedModel, layer: int, part: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight [heads, d_head, d_model], bias [heads, d_head] or None) of ``part`` ("q", "k" or
    "v") at ``layer``, so that ``hook_{part}[..., h, :] = ln1(x) @ weight[h].T + bias[h]``.
    ``heads`` is n_heads for q and n_kv_heads for k and v. Views, not copies."""
    if part not in PARTS:
        raise MechscopeError(f"part must be one of {PARTS}, got {part!r}")
    adapter, cfg = model.adapter, model.cfg
    block = model.hf_model.get_submodule(adapter.path(layer))
    heads = cfg.n_heads if part == "q" else cfg.n_kv_heads
    if not adapter.fused_qkv:
        module = block.get_submodule(getattr(adapter, f"{part}_proj"))
        bias = None if module.bias is None else module.bias.view(heads, cfg.d_head)
        return module.weight.view(heads, cfg.d_head, cfg.d_model), bias
    module = block.get_submodule(adapter.qkv_proj)
    index = PARTS.index(part)
    width = cfg.n_heads * cfg.d_head
    if adapter.qkv_layout == "concat":
        # GPT-2's Conv1D stores [d_model, 3 * width] (in_out, like its o_proj): [q | k | v] columns.
        weight = module.weight[:, index * width:(index + 1) * width].T.view(heads, cfg.d_head, cfg.d_model)
        bias = None if module.bias is None else module.bias[index * width:(index + 1) * width].view(heads, cfg.d_head)
        return weight, bias
    # GPT-NeoX: rows grouped per head as [q | k | v], each d_head wide.
    weight = module.weight.view(cfg.n_heads, 3, cfg.d_head, cfg.d_model)[:, index]
    bias = None if module.bias is None else module.bias.view(cfg.n_heads, 3, cfg.d_head)[:, index]
    return weight, bias


def expand_kv_heads(model: HookedModel) -> HookedModel:
    """An equivalent copy of a grouped-query-attention model with one key/value head per query
    head: each kv head's k and v projection rows are repeated for the query heads that share
    it, so every query head reads its own k and v (identical values, separate hook slots).
    Circuit discovery uses it for per-query-head k/v receivers. Returns ``model`` itself when
    it has no GQA."""
    import copy

    from transformers import AutoModelForCausalLM

    from mechscope.models.hooked_model import HookedModel as Hooked

    cfg, adapter = model.cfg, model.adapter
    if cfg.n_kv_heads == cfg.n_heads:
        return model
    if adapter.fused_qkv or not hasattr(model.hf_model.config, "num_key_value_heads"):
        raise MechscopeError(f"expanding kv heads needs separate k/v projections and num_key_value_heads; "
                         f"family {cfg.family!r} has neither")
    config = copy.deepcopy(model.hf_model.config)
    config.num_key_value_heads = cfg.n_heads
    expanded = AutoModelForCausalLM.from_config(config, attn_implementation=model.hf_model.config._attn_implementation,
                                                dtype=model.dtype)
    group = cfg.n_heads // cfg.n_kv_heads
    kv_names = {f"{adapter.path(layer, role)}.{kind}" for layer in range(cfg.n_layers)
                for role in ("k_proj", "v_proj") for kind in ("weight", "bias")}
    state = {}
    for name, tensor in model.hf_model.state_dict().items():
        if name in kv_names:
            tensor = tensor.view(cfg.n_kv_heads, cfg.d_head, *tensor.shape[1:]).repeat_interleave(group, dim=0)
            tensor = tensor.reshape(cfg.n_heads * cfg.d_head, *tensor.shape[2:])
        state[name] = tensor
    expanded.load_state_dict(state, strict=True)
    expanded.to(model.device).eval()
    return Hooked(expanded, model.tokenizer, name=f"{cfg.name or cfg.family}-kv-expanded")


FINGERPRINT_SAMPLES = 4096  # elements hashed per parameter tensor (a strided sample)


def model_fingerprint(model: HookedModel) -> dict[str, str]:
    """{"model": name, "model_sha256": ...}: SHA-256 over every parameter's name, shape, dtype
    and a strided sample of at most FINGERPRINT_SAMPLES of its elements' bytes. Cheap (a few
    thousand values per tensor) yet any fine-tune, other checkpoint or dtype changes it; the
    same weights give the same value in every process."""
    digest = hashlib.sha256()
    for name, parameter in model.hf_model.named_parameters():
        flat = parameter.detach().reshape(-1)
        sample = flat[::max(1, flat.numel() // FINGERPRINT_SAMPLES)].contiguous().cpu()
        digest.update(f"{name}:{tuple(parameter.shape)}:{parameter.dtype};".encode())
        digest.update(sample.view(torch.uint8).numpy().tobytes())
    return {"model": model.cfg.name, "model_sha256": digest.hexdigest()}
