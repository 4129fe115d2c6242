"""The local replacement model of one prompt: what attribution graphs are computed on.

Every MLP is replaced by its transcoder, plus an error term that is the part of the real MLP's
output the transcoder misses on this prompt (a constant); attention patterns and the scales of
every normalisation are frozen at their values on this prompt. With the errors added back, the
replacement's forward pass gives exactly the real model's activations and logits on the prompt;
with everything non-linear frozen, the residual stream is a linear function of the nodes
(token embeddings, transcoder feature activations, error terms), so a gradient times a
node's value is that node's direct effect.

Shapes: ``tokens`` [1, pos]; per layer, ``activations[layer]`` [pos, d_sae] (the transcoder's
feature activations), ``errors[layer]`` [pos, d_model].

The norms are frozen by linearising them at the prompt's activations: a norm's output is its
real output plus the linear part (centring for LayerNorm, then the frozen scale and the weight)
applied to the change of its input, so the value is the real one by construction and only the
derivative changes. Families whose blocks carry more norms than ln1 / ln2 / the final one
(Gemma's post-attention and post-MLP norms) are not supported yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from mechscope.errors import ConfigError
from mechscope.hooks import names
from mechscope.models.hooked_model import HookedModel
from mechscope.sae.model import SAE

SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "gpt2", "gpt_neox")


def mlp_input(layer: int) -> str:
    """Where a per-layer transcoder reads: the MLP's input after its norm."""
    return names.block(layer, "ln2.hook_normalized")


def mlp_output(layer: int) -> str:
    """Where a per-layer transcoder writes: the MLP's output."""
    return names.block(layer, "hook_mlp_out")


def _norm_points(model: HookedModel) -> list[tuple[str, str, object]]:
    """(input hook, output hook, norm module) of every normalisation the replacement freezes."""
    adapter, cfg = model.adapter, model.cfg
    points = []
    for layer in range(cfg.n_layers):
        points.append((names.resid_pre(layer), names.block(layer, "ln1.hook_normalized"),
                       model.hf_model.get_submodule(adapter.path(layer, "ln1"))))
        points.append((names.block(layer, "hook_mlp_in"), mlp_input(layer),
                       model.hf_model.get_submodule(adapter.path(layer, "ln2"))))
    points.append((names.resid_post(cfg.n_layers - 1), "ln_final.hook_normalized", model.final_norm))
    return points


def check_transcoders(model: HookedModel, transcoders: Mapping[int, SAE]) -> None:
    """A transcoder for every layer, reading the MLP's normalised input and writing its output
    at this model's width; else a ConfigError that says which layer and what is wrong."""
    cfg = model.cfg
    if cfg.family not in SUPPORTED_FAMILIES:
        raise ConfigError(f"attribution graphs support the families {', '.join(SUPPORTED_FAMILIES)}; "
                          f"{cfg.family} has norms the replacement model does not freeze yet")
    missing = [layer for layer in range(cfg.n_layers) if layer not in transcoders]
    extra = [layer for layer in transcoders if not 0 <= layer < cfg.n_layers]
    if missing or extra:
        raise ConfigError(f"the model has {cfg.n_layers} layers and needs one transcoder for each; missing layers "
                          f"{missing}, layers out of range {extra}")
    for layer, transcoder in transcoders.items():
        tc = transcoder.cfg
        if not tc.is_transcoder:
            raise ConfigError(f"layer {layer}: a dictionary that reconstructs its input is not a transcoder (it needs "
                              "d_out and hook_name_out)")
        if tc.d_in != cfg.d_model or tc.d_out != cfg.d_model:
            raise ConfigError(f"layer {layer}: the transcoder maps {tc.d_in} -> {tc.d_out} but the model's d_model is "
                              f"{cfg.d_model}: was it trained on another model?")
        if (tc.hook_name, tc.hook_name_out) != (mlp_input(layer), mlp_output(layer)):
            raise ConfigError(f"layer {layer}: the transcoder reads {tc.hook_name!r} and writes {tc.hook_name_out!r}; "
                              f"the replacement model needs {mlp_input(layer)!r} -> {mlp_output(layer)!r}")


