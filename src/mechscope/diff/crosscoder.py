"""Acausal crosscoders for model diffing: one sparse dictionary over both models' activations.

A crosscoder reads the paired row x = [h_base, h_ft] (per hook; layout in :mod:`mechscope.diff.paired`)
and reconstructs all of it from shared latents, so each latent j has a decoder row [d_base_j, d_ft_j]
(each half [n_hooks, d]). It is an ordinary :class:`~mechscope.sae.model.SAE` with d_in = 2 * n_hooks
* d, trained by the ordinary (resumable) :func:`mechscope.sae.train.train`: BatchTopK by default
(unit-norm full decoder rows) or ReLU, whose L1 term weights each latent by the L2 norm of its full
decoder row (Lindsey et al. 2024 use the sum of the per-model norms instead; the norm-ratio reading
below holds for both). Training scales inputs by one constant for both models together.

``CrosscoderConfig.delta_scale`` = s > 1 diffs the base with a magnified fine-tune: the dictionary
reads [h_base, h_base + s (h_ft - h_base)] (:meth:`Crosscoder.rows`), the activation-space twin of
:func:`mechscope.diff.amplify.amplified_generate`. Why: a narrow fine-tune moves activations by a
few percent of their norm (4.6% at layer 15 for the shipped backdoor organism), so reconstructing
the change is worth too little for a BatchTopK dictionary to spend latents on, and every latent
keeps its base half; magnified, the change costs s^2 as much error and gets latents of its own.
Measured on the shipped backdoor organism (docs/case-studies/organisms-diffing.md): no
fine-tune-leaning latent at s = 1; at s = 10, 14, and the top contexts of all 14 hold the planted
reply.
Everything that reads the crosscoder (classes, Latent Scaling, dashboards) then reads the magnified
pair; decoder halves are those of the magnified fine-tune.

``CrosscoderConfig.ft_exclusive`` = n > 0 designates the dictionary's last n latents fine-tune-
exclusive: their base decoder half is held at zero through training (the designated-latent idea
of the crosscoder-diffing work, here for the fine-tune's side). Why: on a narrow fine-tune the
free latents that carry the change keep a sizeable base half (the base reads the planted text
much as the fine-tune does), so none reaches the ft-only threshold even magnified (largest r 0.78
at s = 10 on the backdoor organism). A designated latent can only be spent on what the base's
half does not need, which is the change itself; whether it is genuine and not a shrinkage
artifact is then what Latent Scaling measures, and what its top contexts hold is the finding.

Reading it:

* :func:`classify_latents`: relative decoder norm r_j = ||d_ft_j|| / (||d_base_j|| + ||d_ft_j||)
  (norms over all hooks of a half): base-only (r < 0.1), ft-only (r > 0.9), shared (0.3 <= r <=
  0.7), else other; the cosine between the two halves (meaningful for shared latents); and the
  latents whose r stands far out of the bulk (``LatentClasses.leaning``), which is where a
  narrow fine-tune's changes show when no latent reaches the ft-only threshold.
* :func:`mechscope.diff.latent_scaling.latent_scaling`: Latent Scaling (Minder et al. 2025), which
  tells genuinely ft-only latents from L1 artifacts (definitions in its docstring).
* :func:`crosscoder_dashboards`: feature dashboards of (by default) the ft-only latents, on contexts
  run through both models.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from mechscope.diff.paired import check_pair_widths, join_pair, split_pair
from mechscope.distributed import Ranks
from mechscope.errors import ConfigError, FileFormatError, InputTypeError, MissingFileError
from mechscope.files import atomic_text, file_sha256, read_json, required_keys
from mechscope.models.hooked_model import HookedModel
from mechscope.sae.config import SAEConfig
from mechscope.sae.dashboard import logit_effects, summarise, write_dashboards
from mechscope.sae.io import CONFIG_FILE, load_sae, save_sae
from mechscope.sae.model import SAE
from mechscope.sae.train import TrainConfig, train
from mechscope.validate import check_choice, check_int, check_number, literal_choices

CrosscoderArchitecture = Literal["batchtopk", "relu"]
LatentKind = Literal["base-only", "ft-only", "shared", "other"]
Side = Literal["ft", "base"]
META_FILE = "crosscoder.json"
DICTIONARY_FOLDER = "dictionary"
FORMAT = 1
REMEDY = "delete the crosscoder folder and save it again"
TINY = 1e-8  # below this a decoder half, or a denominator, counts as zero


@dataclass(frozen=True)
class CrosscoderConfig:
    """Shape and sparsity of a crosscoder over ``n_layers_in`` hooks of width ``d_model`` in
    each model: x [..., 2 * n_layers_in * d_model] -> latents [..., d_sae]. ``hook_names`` (in
    row order; optional for synthetic data, else n_layers_in of them) are recorded with it.
    ``delta_scale`` (>= 1): how many times the fine-tune's change is magnified in the rows the
    dictionary reads (module docstring; 1 is the plain crosscoder). ``ft_exclusive``: how many
    of the latents (the last ones) are designated fine-tune-exclusive, with their base decoder
    half held at zero (module docstring; 0: none). ``k_exclusive``: their own BatchTopK budget
    (per row, apart from the ``k`` the other latents share; default: their share of ``k``,
    ft_exclusive * k / d_sae, at least 1). Without a budget of their own they starve: free
    latents take every change a designated one could carry, and on a planted synthetic change
    all three designated latents stayed dead."""

    d_model: int
    d_sae: int
    n_layers_in: int = 1
    architecture: CrosscoderArchitecture = "batchtopk"
    k: int = 32
    l1_coefficient: float = 2.0
    hook_names: tuple[str, ...] = ()
    delta_scale: float = 1.0
    ft_exclusive: int = 0
    k_exclusive: int | None = None

    def __post_init__(self) -> None:
        check_int("d_model", self.d_model, 1)
        check_int("d_sae", self.d_sae, 1)
        check_int("n_layers_in", self.n_layers_in, 1)
        check_choice("architecture", self.architecture, CrosscoderArchitecture)
        check_int("k", self.k, 1, self.d_sae if self.architecture == "batchtopk" else None)
        check_number("l1_coefficient", self.l1_coefficient, 0)
        check_number("delta_scale", self.delta_scale, 1)
        check_int("ft_exclusive", self.ft_exclusive, 0, self.d_sae - 1)
        if self.k_exclusive is not None:
            if self.architecture != "batchtopk" or not self.ft_exclusive:
                raise ConfigError(f"k_exclusive is the BatchTopK budget of designated ft-exclusive latents; this "
                                  f"crosscoder is {self.architecture} with ft_exclusive={self.ft_exclusive}")
            check_int("k_exclusive", self.k_exclusive, 1, self.ft_exclusive)
        if self.architecture == "batchtopk" and self.ft_exclusive:
            check_int("k", self.k, 1, self.d_sae - self.ft_exclusive)
        names = self.hook_names
        if isinstance(names, str) or not isinstance(names, tuple | list) or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"hook_names must be a tuple of hook point names; got {names!r}")
        if names and len(names) != self.n_layers_in:
            raise ConfigError(f"hook_names names {len(names)} hook(s) but n_layers_in={self.n_layers_in}")
        object.__setattr__(self, "hook_names", tuple(names))

    @property
    def d_in(self) -> int:
        return 2 * self.n_layers_in * self.d_model

    @property
    def exclusive_budget(self) -> int | None:
        """The designated latents' own k (None: no designated latents, or a ReLU crosscoder)."""
        if not self.ft_exclusive or self.architecture != "batchtopk":
            return None
        return self.k_exclusive or max(1, round(self.ft_exclusive * self.k / self.d_sae))

    @property
    def exclusive_latents(self) -> list[int]:
        """Indices of the designated fine-tune-exclusive latents (the last ``ft_exclusive``)."""
        return list(range(self.d_sae - self.ft_exclusive, self.d_sae))

    def to_dict(self) -> dict:
        return {**asdict(self), "hook_names": list(self.hook_names)}

    @classmethod
    def from_dict(cls, data: dict, source: str = "crosscoder config") -> CrosscoderConfig:
        known = set(cls.__dataclass_fields__)
        if not isinstance(data, dict) or set(data) - known or not {"d_model", "d_sae", "n_layers_in"} <= set(data):
            raise FileFormatError(f"{source}: a crosscoder config is an object with d_model, d_sae, n_layers_in and "
                                  f"only the keys {sorted(known)}; got {data!r}")
        try:
            return cls(**{**data, "hook_names": tuple(data.get("hook_names", ()))})
        except (ConfigError, TypeError) as error:  # keep the problem, add the file
            raise FileFormatError(f"{source}: {error}; {REMEDY}") from error

    def sae_config(self) -> SAEConfig:
        """The dictionary that implements it (the crosscoder config rides in its metadata, so a
        checkpoint or saved dictionary says what it is)."""
        base_half = self.n_layers_in * self.d_model  # the first half of every decoder row
        first = self.d_sae - self.ft_exclusive
        blocks = ((first, self.d_sae, 0, base_half),) if self.ft_exclusive else ()
        groups = ((first, self.d_sae, self.exclusive_budget),) if self.exclusive_budget else ()
        return SAEConfig(d_in=self.d_in, d_sae=self.d_sae, architecture=self.architecture, k=self.k,
                         l1_coefficient=self.l1_coefficient, zero_decoder_blocks=blocks, k_groups=groups,
                         metadata={"crosscoder": self.to_dict()})


