"""Training several dictionaries from one stream of activations, resumable after a crash.

Data: any object with ``batch(step) -> x [batch, d_in]`` (or ``(x, target)`` for transcoders,
or ``{hook: [batch, d]}`` from which each dictionary reads its config's hook_name and, for a
transcoder, hook_name_out: every layer's dictionary from one forward pass) that is a
deterministic function of the step, so a resumed run sees exactly the batches the
interrupted one would have. Inputs are scaled by one constant per dictionary (so that
E||x|| = sqrt(d_in), making coefficients transferable across models) and the scale is folded
into the weights at the end. Adam with linear warm-up and a linear decay over the last
``decay_fraction`` of the steps; unit-norm decoder rows; latents that have not fired for
``dead_after_tokens`` tokens are dead and, for the TopK family, revived by the AuxK loss.

Checkpoints (every ``checkpoint_every`` steps) are folders of safetensors (weights, Adam state,
dead-latent counters) and JSON, written to a temporary folder and renamed into place, so a
kill -9 never leaves a half-written checkpoint; re-running with the same folder resumes. Each
checkpoint records everything that decides the result: the dictionaries' configs, the full
TrainConfig and a fingerprint of the data (``data.fingerprint()`` where the data object has
one, else a hash of its first batch). A resume that differs in any of them is refused, naming
each difference, so a folder never silently yields another run's dictionary. A lock file keeps
two runs out of one folder. Non-finite batches, losses or weights stop training before any
checkpoint could hold them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from mechscope.checkpoints import (
    differences,
    latest_checkpoint,
    load_optimiser_tensors,
    optimiser_tensors,
    save_checkpoint,
)
from mechscope.distributed import (
    Ranks,
    any_rank,
    average_gradients,
    broadcast_parameters,
    check_ranks,
    check_same_settings,
    global_mean,
    global_mean_rows,
)
from mechscope.distributed.files import main_rank_lock
from mechscope.errors import (
    ConfigError,
    DistributedError,
    FileFormatError,
    InputTypeError,
    MechscopeError,
    NonFiniteError,
    OutputFolderError,
    ResumeError,
)
from mechscope.files import read_json, read_safetensors
from mechscope.sae.config import SAEConfig
from mechscope.sae.model import SAE
from mechscope.validate import check_choice, check_finite, check_int, check_number

CHECKPOINT_FORMAT = 2
# TrainConfig fields that do not change the trained weights (only how often they are saved).
RESUME_FREE_FIELDS = ("checkpoint_every",)
REMEDY = "delete the checkpoint folder (training starts over) or use another one"
TrainDtype = Literal["float32", "float64"]
# How batch-level statistics (BatchTopK cut-off, AuxK normaliser, dead latents, input scale) are
# taken in a data-parallel run: "global" is the only correct choice; "per_rank" reproduces the
# mistake of computing them on each rank's share (the negative control of tests and benchmarks).
BatchStatistics = Literal["global", "per_rank"]
# The decoder bias at step 0: zero, or the mean of the first (global) batch's targets, so the
# latents start by explaining the variation around the mean rather than the mean itself.
DecoderBiasInit = Literal["zero", "mean"]
# Fields added to TrainConfig after checkpoints existed, with the value older runs had.
TRAIN_FIELDS_BEFORE_RECORDED = {"dtype": "float32", "decoder_bias_init": "zero"}


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; all but ``checkpoint_every`` decide the trained weights."""

    steps: int
    lr: float = 1e-3
    warmup_steps: int = 50
    decay_fraction: float = 0.2
    dead_after_tokens: int = 100_000
    aux_k: int | None = None  # default: d_in // 2, as for TopK SAEs (Gao et al. 2024)
    aux_coefficient: float = 1 / 32
    checkpoint_every: int = 0
    normalise_inputs: bool = True
    seed: int = 0
    dtype: TrainDtype = "float32"
    decoder_bias_init: DecoderBiasInit = "zero"

    def __post_init__(self) -> None:
        check_int("steps", self.steps, 1)
        check_number("lr", self.lr, 0, strict_minimum=True)
        check_int("warmup_steps", self.warmup_steps, 0)
        check_number("decay_fraction", self.decay_fraction, 0, 1)
        check_int("dead_after_tokens", self.dead_after_tokens, 1)
        if self.aux_k is not None:
            check_int("aux_k", self.aux_k, 1)
        check_number("aux_coefficient", self.aux_coefficient, 0)
        check_int("checkpoint_every", self.checkpoint_every, 0)
        if not isinstance(self.normalise_inputs, bool):
            raise ConfigError(f"normalise_inputs must be True or False; got {self.normalise_inputs!r}")
        check_int("seed", self.seed, None)
        check_choice("dtype", self.dtype, TrainDtype)
        check_choice("decoder_bias_init", self.decoder_bias_init, DecoderBiasInit)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


