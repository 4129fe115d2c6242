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

from dataclasses import dataclass, field

import torch

from mechscope.errors import NotFoundError
from mechscope.models.config import ModelConfig


@dataclass(frozen=True)
class Receiver:
    """One reader of the residual stream. ``feeds``: the (part, head) inputs it provides, with part
    "q", "k", "v" (head = query head for q, kv head for k / v), "mlp" or "logits" (head -1)."""

    name: str
    layer: int
    feeds: tuple[tuple[str, int], ...]
    n_upstream: int  # writers 0 .. n_upstream-1 are read by this receiver


@dataclass(frozen=True)
class ComponentGraph:
    """Writers, receivers and the edges between them for one model configuration."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    parallel_residual: bool
    qkv: bool
    writers: tuple[str, ...]
    receivers: tuple[Receiver, ...]
    _writer_index: dict[str, int] = field(repr=False, compare=False, default_factory=dict)
    _receiver_index: dict[str, int] = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def from_config(cls, cfg: ModelConfig, qkv: bool = True) -> ComponentGraph:
        heads, kv_heads = cfg.n_heads, cfg.n_kv_heads
        writers = ["input"]
        receivers: list[Receiver] = []
        for layer in range(cfg.n_layers):
            upstream = len(writers)
            receivers.extend(_attention_receivers(layer, heads, kv_heads, qkv, upstream))
            writers.extend(f"L{layer}H{head}" for head in range(heads))
            # Parallel blocks (GPT-NeoX) feed the MLP the block input, not the attention output.
            receivers.append(Receiver(f"MLP{layer}", layer, (("mlp", -1),),
                                      upstream if cfg.parallel_residual else len(writers)))
            writers.append(f"MLP{layer}")
        receivers.append(Receiver("logits", cfg.n_layers, (("logits", -1),), len(writers)))
        return cls(cfg.n_layers, heads, kv_heads, cfg.parallel_residual, qkv, tuple(writers), tuple(receivers),
                   {name: i for i, name in enumerate(writers)}, {r.name: i for i, r in enumerate(receivers)})

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

    def writer_layer(self, index: int) -> int:
        """Layer of writer ``index`` (-1 for the input)."""
        return -1 if index == 0 else (index - 1) // (self.n_heads + 1)

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
                names.add(f"L{receiver.layer}H{head}")
            elif part in ("k", "v"):
                group = self.n_heads // self.n_kv_heads
                names.update(f"L{receiver.layer}H{h}" for h in range(head * group, (head + 1) * group))
            elif part == "mlp":
                names.add(f"MLP{receiver.layer}")
        return sorted(names)

    def edge_names(self, writer: int, receiver: int) -> str:
        return f"{self.writers[writer]}->{self.receivers[receiver].name}"


def _attention_receivers(layer: int, heads: int, kv_heads: int, qkv: bool, upstream: int) -> list[Receiver]:
    if qkv:
        out = [Receiver(f"L{layer}H{h}.q", layer, (("q", h),), upstream) for h in range(heads)]
        # Without GQA a kv head is the query head of the same index; name it so.
        kv_name = "H" if kv_heads == heads else "KV"
        for part in ("k", "v"):
            out.extend(Receiver(f"L{layer}{kv_name}{g}.{part}", layer, ((part, g),), upstream) for g in range(kv_heads))
        return out
    if kv_heads == heads:
        return [Receiver(f"L{layer}H{h}", layer, (("q", h), ("k", h), ("v", h)), upstream) for h in range(heads)]
    out = [Receiver(f"L{layer}H{h}", layer, (("q", h),), upstream) for h in range(heads)]
    out.extend(Receiver(f"L{layer}KV{g}", layer, (("k", g), ("v", g)), upstream) for g in range(kv_heads))
    return out


def _lookup(index: dict[str, int], name: str, kind: str) -> int:
    if name in index:
        return index[name]
    import difflib

    close = difflib.get_close_matches(name, list(index), n=5)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise NotFoundError(f"no {kind} named {name!r}{hint}")
