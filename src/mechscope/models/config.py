"""The dimensions of a hooked model, read from its HF config through its adapter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mechscope.models.adapters import ArchitectureAdapter


@dataclass(frozen=True)
class ModelConfig:
    """Shapes and structural facts every analysis needs.

    ``n_kv_heads < n_heads`` means grouped-query attention: ``hook_k``/``hook_v`` have
    ``n_kv_heads`` heads, and query head ``h`` reads kv head ``h // (n_heads // n_kv_heads)``.
    """

    family: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    d_vocab: int
    norm_type: str
    norm_eps: float
    parallel_residual: bool
    final_logit_softcap: float | None = None
    name: str = ""

    @property
    def n_query_per_kv(self) -> int:
        return self.n_heads // self.n_kv_heads

    @classmethod
    def from_hf(cls, hf_config: Any, adapter: ArchitectureAdapter, name: str = "") -> ModelConfig:
        dims = adapter.read_config(hf_config)
        return cls(family=adapter.family, norm_type=adapter.norm_type, name=name, **dims)
