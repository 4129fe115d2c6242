"""Small behaviour datasets written for mechscope (JSON in ``data/``, built by ``build.py``):
harmful / harmless instructions, sentiment contrast pairs, true / false statements, and
CAA-style A/B items, each with train and test splits."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Literal, get_args

from mechscope.errors import MechscopeError

DATA = Path(__file__).parent / "data"
DATASETS = {
    "harmful": ("instructions", "harmful"),
    "harmless": ("instructions", "harmless"),
    "sentiment": ("sentiment", None),
    "facts": ("facts", None),
    "caa-refusal": ("caa", "refusal"),
    "caa-sycophancy": ("caa", "sycophancy"),
}
Split = Literal["train", "test"]
SPLITS: tuple[str, ...] = get_args(Split)


@lru_cache(maxsize=None)
def _file(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text(encoding="utf-8"))


def load(name: str, split: str = "train") -> list:
    """The ``split`` ("train" or "test") of dataset ``name`` (see ``DATASETS``): a list of
    strings (instructions), {"positive", "negative"} pairs (sentiment), {"text", "label",
    "kind"} statements (facts) or {"question", "answer_matching_behavior",
    "answer_not_matching_behavior"} items (caa-*)."""
    if name not in DATASETS:
        raise MechscopeError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise MechscopeError(f"split must be one of {SPLITS}, got {split!r}")
    file_name, key = DATASETS[name]
    content = _file(file_name)
    return list((content[key] if key else content)[split])


__all__ = ["DATASETS", "SPLITS", "load"]