def lr_factor(step: int, config: TrainConfig) -> float:
    """The learning rate multiplier at ``step``: linear warm-up, then 1, then a linear decay over
    the last ``decay_fraction`` of the steps."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    decay_start = int(config.steps * (1 - config.decay_fraction))
    if step >= decay_start and config.decay_fraction > 0:
        return max(0.0, (config.steps - step) / (config.steps - decay_start))
    return 1.0


def _checked_tensor(tensor, what: str, step: int, dtype: torch.dtype = torch.float32,
                    device: torch.device | None = None) -> torch.Tensor:
    """``tensor`` as ``dtype`` on ``device`` (default: where it is) if it is a finite, non-empty,
    2-D floating tensor [batch, d]."""
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 2 or not tensor.is_floating_point():
        described = f"{tensor.dtype} {tuple(tensor.shape)}" if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise InputTypeError(f"data.batch({step}) {what} must be a floating tensor [batch, d]; got {described}")
    if tensor.shape[0] < 1:
        raise ConfigError(f"data.batch({step}) {what} is an empty batch")
    try:
        check_finite(f"data.batch({step}) {what}", tensor)
    except NonFiniteError as error:
        raise NonFiniteError(f"{error}. Training stopped at step {step}; checkpoints hold only earlier steps. "
                             "Find the NaN or inf in the data (a harvest in float16 can overflow)") from error
    return tensor.to(device=device, dtype=dtype)


def _named_pairs(batch: dict, step: int, configs: list[SAEConfig]) -> list[tuple[str, str | None]]:
    """(input name, target name or None) of each dictionary in a batch given as {hook: tensor}:
    a dictionary reads its config's ``hook_name`` and a transcoder predicts its ``hook_name_out``."""
    pairs = []
    for index, cfg in enumerate(configs):
        wanted = [cfg.hook_name] + ([cfg.hook_name_out] if cfg.is_transcoder else [])
        missing = [name or "(empty hook_name)" for name in wanted if name not in batch]
        if missing:
            raise ConfigError(f"data.batch({step}) gives the hooks {', '.join(map(str, batch)) or 'none'}, but dictionary "
                              f"{index} reads or predicts {', '.join(missing)}: set its hook_name / hook_name_out to "
                              "one of them, or give data that holds them")
        pairs.append((cfg.hook_name, cfg.hook_name_out if cfg.is_transcoder else None))
    return pairs


