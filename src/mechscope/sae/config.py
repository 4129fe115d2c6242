"""Configuration of a sparse dictionary (SAE or transcoder), and the fixed sets of choices the
dictionary code accepts (each a ``Literal`` alias, so type checkers and error messages agree)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from mechscope.errors import ConfigError, NonFiniteError
from mechscope.validate import check_choice, check_fields, check_int, check_number, literal_choices

Architecture = Literal["relu", "topk", "batchtopk", "jumprelu", "matryoshka"]
ARCHITECTURES: tuple[str, ...] = literal_choices(Architecture)
# The architectures whose sparsity is "keep the k largest" (k decides the function).
TopKArchitecture = Literal["topk", "batchtopk", "matryoshka"]
TOPK_ARCHITECTURES: tuple[str, ...] = literal_choices(TopKArchitecture)
# SAELens' on-disk architecture names that mechscope reads and writes.
SAELensArchitecture = Literal["standard", "topk", "jumprelu", "transcoder", "skip_transcoder"]
SAELENS_ARCHITECTURES: tuple[str, ...] = literal_choices(SAELensArchitecture)
# SAELens input normalisation / reshaping that mechscope can apply: none (fold scalings into the
# weights first; hook_z reshaping is not implemented).
SAELensNormalisation = Literal["none"]
SAELensReshape = Literal["none"]

# Keys of SAEConfig.from_dict that decide the function the dictionary computes: a file or
# checkpoint lacking one of them cannot be loaded by guessing a default.
REQUIRED_KEYS = ("d_in", "d_sae", "architecture")


@dataclass(frozen=True)
class SAEConfig:
    """Shape and sparsity mechanism of a dictionary.

    ``architecture``: "relu" (ReLU + L1 weighted by decoder norms), "topk", "batchtopk" (the
    top k x batch activations of a batch; at inference a learned threshold), "jumprelu"
    (per-latent thresholds trained with a straight-through estimator and an L0 penalty) or
    "matryoshka" (BatchTopK whose nested prefixes of ``matryoshka_widths`` latents must each
    reconstruct on their own). A transcoder (``d_out`` set) reads one activation and predicts
    another (an MLP's input -> its output), optionally with a linear skip connection.
    ``zero_decoder_blocks``: (first latent, end latent, first column, end column) blocks of the
    decoder W_dec [d_sae, d_out] held at zero through training, e.g. a crosscoder's designated
    fine-tune-exclusive latents, which write nothing into the base model's half.
    ``k_groups``: (first latent, end latent, k) groups of a BatchTopK dictionary that keep the
    k x batch largest activations of their own latents, apart from the others (which share
    ``k``), so a group is neither starved nor spread over the whole dictionary; each group learns
    its own inference threshold.
    Shapes: x [..., d_in] -> latents [..., d_sae] -> output [..., d_out or d_in].
    """

    d_in: int
    d_sae: int
    architecture: Architecture = "topk"
    k: int = 32
    l1_coefficient: float = 2.0
    l0_coefficient: float = 2.0
    jumprelu_bandwidth: float = 0.1
    jumprelu_init_threshold: float = 0.1
    matryoshka_widths: tuple[int, ...] = ()
    d_out: int | None = None
    skip_connection: bool = False
    zero_decoder_blocks: tuple[tuple[int, int, int, int], ...] = ()
    k_groups: tuple[tuple[int, int, int], ...] = ()
    hook_name: str = ""
    hook_name_out: str = ""
    model_name: str = ""
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("architecture", self.architecture, Architecture)
        check_int("d_in", self.d_in, 1)
        check_int("d_sae", self.d_sae, 1)
        if self.architecture in TOPK_ARCHITECTURES:
            check_int("k", self.k, 1, self.d_sae)
        else:  # unused by ReLU / JumpReLU, but still a count
            check_int("k", self.k, 1)
        check_number("l1_coefficient", self.l1_coefficient, 0)
        check_number("l0_coefficient", self.l0_coefficient, 0)
        check_number("jumprelu_bandwidth", self.jumprelu_bandwidth, 0, strict_minimum=True)
        check_number("jumprelu_init_threshold", self.jumprelu_init_threshold, 0, strict_minimum=True)
        widths = self.matryoshka_widths
        if isinstance(widths, str) or not isinstance(widths, tuple | list):
            raise ConfigError(f"matryoshka_widths must be a tuple of latent counts; got {widths!r}")
        for index, width in enumerate(widths):
            check_int(f"matryoshka_widths[{index}]", width, 1, self.d_sae)
        if self.architecture == "matryoshka":
            widths = tuple(widths) or (self.d_sae,)
            if list(widths) != sorted(set(widths)) or widths[-1] != self.d_sae:
                raise ConfigError(f"matryoshka_widths must increase and end at d_sae={self.d_sae}, got {widths}")
        elif widths:  # ignored by every other architecture: almost surely a mistake
            raise ConfigError(f"matryoshka_widths={tuple(widths)} is for architecture='matryoshka'; "
                              f"got architecture={self.architecture!r}")
        object.__setattr__(self, "matryoshka_widths", tuple(widths))
        if self.d_out is not None:
            check_int("d_out", self.d_out, 1)
        if not isinstance(self.skip_connection, bool):
            raise ConfigError(f"skip_connection must be True or False; got {self.skip_connection!r}")
        if self.skip_connection and self.d_out is None:
            raise ConfigError("skip_connection is for transcoders: set d_out too")
        object.__setattr__(self, "zero_decoder_blocks", self._checked_blocks())
        object.__setattr__(self, "k_groups", self._checked_groups())
        for name in ("hook_name", "hook_name_out", "model_name"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{name} must be a string; got {getattr(self, name)!r}")
        if not isinstance(self.metadata, dict):
            raise ConfigError(f"metadata must be a dict; got {type(self.metadata).__name__}")
        try:  # saved in cfg.json and checkpoints: fail here, not halfway through a save
            json.dumps(self.metadata)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"metadata must be JSON-serialisable (it is saved with the dictionary): {error}") from error

    def _latent_ranges(self, field: str, size: int, what: str) -> list[tuple[str, int, int, tuple | list]]:
        """(name, first latent, end latent, item) of each item of the tuple field ``field``,
        whose items are ``size`` integers starting with a latent range [first, end)."""
        items = getattr(self, field)
        if isinstance(items, str) or not isinstance(items, tuple | list):
            raise ConfigError(f"{field} must be a tuple of {what}; got {items!r}")
        ranges = []
        for index, item in enumerate(items):
            if isinstance(item, str) or not isinstance(item, tuple | list) or len(item) != size:
                raise ConfigError(f"{field}[{index}] must be {size} integers, {what}; got {item!r}")
            name = f"{field}[{index}]"
            first = check_int(f"{name} first latent", item[0], 0, self.d_sae - 1)
            ranges.append((name, first, check_int(f"{name} end latent", item[1], first + 1, self.d_sae), item))
        return ranges

    def _checked_blocks(self) -> tuple[tuple[int, int, int, int], ...]:
        checked = []
        for name, first, end, block in self._latent_ranges(
                "zero_decoder_blocks", 4, "(first latent, end latent, first column, end column) blocks"):
            first_column = check_int(f"{name} first column", block[2], 0, self.output_dim - 1)
            end_column = check_int(f"{name} end column", block[3], first_column + 1, self.output_dim)
            if first_column == 0 and end_column == self.output_dim:
                raise ConfigError(f"{name} = {tuple(block)} zeroes whole decoder rows: those latents could write "
                                  "nothing; hold only part of each row at zero")
            checked.append((first, end, first_column, end_column))
        return tuple(checked)

    def _checked_groups(self) -> tuple[tuple[int, int, int], ...]:
        if self.k_groups and self.architecture != "batchtopk":
            raise ConfigError(f"k_groups are budgets of a batchtopk dictionary; got architecture={self.architecture!r}")
        checked: list[tuple[int, int, int]] = []
        taken: set[int] = set()
        for name, first, end, group in self._latent_ranges("k_groups", 3, "(first latent, end latent, k) groups"):
            k = check_int(f"{name} k", group[2], 1, end - first)
            if taken & set(range(first, end)):
                raise ConfigError(f"{name} = {tuple(group)} overlaps an earlier group; a latent has one budget")
            taken |= set(range(first, end))
            checked.append((first, end, k))
        if checked and len(taken) == self.d_sae:
            raise ConfigError("k_groups cover every latent: leave some to the shared budget k")
        if checked:
            check_int("k", self.k, 1, self.d_sae - len(taken))
        return tuple(checked)

    def shared_budget_latents(self) -> list[int]:
        """The latents outside every ``k_groups`` group: those that share ``k``."""
        grouped = {j for first, end, _ in self.k_groups for j in range(first, end)}
        return [j for j in range(self.d_sae) if j not in grouped]

    @property
    def is_transcoder(self) -> bool:
        return self.d_out is not None

    @property
    def output_dim(self) -> int:
        return self.d_out if self.d_out is not None else self.d_in

    def to_dict(self) -> dict:
        data = asdict(self)
        data["matryoshka_widths"] = list(self.matryoshka_widths)
        data["zero_decoder_blocks"] = [list(block) for block in self.zero_decoder_blocks]
        data["k_groups"] = [list(group) for group in self.k_groups]
        return data

    @classmethod
    def from_dict(cls, data: Any, source: str = "SAE config") -> SAEConfig:
        """The config in ``data`` (as :meth:`to_dict` writes it). Keys that decide the function
        (d_in, d_sae, architecture; k for the TopK family; matryoshka_widths for Matryoshka)
        are required: a default there would silently build another dictionary. ``source``
        names the file in error messages."""
        check_fields(cls, data, source)
        required = list(REQUIRED_KEYS)
        if data.get("architecture") in TOPK_ARCHITECTURES:
            required.append("k")
        if data.get("architecture") == "matryoshka":
            required.append("matryoshka_widths")
        missing = [key for key in required if key not in data]
        if missing:
            raise ConfigError(f"{source}: SAE config lacks {', '.join(missing)} (needed to rebuild the dictionary; "
                              "no default is assumed)")
        data = dict(data)
        widths = data.get("matryoshka_widths", ())
        data["matryoshka_widths"] = tuple(widths) if isinstance(widths, list | tuple) else widths
        for name in ("zero_decoder_blocks", "k_groups"):
            items = data.get(name, ())
            if isinstance(items, list | tuple):
                data[name] = tuple(tuple(item) if isinstance(item, list | tuple) else item for item in items)
        try:
            return cls(**data)
        except (ConfigError, NonFiniteError) as error:  # keep the kind, add the file
            raise type(error)(f"{source}: {error}") from error