@dataclass(frozen=True)
class SparseFeatures:
    """Feature activations given sparsely: ``values`` [batch, n] of the features ``features`` [n]
    at positions ``positions`` [n] (every other feature is zero). The replacement decodes them as
    ``values @ W_dec[features]`` added at their positions: no [batch, pos, d_sae] tensor is made."""

    positions: torch.Tensor
    features: torch.Tensor
    values: torch.Tensor


def _written(values: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor, n_pos: int) -> torch.Tensor:
    """[batch, pos, d_out] what features with ``values`` [batch, n] at ``positions`` [n] write
    through their decoder ``rows`` [n, d_out]: one matmul per position over that position's
    features, so neither the forward nor the backward pass makes a [batch, n, d_out] tensor (for
    a 64-token prompt that is gigabytes over 30 layers)."""
    if not bool((positions[1:] >= positions[:-1]).all()):  # group each position's features together
        order = positions.argsort(stable=True)
        values, positions, rows = values[:, order], positions[order], rows[order]
    counts = torch.bincount(positions, minlength=n_pos).tolist()
    pieces, start = [], 0
    for count in counts:
        if count:
            pieces.append(values[:, start:start + count] @ rows[start:start + count])
        else:
            pieces.append(values.new_zeros(values.shape[0], rows.shape[1]))
        start += count
    return torch.stack(pieces, 1)


def decode_sparse(transcoder: SAE, found: SparseFeatures, x: torch.Tensor) -> torch.Tensor:
    """[batch, pos, d_out] the transcoder's output for sparse activations and its input ``x``
    [batch or 1, pos, d_in] (bias and skip connection included, as ``transcoder.decode`` does)."""
    batch = found.values.shape[0]
    out = transcoder.b_dec.float().expand(batch, x.shape[1], -1)
    if transcoder.W_skip is not None:
        out = out + (x.to(transcoder.W_skip.dtype) @ transcoder.W_skip).float()
    if found.features.numel():
        out = out + _written(found.values.float(), found.positions, transcoder.W_dec[found.features].float(),
                             x.shape[1])
    return out


def write_sparse(decoder: torch.Tensor, found: SparseFeatures | torch.Tensor, n_pos: int) -> torch.Tensor:
    """What features write through ``decoder`` [d_sae, d_out]: [batch, pos, d_out] for
    :class:`SparseFeatures`, or ``found`` [..., pos, d_sae] @ decoder for dense activations."""
    if not isinstance(found, SparseFeatures):
        return found.float() @ decoder.float()
    if not found.features.numel():
        return torch.zeros(found.values.shape[0], n_pos, decoder.shape[1])
    return _written(found.values.float(), found.positions, decoder[found.features].float(), n_pos)


@dataclass
class Prompt:
    """The real model's run on one prompt, as the replacement model freezes it."""

    tokens: torch.Tensor  # [1, pos]
    logits: torch.Tensor  # [pos, d_vocab] the real model's
    norm_inputs: dict[str, torch.Tensor]  # output hook -> its norm's input [pos, d_model]
    norm_outputs: dict[str, torch.Tensor]  # output hook -> the norm's output [pos, d_model]
    norm_linear: dict[str, tuple[torch.Tensor, bool]]  # output hook -> (weight / scale [pos, d_model], centred)
    patterns: dict[int, torch.Tensor]  # layer -> [head, query, key]
    activations: dict[int, torch.Tensor]  # layer -> transcoder feature activations [pos, d_sae]
    errors: dict[int, torch.Tensor]  # layer -> real MLP output minus the transcoder's [pos, d_model]
    embeddings: torch.Tensor  # [pos, d_model] what enters block 0 (token and position embeddings)