def _checked_batch(data, step: int, configs: list[SAEConfig], dtype: torch.dtype = torch.float32,
                   device: torch.device | None = None) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Each dictionary's (x [batch, d_in], target [batch, d_out] or None) from ``data.batch(step)``
    as ``dtype`` on ``device``, checked: 2-D finite floating tensors of the dictionary's widths, pairs for
    transcoders. The batch is x, (x, target) shared by every dictionary, or {hook: tensor}
    from which each dictionary takes its own hooks (many layers trained from one forward pass)."""
    batch = data.batch(step)
    if isinstance(batch, dict):
        pairs = _named_pairs(batch, step, configs)
        tensors = {name: _checked_tensor(batch[name], name, step, dtype, device)
                   for name in dict.fromkeys(n for pair in pairs for n in pair if n is not None)}
        found = [(tensors[x], None if target is None else tensors[target]) for x, target in pairs]
    else:
        if isinstance(batch, tuple | list):
            if len(batch) != 2:
                raise InputTypeError(f"data.batch({step}) must give x, (x, target) or {{hook: tensor}}; got a sequence "
                                     f"of {len(batch)}")
            x, target = batch
        else:
            x, target = batch, None
        x = _checked_tensor(x, "inputs", step, dtype, device)
        target = None if target is None else _checked_tensor(target, "targets", step, dtype, device)
        found = [(x, target if cfg.is_transcoder else None) for cfg in configs]
        for index, cfg in enumerate(configs):
            if cfg.is_transcoder and target is None:
                raise ConfigError(f"dictionary {index} is a transcoder with d_out={cfg.d_out}: data.batch({step}) must "
                                  f"give (input, target) pairs with targets of that width; got no targets")
    for index, (cfg, (x, target)) in enumerate(zip(configs, found)):
        if target is not None and target.shape[0] != x.shape[0]:
            raise ConfigError(f"data.batch({step}) gives {x.shape[0]} inputs but {target.shape[0]} targets")
        if x.shape[1] != cfg.d_in:
            raise ConfigError(f"data.batch({step}) gives inputs of width {x.shape[1]}, but dictionary {index} has "
                              f"d_in={cfg.d_in}")
        if cfg.is_transcoder and target.shape[1] != cfg.d_out:
            raise ConfigError(f"dictionary {index} is a transcoder with d_out={cfg.d_out}: data.batch({step}) must "
                              f"give (input, target) pairs with targets of that width; got targets of width "
                              f"{target.shape[1]}")
    return found


def _data_fingerprint(data) -> dict:
    """What identifies the data: ``data.fingerprint()`` if it has one, else the SHA-256 of the
    first batch (catches another seed, batch size or source, not a change after step 0)."""
    method = getattr(data, "fingerprint", None)
    if callable(method):
        fingerprint = method()
    else:
        batch = data.batch(0)
        digest = hashlib.sha256()
        if isinstance(batch, dict):
            digest.update(json.dumps(sorted(map(str, batch))).encode())
            batch = [batch[name] for name in sorted(batch)]
        for tensor in batch if isinstance(batch, tuple | list) else (batch,):
            tensor = torch.as_tensor(tensor).detach().cpu().contiguous()
            digest.update(f"{tuple(tensor.shape)}:{tensor.dtype};".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        fingerprint = {"kind": "first_batch", "first_batch_sha256": digest.hexdigest()}
    try:  # compared with what a JSON file gives back, so normalise the same way (tuples -> lists)
        return json.loads(json.dumps(fingerprint))
    except TypeError as error:
        raise InputTypeError(f"data.fingerprint() must return a JSON-serialisable dict ({error})") from error


class _Run:
    """One dictionary's training state: model, optimiser, dead-latent counters, scales."""

    def __init__(self, cfg: SAEConfig, seed: int, lr: float, dtype: torch.dtype = torch.float32,
                 device: torch.device | None = None):
        # Built on the CPU from the seed (the same weights whatever the device), then moved.
        self.sae = SAE(cfg, seed=seed).to(device=device, dtype=dtype)
        self.optimiser = torch.optim.Adam(self.sae.parameters(), lr=lr, betas=(0.9, 0.999))
        self.since_fired = torch.zeros(cfg.d_sae, dtype=torch.long, device=device)
        self.scale_in = self.scale_out = 1.0
        self.last: dict[str, float] = {}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"model.{k}": v.detach().clone().contiguous() for k, v in self.sae.state_dict().items()}
        names = {id(p): n for n, p in self.sae.named_parameters()}
        tensors.update({f"adam.{key}": value for key, value in optimiser_tensors(self.optimiser, names).items()})
        tensors["since_fired"] = self.since_fired.clone()
        return tensors

    def load_tensors(self, tensors: dict[str, torch.Tensor], path: Path) -> None:
        """Restore from a checkpoint file's tensors; anything that does not fit is a FileFormatError."""
        try:
            self.sae.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        except RuntimeError as error:
            raise FileFormatError(f"{path} does not hold this dictionary's weights ({error}); {REMEDY}") from error
        unexpected = [key for key in tensors if key != "since_fired" and not key.startswith(("model.", "adam."))]
        if unexpected:
            raise FileFormatError(f"{path}: unexpected tensor {unexpected[0]}; {REMEDY}")
        load_optimiser_tensors(self.optimiser, dict(self.sae.named_parameters()),
                               {k[5:]: v for k, v in tensors.items() if k.startswith("adam.")}, path, REMEDY)
        since = tensors.get("since_fired")
        if since is None or since.shape != self.since_fired.shape or since.is_floating_point():
            raise FileFormatError(f"{path}: since_fired must be an integer tensor [{self.sae.cfg.d_sae}]; {REMEDY}")
        self.since_fired = since.to(self.since_fired.device, copy=True)


