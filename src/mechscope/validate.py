"""One set of checks for configs and options, so every message has the same shape: the field,
the value it got, and the valid choices or range.

Configs call these from ``__post_init__``; functions call them where a value enters.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import fields
from typing import Any, get_args, get_origin

import torch

from mechscope.errors import ConfigError, NonFiniteError


def literal_choices(alias: Any) -> tuple:
    """The values of a ``Literal[...]`` alias (unions of Literals are flattened)."""
    values: list = []
    for arg in get_args(alias):
        values.extend(literal_choices(arg) if get_origin(arg) is not None else [arg])
    return tuple(values)


def check_choice(field: str, value: Any, choices: Iterable | Any) -> Any:
    """``value`` if it is one of ``choices`` (an iterable or a Literal alias), else a ConfigError
    that lists them."""
    # A Literal alias is iterable too (for unpacking), so test for it first.
    is_alias = get_origin(choices) is not None or get_args(choices)
    options = literal_choices(choices) if is_alias else tuple(choices)
    if value not in options:
        listed = ", ".join(str(option) for option in options)
        raise ConfigError(f"unknown {field} {value!r}; {field} must be one of: {listed}")
    return value


def _plain(value: Any) -> Any:
    """A 0-d tensor as its Python number (numpy scalars are numbers.Integral / Real already)."""
    if isinstance(value, torch.Tensor) and value.dim() == 0:
        return value.item()
    return value


def check_int(field: str, value: Any, minimum: int | None = 1, maximum: int | None = None) -> int:
    """``value`` as an int if it is an integer (a Python or numpy int or a 0-d integer tensor;
    not a bool) within [minimum, maximum], else a ConfigError."""
    value = _plain(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{field} must be an integer; got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ConfigError(f"{field} must be at least {minimum}; got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{field} must be at most {maximum}; got {value}")
    return value


def check_number(field: str, value: Any, minimum: float | None = None, maximum: float | None = None,
                 strict_minimum: bool = False) -> float:
    """``value`` if it is a finite real number within the bounds, else a ConfigError (or a
    NonFiniteError for NaN / inf). ``strict_minimum`` excludes the minimum itself. Python and
    numpy numbers and 0-d tensors are accepted; the result is a Python float."""
    value = _plain(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{field} must be a number; got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise NonFiniteError(f"{field} must be finite; got {value}")
    if minimum is not None and (value <= minimum if strict_minimum else value < minimum):
        bound = "greater than" if strict_minimum else "at least"
        raise ConfigError(f"{field} must be {bound} {minimum}; got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{field} must be at most {maximum}; got {value}")
    return float(value)


def check_finite(field: str, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` if every element is finite, else a NonFiniteError that counts the bad ones."""
    if tensor.is_floating_point() or tensor.is_complex():
        bad = ~torch.isfinite(tensor)
        if bool(bad.any()):
            raise NonFiniteError(f"{field} holds {int(bad.sum())} NaN or infinite value(s) of "
                                 f"{tensor.numel()}; mechscope needs finite values here")
    return tensor


def check_fields(config_type: type, data: Any, source: str) -> dict:
    """``data`` (e.g. read from a JSON file) as a dict of ``config_type``'s dataclass fields, or
    a ConfigError naming ``source``, the unknown keys and the known ones."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a JSON object of {config_type.__name__} fields; got "
                          f"{type(data).__name__}")
    known = {field.name for field in fields(config_type)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{source} has unknown {config_type.__name__} fields {unknown}; known: "
                          f"{', '.join(sorted(known))}")
    return dict(data)


def options_from(config_type: type, config: Any, **given: Any) -> Any:
    """The options of a function that takes either keyword options or one config object: a
    ``config_type`` built (and so validated) from ``given``, or ``config`` itself when given, in
    which case every keyword must still have its default (mixing the two is ambiguous)."""
    if config is None:
        return config_type(**given)
    if not isinstance(config, config_type):
        raise ConfigError(f"config must be a {config_type.__name__}, got {type(config).__name__}")
    defaults = {field.name: field.default for field in fields(config_type)}
    changed = sorted(name for name, value in given.items() if value is not defaults[name] and value != defaults[name])
    if changed:
        raise ConfigError(f"give either config={config_type.__name__}(...) or the option(s) "
                          f"{', '.join(changed)}, not both")
    return config
