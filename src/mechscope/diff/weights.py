"""Weight diffing: how much, where and in which directions a fine-tune moved each parameter.

Parameters are matched by name (``hf_model.named_parameters()``); for each one the change
ΔW = W_ft - W_base is measured by its Frobenius norm, its norm relative to ‖W_base‖ and, for
matrices, its top singular values and vectors (a low-rank fine-tune such as LoRA shows up as a
few large singular values). Embedding and unembedding rows are ranked by how far each token's
row moved. Everything is computed in float32, without autograd, one parameter at a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from mechscope.diff.compat import IncompatibleModelsError, check_comparable, model_label
from mechscope.errors import NotFoundError
from mechscope.models.hooked_model import HookedModel
from mechscope.validate import check_choice, check_int

RankBy = Literal["relative", "absolute"]
FULL_SVD_MAX = 2048  # matrices with a smaller side than this get an exact SVD, larger ones a randomised one
LOWRANK_OVERSAMPLE = 10  # extra columns svd_lowrank draws beyond the k it keeps, for accuracy
LOWRANK_ITERATIONS = 4
TOP_TOKENS = 10  # tokens listed for a singular vector that lives in vocabulary space


def _relative(delta_norm: float, base_norm: float) -> float | None:
    """‖ΔW‖ / ‖W_base‖; None when the base parameter is all zeros (e.g. a zero-initialised bias),
    where a ratio means nothing."""
    return delta_norm / base_norm if base_norm > 0 else None


def _rank_key(delta_norm: float, base_norm: float, by: str) -> float:
    if by == "absolute":
        return delta_norm
    relative = _relative(delta_norm, base_norm)
    # A change to an all-zero base parameter is infinitely large relative to it: rank it first.
    return (math.inf if delta_norm > 0 else 0.0) if relative is None else relative


@dataclass(frozen=True, eq=False)
class ParameterChange:
    """The change of one parameter. ``layer`` is its block index (None outside the blocks) and
    ``role`` its name inside the block (``mlp.down_proj.weight``), or the full name outside.

    For 2-D parameters with ``k`` directions computed: ``singular_values`` [k] of ΔW (largest
    first), ``left`` [k, rows] and ``right`` [k, cols] its singular vectors (row i is the i-th
    vector; the sign of each pair is arbitrary), ``top_fraction`` the share of ‖ΔW‖² they hold
    (1.0: ΔW has rank <= k). ``vocab_tokens[i]`` lists the (token, value) entries of largest
    magnitude of the i-th singular vector on the side that indexes the vocabulary, if one does.
    """

    name: str
    shape: tuple[int, ...]
    layer: int | None
    role: str
    delta_norm: float
    base_norm: float
    singular_values: tuple[float, ...] = ()
    left: torch.Tensor | None = None
    right: torch.Tensor | None = None
    top_fraction: float | None = None
    vocab_tokens: tuple[tuple[tuple[str, float], ...], ...] | None = None

    @property
    def relative(self) -> float | None:
        return _relative(self.delta_norm, self.base_norm)

    @property
    def module(self) -> str:
        """The dotted name of the module holding the parameter."""
        return self.name.rpartition(".")[0] or self.name

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "layer": self.layer, "role": self.role,
                "delta_norm": self.delta_norm, "base_norm": self.base_norm, "relative": self.relative,
                "singular_values": list(self.singular_values), "top_fraction": self.top_fraction,
                "vocab_tokens": None if self.vocab_tokens is None else
                [[[token, value] for token, value in vector] for vector in self.vocab_tokens]}


@dataclass(frozen=True)
class GroupChange:
    """The combined change of several parameters (a module, a layer or a role): the norm of all
    their ΔW together, sqrt(sum ‖ΔW_i‖²), and of their base values."""

    name: str
    delta_norm: float
    base_norm: float
    n_parameters: int
    layer: int | None = None

    @property
    def relative(self) -> float | None:
        return _relative(self.delta_norm, self.base_norm)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "layer": self.layer, "delta_norm": self.delta_norm,
                "base_norm": self.base_norm, "relative": self.relative, "n_parameters": self.n_parameters}


@dataclass(frozen=True)
class RowChange:
    """How far one token's embedding (or unembedding) row moved: ‖Δrow‖ and ‖Δrow‖ / ‖row_base‖."""

    token_id: int
    token: str
    delta_norm: float
    base_norm: float

    @property
    def relative(self) -> float | None:
        return _relative(self.delta_norm, self.base_norm)

    def to_json(self) -> dict[str, Any]:
        return {"token_id": self.token_id, "token": self.token, "delta_norm": self.delta_norm,
                "base_norm": self.base_norm, "relative": self.relative}


def _group(name: str, changes: Iterable[ParameterChange], layer: int | None = None) -> GroupChange:
    changes = list(changes)
    return GroupChange(name, math.sqrt(sum(c.delta_norm ** 2 for c in changes)),
                       math.sqrt(sum(c.base_norm ** 2 for c in changes)), len(changes), layer)


