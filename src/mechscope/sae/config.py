"""Configuration of a sparse dictionary (SAE or transcoder)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from mechscope.errors import MechscopeError

ARCHITECTURES = ("relu", "topk", "batchtopk", "jumprelu", "matryoshka")


@dataclass(frozen=True)
class SAEConfig:
    """Shape and sparsity mechanism of a dictionary.

    ``architecture``: "relu" (ReLU + L1 weighted by decoder norms), "topk", "batchtopk" (the
    top k x batch activations of a batch; at inference a learned threshold), "jumprelu"
    (per-latent thresholds trained with a straight-through estimator and an L0 penalty) or
    "matryoshka" (BatchTopK whose nested prefixes of ``matryoshka_widths`` latents must each
    reconstruct on their own). A transcoder (``d_out`` set) reads one activation and predicts
    another (an MLP's input -> its output), optionally with a linear skip connection.
    """

    d_in: int
    d_sae: int
    architecture: str = "topk"
    k: int = 32
    l1_coefficient: float = 2.0
    l0_coefficient: float = 2.0
    jumprelu_bandwidth: float = 0.1
    jumprelu_init_threshold: float = 0.1
    matryoshka_widths: tuple[int, ...] = ()
    d_out: int | None = None
    skip_connection: bool = False
    hook_name: str = ""
    hook_name_out: str = ""
    model_name: str = ""
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise MechscopeError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.d_in < 1 or self.d_sae < 1:
            raise MechscopeError(f"d_in and d_sae must be positive, got {self.d_in}, {self.d_sae}")
        if self.architecture in ("topk", "batchtopk", "matryoshka") and not 0 < self.k <= self.d_sae:
            raise MechscopeError(f"k must be in 1..d_sae={self.d_sae}, got {self.k}")
        if self.architecture == "matryoshka":
            widths = tuple(self.matryoshka_widths) or (self.d_sae,)
            if list(widths) != sorted(set(widths)) or widths[-1] != self.d_sae:
                raise MechscopeError(f"matryoshka_widths must increase and end at d_sae={self.d_sae}, got {widths}")
            object.__setattr__(self, "matryoshka_widths", widths)
        if self.skip_connection and self.d_out is None:
            raise MechscopeError("skip_connection is for transcoders: set d_out too")

    @property
    def is_transcoder(self) -> bool:
        return self.d_out is not None

    @property
    def output_dim(self) -> int:
        return self.d_out if self.d_out is not None else self.d_in

    def to_dict(self) -> dict:
        data = asdict(self)
        data["matryoshka_widths"] = list(self.matryoshka_widths)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> SAEConfig:
        known = {name for name in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MechscopeError(f"unknown SAE config keys {unknown}; known: {', '.join(sorted(known))}")
        data = dict(data)
        data["matryoshka_widths"] = tuple(data.get("matryoshka_widths", ()))
        return cls(**data)