@dataclass
class ReplacementModel:
    """``model`` with ``transcoders`` in place of its MLPs (see the module docstring):
    {layer: transcoder} (per-layer), or a cross-layer transcoder
    (:class:`~mechscope.graphs.crosslayer.CrossLayerTranscoder`, whose features also write to
    later layers' MLP outputs: ``cross`` {(source, target): D [d_sae, d_model]}).
    :meth:`freeze` records a prompt, :meth:`hooks` replays it linearly."""

    model: HookedModel
    transcoders: dict[int, SAE]
    points: list[tuple[str, str, object]] = field(init=False, repr=False)
    cross: dict[tuple[int, int], torch.Tensor] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if callable(getattr(self.transcoders, "cross_decoders", None)):  # a cross-layer transcoder
            clt = self.transcoders
            if clt.cfg.n_layers != self.model.cfg.n_layers or clt.cfg.d_model != self.model.cfg.d_model:
                raise ConfigError(f"the cross-layer transcoder has {clt.cfg.n_layers} layers of width "
                                  f"{clt.cfg.d_model}; the model has {self.model.cfg.n_layers} of "
                                  f"{self.model.cfg.d_model}: was it trained on another model?")
            self.cross, self.transcoders = clt.cross_decoders(), clt.layer_dict()
        else:
            self.cross = {}
        check_transcoders(self.model, self.transcoders)
        self.points = _norm_points(self.model)

    def writers(self, target: int) -> list[tuple[int, torch.Tensor]]:
        """(source layer, decoder [d_sae, d_model]) of every layer whose features write to layer
        ``target``'s MLP output: the layer itself, and earlier ones for a cross-layer transcoder."""
        found = [(source, decoder) for (source, into), decoder in self.cross.items() if into == target]
        return sorted(found, key=lambda pair: pair[0]) + [(target, self.transcoders[target].W_dec)]

    def written(self, source: int) -> list[tuple[int, torch.Tensor]]:
        """(target layer, decoder [d_sae, d_model]) of every MLP output layer ``source``'s
        features write to."""
        found = [(into, decoder) for (origin, into), decoder in self.cross.items() if origin == source]
        return [(source, self.transcoders[source].W_dec)] + sorted(found, key=lambda pair: pair[0])

    @torch.no_grad()
    def freeze(self, tokens: torch.Tensor) -> Prompt:
        """Run the real model on ``tokens`` [1, pos] and record what the replacement freezes."""
        model, cfg = self.model, self.model.cfg
        if tokens.dim() != 2 or tokens.shape[0] != 1:
            raise ConfigError(f"one prompt at a time: tokens must be [1, pos], got {tuple(tokens.shape)}")
        wanted = [names.resid_pre(0)] + [name for pair in self.points for name in pair[:2]]
        wanted += [names.block_hook_name(layer, "pattern") for layer in range(cfg.n_layers)]
        wanted += [mlp_output(layer) for layer in range(cfg.n_layers)]
        logits, cache = model.run_with_cache(tokens, names=sorted(set(wanted)))
        norm_inputs, norm_outputs, linear = {}, {}, {}
        for source, target, module in self.points:
            x = cache[source][0].float()
            weight, _, eps = model.norm_parameters(module)
            centred = cfg.norm_type == "layer"
            shifted = x - x.mean(-1, keepdim=True) if centred else x
            scale = (shifted.pow(2).mean(-1, keepdim=True) + eps).sqrt()
            norm_inputs[target], norm_outputs[target] = x, cache[target][0].float()
            linear[target] = (weight.to(x.device) / scale, centred)
        activations, errors = {}, {}
        for layer, transcoder in self.transcoders.items():
            x = cache[mlp_input(layer)][0].to(transcoder.W_enc.dtype)
            found = transcoder.encode(x)
            activations[layer] = found.float()
            errors[layer] = cache[mlp_output(layer)][0].float() - transcoder.decode(found, x).float()
        for (source, target), decoder in self.cross.items():  # earlier layers' writes are not errors
            errors[target] = errors[target] - activations[source] @ decoder.detach().float()
        patterns = {layer: cache[names.block_hook_name(layer, "pattern")][0] for layer in range(cfg.n_layers)}
        return Prompt(tokens, logits[0].float(), norm_inputs, norm_outputs, linear, patterns, activations, errors,
                      cache[names.resid_pre(0)][0].float())

    def hooks(self, prompt: Prompt, leaves: Mapping[int, torch.Tensor | SparseFeatures] | None = None,
              error_leaves: Mapping[int, torch.Tensor] | None = None,
              embedding_leaf: torch.Tensor | None = None) -> list[tuple[str, object]]:
        """Forward hooks that run the replacement on a batch of copies of ``prompt``'s tokens.

        ``leaves`` {layer: [batch, pos, d_sae] or :class:`SparseFeatures`} are the feature
        activations the transcoders write (default: the prompt's, as constants); ``error_leaves``
        {layer: [batch, pos, d_model]} and ``embedding_leaf`` [batch, pos, d_model] the same for
        the errors and the embeddings. Pass tensors that require grad to take gradients with
        respect to them."""
        captured: dict[str, torch.Tensor] = {}
        hooks: list[tuple[str, object]] = []

        def embed(activation: torch.Tensor, hook) -> torch.Tensor:
            if embedding_leaf is None:
                return activation
            return embedding_leaf.to(activation.dtype)

        hooks.append((names.resid_pre(0), embed))  # first: block 0's norm reads what it returns
        for source, target, _ in self.points:
            def keep(activation: torch.Tensor, hook, target=target) -> None:
                captured[target] = activation

            def frozen(activation: torch.Tensor, hook, target=target) -> torch.Tensor:
                live = captured.pop(target).float()
                change = live - prompt.norm_inputs[target]
                weight, centred = prompt.norm_linear[target]
                if centred:
                    change = change - change.mean(-1, keepdim=True)
                return (prompt.norm_outputs[target] + change * weight).to(activation.dtype)

            hooks += [(source, keep), (target, frozen)]
        for layer in range(self.model.cfg.n_layers):
            pattern = prompt.patterns[layer]
            hooks.append((names.block_hook_name(layer, "pattern"),
                          lambda activation, hook, pattern=pattern: pattern.expand_as(activation).to(activation.dtype)))
            transcoder = self.transcoders[layer]

            def features_of(source: int):
                return prompt.activations[source] if leaves is None or source not in leaves else leaves[source]

            def replace(activation: torch.Tensor, hook, layer=layer, transcoder=transcoder) -> torch.Tensor:
                x = captured[mlp_input(layer)].to(transcoder.W_enc.dtype)
                found = features_of(layer)
                error = prompt.errors[layer] if error_leaves is None or layer not in error_leaves \
                    else error_leaves[layer]
                if isinstance(found, SparseFeatures):
                    out = decode_sparse(transcoder, found, x) + error
                else:
                    out = transcoder.decode(found.to(transcoder.W_dec.dtype), x).float() + error
                for source, decoder in self.writers(layer)[:-1]:  # a cross-layer transcoder's earlier layers
                    out = out + write_sparse(decoder, features_of(source), x.shape[-2])
                return out.expand_as(activation).to(activation.dtype) if out.dim() == 2 else out.to(activation.dtype)

            def read(activation: torch.Tensor, hook, layer=layer) -> None:
                captured[mlp_input(layer)] = activation

            hooks += [(mlp_input(layer), read), (mlp_output(layer), replace)]
        return hooks


__all__ = ["SUPPORTED_FAMILIES", "Prompt", "ReplacementModel", "SparseFeatures", "decode_sparse", "write_sparse", "check_transcoders", "mlp_input", "mlp_output"]