def _check_weights_finite(runs: list[_Run], step: int) -> None:
    for index, run in enumerate(runs):
        for name, tensor in run.sae.state_dict().items():
            check_finite(f"dictionary {index}'s {name} after step {step} (the update diverged: lower lr; no "
                         "checkpoint or result was written with it)", tensor)


def _weights_digest(runs: list[_Run]) -> str:
    digest = hashlib.sha256()
    for run in runs:
        for name, tensor in run.sae.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _save_checkpoint(folder: Path, step: int, runs: list[_Run], config: TrainConfig, data_fingerprint: dict,
                     ranks: Ranks) -> None:
    """Rank 0 writes the checkpoint (the same files one process writes: the ranks' states are
    equal, which is checked first); every rank returns once it is on disk."""
    _check_weights_finite(runs, step)
    # Data-parallel ranks must hold the same weights: a difference means a rank saw other data
    # or ran other code, and its checkpoint would not be the run's.
    check_same_settings(ranks, f"weights after step {step}", {"weights_sha256": _weights_digest(runs)})

    def save() -> str:
        files = {f"dictionary_{index}.safetensors": run.state_tensors() for index, run in enumerate(runs)}
        meta = {"format": CHECKPOINT_FORMAT, "train": asdict(config), "data": data_fingerprint,
                "configs": [run.sae.cfg.to_dict() for run in runs],
                "scales": [[run.scale_in, run.scale_out] for run in runs],
                "world_size": ranks.world_size}  # informative only: a checkpoint resumes on any world size
        return str(save_checkpoint(folder, step, files, meta))

    ranks.on_main(save, f"writing the checkpoint of step {step}")


def _load_checkpoint(folder: Path, runs: list[_Run], configs: list[SAEConfig], config: TrainConfig,
                     data_fingerprint: dict) -> int:
    """Restore the runs from ``folder``'s latest checkpoint; returns the next step (0 if none).
    Refuses (ResumeError) a checkpoint whose dictionaries, settings or data differ."""
    checkpoint = latest_checkpoint(folder, REMEDY)
    if checkpoint is None:
        return 0
    state = checkpoint / "state.json"
    meta = read_json(state, "a training checkpoint", REMEDY)
    if not isinstance(meta, dict) or not {"step", "configs", "scales"} <= set(meta):
        raise FileFormatError(f"{state} must be an object with step, configs and scales; it is corrupt; {REMEDY}")
    missing = [key for key in ("train", "data") if key not in meta]
    if missing:
        raise ResumeError(f"{state} does not record {' and '.join(missing)} (written by an older mechscope), so a "
                          f"resume cannot prove it continues the same run; {REMEDY}")
    if not isinstance(meta["configs"], list):
        raise FileFormatError(f"{state}: configs must be a list; {REMEDY}")
    saved = [SAEConfig.from_dict(c, source=f"{state} configs[{i}]") for i, c in enumerate(meta["configs"])]
    changes: list[str] = []
    if len(saved) != len(configs):
        changes.append(f"number of dictionaries: checkpoint {len(saved)}, this run {len(configs)}")
    else:
        for index, (old, new) in enumerate(zip(saved, configs)):
            changes += differences(f"dictionary {index} ", old.to_dict(), new.to_dict())
    other_dictionaries = bool(changes)
    recorded = {**TRAIN_FIELDS_BEFORE_RECORDED, **meta["train"]} if isinstance(meta["train"], dict) else meta["train"]
    changes += differences("", recorded, asdict(config), skip=RESUME_FREE_FIELDS)
    changes += differences("data ", meta["data"], data_fingerprint)
    if changes:
        made = "for other dictionaries" if other_dictionaries else "with other settings or data"
        raise ResumeError(f"the checkpoint in {folder} was made {made}, so resuming would not give this run's "
                          f"result ({'; '.join(changes)}); {REMEDY}, or repeat the original settings")
    step, scales = meta["step"], meta["scales"]
    if isinstance(step, bool) or not isinstance(step, int) or f"step-{step}" != checkpoint.name or step >= config.steps:
        raise FileFormatError(f"{state}: step {step!r} does not fit its folder {checkpoint.name} and steps="
                              f"{config.steps}; it is corrupt; {REMEDY}")
    if not isinstance(scales, list) or len(scales) != len(runs):
        raise FileFormatError(f"{state}: scales must hold one [in, out] pair per dictionary; {REMEDY}")
    for index, run in enumerate(runs):
        path = checkpoint / f"dictionary_{index}.safetensors"
        tensors = read_safetensors(path, "training checkpoint", REMEDY)
        for name, tensor in tensors.items():
            check_finite(f"{path}: {name}", tensor)
        run.load_tensors(tensors, path)
        pair = scales[index]
        try:
            run.scale_in, run.scale_out = (check_number(f"{state}: scales[{index}]", value, 0, strict_minimum=True)
                                           for value in pair)
        except (TypeError, ValueError) as error:
            raise FileFormatError(f"{state}: scales[{index}] must be two positive numbers; got {pair!r}; "
                                  f"{REMEDY}") from error
    return step + 1


