"""Tuned lens (Belrose et al. 2023, "Eliciting Latent Predictions from Transformers with the
Tuned Lens"): one learned affine translator per layer that maps the residual stream after block
l to the final residual stream, read through the model's real final norm and unembedding.

Translator l computes ``x + x @ weight[l] + bias[l]`` for a residual ``x [..., d_model]``, i.e.
the affine map A_l x + b_l with A_l = I + weight[l]^T. ``weight`` and ``bias`` start at zero, so
an untrained lens is the identity and gives exactly the logit lens. Storing the offset from the
identity (as Belrose et al.'s code does) keeps the identity exact in floating point and makes a
translator's distance from it one tensor norm.

Training (``train_tuned_lens``) minimises KL(final || lens), the divergence of the lens's
next-token distribution from the model's own output distribution, averaged over tokens and
summed over layers (the layers share no parameters, so each is fitted independently), and is
resumable after a kill -9 from atomic checkpoints (``mechscope.analysis.tuned_lens_train``;
both names are importable from here too). Files are safetensors + JSON only: nothing is
unpickled, and loading checks every key, shape and dtype against the model it is applied to.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from mechscope.analysis.logit_lens import LogitLens
from mechscope.errors import FileFormatError, InputTypeError, MechscopeError, MissingFileError
from mechscope.files import atomic_file, atomic_text
from mechscope.hooks import names as hook_names
from mechscope.hooks.cache import ActivationCache
from mechscope.models.hooked_model import HookedModel
from mechscope.validate import check_finite, check_int

FORMAT = "mechscope-tuned-lens"
VERSION = 1


class TunedLens(nn.Module):
    """``n_layers`` affine translators for residuals of width ``d_model``.

    Parameters (float32): ``weight`` [n_layers, d_model, d_model] and ``bias`` [n_layers,
    d_model], both zero at construction (the identity). ``model_name``, ``family`` and
    ``d_vocab`` record which model the lens was trained for; :meth:`check_model` refuses others.
    """

    def __init__(self, n_layers: int, d_model: int, model_name: str = "", family: str = "", d_vocab: int = 0,
                 metadata: dict[str, Any] | None = None):
        super().__init__()
        if n_layers < 1 or d_model < 1:
            raise MechscopeError(f"a tuned lens needs n_layers >= 1 and d_model >= 1, got {n_layers}, {d_model}")
        self.n_layers, self.d_model = n_layers, d_model
        self.model_name, self.family, self.d_vocab = model_name, family, d_vocab
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.weight = nn.Parameter(torch.zeros(n_layers, d_model, d_model))
        self.bias = nn.Parameter(torch.zeros(n_layers, d_model))

    @classmethod
    def for_model(cls, model: HookedModel, metadata: dict[str, Any] | None = None) -> TunedLens:
        """An identity lens shaped for ``model`` (equal to the logit lens until trained)."""
        cfg = model.cfg
        return cls(cfg.n_layers, cfg.d_model, cfg.name, cfg.family, cfg.d_vocab, metadata)

    def __repr__(self) -> str:
        return f"TunedLens({self.model_name or '?'}: {self.n_layers} layers, d_model {self.d_model})"

    def translate(self, layer: int, resid: torch.Tensor) -> torch.Tensor:
        """Translator ``layer`` applied to ``resid`` [..., d_model] (the residual after block
        ``layer``): [..., d_model] in float32, on ``resid``'s device."""
        if not 0 <= layer < self.n_layers:
            raise MechscopeError(f"layer must lie in 0..{self.n_layers - 1}, got {layer}")
        if resid.shape[-1] != self.d_model:
            raise MechscopeError(f"resid has width {resid.shape[-1]}; this lens translates d_model={self.d_model}")
        x = resid.float()
        weight, bias = self.weight[layer].to(x.device), self.bias[layer].to(x.device)
        return x + x @ weight + bias

    def identity_distance(self) -> torch.Tensor:
        """[n_layers] ||A_l - I||_F / sqrt(d_model) + ||b_l|| / sqrt(d_model): 0 for the identity."""
        scale = math.sqrt(self.d_model)
        return (self.weight.detach().flatten(1).norm(dim=1) + self.bias.detach().norm(dim=1)).cpu() / scale

    def check_model(self, model: HookedModel, check_name: bool = True, source: str = "this tuned lens") -> None:
        """Raise unless ``model`` has this lens's n_layers, d_model and d_vocab (and name, when
        ``check_name`` and both names are known)."""
        _check_fits(model, self.model_name, self.n_layers, self.d_model, self.d_vocab, check_name, source)

    # ----------------------------------------------------------------- files
    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write ``path``.safetensors (keys ``translators.{l}.weight`` [d_model, d_model] and
        ``translators.{l}.bias`` [d_model], float32) and ``path``.json (model identity, format,
        training metadata), each atomically; returns both paths."""
        base = _stem(path)
        tensors_path, meta_path = base.with_suffix(".safetensors"), base.with_suffix(".json")
        check_finite("the tuned lens's weight", self.weight.detach())
        check_finite("the tuned lens's bias", self.bias.detach())
        tensors = {}
        for layer in range(self.n_layers):
            tensors[f"translators.{layer}.weight"] = self.weight[layer].detach().float().cpu().contiguous().clone()
            tensors[f"translators.{layer}.bias"] = self.bias[layer].detach().float().cpu().contiguous().clone()
        info = {"format": FORMAT, "version": VERSION, "translator": "x + x @ weight + bias",
                "model_name": self.model_name, "family": self.family, "n_layers": self.n_layers,
                "d_model": self.d_model, "d_vocab": self.d_vocab, "metadata": self.metadata}
        atomic_file(tensors_path, lambda temporary: save_file(tensors, str(temporary)))
        atomic_text(meta_path, json.dumps(info, indent=1))
        return tensors_path, meta_path

    @classmethod
    def load(cls, path: str | Path, model: HookedModel | None = None, check_name: bool = True) -> TunedLens:
        """Read a lens written by :meth:`save` (either file's path, or their shared stem).

        Every key of the safetensors file must be one the JSON's n_layers calls for, with shape
        [d_model, d_model] or [d_model], dtype float32 and finite values; with ``model`` the
        lens must also fit it (see :meth:`check_model`). Errors name the file and key."""
        base = _stem(path)
        tensors_path, meta_path = base.with_suffix(".safetensors"), base.with_suffix(".json")
        missing = [str(p) for p in (tensors_path, meta_path) if not p.is_file()]
        if missing:
            raise MissingFileError(f"a saved tuned lens is two files (.safetensors + .json); missing: {', '.join(missing)}")
        info = _read_info(meta_path)
        n_layers, d_model = info["n_layers"], info["d_model"]
        if model is not None:
            _check_fits(model, info["model_name"], n_layers, d_model, info["d_vocab"], check_name, str(meta_path))
        try:
            tensors = load_file(str(tensors_path))
        except (SafetensorError, OSError, ValueError) as error:
            raise FileFormatError(f"{tensors_path} is not a readable safetensors file ({error})") from error
        expected = {f"translators.{layer}.{part}": (d_model,) * (2 if part == "weight" else 1)
                    for layer in range(n_layers) for part in ("weight", "bias")}
        unexpected = sorted(set(tensors) - set(expected), key=_natural)
        if unexpected:
            raise FileFormatError(f"{tensors_path} holds key {unexpected[0]!r}, which a tuned lens of "
                                  f"{n_layers} layers (per {meta_path.name}) does not have")
        for key in sorted(expected, key=_natural):
            if key not in tensors:
                raise FileFormatError(f"{tensors_path} lacks key {key!r} ({meta_path.name} says n_layers={n_layers})")
            tensor = tensors[key]
            if tuple(tensor.shape) != expected[key]:
                raise FileFormatError(f"{tensors_path}: {key!r} has shape {tuple(tensor.shape)}, expected "
                                      f"{expected[key]} (d_model={d_model})")
            if tensor.dtype != torch.float32:
                raise FileFormatError(f"{tensors_path}: {key!r} has dtype {tensor.dtype}, expected torch.float32")
            if not bool(torch.isfinite(tensor).all()):
                raise FileFormatError(f"{tensors_path}: {key!r} holds NaN or infinite values")
        # Built only now: the JSON's sizes are backed by tensors of those shapes, so a bad JSON
        # cannot make this allocate [n_layers, d_model, d_model] of nothing.
        lens = cls(n_layers, d_model, info["model_name"], info["family"], info["d_vocab"], info["metadata"])
        with torch.no_grad():
            lens.weight.copy_(torch.stack([tensors[f"translators.{layer}.weight"] for layer in range(n_layers)]))
            lens.bias.copy_(torch.stack([tensors[f"translators.{layer}.bias"] for layer in range(n_layers)]))
        return lens


def _check_fits(model: HookedModel, model_name: str, n_layers: int, d_model: int, d_vocab: int, check_name: bool,
                source: str) -> None:
    cfg = model.cfg
    wanted = {"n_layers": n_layers, "d_model": d_model}
    if d_vocab:
        wanted["d_vocab"] = d_vocab
    for key, value in wanted.items():
        if getattr(cfg, key) != value:
            raise MechscopeError(f"{source} was made for {key}={value} ({model_name or 'unnamed model'}); "
                                 f"the model has {key}={getattr(cfg, key)} ({cfg.name or cfg.family})")
    if check_name and model_name and cfg.name and model_name != cfg.name:
        raise MechscopeError(f"{source} was trained for model {model_name!r}, not {cfg.name!r}; pass "
                             "check_name=False if this is the same model loaded under another name")


def _stem(path: str | Path) -> Path:
    base = Path(path)
    return base.with_suffix("") if base.suffix in (".safetensors", ".json") else base


def _natural(key: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in key.split("."))


def _read_info(meta_path: Path) -> dict[str, Any]:
    try:
        info = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise FileFormatError(f"{meta_path} is not valid JSON ({error})") from error
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        found = info.get("format") if isinstance(info, dict) else type(info).__name__
        raise FileFormatError(f"{meta_path} is not a mechscope tuned lens (format {found!r}, expected {FORMAT!r})")
    if info.get("version") != VERSION:
        raise FileFormatError(f"{meta_path} has version {info.get('version')!r}; this mechscope reads version {VERSION}")
    kinds = {"n_layers": int, "d_model": int, "d_vocab": int, "model_name": str, "family": str, "metadata": dict}
    for key, kind in kinds.items():
        value = info.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < (0 if key == "d_vocab" else 1)):
            raise FileFormatError(f"{meta_path}: key {key!r} must be a {'positive integer' if kind is int else kind.__name__}, "
                                  f"got {value!r}")
    return info


# --------------------------------------------------------------------- applying a lens
def tuned_lens_logits(model: HookedModel, lens: TunedLens, resid: torch.Tensor, layer: int) -> torch.Tensor:
    """Logits [..., d_vocab] of the residual ``resid`` [..., d_model] after block ``layer``,
    translated and read through the model's final norm and unembedding (with its soft-cap)."""
    return model.unembed(lens.translate(layer, resid.to(model.device)).to(model.dtype))


def point_labels(n_layers: int) -> list[str]:
    """Labels of the residual after each block, in :class:`LogitLens`' naming: the residual
    after block l enters block l + 1 ("L{l+1}"); after the last block it is "final"."""
    return [f"L{layer + 1}" for layer in range(n_layers - 1)] + ["final"]


@torch.no_grad()
def tuned_lens(model: HookedModel, lens: TunedLens, cache: ActivationCache, position: int = -1,
               batch_index: int = 0, k: int = 5) -> LogitLens:
    """The tuned-lens reading of ``cache`` at ``position`` of prompt ``batch_index``, as a
    :class:`LogitLens` (``log_probs`` [n_layers, d_vocab] on the CPU).

    Row l reads the residual after block l, labelled as :func:`logit_lens` labels the same
    residual ("L{l+1}", the last "final"), so ``logit_lens(...).log_probs[1:]`` is the logit
    lens at the same points (its row 0, the embeddings, has no translator). An identity lens
    gives exactly those rows. The cache needs what logit_lens needs (every resid_pre and the
    last block's resid_post; the residual after block l < n_layers - 1 is resid_pre of l + 1)."""
    lens.check_model(model, check_name=False)
    position = cache.resolve_position(position, batch_index)
    # Decode the very stack logit_lens decodes ([n_layers + 1, d_model]: the embeddings, then the
    # residual after each block), with rows 1.. translated: the same matmul shapes, so an
    # identity lens reproduces the logit lens bit for bit. Row 0 has no translator and is dropped.
    stack = cache.accumulated_resid(pos_slice=position)[:, batch_index].to(model.device)
    translated = [stack[0].float()] + [lens.translate(layer, stack[layer + 1]) for layer in range(model.cfg.n_layers)]
    logits = model.unembed(torch.stack(translated).to(model.dtype))[1:]
    log_probs = logits.float().log_softmax(-1).cpu()
    top = log_probs.topk(k, dim=-1)
    top_tokens = [[(model.tokenizer.decode([int(t)]), float(p.exp())) for t, p in zip(ids, values)]
                  for ids, values in zip(top.indices, top.values)]
    return LogitLens(point_labels(model.cfg.n_layers), log_probs, top_tokens)


@dataclass
class LensComparison:
    """Per-layer KL(final || lens) in nats, averaged over ``n_tokens`` tokens.

    ``logit_lens_kl`` and ``tuned_lens_kl``: [len(layers)]; entry i reads the residual after
    block ``layers[i]``, labelled ``labels[i]`` (:func:`point_labels`). The logit lens after
    the last block is the model's output, so its KL there is 0 by definition."""

    layers: list[int]
    labels: list[str]
    logit_lens_kl: torch.Tensor
    tuned_lens_kl: torch.Tensor
    n_tokens: int
    info: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        """A markdown table: point, logit-lens KL, tuned-lens KL, their ratio."""
        rows = ["| point | logit lens KL | tuned lens KL | tuned / logit |", "|---|---:|---:|---:|"]
        for label, logit, tuned in zip(self.labels, self.logit_lens_kl.tolist(), self.tuned_lens_kl.tolist()):
            ratio = f"{tuned / logit:.3f}" if logit > 1e-9 else "-"
            rows.append(f"| {label} | {logit:.4f} | {tuned:.4f} | {ratio} |")
        return "\n".join(rows)

    def to_json(self) -> dict[str, Any]:
        return {"layers": self.layers, "labels": self.labels, "logit_lens_kl": self.logit_lens_kl.tolist(),
                "tuned_lens_kl": self.tuned_lens_kl.tolist(), "n_tokens": self.n_tokens, "info": self.info}


def check_contexts(model: HookedModel, contexts: torch.Tensor, name: str = "contexts",
                   min_positions: int = 2) -> torch.Tensor:
    """``contexts`` as a [n, pos >= min_positions] int64 CPU tensor of valid token ids, or a
    MechscopeError."""
    if not isinstance(contexts, torch.Tensor):
        raise InputTypeError(f"{name} must be a [n_contexts, pos] tensor of token ids (e.g. from mechscope.data.pack), "
                             f"got {type(contexts).__name__}")
    if contexts.dim() != 2 or contexts.shape[0] < 1 or contexts.shape[1] < min_positions:
        raise MechscopeError(f"{name} must be [n_contexts >= 1, pos >= {min_positions}], got shape "
                             f"{tuple(contexts.shape)}")
    if contexts.is_floating_point() or contexts.is_complex() or contexts.dtype == torch.bool:
        raise InputTypeError(f"{name} must hold integer token ids, got dtype {contexts.dtype}")
    if int(contexts.min()) < 0 or int(contexts.max()) >= model.cfg.d_vocab:
        raise MechscopeError(f"{name} holds token ids {int(contexts.min())}..{int(contexts.max())}; the model's "
                             f"vocabulary is 0..{model.cfg.d_vocab - 1}")
    return contexts.long().cpu()


def kl_to_final(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per token, [...], from log-probabilities [..., d_vocab] (float32)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def residuals_after(model: HookedModel, tokens: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """{layer: the residual after block ``layer``, [batch, pos, d_model]} for ``layers`` and the
    last block, from one forward pass without autograd. The model's own logits are not needed
    (the lenses and their target decode these residuals), so only the last position is
    unembedded: a [pos, d_vocab] matmul saved per context."""
    names = hook_names.resid_posts(model.cfg.n_layers)
    wanted = sorted({*layers, model.cfg.n_layers - 1})
    store: dict[str, torch.Tensor] = {}

    def save(activation: torch.Tensor, hook) -> None:
        store[hook.name] = activation.detach()

    model.run_with_hooks(tokens.to(model.device), fwd_hooks=[(names[layer], save) for layer in wanted],
                         logits_to_keep=1)
    return {layer: store[names[layer]] for layer in wanted}


@torch.no_grad()
def compare_lenses(model: HookedModel, lens: TunedLens, contexts: torch.Tensor, batch_contexts: int = 8,
                   skip_first: bool = True, layers: Sequence[int] | None = None,
                   check_name: bool = True) -> LensComparison:
    """Per-layer KL(final || logit lens) and KL(final || tuned lens) for ``layers`` (default
    all), over every token of ``contexts`` [n, pos] (after the first position when
    ``skip_first``: in packed contexts it is BOS, the same state in every context). "final" is
    the model's output distribution, computed from the last residual through the same final
    norm and unembedding, so both lenses are measured against exactly what they read."""
    check_int("batch_contexts", batch_contexts, minimum=1)
    contexts = check_contexts(model, contexts, min_positions=2 if skip_first else 1)
    lens.check_model(model, check_name)
    n_layers = model.cfg.n_layers
    chosen = list(range(n_layers)) if layers is None else [int(layer) for layer in layers]
    bad = [layer for layer in chosen if not 0 <= layer < n_layers]
    if bad or not chosen:
        raise MechscopeError(f"layers must be indices in 0..{n_layers - 1}; got {list(layers or [])}")
    start = 1 if skip_first else 0
    logit_sum = torch.zeros(len(chosen), dtype=torch.float64)
    tuned_sum = torch.zeros(len(chosen), dtype=torch.float64)
    count = 0
    for begin in range(0, len(contexts), batch_contexts):
        resids = residuals_after(model, contexts[begin:begin + batch_contexts], chosen)
        log_p = model.unembed(resids[n_layers - 1][:, start:]).float().log_softmax(-1)
        for index, layer in enumerate(chosen):
            resid = resids[layer][:, start:]
            log_logit = model.unembed(resid).float().log_softmax(-1)
            log_tuned = tuned_lens_logits(model, lens, resid, layer).float().log_softmax(-1)
            logit_sum[index] += float(kl_to_final(log_p, log_logit).double().sum())
            tuned_sum[index] += float(kl_to_final(log_p, log_tuned).double().sum())
        count += log_p.shape[0] * log_p.shape[1]
    labels = point_labels(n_layers)
    return LensComparison(chosen, [labels[layer] for layer in chosen], (logit_sum / count).float(),
                          (tuned_sum / count).float(), count,
                          {"n_contexts": len(contexts), "context_length": contexts.shape[1], "skip_first": skip_first})


def __getattr__(name: str):
    # Training (config, optimiser, checkpoints) lives in tuned_lens_train, which imports this
    # module; its public names are served from here too, so the tuned lens has one import path
    # (``from mechscope.analysis.tuned_lens import TunedLensConfig, train_tuned_lens``).
    if name in ("TunedLensConfig", "train_tuned_lens"):
        from mechscope.analysis import tuned_lens_train

        return getattr(tuned_lens_train, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