@dataclass(frozen=True, eq=False)
class WeightDiff:
    """Per-parameter changes of a fine-tune, with summaries.

    ``parameters`` in the models' parameter order; ``by_layer`` one group per block (in order);
    ``by_role`` one group per role (a block-relative name such as ``self_attn.o_proj.weight``,
    summed over blocks; parameters outside the blocks are their own role). ``embedding_rows``
    and ``unembedding_rows`` list the tokens whose rows moved most (only rows that moved);
    ``tied`` models share one matrix, so ``unembedding_rows`` is None and the embedding rows are
    the unembedding rows too.
    """

    base_name: str
    ft_name: str
    parameters: tuple[ParameterChange, ...]
    by_layer: tuple[GroupChange, ...]
    by_role: tuple[GroupChange, ...]
    embedding_rows: tuple[RowChange, ...]
    unembedding_rows: tuple[RowChange, ...] | None
    tied: bool
    total: GroupChange = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "total", _group("total", self.parameters))

    def parameter(self, name: str) -> ParameterChange:
        for change in self.parameters:
            if change.name == name:
                return change
        raise NotFoundError(f"no parameter named {name!r}; there are {len(self.parameters)}, "
                            f"e.g. {', '.join(c.name for c in self.parameters[:3])}")

    def parameters_ranked(self, by: RankBy = "relative") -> list[ParameterChange]:
        """Parameters, most changed first (``by``: "relative" to the base norm, or "absolute")."""
        check_choice("by", by, RankBy)
        return sorted(self.parameters, key=lambda c: -_rank_key(c.delta_norm, c.base_norm, by))

    def modules_ranked(self, by: RankBy = "relative") -> list[GroupChange]:
        """Modules (a module's weight and bias together), most changed first."""
        check_choice("by", by, RankBy)
        modules: dict[str, list[ParameterChange]] = {}
        for change in self.parameters:
            modules.setdefault(change.module, []).append(change)
        groups = [_group(name, changes, changes[0].layer) for name, changes in modules.items()]
        return sorted(groups, key=lambda g: -_rank_key(g.delta_norm, g.base_norm, by))

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (no tensors; singular vectors appear only as their vocabulary tokens)."""
        return {
            "base": self.base_name, "ft": self.ft_name, "total": self.total.to_json(),
            "tied_embeddings": self.tied,
            "parameters": [change.to_json() for change in self.parameters_ranked()],
            "modules": [group.to_json() for group in self.modules_ranked()],
            "by_layer": [group.to_json() for group in self.by_layer],
            "by_role": [group.to_json() for group in self.by_role],
            "embedding_rows": [row.to_json() for row in self.embedding_rows],
            "unembedding_rows": None if self.unembedding_rows is None else [row.to_json() for row in self.unembedding_rows],
            "unembedding_note": "tied to the input embeddings: embedding_rows are the unembedding rows too"
            if self.tied else None,
        }


def _top_singular(delta: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(singular values [k], left vectors [k, rows], right vectors [k, cols]) of a float32 matrix."""
    k = min(k, *delta.shape)
    if min(delta.shape) <= FULL_SVD_MAX:
        left, values, right = torch.linalg.svd(delta, full_matrices=False)
        return values[:k], left[:, :k].T, right[:k]
    # A full SVD of a 4096 x 14336 matrix per parameter would dominate the run; the randomised
    # one is exact for ranks below q and accurate for the top directions of the rest. Seeded
    # locally, so the same models give the same vectors.
    devices = [delta.device] if delta.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)
        left, values, right = torch.svd_lowrank(delta, q=min(k + LOWRANK_OVERSAMPLE, *delta.shape),
                                                niter=LOWRANK_ITERATIONS)
    return values[:k], left[:, :k].T, right[:, :k].T


def _vector_tokens(model: HookedModel, vectors: torch.Tensor) -> tuple[tuple[tuple[str, float], ...], ...]:
    n = min(TOP_TOKENS, vectors.shape[1])
    result = []
    for vector in vectors:
        top = vector.abs().topk(n).indices
        result.append(tuple((model.tokenizer.decode([int(i)]), float(vector[i])) for i in top))
    return tuple(result)


def _parameter_change(model: HookedModel, name: str, base: torch.Tensor, ft: torch.Tensor,
                      top_k: int) -> ParameterChange:
    prefix = model.adapter.layers + "."
    layer, role = None, name
    if name.startswith(prefix):
        index, _, rest = name[len(prefix):].partition(".")
        if index.isdigit():
            layer, role = int(index), rest
    base32 = base.detach().float()
    delta = ft.detach().to(base32.device).float() - base32
    delta_norm, base_norm = float(delta.norm()), float(base32.norm())
    if delta.dim() != 2 or top_k == 0 or delta_norm == 0:
        return ParameterChange(name, tuple(base.shape), layer, role, delta_norm, base_norm)
    values, left, right = _top_singular(delta, top_k)
    fraction = min(1.0, float(values.pow(2).sum()) / delta_norm ** 2)
    d_vocab = model.cfg.d_vocab
    vocab_side = left if delta.shape[0] == d_vocab else right if delta.shape[1] == d_vocab else None
    return ParameterChange(name, tuple(base.shape), layer, role, delta_norm, base_norm,
                           tuple(float(v) for v in values), left.cpu(), right.cpu(), fraction,
                           None if vocab_side is None else _vector_tokens(model, vocab_side))


