"""The component graph of a transformer: who writes into the residual stream, who reads it.

Writers (in the order the forward pass produces them): the input embedding ``input``, then per
layer every attention head ``L{l}H{h}`` followed by the MLP ``MLP{l}``. Receivers: per layer
the attention inputs, then the MLP's input, and finally ``logits``. An edge joins a writer to a
receiver that reads it through the residual stream, i.e. every writer earlier in the forward.

Attention receivers, with ``qkv=True`` (the default): each query head's q input
(``L{l}H{h}.q``), and each key/value head's k and v inputs (``L{l}KV{g}.k`` / ``.v``; under
grouped-query attention a kv head serves n_heads / n_kv_heads query heads, so its inputs are one
receiver each; without GQA they are named ``L{l}H{h}.k`` / ``.v``). With ``qkv=False`` a head's q, k and v read one input (``L{l}H{h}``); under GQA
the shared k and v read ``L{l}KV{g}``.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import torch

from mechscope.errors import NotFoundError
from mechscope.models.config import ModelConfig

WriterKind = Literal["input", "head", "mlp"]
ReceiverKind = Literal["attention", "mlp", "logits"]


@dataclass(frozen=True)
class WriterId:
    """One writer into the residual stream: the input embedding (layer -1), a head, or an MLP."""

    kind: WriterKind
    layer: int
    head: int | None = None

    @property
    def label(self) -> str:
        """``input``, ``L{layer}H{head}`` or ``MLP{layer}`` (how circuits name it in files and plots)."""
        if self.kind == "input":
            return "input"
        return f"L{self.layer}H{self.head}" if self.kind == "head" else f"MLP{self.layer}"

    @property
    def depth(self) -> float:
        """Where it sits in the forward pass: -1 for the input, the layer for heads, layer + 0.5 for MLPs."""
        return self.layer + (0.5 if self.kind == "mlp" else 0.0)


@dataclass(frozen=True)
class Receiver:
    """One reader of the residual stream. ``feeds``: the (part, head) inputs it provides, with part
    "q", "k", "v" (head = query head for q, kv head for k / v), "mlp" or "logits" (head -1).
    ``node`` is the component drawn for it (``L{l}H{h}``, a shared ``L{l}KV{g}``, ``MLP{l}`` or
    ``logits``) and ``part`` the input it names ("q", "k", "v", or "" when it feeds several)."""

    name: str
    layer: int
    feeds: tuple[tuple[str, int], ...]
    n_upstream: int  # writers 0 .. n_upstream-1 are read by this receiver
    node: str = ""
    part: str = ""

    @property
    def kind(self) -> ReceiverKind:
        first = self.feeds[0][0]
        return "attention" if first in ("q", "k", "v") else first  # type: ignore[return-value]

    @property
    def depth(self) -> float:
        """Position in the forward pass on the writers' scale: the layer for attention inputs,
        layer + 0.5 for the MLP, infinity for the logits."""
        if self.kind == "logits":
            return math.inf
        return self.layer + (0.5 if self.kind == "mlp" else 0.0)


@dataclass(frozen=True)
class ComponentGraph:
    """Writers, receivers and the edges between them for one model configuration."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    parallel_residual: bool
    qkv: bool
    writer_ids: tuple[WriterId, ...]
    receivers: tuple[Receiver, ...]
    _writer_index: dict[str, int] = field(repr=False, compare=False, default_factory=dict)
    _receiver_index: dict[str, int] = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def from_config(cls, cfg: ModelConfig, qkv: bool = True) -> ComponentGraph:
        heads, kv_heads = cfg.n_heads, cfg.n_kv_heads
        writers = [WriterId("input", -1)]
        receivers: list[Receiver] = []
        for layer in range(cfg.n_layers):
            upstream = len(writers)
            receivers.extend(_attention_receivers(layer, heads, kv_heads, qkv, upstream))
            writers.extend(WriterId("head", layer, head) for head in range(heads))
            # Parallel blocks (GPT-NeoX) feed the MLP the block input, not the attention output.
            mlp = WriterId("mlp", layer)
            receivers.append(Receiver(mlp.label, layer, (("mlp", -1),),
                                      upstream if cfg.parallel_residual else len(writers), node=mlp.label))
            writers.append(mlp)
        receivers.append(Receiver("logits", cfg.n_layers, (("logits", -1),), len(writers), node="logits"))
        return cls(cfg.n_layers, heads, kv_heads, cfg.parallel_residual, qkv, tuple(writers), tuple(receivers),
                   {w.label: i for i, w in enumerate(writers)}, {r.name: i for i, r in enumerate(receivers)})

    @cached_property
    def writers(self) -> tuple[str, ...]:
        """The writers' labels, in forward order (``writer_ids`` holds them typed)."""
        return tuple(writer.label for writer in self.writer_ids)

    @property
    def n_writers(self) -> int:
        return len(self.writers)

    @property
    def n_receivers(self) -> int:
        return len(self.receivers)

    def adjacency(self) -> torch.Tensor:
        """[n_writers, n_receivers] bool: True where an edge exists."""
        upstream = torch.tensor([r.n_upstream for r in self.receivers])
        return torch.arange(self.n_writers)[:, None] < upstream[None, :]

    @property
    def n_edges(self) -> int:
        return sum(r.n_upstream for r in self.receivers)

    def writer_index(self, name: str) -> int:
        return _lookup(self._writer_index, name, "writer")

    def receiver_index(self, name: str) -> int:
        return _lookup(self._receiver_index, name, "receiver")

    def writer_range(self, layer: int) -> tuple[int, int]:
        """[start, stop) writer indices of ``layer``'s heads; its MLP is writer ``stop``."""
        start = 1 + layer * (self.n_heads + 1)
        return start, start + self.n_heads

    def receivers_of_layer(self, layer: int, part: str) -> list[int]:
        """Receiver indices at ``layer`` that feed ``part`` ("q", "k", "v", "mlp", "logits")."""
        return [i for i, r in enumerate(self.receivers) if r.layer == layer and any(p == part for p, _ in r.feeds)]

    def feed_map(self, layer: int, part: str, n_slots: int) -> list[int]:
        """For each of the ``n_slots`` heads of ``part`` at ``layer``: the receiver index feeding it."""
        mapping = [-1] * n_slots
        for index in self.receivers_of_layer(layer, part):
            for feed_part, head in self.receivers[index].feeds:
                if feed_part == part:
                    mapping[head] = index
        return mapping

    def receiver_component(self, index: int) -> list[str]:
        """Writer names of the component(s) that read receiver ``index`` (none for the logits)."""
        receiver = self.receivers[index]
        names = set()
        for part, head in receiver.feeds:
            if part == "q":
                names.add(WriterId("head", receiver.layer, head).label)
            elif part in ("k", "v"):
                group = self.n_heads // self.n_kv_heads
                names.update(WriterId("head", receiver.layer, h).label for h in range(head * group, (head + 1) * group))
            elif part == "mlp":
                names.add(WriterId("mlp", receiver.layer).label)
        return sorted(names)


