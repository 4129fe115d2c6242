"""Hook point names, built in one place.

Every name mechscope uses follows TransformerLens: ``hook_embed``, ``blocks.{layer}.{suffix}``
and ``ln_final.hook_normalized``. Code elsewhere calls these builders (``resid_pre(3)``,
``attn(3, "z")``) instead of formatting strings, so a name is spelled once and a typo is a
NameError, not a hook that silently matches nothing.
"""

from __future__ import annotations

import re
from typing import Literal

EMBED = "hook_embed"
POS_EMBED = "hook_pos_embed"
LN_FINAL = "ln_final.hook_normalized"

AttentionPart = Literal["q", "k", "v", "z", "result", "pattern", "attn_scores"]
MlpPart = Literal["pre", "pre_linear", "post"]
ResidualKind = Literal["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_in"]

# Short names accepted as cache[("resid_post", 3)], TransformerLens-style, and their suffixes.
SHORT_NAMES = {
    "resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid", "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out", "mlp_in": "hook_mlp_in",
    "q": "attn.hook_q", "k": "attn.hook_k", "v": "attn.hook_v", "z": "attn.hook_z",
    "result": "attn.hook_result", "pattern": "attn.hook_pattern", "attn_scores": "attn.hook_attn_scores",
    "scores": "attn.hook_attn_scores", "pre": "mlp.hook_pre", "post": "mlp.hook_post",
    "pre_linear": "mlp.hook_pre_linear", "normalized": "ln1.hook_normalized",
}

_BLOCK_NAME = re.compile(r"blocks\.(-?\d+)\.(.*)")


def block(layer: int, suffix: str) -> str:
    """``blocks.{layer}.{suffix}``: the hook point ``suffix`` (e.g. ``hook_resid_pre``) of a block."""
    return f"blocks.{layer}.{suffix}"


def short(kind: str, layer: int) -> str:
    """The full name of a TransformerLens short name at ``layer``: ``short("resid_post", 3)``
    is ``blocks.3.hook_resid_post``; an unknown short name is taken as the suffix itself."""
    return block(layer, SHORT_NAMES.get(kind, kind))


def block_hook_name(layer: int, hook: str) -> str:
    """A point of block ``layer`` as a user types it: a short name (``resid_post``, ``z``), a
    suffix (``hook_resid_post``, ``attn.hook_z``), or a bare word taken as ``hook_<word>``."""
    if hook in SHORT_NAMES:
        return short(hook, layer)
    return block(layer, hook if hook.startswith("hook_") or "." in hook else f"hook_{hook}")


def resid_pre(layer: int) -> str:
    return block(layer, "hook_resid_pre")


def resid_mid(layer: int) -> str:
    return block(layer, "hook_resid_mid")


def resid_post(layer: int) -> str:
    return block(layer, "hook_resid_post")


def resid_posts(n_layers: int) -> list[str]:
    """``hook_resid_post`` of every block 0..n_layers-1, in layer order."""
    return [resid_post(layer) for layer in range(n_layers)]


def attn_out(layer: int) -> str:
    return block(layer, "hook_attn_out")


def mlp_out(layer: int) -> str:
    return block(layer, "hook_mlp_out")


def mlp_in(layer: int) -> str:
    return block(layer, "hook_mlp_in")


def residual(kind: ResidualKind, layer: int) -> str:
    """One of the residual-width points of a block by kind (``residual("attn_out", 2)``)."""
    return block(layer, SHORT_NAMES[kind])


def attn(layer: int, part: AttentionPart) -> str:
    """``blocks.{layer}.attn.hook_{part}``: q, k, v, z, result, pattern or attn_scores."""
    return block(layer, f"attn.hook_{part}")


def mlp(layer: int, part: MlpPart) -> str:
    """``blocks.{layer}.mlp.hook_{part}``: pre, pre_linear or post."""
    return block(layer, f"mlp.hook_{part}")


def normalized(layer: int, norm: Literal[1, 2]) -> str:
    """``blocks.{layer}.ln{norm}.hook_normalized``: the attention (1) or MLP (2) input after its norm."""
    return block(layer, f"ln{norm}.hook_normalized")


def split_block_name(name: str) -> tuple[int, str] | None:
    """(layer, suffix) of a ``blocks.{layer}.{suffix}`` name, else None. Only the catalogue's
    error messages use it, to say why a name a user typed does not exist; code that needs a
    hook point's layer reads ``HookPoint.layer_index``."""
    match = _BLOCK_NAME.fullmatch(name)
    return (int(match.group(1)), match.group(2)) if match else None