def _row_changes(model: HookedModel, base: torch.Tensor, ft: torch.Tensor, k: int) -> tuple[RowChange, ...]:
    """The ``k`` rows [vocab, d_model] that moved most (rows that did not move are left out)."""
    base32 = base.detach().float()
    delta_norms = (ft.detach().to(base32.device).float() - base32).norm(dim=-1)
    base_norms = base32.norm(dim=-1)
    values, ids = delta_norms.topk(min(k, len(delta_norms)))
    return tuple(RowChange(int(i), model.tokenizer.decode([int(i)]), float(v), float(base_norms[i]))
                 for v, i in zip(values, ids) if v > 0)


def _is_tied(model: HookedModel) -> bool:
    embed = model.hf_model.get_submodule(model.adapter.embed).weight
    unembed = model.hf_model.get_submodule(model.adapter.unembed).weight
    return embed is unembed or embed.data_ptr() == unembed.data_ptr()


@torch.no_grad()
def weight_diff(base: HookedModel, ft: HookedModel, top_k_directions: int = 3, top_k_rows: int = 20,
                progress: bool = True) -> WeightDiff:
    """Compare every parameter of ``ft`` with the same-named one of ``base``.

    ``top_k_directions``: singular directions kept per 2-D parameter (0: none, which skips the
    SVDs, the only costly part). ``top_k_rows``: embedding / unembedding rows listed.
    Raises :class:`IncompatibleModelsError` when the models are not comparable or their
    parameter names or shapes differ."""
    check_comparable(base, ft)
    top_k_directions = check_int("top_k_directions", top_k_directions, minimum=0)
    top_k_rows = check_int("top_k_rows", top_k_rows, minimum=1)
    base_params = dict(base.hf_model.named_parameters())
    ft_params = dict(ft.hf_model.named_parameters())
    only_base, only_ft = sorted(set(base_params) - set(ft_params)), sorted(set(ft_params) - set(base_params))
    shapes = [f"{name} {tuple(base_params[name].shape)} vs {tuple(ft_params[name].shape)}"
              for name in base_params if name in ft_params and base_params[name].shape != ft_params[name].shape]
    if only_base or only_ft or shapes:
        problems = [f"only in the base: {', '.join(only_base[:5])}" if only_base else "",
                    f"only in the fine-tune: {', '.join(only_ft[:5])}" if only_ft else "",
                    f"shapes differ: {', '.join(shapes[:5])}" if shapes else ""]
        raise IncompatibleModelsError(
            f"cannot diff the weights of base {model_label(base)!r} and fine-tune {model_label(ft)!r}: "
            + "; ".join(p for p in problems if p) + ". A fine-tune with merged adapters has the base's "
            "parameter names and shapes; merge LoRA adapters (peft merge_and_unload) before diffing")
    tied, ft_tied = _is_tied(base), _is_tied(ft)
    if tied != ft_tied:
        raise IncompatibleModelsError(f"base {model_label(base)!r} {'ties' if tied else 'unties'} its embeddings and "
                                      f"unembedding, fine-tune {model_label(ft)!r} does not; diffing needs the same")
    changes = tuple(_parameter_change(base, name, tensor, ft_params[name], top_k_directions)
                    for name, tensor in tqdm(base_params.items(), desc="weight diff", disable=not progress))
    by_layer = tuple(_group(f"layer {layer}", (c for c in changes if c.layer == layer), layer)
                     for layer in range(base.cfg.n_layers))
    roles: dict[str, list[ParameterChange]] = {}
    for change in changes:
        roles.setdefault(change.role, []).append(change)
    by_role = tuple(_group(role, group) for role, group in roles.items())

    def matrix(model: HookedModel, path: str) -> torch.Tensor:
        return model.hf_model.get_submodule(path).weight  # [d_vocab, d_model] for embeddings and lm_head

    embedding_rows = _row_changes(base, matrix(base, base.adapter.embed), matrix(ft, ft.adapter.embed), top_k_rows)
    unembedding_rows = None if tied else _row_changes(base, matrix(base, base.adapter.unembed),
                                                      matrix(ft, ft.adapter.unembed), top_k_rows)
    return WeightDiff(model_label(base), model_label(ft), changes, by_layer, by_role, embedding_rows,
                      unembedding_rows, tied)