@dataclass
class Crosscoder:
    """A trained crosscoder: the dictionary, its config, and the {"model", "model_sha256"} of
    the base and fine-tuned models it was trained on (empty for synthetic data)."""

    sae: SAE
    config: CrosscoderConfig
    base_model: dict = field(default_factory=dict)
    ft_model: dict = field(default_factory=dict)

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """Paired rows [..., 2 * n_layers_in * d_model] of the two models -> the rows the dictionary
        reads: [h_base, h_base + delta_scale * (h_ft - h_base)] (``x`` itself when delta_scale is 1)."""
        return magnified_pair(x, self.config.n_layers_in, self.config.delta_scale)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Paired rows of the two models [..., 2 * n_layers_in * d_model] -> latents [..., d_sae]."""
        return self.sae.encode(self.rows(x))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [..., d_sae] -> reconstructed rows [..., 2 * n_layers_in * d_model], in the space
        the dictionary reads (:meth:`rows`)."""
        return self.sae.decode(latents)

    def decoder_halves(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(base [d_sae, n_layers_in, d_model], ft [d_sae, n_layers_in, d_model]) decoder rows (the
        ft half is that of the magnified fine-tune when delta_scale > 1)."""
        return split_pair(self.sae.W_dec.detach(), self.config.n_layers_in)


def magnified_pair(x: torch.Tensor, n_hooks: int, scale: float) -> torch.Tensor:
    """[h_base, h_base + scale * (h_ft - h_base)] of paired rows x [..., 2 * n_hooks * d]."""
    if scale == 1:
        return x
    base, ft = split_pair(x, n_hooks)
    return join_pair(base, base + scale * (ft - base))


class _MagnifiedData:
    """Training batches of ``data`` with the fine-tune's change magnified (see :meth:`Crosscoder.rows`).
    The scale rides in the dictionary's config, so a checkpoint of another scale is refused on
    resume; the data's own fingerprint, where it has one, still identifies the rows."""

    def __init__(self, data, n_hooks: int, scale: float):
        self.data, self.n_hooks, self.scale = data, n_hooks, scale
        self.rank, self.world_size = getattr(data, "rank", 0), getattr(data, "world_size", 1)
        if callable(getattr(data, "fingerprint", None)):
            self.fingerprint = data.fingerprint

    def batch(self, step: int) -> torch.Tensor:
        return magnified_pair(self.data.batch(step), self.n_hooks, self.scale)


def train_crosscoder(data, config: CrosscoderConfig, train_config: TrainConfig,
                     checkpoint_dir: str | Path | None = None, progress: bool = True,
                     ranks: Ranks | None = None) -> Crosscoder:
    """Train a crosscoder on ``data`` (``batch(step)`` -> paired rows [batch, 2 * n * d], e.g.
    :class:`~mechscope.diff.paired.PairedActivations`) with :func:`mechscope.sae.train.train`;
    with ``checkpoint_dir`` it resumes from (and refuses mismatched) checkpoints as that does.
    Hook names and model fingerprints are taken from ``data`` where it has them. With
    ``ranks``, data-parallel as :func:`~mechscope.sae.train.train` (build ``data`` with this
    rank and world size)."""
    if not isinstance(config, CrosscoderConfig):
        raise InputTypeError(f"config must be a CrosscoderConfig; got {type(config).__name__}")
    hooks = tuple(getattr(data, "hook_names", ()) or ())
    if hooks and config.hook_names and hooks != config.hook_names:
        raise ConfigError(f"the data pairs hooks {list(hooks)} but the config names {list(config.hook_names)}")
    if hooks and not config.hook_names:
        config = replace(config, hook_names=hooks)  # n_layers_in is checked against them here
    rows = _MagnifiedData(data, config.n_layers_in, config.delta_scale) if config.delta_scale != 1 else data
    sae = train(config.sae_config(), rows, train_config, checkpoint_dir=checkpoint_dir, progress=progress,
                ranks=ranks)[0]
    return Crosscoder(sae, config, dict(getattr(data, "base_model", {}) or {}), dict(getattr(data, "ft_model", {}) or {}))


# ---------------------------------------------------------------------------------- files
def save_crosscoder(crosscoder: Crosscoder, folder: str | Path) -> Path:
    """``folder/dictionary/`` (the SAE, by :func:`mechscope.sae.io.save_sae`) and
    ``folder/crosscoder.json`` (config, models, and the SHA-256 of the dictionary's cfg.json,
    which itself records its weights' checksum), written last so an interrupted save is caught."""
    if not isinstance(crosscoder, Crosscoder):
        raise InputTypeError(f"save_crosscoder needs a Crosscoder; got {type(crosscoder).__name__}")
    folder = Path(folder)
    save_sae(crosscoder.sae, folder / DICTIONARY_FOLDER)
    meta = {"format": FORMAT, "config": crosscoder.config.to_dict(), "base_model": crosscoder.base_model,
            "ft_model": crosscoder.ft_model,
            "dictionary_config_sha256": file_sha256(folder / DICTIONARY_FOLDER / CONFIG_FILE)}
    atomic_text(folder / META_FILE, json.dumps(meta, indent=1))
    return folder


def load_crosscoder(folder: str | Path) -> Crosscoder:
    """The crosscoder :func:`save_crosscoder` wrote, checked: metadata present and complete, the
    dictionary the one it was saved with (checksum), and of exactly the config's shape."""
    folder = Path(folder)
    path = folder / META_FILE
    if not path.is_file():
        raise MissingFileError(f"{path} not found: a crosscoder folder holds {META_FILE} and {DICTIONARY_FOLDER}/ "
                               "(written by save_crosscoder)")
    meta = required_keys(read_json(path, "a crosscoder's metadata", REMEDY),
                         ["format", "config", "base_model", "ft_model", "dictionary_config_sha256"], path, "crosscoder")
    if meta["format"] != FORMAT:
        raise FileFormatError(f"{path}: format {meta['format']!r}, this mechscope reads format {FORMAT}; {REMEDY}")
    config = CrosscoderConfig.from_dict(meta["config"], source=str(path))
    for key in ("base_model", "ft_model"):
        if not isinstance(meta[key], dict):
            raise FileFormatError(f"{path}: {key} must be an object; got {meta[key]!r}; {REMEDY}")
    config_file = folder / DICTIONARY_FOLDER / CONFIG_FILE
    if config_file.is_file() and file_sha256(config_file) != meta["dictionary_config_sha256"]:
        raise FileFormatError(f"{config_file} is not the dictionary {path} was saved with (checksum differs): one of "
                              f"them was replaced or edited; {REMEDY}")
    sae = load_sae(folder / DICTIONARY_FOLDER)
    if sae.cfg.to_dict() != config.sae_config().to_dict():
        raise FileFormatError(f"{folder / DICTIONARY_FOLDER} holds a {sae.cfg.architecture} dictionary d_in="
                              f"{sae.cfg.d_in}, d_sae={sae.cfg.d_sae}, but {path} describes {config}; {REMEDY}")
    return Crosscoder(sae, config, meta["base_model"], meta["ft_model"])


# ---------------------------------------------------------------------------------- classes
@dataclass(frozen=True)
class ClassifyConfig:
    """Relative-norm thresholds: base-only r < base_only_below, ft-only r > ft_only_above,
    shared shared_low <= r <= shared_high, other otherwise. ``outlier_z``: how far (in robust
    standard deviations) a latent's r must lie from the bulk to count as ft- or base-leaning
    (see :meth:`LatentClasses.leaning`)."""

    base_only_below: float = 0.1
    ft_only_above: float = 0.9
    shared_low: float = 0.3
    shared_high: float = 0.7
    outlier_z: float = 6.0

    def __post_init__(self) -> None:
        for name in ("base_only_below", "ft_only_above", "shared_low", "shared_high"):
            check_number(name, getattr(self, name), 0, 1)
        check_number("outlier_z", self.outlier_z, 0, strict_minimum=True)
        if not self.base_only_below <= self.shared_low < self.shared_high <= self.ft_only_above:
            raise ConfigError(f"thresholds must satisfy base_only_below <= shared_low < shared_high <= ft_only_above; "
                              f"got {self}")


@dataclass
class LatentClasses:
    """Per latent [d_sae]: decoder norms of the two halves, relative norm r, cosine between the
    halves (0 where a half is zero), its kind (see :class:`ClassifyConfig`), and ``robust_z``,
    (r - median r) / (1.4826 * MAD of r) over the free latents that write anything (NaN for the
    others). ``exclusive``: the designated fine-tune-exclusive latents
    (``CrosscoderConfig.ft_exclusive``), ft-only by construction and kept out of the bulk the
    z-score measures.

    Why the z-score: on a narrow fine-tune (a LoRA organism whose activations match its base's
    almost everywhere) no latent comes near the ft-only threshold: the base reads the planted
    text much as the fine-tune does, so every latent keeps a sizeable base half. The latents of
    what training changed can still lean towards the fine-tune, well outside the bulk of r
    around 0.5, the more so when the change is magnified (``CrosscoderConfig.delta_scale``;
    docs/case-studies/organisms-diffing.md has the measurements, the null's included);
    :meth:`leaning` finds them."""

    base_norm: torch.Tensor
    ft_norm: torch.Tensor
    relative_norm: torch.Tensor
    cosine: torch.Tensor
    kinds: list[str]
    config: ClassifyConfig
    robust_z: torch.Tensor
    exclusive: list[int] = field(default_factory=list)

    def indices(self, kind: LatentKind) -> list[int]:
        check_choice("kind", kind, LatentKind)
        return [index for index, value in enumerate(self.kinds) if value == kind]

    def leaning(self, side: Side = "ft") -> list[int]:
        """Latents whose r lies at least ``outlier_z`` robust standard deviations above (``"ft"``)
        or below (``"base"``) the bulk, the most extreme first."""
        check_choice("side", side, Side)
        z = self.robust_z if side == "ft" else -self.robust_z
        chosen = [index for index, value in enumerate(z.tolist()) if value >= self.config.outlier_z]
        return sorted(chosen, key=lambda index: -float(z[index]))

    def ft_latents(self) -> list[int]:
        """The ft-only latents, then the ft-leaning ones not among them: where to look for what
        fine-tuning added."""
        ft_only = self.indices("ft-only")
        return ft_only + [j for j in self.leaning("ft") if j not in ft_only]

    @property
    def counts(self) -> dict[str, int]:
        return {kind: self.kinds.count(kind) for kind in literal_choices(LatentKind)}

    def to_json(self) -> dict:
        return {"thresholds": asdict(self.config), "counts": self.counts, "kinds": self.kinds,
                "ft_leaning": self.leaning("ft"), "base_leaning": self.leaning("base"),
                "robust_z": [None if z != z else z for z in self.robust_z.tolist()],
                "relative_norm": self.relative_norm.tolist(), "cosine": self.cosine.tolist(),
                "base_norm": self.base_norm.tolist(), "ft_norm": self.ft_norm.tolist(), "exclusive": self.exclusive}


def classify_latents(crosscoder: Crosscoder, config: ClassifyConfig | None = None) -> LatentClasses:
    """Kinds of every latent by relative decoder norm r = ||d_ft|| / (||d_base|| + ||d_ft||);
    a latent whose whole decoder row is zero is "other" (it writes nothing in either model)."""
    config = config or ClassifyConfig()
    base, ft = (half.flatten(1).float() for half in crosscoder.decoder_halves())  # [d_sae, n * d]
    base_norm, ft_norm = base.norm(dim=1), ft.norm(dim=1)
    total = base_norm + ft_norm
    relative = ft_norm / total.clamp_min(TINY)
    cosine = (base * ft).sum(1) / (base_norm * ft_norm).clamp_min(TINY)
    kinds = []
    for r, size in zip(relative.tolist(), total.tolist()):
        if size < TINY:
            kinds.append("other")
        elif r < config.base_only_below:
            kinds.append("base-only")
        elif r > config.ft_only_above:
            kinds.append("ft-only")
        elif config.shared_low <= r <= config.shared_high:
            kinds.append("shared")
        else:
            kinds.append("other")
    free = total >= TINY
    exclusive = crosscoder.config.exclusive_latents
    free[exclusive] = False
    return LatentClasses(base_norm, ft_norm, relative, cosine, kinds, config, _robust_z(relative, free), exclusive)


def _robust_z(values: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    """(values - median) / (1.4826 * MAD) over the ``live`` entries [n]; NaN elsewhere (and
    everywhere when fewer than 3 are live or all of them are equal: no spread to measure)."""
    z = torch.full_like(values, float("nan"))
    if int(live.sum()) < 3:
        return z
    median = values[live].median()
    spread = 1.4826 * (values[live] - median).abs().median()
    if float(spread) > TINY:
        z[live] = (values[live] - median) / spread
    return z


# ---------------------------------------------------------------------------------- dashboards
@torch.no_grad()
def collect_pair(base: HookedModel, ft: HookedModel, contexts: torch.Tensor, crosscoder: Crosscoder,
                 latents: Sequence[int], batch_contexts: int = 8, progress: bool = False) -> torch.Tensor:
    """[n_contexts, pos, len(latents)] crosscoder activations on ``contexts`` [n, pos] run
    through both models (the paired row of every position); BOS (position 0) set to 0, as
    :func:`mechscope.sae.dashboard.collect` does."""
    cfg = crosscoder.config
    if not cfg.hook_names:
        raise ConfigError("this crosscoder records no hook_names (trained on synthetic data?): it cannot be run on "
                          "models")
    width = check_pair_widths(base, ft, cfg.hook_names)
    if width != cfg.d_model:
        raise ConfigError(f"the crosscoder reads hooks of width {cfg.d_model}; these models' are {width}")
    check_int("batch_contexts", batch_contexts, 1)
    index = torch.tensor([check_int("latent", j, 0, cfg.d_sae - 1) for j in latents], dtype=torch.long)
    parts = []
    for start in tqdm(range(0, len(contexts), batch_contexts), desc="crosscoder activations", disable=not progress):
        chunk = contexts[start:start + batch_contexts]
        halves = []
        for model in (base, ft):
            _, cache = model.run_with_cache(chunk, names=list(cfg.hook_names), device="cpu")
            halves.append(torch.stack([cache[name].float() for name in cfg.hook_names], dim=-2))  # [b, pos, n, d]
        values = crosscoder.encode(join_pair(*halves).to(crosscoder.sae.W_enc.dtype))[..., index].float()
        values[:, 0] = 0
        parts.append(values)
    return torch.cat(parts)


def crosscoder_dashboards(base: HookedModel, ft: HookedModel, crosscoder: Crosscoder, contexts: torch.Tensor,
                          out: str | Path, latents: Sequence[int] | None = None,
                          classify: ClassifyConfig | None = None, batch_contexts: int = 8) -> Path:
    """Dashboards (:mod:`mechscope.sae.dashboard`) of ``latents`` (default: the ft-only ones, then
    the ft-leaning ones not among them) on
    ``contexts`` [n, pos]; logit effects are those of each latent's ft direction at the last hook,
    read through the fine-tune's unembedding. Returns the index page's path."""
    classes = classify_latents(crosscoder, classify)
    latents = classes.ft_latents() if latents is None else list(latents)
    if not latents:
        raise ConfigError(f"no latents to show: the crosscoder has no ft-only or ft-leaning latents ({classes.counts}); "
                          "pass latents=")
    values = collect_pair(base, ft, contexts, crosscoder, latents, batch_contexts)
    directions = crosscoder.decoder_halves()[1][latents, -1]  # [m, d]: ft half at the last hook
    effects = logit_effects(ft, directions) if directions.shape[-1] == ft.cfg.d_model else None
    labels = [f"latent {j} ({classes.kinds[j]}, r={float(classes.relative_norm[j]):.2f})" for j in latents]
    features = summarise(values, labels, effects)
    return write_dashboards(ft, contexts, values, features, out, "crosscoder latents (activations on the fine-tune's "
                            "and base's paired rows)")


__all__ = ["ClassifyConfig", "Crosscoder", "CrosscoderArchitecture", "CrosscoderConfig", "LatentClasses", "LatentKind",
           "Side", "classify_latents", "collect_pair", "crosscoder_dashboards", "load_crosscoder", "magnified_pair",
           "save_crosscoder", "train_crosscoder"]