def train(configs: SAEConfig | list[SAEConfig], data, config: TrainConfig,
          checkpoint_dir: str | Path | None = None, progress: bool = True, ranks: Ranks | None = None,
          batch_statistics: BatchStatistics = "global", device: str | torch.device | None = None) -> list[SAE]:
    """Train one dictionary per config on the same batches; returns them with the input
    scaling folded into their weights (they take raw activations). An SAE reconstructs the
    batch's input; a transcoder predicts its target (data must give pairs).

    Data-parallel with ``ranks`` of a world above one (see :mod:`mechscope.distributed`): each
    rank's ``data`` gives its equal share of the global batch (``StoredActivations`` /
    ``ModelActivations`` built with the same ``rank`` and ``world_size``); gradients are
    averaged over ranks, and the batch statistics (input scale, BatchTopK cut-off, AuxK
    normaliser, dead latents) are taken over the global batch, so the run equals one process
    on the whole batch. Rank 0 writes the checkpoints, the same files one process writes:
    a run resumes on any world size. ``batch_statistics="per_rank"`` takes those statistics on
    each rank's share instead: wrong, kept only as the negative control that shows the
    difference.

    ``device``: where the dictionaries train (batches are moved there); default the ranks'
    device (``cuda:LOCAL_RANK`` under NCCL), else the CPU. The returned dictionaries are on
    the CPU, as are checkpoints: they load on any device."""
    configs = [configs] if isinstance(configs, SAEConfig) else list(configs)
    if not configs or not all(isinstance(cfg, SAEConfig) for cfg in configs):
        raise InputTypeError(f"train needs one or more SAEConfig; got {configs!r}")
    if not isinstance(config, TrainConfig):
        raise InputTypeError(f"config must be a TrainConfig; got {type(config).__name__}")
    if not callable(getattr(data, "batch", None)):
        raise InputTypeError(f"data must have a batch(step) method; got {type(data).__name__}")
    ranks = check_ranks(ranks)
    check_choice("batch_statistics", batch_statistics, BatchStatistics)
    device = _training_device(device, ranks)
    if batch_statistics == "per_rank" and checkpoint_dir is not None:
        raise ConfigError("batch_statistics='per_rank' is the negative control (each rank's thresholds drift apart), "
                          "so its runs keep no checkpoints: drop checkpoint_dir")
    _check_data_split(data, ranks)
    if ranks.distributed and not callable(getattr(data, "fingerprint", None)):
        raise ConfigError(f"data-parallel training needs data with a fingerprint() of the global batches (this "
                          f"{type(data).__name__} has none, and each rank sees only its share): use StoredActivations, "
                          "ModelActivations or PairedActivations, or give the data a fingerprint() method")
    if checkpoint_dir is None:
        return _train(configs, data, config, None, progress, ranks, batch_statistics, device)
    folder = Path(checkpoint_dir)
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"{folder} is a file, not a checkpoint folder")
    folder.mkdir(parents=True, exist_ok=True)
    with main_rank_lock(ranks, folder, "training run"):
        return _train(configs, data, config, folder, progress, ranks, batch_statistics, device)


def _check_data_split(data, ranks: Ranks) -> None:
    """Under a world of several ranks the data must split each batch among exactly those ranks."""
    rank, world = getattr(data, "rank", 0), getattr(data, "world_size", 1)
    if (rank, world) != (ranks.rank, ranks.world_size):
        raise ConfigError(f"this is rank {ranks.rank} of {ranks.world_size}, but the data gives the share of rank "
                          f"{rank} of {world}: build it with rank={ranks.rank}, world_size={ranks.world_size} "
                          "(StoredActivations / ModelActivations), so each rank trains on its own part of the batch")