def _attention_receivers(layer: int, heads: int, kv_heads: int, qkv: bool, upstream: int) -> list[Receiver]:
    def receiver(node: str, part: str, feeds) -> Receiver:
        return Receiver(f"{node}.{part}" if part else node, layer, feeds, upstream, node=node, part=part)

    # Without GQA a kv head is the query head of the same index; name it so.
    kv_node = "L{layer}H{g}" if kv_heads == heads else "L{layer}KV{g}"
    if qkv:
        out = [receiver(f"L{layer}H{h}", "q", (("q", h),)) for h in range(heads)]
        for part in ("k", "v"):
            out.extend(receiver(kv_node.format(layer=layer, g=g), part, ((part, g),)) for g in range(kv_heads))
        return out
    if kv_heads == heads:
        return [receiver(f"L{layer}H{h}", "", (("q", h), ("k", h), ("v", h))) for h in range(heads)]
    out = [receiver(f"L{layer}H{h}", "", (("q", h),)) for h in range(heads)]
    out.extend(receiver(kv_node.format(layer=layer, g=g), "", (("k", g), ("v", g))) for g in range(kv_heads))
    return out


def _lookup(index: dict[str, int], name: str, kind: str) -> int:
    if name in index:
        return index[name]
    close = difflib.get_close_matches(name, list(index), n=5)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise NotFoundError(f"no {kind} named {name!r}{hint}")
