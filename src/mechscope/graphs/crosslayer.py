"""Cross-layer transcoders: each layer's features write to its own and later MLP outputs.

A cross-layer transcoder (CLT) reads every layer's normalised MLP input with that layer's
encoder; the features of layer s write to the MLP outputs of layers s, s + 1, ..., s + window - 1
through decoders D[s -> t]. Layer t's MLP output is predicted as the sum of what every earlier
layer's features (within the window) write to it, plus a bias (and optionally a linear skip from
layer t's input). ``window = n_layers`` is the full form; a smaller window (windowed CLT) keeps
the decoder parameters at n_layers x window x d_sae x d_model, which is what fits 2 CPU cores for
a 30-layer model (the full form is about 0.6B decoder parameters for SmolLM2).

Stored as its per-layer transcoders (``layers``: an :class:`~mechscope.sae.SAE` per layer with the
encoder, the same-layer decoder D[s -> s], the output bias and skip) plus the cross decoders
(``cross``: D[s -> t] for t > s), so the replacement model treats a per-layer set as a CLT of
window 1. Saved as ``crosslayer.json`` + ``weights.safetensors`` (no pickle).

Shapes: inputs and outputs [n_layers, batch, d_model]; features [n_layers, batch, d_sae].
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from mechscope.errors import ConfigError, FileFormatError
from mechscope.files import atomic_text, read_json, read_safetensors
from mechscope.graphs.replacement import mlp_input, mlp_output
from mechscope.sae.config import SAEConfig
from mechscope.sae.model import SAE
from mechscope.validate import check_int

CONFIG_FILE = "crosslayer.json"
WEIGHTS_FILE = "weights.safetensors"


@dataclass(frozen=True)
class CrossLayerConfig:
    """``n_layers`` layers of ``d_model``; ``d_sae`` TopK features per layer (``k`` active per
    token and layer); features of layer s write to layers s .. s + ``window`` - 1."""

    n_layers: int
    d_model: int
    d_sae: int
    k: int = 32
    window: int = 2
    skip_connection: bool = False
    model_name: str = ""

    def __post_init__(self) -> None:
        check_int("n_layers", self.n_layers, 1)
        check_int("d_model", self.d_model, 1)
        check_int("d_sae", self.d_sae, 1)
        check_int("k", self.k, 1, self.d_sae)
        check_int("window", self.window, 1, self.n_layers)
        if not isinstance(self.skip_connection, bool):
            raise ConfigError(f"skip_connection must be True or False; got {self.skip_connection!r}")
        if not isinstance(self.model_name, str):
            raise ConfigError(f"model_name must be a string; got {self.model_name!r}")

    def targets(self, source: int) -> range:
        """The layers layer ``source``'s features write to."""
        return range(source, min(self.n_layers, source + self.window))

    def layer_config(self, layer: int) -> SAEConfig:
        return SAEConfig(self.d_model, self.d_sae, "topk", k=self.k, d_out=self.d_model,
                         skip_connection=self.skip_connection, hook_name=mlp_input(layer),
                         hook_name_out=mlp_output(layer), model_name=self.model_name,
                         metadata={"crosslayer_window": self.window})


def _cross_key(source: int, target: int) -> str:
    return f"{source}_to_{target}"