def _training_device(device, ranks: Ranks) -> torch.device:
    if device is None:
        return ranks.device
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(f"device must be a torch device such as 'cpu' or 'cuda:0'; got {device!r}") from error
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} needs CUDA, which this process does not have: use 'cpu'")
    return chosen


def _train(configs: list[SAEConfig], data, config: TrainConfig, folder: Path | None, progress: bool,
           ranks: Ranks, batch_statistics: str, device: torch.device) -> list[SAE]:
    runs = [_Run(cfg, seed=config.seed + index, lr=config.lr, dtype=config.torch_dtype, device=device)
            for index, cfg in enumerate(configs)]
    fingerprint = _data_fingerprint(data) if folder is not None else {}
    if ranks.distributed:  # before anything is read or written: every rank runs the same training
        check_same_settings(ranks, "training settings", {"configs": [cfg.to_dict() for cfg in configs],
                                                         "train": asdict(config), "batch_statistics": batch_statistics,
                                                         "data": fingerprint or _data_fingerprint(data)})
    start = _load_checkpoint(folder, runs, configs, config, fingerprint) if folder is not None else 0
    initialise = start == 0 and (config.normalise_inputs or config.decoder_bias_init == "mean")
    # Read once: the batch the start-up checks and the data-dependent initialisation look at.
    opening = _step_batch(data, start, configs, config, ranks, device) if ranks.distributed or initialise else None
    if ranks.distributed:  # every rank resumes from the same state, with an equal share of each batch
        check_same_settings(ranks, "checkpoint to resume from and share of the batch",
                            {"start": start, "weights": _weights_digest(runs), "rows": [x.shape[0] for x, _ in opening]})
    for run in runs:
        broadcast_parameters(ranks, run.sae.parameters())
    statistics = ranks if batch_statistics == "global" else Ranks()
    if start == 0 and config.normalise_inputs:
        for run, (x, target) in zip(runs, opening):
            goal = target if run.sae.cfg.is_transcoder else x
            norm_in, norm_out = global_mean(statistics, x.norm(dim=-1)), global_mean(statistics, goal.norm(dim=-1))
            if float(norm_in) == 0 or float(norm_out) == 0:
                raise ConfigError("data.batch(0) is all zeros, so inputs cannot be normalised: check the hook point, "
                                  "or set normalise_inputs=False")
            run.scale_in = float(run.sae.cfg.d_in**0.5 / norm_in)
            run.scale_out = float(run.sae.cfg.output_dim**0.5 / norm_out)
    if start == 0 and config.decoder_bias_init == "mean":
        with torch.no_grad():
            for run, (x, target) in zip(runs, opening):
                goal = target if run.sae.cfg.is_transcoder else x
                run.sae.b_dec.copy_(global_mean_rows(statistics, goal) * run.scale_out)
    bar = tqdm(range(start, config.steps), desc="training dictionaries", disable=not (progress and ranks.is_main),
               initial=start, total=config.steps)
    for step in bar:
        batch = opening if step == start and opening is not None else _step_batch(data, step, configs, config, ranks,
                                                                                  device)
        # Every dictionary's loss runs on every rank (their batch statistics are collectives), even
        # after one failed here; the failure then rides in the gradient all-reduce.
        steps = [_train_step(run, index, x, x if target is None else target, step, config, statistics)
                 for index, (run, (x, target)) in enumerate(zip(runs, batch))]
        failures = [error for _, error in steps if error is not None]
        # One all-reduce for every dictionary's gradients, then each steps on the average.
        failed_ranks = average_gradients(ranks, [p for run in runs for p in run.sae.parameters()], bool(failures))
        if failures:
            raise failures[0]
        if failed_ranks:
            raise DistributedError(f"rank {ranks.rank}: at step {step} the loss of {failed_ranks} other rank(s) was not "
                                   "finite (that rank reports why); training stopped before this update, so every "
                                   "checkpoint holds earlier steps")
        # Which latents fired on any rank: every dictionary's flags in one all-reduce.
        fired = any_rank(statistics, torch.cat([fired_here for fired_here, _ in steps]))
        rows = batch[0][0].shape[0] * statistics.world_size  # equal shares: checked at the start
        for run, everywhere in zip(runs, fired.split([run.sae.cfg.d_sae for run in runs])):
            run.optimiser.step()
            run.sae.after_step()
            run.since_fired = torch.where(everywhere, torch.zeros_like(run.since_fired), run.since_fired + int(rows))
        if folder is not None and config.checkpoint_every and (step + 1) % config.checkpoint_every == 0:
            _save_checkpoint(folder, step, runs, config, fingerprint, ranks)
        first = runs[0].last
        bar.set_postfix(l0=f"{first.get('l0', 0):.1f}", fvu=f"{first.get('fvu', 0):.3f}")
    _check_weights_finite(runs, config.steps - 1)
    return [_folded(run) for run in runs]


