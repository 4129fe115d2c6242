"""Weight orthogonalisation: bake a directional ablation into the weights of a new model.

Every matrix that writes to the residual stream (token and position embeddings, each attention
output projection and each MLP output projection, with their biases) gets the direction's
component removed from its outputs: W <- W - d d^T W. The residual stream then never holds the
direction, exactly what :class:`DirectionalAblation` does at run time, and the edited model is
an ordinary HF model that any tool can load.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from mechscope.errors import FolderNotEmptyError, MechscopeError
from mechscope.files import staged_writes
from mechscope.models.hooked_model import HookedModel
from mechscope.steering.direction import Direction


def _project_rows(module: torch.nn.Module, unit: torch.Tensor, d_model: int) -> None:
    """Remove ``unit`` from the outputs of a module writing [..., d_model]: Linear (weight
    [d_model, in]), GPT-2's Conv1D (weight [in, d_model]) or Embedding (weight [vocab, d_model])."""
    weight = module.weight
    d = unit.to(weight.device, torch.float32)
    with torch.no_grad():
        if isinstance(module, torch.nn.Linear):
            if weight.shape[0] != d_model:
                raise MechscopeError(f"{type(module).__name__} writes {weight.shape[0]} features, not d_model {d_model}")
            edited = weight.float() - torch.outer(d, d @ weight.float())
        else:  # Embedding and Conv1D keep d_model as the last axis
            if weight.shape[-1] != d_model:
                raise MechscopeError(f"{type(module).__name__} weight {tuple(weight.shape)} does not end in d_model {d_model}")
            edited = weight.float() - torch.outer(weight.float() @ d, d)
        weight.copy_(edited.to(weight.dtype))
        bias = getattr(module, "bias", None)
        if bias is not None:
            bias.copy_((bias.float() - (bias.float() @ d) * d).to(bias.dtype))


def orthogonalise(model: HookedModel, direction: Direction) -> HookedModel:
    """A copy of ``model`` whose weights can no longer write ``direction`` into the residual stream.

    Tied input and output embeddings are untied first (the unembedding must keep reading the
    direction; only the writes are edited). Families whose residual writes pass through a norm
    after the projection (Gemma's post-attention / post-feedforward norms) cannot be edited
    this way, since the norm re-creates the component, and are refused.
    """
    adapter, cfg = model.adapter, model.cfg
    if direction.d_model != cfg.d_model:
        raise MechscopeError(f"direction has d_model {direction.d_model}, the model {cfg.d_model}")
    if adapter.attn_out_is_norm:
        raise MechscopeError(f"family {cfg.family!r} writes to the residual stream through norms after its output "
                         "projections, which re-create the direction; weight orthogonalisation cannot remove it "
                         "(use DirectionalAblation at run time)")
    hf_model = copy.deepcopy(model.hf_model)
    unembed = hf_model.get_submodule(adapter.unembed)
    embed = hf_model.get_submodule(adapter.embed)
    if unembed.weight is embed.weight or unembed.weight.data_ptr() == embed.weight.data_ptr():
        unembed.weight = torch.nn.Parameter(embed.weight.detach().clone())
        hf_model.config.tie_word_embeddings = False
        if getattr(hf_model.config, "get_text_config", None) is not None:
            hf_model.config.get_text_config().tie_word_embeddings = False
    unit = direction.vector
    writers = [adapter.embed] + ([adapter.pos_embed] if adapter.pos_embed else [])
    writers += [adapter.path(layer, role) for layer in range(cfg.n_layers) for role in ("o_proj", "mlp_out_proj")]
    for path in writers:
        _project_rows(hf_model.get_submodule(path), unit, cfg.d_model)
    name = f"{cfg.name or cfg.family}-orthogonalised"
    return HookedModel(hf_model, model.tokenizer, name=name)


def save_orthogonalised(model: HookedModel, direction: Direction, folder: str | Path) -> Path:
    """Write the orthogonalised model as a HF folder (safetensors weights, config, tokenizer)
    that ``mechscope.load(folder)`` or ``AutoModelForCausalLM.from_pretrained`` reads back.
    Refuses to write into a non-empty folder, so nothing saved before is overwritten."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise FolderNotEmptyError(f"{folder} is not empty; choose a new folder for the orthogonalised model")
    edited = orthogonalise(model, direction)

    def write(staging: Path) -> None:
        # save_pretrained writes in place; staged, a kill never leaves a half-written model.
        edited.hf_model.save_pretrained(staging, safe_serialization=True)
        model.tokenizer.save_pretrained(staging)
        direction.save(staging / "direction")

    staged_writes(folder, write)
    return folder