class CrossLayerTranscoder(nn.Module):
    """See the module docstring. ``layers[s]`` is layer s's transcoder (encoder, D[s -> s],
    output bias and skip of layer s); ``cross_decoder(s, t)`` [d_sae, d_model] is D[s -> t]."""

    def __init__(self, cfg: CrossLayerConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(SAE(cfg.layer_config(layer), seed=seed + layer) for layer in range(cfg.n_layers))
        generator = torch.Generator().manual_seed(seed + 7919)
        cross = {}
        for source in range(cfg.n_layers):
            for target in cfg.targets(source)[1:]:
                decoder = torch.randn(cfg.d_sae, cfg.d_model, generator=generator)
                # Later layers start small: a feature first learns its own layer's output.
                cross[_cross_key(source, target)] = nn.Parameter(0.1 * decoder / decoder.norm(dim=1, keepdim=True))
        self.cross = nn.ParameterDict(cross)

    def cross_decoder(self, source: int, target: int) -> torch.Tensor:
        if target == source:
            return self.layers[source].W_dec
        if target not in self.cfg.targets(source):
            raise ConfigError(f"layer {source}'s features write to layers {list(self.cfg.targets(source))}, not {target}")
        return self.cross[_cross_key(source, target)]

    def cross_decoders(self) -> dict[tuple[int, int], torch.Tensor]:
        """{(source, target): D[s -> t]} for every target later than its source."""
        return {(s, t): self.cross[_cross_key(s, t)] for s in range(self.cfg.n_layers) for t in self.cfg.targets(s)[1:]}

    def layer_dict(self) -> dict[int, SAE]:
        return dict(enumerate(self.layers))

    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        """inputs [n_layers, batch, d_model] -> features [n_layers, batch, d_sae]."""
        self._check(inputs, "inputs")
        return torch.stack([layer.encode(inputs[index]) for index, layer in enumerate(self.layers)])

    def decode(self, features: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """features [n_layers, batch, d_sae] and inputs [n_layers, batch, d_model] (for the skip)
        -> predicted MLP outputs [n_layers, batch, d_model]."""
        self._check(inputs, "inputs")
        outputs = []
        for target, layer in enumerate(self.layers):
            out = layer.decode(features[target], inputs[target])
            for source in range(max(0, target - self.cfg.window + 1), target):
                out = out + features[source] @ self.cross[_cross_key(source, target)]
            outputs.append(out)
        return torch.stack(outputs)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(inputs), inputs)

    def _check(self, tensor: torch.Tensor, what: str) -> None:
        expected = (self.cfg.n_layers, self.cfg.d_model)
        if tensor.dim() != 3 or (tensor.shape[0], tensor.shape[2]) != expected:
            raise ConfigError(f"{what} must be [n_layers={expected[0]}, batch, d_model={expected[1]}]; got "
                              f"{tuple(tensor.shape)}")


def save_crosslayer(transcoder: CrossLayerTranscoder, folder: str | Path) -> Path:
    """Write ``crosslayer.json`` and ``weights.safetensors`` into ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: value.detach().contiguous() for name, value in transcoder.state_dict().items()}
    partial = folder / (WEIGHTS_FILE + ".partial")
    save_file(tensors, str(partial))
    partial.replace(folder / WEIGHTS_FILE)
    atomic_text(folder / CONFIG_FILE, json.dumps({"kind": "crosslayer_transcoder", **asdict(transcoder.cfg)}, indent=1))
    return folder


def is_crosslayer(folder: str | Path) -> bool:
    return (Path(folder) / CONFIG_FILE).is_file()


def load_crosslayer(folder: str | Path) -> CrossLayerTranscoder:
    """The CLT saved in ``folder``; a file that does not fit its config is a FileFormatError."""
    folder = Path(folder)
    remedy = "save it again with save_crosslayer"
    raw = read_json(folder / CONFIG_FILE, "a cross-layer transcoder config", remedy)
    if not isinstance(raw, dict) or raw.get("kind") != "crosslayer_transcoder":
        raise FileFormatError(f"{folder / CONFIG_FILE} is not a cross-layer transcoder config (kind "
                              f"'crosslayer_transcoder'); {remedy}")
    fields = {key: value for key, value in raw.items() if key != "kind"}
    try:
        cfg = CrossLayerConfig(**fields)
    except TypeError as error:
        raise FileFormatError(f"{folder / CONFIG_FILE}: {error}; {remedy}") from error
    transcoder = CrossLayerTranscoder(cfg)
    tensors = read_safetensors(folder / WEIGHTS_FILE, "cross-layer transcoder weights", remedy)
    try:
        transcoder.load_state_dict(tensors)
    except RuntimeError as error:
        raise FileFormatError(f"{folder / WEIGHTS_FILE} does not hold the weights {folder / CONFIG_FILE} describes "
                              f"({str(error)[:300]}); {remedy}") from error
    return transcoder


__all__ = ["CrossLayerConfig", "CrossLayerTranscoder", "is_crosslayer", "load_crosslayer", "save_crosslayer"]