def _step_batch(data, step: int, configs: list[SAEConfig], config: TrainConfig, ranks: Ranks,
                device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """:func:`_checked_batch` on every rank; a batch that fails its checks on one rank stops
    every rank (one small all-reduce), before any collective of the step could wait for it."""
    failure = None
    try:
        batch = _checked_batch(data, step, configs, config.torch_dtype, device)
    except MechscopeError as error:
        if not ranks.distributed:
            raise
        failure = error
    if ranks.distributed:
        failed = int(ranks.all_reduce(torch.tensor([failure is not None], dtype=torch.int32),
                                      what=f"checking every rank's batch of step {step}"))
        if failure is not None:
            raise failure
        if failed:
            raise DistributedError(f"rank {ranks.rank}: the batch of step {step} failed its checks on {failed} other "
                                   "rank(s) (that rank reports why); training stopped before this step")
    return batch


def _train_step(run: _Run, index: int, x: torch.Tensor, target: torch.Tensor, step: int, config: TrainConfig,
                statistics: Ranks) -> tuple[torch.Tensor, NonFiniteError | None]:
    """The loss and gradients of x [batch, d_in] -> target [batch, d_out] (the update itself
    follows, after the gradients are averaged over ranks); returns which latents fired [d_sae]
    here, and the error when the loss is not finite (then there are no gradients: the caller
    stops training before any update, so the weights, and every checkpoint, stay finite)."""
    sae, cfg = run.sae, run.sae.cfg
    x_scaled, target_scaled = x * run.scale_in, target * run.scale_out
    for group in run.optimiser.param_groups:
        group["lr"] = config.lr * lr_factor(step, config)
    dead = run.since_fired >= config.dead_after_tokens
    aux_k = config.aux_k if config.aux_k is not None else max(1, cfg.d_in // 2)
    loss, parts, fired = sae.loss(x_scaled, target_scaled, dead, aux_k, config.aux_coefficient,
                                  statistics if statistics.distributed else None)
    run.optimiser.zero_grad(set_to_none=True)
    if not bool(torch.isfinite(loss.detach())):
        return fired, NonFiniteError(
            f"the loss of dictionary {index} ({cfg.architecture}) is {float(loss.detach())} at step {step} (parts: "
            f"{parts}) though the batch is finite: its values overflow, or lr={config.lr} is too high. Training "
            "stopped before this update; checkpoints hold earlier steps")
    loss.backward()
    with torch.no_grad():
        variance = (target_scaled - target_scaled.mean(0)).pow(2).sum(-1).mean()
        run.last = {**parts, "fvu": parts["mse"] / float(variance.clamp_min(1e-12)), "dead": float(dead.float().mean())}
    return fired, None


def _folded(run: _Run) -> SAE:
    """A copy of the run's SAE, on the CPU, that takes raw activations: the input / output
    scales folded in."""
    sae = SAE(run.sae.cfg).to(run.sae.W_enc.dtype)
    sae.load_state_dict(run.sae.state_dict())
    s_in, s_out = run.scale_in, run.scale_out
    with torch.no_grad():
        # pre = (s x - b) W + c = (x - b / s) (s W) + c for an SAE (s_in = s_out); outputs are / s_out.
        sae.W_enc.mul_(s_in)
        sae.b_dec.div_(s_out)
        sae.W_dec.div_(s_out)
        if sae.W_skip is not None:
            sae.W_skip.mul_(s_in / s_out)
    return sae


__all__ = ["RESUME_FREE_FIELDS", "BatchStatistics", "DecoderBiasInit", "TrainConfig", "TrainDtype", "lr_factor",
           "train"]
