"""Checks for values that come from a user (the command line, a script's options) and can be
made before any model loads: caps on sizes and the little parsers for counts ("2M"), index
lists ("0-19,3") and strengths ("1.5x"). Choices are checked by
:func:`mechscope.validate.check_choice`, hook-name syntax by
:func:`mechscope.models.catalogue.check_hook_syntax`.

Each raises a :class:`~mechscope.errors.MechscopeError` subclass whose message names the value,
what it got and what is valid, so a typo costs a second, not a model load and a long run.
"""

from __future__ import annotations

import math
import re

from mechscope.errors import ConfigError, NonFiniteError, OutOfRangeError

# Sane caps: far above any real run on this library's models, low enough that a typo (an extra
# zero, a range end) is refused at once instead of allocating or looping for hours.
MAX_PROMPTS = 10_000  # task prompts (--n)
MAX_CONTEXTS = 100_000  # corpus contexts of 128 tokens
MAX_TOKENS = 10_000_000_000  # SAE training tokens
MAX_BATCH = 1 << 20  # rows per optimiser step
MAX_D_SAE = 1 << 22  # dictionary latents
MAX_LATENTS = 10_000  # dashboards written at once
MAX_NEW_TOKENS = 8192  # generated tokens per prompt
MAX_STEPS = 1_000  # interpolation steps
MAX_SAMPLES = 1_024  # noise draws per cell
MAX_WINDOW = 1_024  # layers restored together
MAX_TOP_K = 1_000  # tokens listed
MAX_SEED = 2**32 - 1  # numpy's seeds are unsigned 32-bit; torch's are wider
MAX_POSITION = 1_000_000  # a token position, counted from either end
MAX_INDEX_RANGE = 1_000_000  # entries in one parsed index list, before any size is known

_SCALES = {"k": 1_000, "m": 1_000_000, "b": 1_000_000_000, "g": 1_000_000_000}


def check_text(field: str, text: str) -> str:
    """A non-blank string (a prompt, a subject)."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{field} must not be empty")
    return text


def parse_count(text: str, field: str = "tokens", maximum: int = MAX_TOKENS) -> int:
    """``"500k"``, ``"2M"``, ``"1.5B"`` or ``"100000"`` as a positive whole count, at most ``maximum``."""
    cleaned = str(text).strip().lower().replace("_", "")
    scale = _SCALES.get(cleaned[-1:], 1)
    number = cleaned[:-1] if scale > 1 else cleaned
    try:
        value = float(number)
    except ValueError:
        raise ConfigError(f"{field} must look like 500k, 2M or 100000, got {text!r}") from None
    if not math.isfinite(value):
        raise NonFiniteError(f"{field} must be a finite count, got {text!r}")
    count = int(value * scale)
    if count < 1:
        raise ConfigError(f"{field} must be at least 1, got {text!r}")
    if count > maximum:
        raise ConfigError(f"{field} must be at most {maximum:,}, got {text!r} ({count:,})")
    return count


def parse_indices(text: str, field: str, size: int | None = None, cap: int = MAX_INDEX_RANGE,
                  what: str = "entries") -> list[int]:
    """``"0-19"``, ``"3,17,256"`` or a mix as a list of distinct non-negative indices, in the order
    given. With ``size``, every index must be below it; at most ``cap`` indices in all. Ranges
    are checked before they are expanded, so ``0-100000000`` costs nothing."""
    chosen: dict[int, None] = {}
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        match = re.fullmatch(r"(\d+)\s*-\s*(\d+)|(\d+)", part)
        if match is None:
            raise ConfigError(f"{field} must look like 0-19 or 3,17,256 (non-negative whole numbers), got {text!r}")
        low, high = (int(match.group(1)), int(match.group(2))) if match.group(3) is None else (int(match.group(3)),) * 2
        if high < low:
            raise ConfigError(f"{field}: the range {part!r} runs backwards; write it low-high")
        if size is not None and high >= size:
            raise OutOfRangeError(f"{field} {part!r} out of range: there are {size} {what} (0..{size - 1})")
        if high - low + 1 + len(chosen) > cap:
            raise ConfigError(f"{field} {text!r} asks for more than {cap:,} {what} at once; ask for fewer")
        chosen.update(dict.fromkeys(range(low, high + 1)))
    if not chosen:
        raise ConfigError(f"{field} must name at least one index, got {text!r}")
    return list(chosen)


def parse_strength(text: str, field: str = "alpha") -> tuple[float, bool]:
    """``"4"`` -> (4.0, False), absolute; ``"1.5x"`` -> (1.5, True), a multiple of a scale."""
    cleaned = str(text).strip().lower()
    relative = cleaned.endswith("x")
    try:
        value = float(cleaned[:-1] if relative else cleaned)
    except ValueError:
        raise ConfigError(f"{field} must be a number (e.g. 4) or a multiple of the direction's scale (e.g. 1.5x), "
                          f"got {text!r}") from None
    if not math.isfinite(value):
        raise NonFiniteError(f"{field} must be finite, got {text!r}")
    return value, relative


def context_length(model) -> int | None:
    """The most positions ``model`` (a HookedModel) can attend over, from its HF config; None
    when the config does not say (rotary models with no stated limit)."""
    config = getattr(getattr(model, "hf_model", None), "config", None)
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def check_context(model, n_tokens: int, what: str) -> int:
    """Refuse ``n_tokens`` beyond the model's context: past it, learned position embeddings
    index out of range (an IndexError deep in torch) and rotary models degrade silently."""
    limit = context_length(model)
    if limit is not None and n_tokens > limit:
        raise ConfigError(f"{what} needs {n_tokens} positions, but the model's context holds {limit}; shorten it")
    return n_tokens
