"""Whether two models can be diffed, and the token batches both of them read.

Model diffing compares a fine-tune (FT) with the model it was fine-tuned from (BASE): weights are
matched by name, activations position by position, next-token distributions token by token. All
of that is meaningless unless both share an architecture, every dimension and the tokenizer, so
every diff entry point calls :func:`check_comparable` first.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from mechscope.errors import IncompatibleModelsError, InputTypeError, MechscopeError
from mechscope.models.hooked_model import HookedModel
from mechscope.models.tokens import as_token_tensor, tokenize
from mechscope.validate import check_int

# The ModelConfig fields a fine-tune of the same base shares with it.
COMPARED_DIMENSIONS = ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_head", "d_mlp", "d_vocab")
SHOWN_DIFFERENCES = 5  # tokens named in a vocabulary mismatch message

DiffInput = str | Sequence[str] | torch.Tensor


def model_label(model: HookedModel) -> str:
    """The name a message uses for a model: its configured name, else its family."""
    return model.cfg.name or model.cfg.family


def _vocab_difference(base_vocab: dict[str, int], ft_vocab: dict[str, int]) -> str | None:
    """A description of how two token -> id mappings differ, naming the first few tokens; None
    when they are equal."""
    if base_vocab == ft_vocab:
        return None
    only_base = sorted(set(base_vocab) - set(ft_vocab), key=base_vocab.__getitem__)
    only_ft = sorted(set(ft_vocab) - set(base_vocab), key=ft_vocab.__getitem__)
    moved = sorted((token for token in set(base_vocab) & set(ft_vocab) if base_vocab[token] != ft_vocab[token]),
                   key=base_vocab.__getitem__)
    parts = [f"the base tokenizer has {len(base_vocab)} tokens, the fine-tune's {len(ft_vocab)}"]

    def listed(tokens):
        shown = ", ".join(repr(token) for token in tokens[:SHOWN_DIFFERENCES])
        return shown + (f" and {len(tokens) - SHOWN_DIFFERENCES} more" if len(tokens) > SHOWN_DIFFERENCES else "")

    if only_ft:
        parts.append(f"{len(only_ft)} only in the fine-tune's ({listed(only_ft)})")
    if only_base:
        parts.append(f"{len(only_base)} only in the base's ({listed(only_base)})")
    if moved:
        shown = ", ".join(f"{token!r} {base_vocab[token]} -> {ft_vocab[token]}" for token in moved[:SHOWN_DIFFERENCES])
        more = f" and {len(moved) - SHOWN_DIFFERENCES} more" if len(moved) > SHOWN_DIFFERENCES else ""
        parts.append(f"{len(moved)} with different ids ({shown}{more})")
    return "tokenizers differ: " + "; ".join(parts)


def differences(base: HookedModel, ft: HookedModel) -> list[str]:
    """Every way ``base`` and ``ft`` differ that rules out diffing them (empty: comparable)."""
    for name, model in (("base", base), ("ft", ft)):
        if not isinstance(model, HookedModel):
            raise InputTypeError(f"{name} must be a HookedModel (mechscope.load / load_tiny), got {type(model).__name__}")
    found = []
    base_config, ft_config = base.hf_model.config, ft.hf_model.config
    base_arch = (type(base_config).__name__, base_config.model_type)
    ft_arch = (type(ft_config).__name__, ft_config.model_type)
    if base_arch != ft_arch:
        found.append(f"architectures differ: {base_arch[0]} (model_type {base_arch[1]!r}) vs "
                     f"{ft_arch[0]} (model_type {ft_arch[1]!r})")
    dims = [f"{field} {getattr(base.cfg, field)} vs {getattr(ft.cfg, field)}" for field in COMPARED_DIMENSIONS
            if getattr(base.cfg, field) != getattr(ft.cfg, field)]
    if dims:
        found.append("dimensions differ: " + ", ".join(dims))
    # Comparing the full mapping, not just its size: a fine-tune that re-assigned ids would make
    # every token-level comparison silently compare different tokens.
    vocab = None if base.tokenizer is ft.tokenizer else _vocab_difference(base.tokenizer.get_vocab(),
                                                                          ft.tokenizer.get_vocab())
    if vocab:
        found.append(vocab)
    return found


def check_comparable(base: HookedModel, ft: HookedModel) -> None:
    """Raise :class:`IncompatibleModelsError` unless ``ft`` can be diffed against ``base``: the
    same HF architecture (config class and model_type), the same n_layers, d_model, heads,
    d_head, d_mlp and d_vocab, and tokenizers with the same token -> id mapping."""
    found = differences(base, ft)
    if found:
        raise IncompatibleModelsError(
            f"cannot diff base {model_label(base)!r} and fine-tune {model_label(ft)!r}: " + "; ".join(found)
            + ". Model diffing needs a fine-tune of the same base model (same architecture, dimensions and "
            "tokenizer)")


def input_batches(model: HookedModel, inputs: DiffInput, attention_mask: torch.Tensor | None = None,
                  batch_size: int = 8, progress: bool = True, desc: str = "diffing",
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(tokens [batch, pos], mask [batch, pos]) batches of ``inputs`` on the CPU, for running two
    comparable models on exactly the same tokens. Strings are tokenized batch by batch with
    ``model``'s tokenizer (so a short batch is not padded to the longest text); a token tensor
    [n, pos] is cut into rows with ``attention_mask`` (default: the one :meth:`HookedModel.to_tokens`
    remembered for it, else all ones). The mask is always given, so callers need no None case."""
    check_int("batch_size", batch_size, minimum=1)
    if isinstance(inputs, torch.Tensor):
        tokens = as_token_tensor(inputs)
        mask = attention_mask if attention_mask is not None else model.attention_mask_of(inputs)
        mask = torch.ones_like(tokens) if mask is None else torch.as_tensor(mask)
        if mask.dim() == 1:
            mask = mask.unsqueeze(0)
        if mask.shape != tokens.shape:
            raise MechscopeError(f"attention_mask shape {tuple(mask.shape)} does not match tokens {tuple(tokens.shape)}")
        if tokens.max() >= model.cfg.d_vocab or tokens.min() < 0:
            raise MechscopeError(f"token ids must lie in [0, {model.cfg.d_vocab}); got "
                                 f"{int(tokens.min())}..{int(tokens.max())}")
        tokens, mask = tokens.cpu(), mask.long().cpu()
        starts = range(0, len(tokens), batch_size)
        for start in tqdm(starts, desc=desc, disable=not progress or len(starts) < 2):
            yield tokens[start:start + batch_size], mask[start:start + batch_size]
        return
    if attention_mask is not None:
        raise MechscopeError("attention_mask= goes with a token tensor; texts are tokenized with their own mask")
    texts = [inputs] if isinstance(inputs, str) else list(inputs)
    if not texts:
        raise MechscopeError("no texts given: pass a text, a list of texts or a [n, pos] token tensor")
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress or len(starts) < 2):
        tokens, mask = tokenize(model.tokenizer, texts[start:start + batch_size])
        yield tokens, torch.ones_like(tokens) if mask is None else mask
