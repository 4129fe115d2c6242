"""What each rank runs in the distributed tests (importable, so spawned processes can find it).

Every function takes the rank's :class:`~mechscope.distributed.Ranks` first and writes what it
found under ``out`` (safetensors for weights, JSON for outcomes): the test, in the parent
process, compares those files with a one-process run.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from safetensors.torch import save_file

from mechscope.data import StoredActivations
from mechscope.distributed import global_kth_largest
from mechscope.errors import DistributedError
from mechscope.sae import SAEConfig
from mechscope.sae.train import TrainConfig, train

HOOK = "blocks.1.hook_resid_post"
GLOBAL_BATCH = 64


def sae_config(architecture: str, d_in: int) -> SAEConfig:
    return SAEConfig(d_in, 48, architecture, k=4, hook_name=HOOK)


def train_config(**changes) -> TrainConfig:
    # Latents are "dead" after 2 batches without firing, so AuxK and the dead counts take part.
    settings = {"steps": 8, "lr": 1e-2, "warmup_steps": 2, "dead_after_tokens": 2 * GLOBAL_BATCH, "dtype": "float64",
                **changes}
    return TrainConfig(**settings)


def store_data(store: str, ranks=None) -> StoredActivations:
    rank, world = (ranks.rank, ranks.world_size) if ranks is not None else (0, 1)
    return StoredActivations(store, HOOK, batch_size=GLOBAL_BATCH, seed=3, rank=rank, world_size=world)


class StopsAt:
    """Data that raises at ``step`` (a run interrupted there, on every rank); otherwise ``data``."""

    def __init__(self, data, step: int):
        self.data, self.step, self.rank, self.world_size = data, step, data.rank, data.world_size

    def fingerprint(self) -> dict:
        return self.data.fingerprint()

    def batch(self, step: int):
        if step == self.step:
            raise KeyboardInterrupt(f"interrupted at step {step}")
        return self.data.batch(step)


class NonFiniteAt(StopsAt):
    """On rank 1: a NaN in the batch of ``step`` (bad rows in one rank's share)."""

    def batch(self, step: int):
        batch = self.data.batch(step)
        if step == self.step and self.rank == 1:
            batch = batch.clone()
            batch[0, 0] = float("nan")
        return batch


class DiesAt(StopsAt):
    """On rank 1: the process exits at ``step`` without a word (a crashed or killed rank)."""

    def batch(self, step: int):
        if step == self.step and self.rank == 1:
            os._exit(3)
        return self.data.batch(step)


def _save(ranks, out: Path, name: str, sae) -> None:
    save_file({k: v.contiguous() for k, v in sae.state_dict().items()}, str(out / f"{name}.rank{ranks.rank}.safetensors"))


def skewed_values():
    """{case: [rank 0's values, rank 1's values]} for the cut-off, 50 values in all (fewer than
    the largest count asked): rank 0 holding the 30 largest, or every other value."""
    import torch

    values = torch.randn(50, generator=torch.Generator().manual_seed(7)).sort(descending=True).values
    return {"skewed": [values[:30], values[30:]], "spread": [values[0::2][:30], values[1::2]]}


def training_scenarios(ranks, store: str, out: str, d_in: int) -> None:
    """Trainings on an equal split of each global batch, a mismatched start, an interrupted
    checkpointed run and a rank that dies, in that order."""
    out = Path(out)
    cuts = {}  # the BatchTopK cut-off when one rank holds all of the top values, and when they are spread
    for name, values in skewed_values().items():
        cuts[name] = [float(global_kth_largest(ranks, values[ranks.rank], count)) for count in (1, 5, 12, 40, 200)]
    (out / f"cuts.rank{ranks.rank}.json").write_text(json.dumps(cuts))
    for architecture, statistics, bias in (("topk", "global", "zero"), ("batchtopk", "global", "zero"),
                                           ("batchtopk", "per_rank", "zero"), ("topk", "global", "mean")):
        (sae,) = train(sae_config(architecture, d_in), store_data(store, ranks), train_config(decoder_bias_init=bias),
                       progress=False, ranks=ranks, batch_statistics=statistics)
        _save(ranks, out, f"{architecture}-{statistics}" + ("-mean" if bias == "mean" else ""), sae)
    try:  # rank 1 was started with another learning rate
        train(sae_config("topk", d_in), store_data(store, ranks), train_config(lr=1e-2 if ranks.rank == 0 else 2e-2),
              progress=False, ranks=ranks)
        mismatch = "no error"
    except DistributedError as error:
        mismatch = str(error)
    (out / f"mismatch.rank{ranks.rank}.json").write_text(json.dumps(mismatch))
    try:  # checkpoints every 4 steps; interrupted at step 6, so step-3 is the last checkpoint
        train(sae_config("batchtopk", d_in), StopsAt(store_data(store, ranks), 6),
              train_config(steps=10, checkpoint_every=4), out / "checkpoints", progress=False, ranks=ranks)
    except KeyboardInterrupt:
        pass
    ranks.barrier()
    try:  # rank 1's batch of step 3 holds a NaN: rank 1 says so, rank 0 stops too (no timeout)
        train(sae_config("batchtopk", d_in), NonFiniteAt(store_data(store, ranks), 3), train_config(), progress=False,
              ranks=ranks)
        bad_batch = {"error": None}
    except Exception as error:
        bad_batch = {"type": type(error).__name__, "error": str(error)}
    (out / f"nonfinite.rank{ranks.rank}.json").write_text(json.dumps(bad_batch))
    started = time.monotonic()
    try:
        train(sae_config("topk", d_in), DiesAt(store_data(store, ranks), 2), train_config(), progress=False,
              ranks=ranks)
        outcome = {"error": None}
    except DistributedError as error:
        outcome = {"error": str(error)}
    outcome["seconds"] = time.monotonic() - started
    (out / f"dead.rank{ranks.rank}.json").write_text(json.dumps(outcome))


def harvest_contexts():
    """18 contexts in shards of 4: five shards, the last of 2 contexts (an uneven split: 3 + 2)."""
    import torch

    return torch.randint(3, 250, (18, 9), generator=torch.Generator().manual_seed(1))


def harvest_scenarios(ranks, straight: str, killed: str) -> None:
    """A whole harvest into ``straight``; then one into ``killed`` in which rank 1 dies after
    its first shard (rank 0 finishes its own and stops with an error)."""
    import mechscope
    from mechscope.data import harvest

    model = mechscope.load_tiny("llama")
    settings = {"hook_names": [HOOK, "blocks.0.hook_mlp_out"], "shard_contexts": 4, "batch_contexts": 3,
                "progress": False, "ranks": ranks}
    # Rank 1 is slow (longer than the group's 5 s collective timeout): rank 0 waits at the
    # phase's meeting, which has the long wait_timeout_s, instead of declaring it dead.
    ranks.everywhere(lambda: time.sleep(7) if ranks.rank == 1 else None, "a slow rank's phase")
    harvest(model, harvest_contexts(), straight, **settings)
    try:  # each rank given its own folder: rank 0 cannot see rank 1's shards
        harvest(model, harvest_contexts(), f"{straight}-rank{ranks.rank}", **settings)
        unshared = {"error": None}
    except Exception as error:
        unshared = {"type": type(error).__name__, "error": str(error)}
    Path(f"{straight}-unshared.rank{ranks.rank}.json").write_text(json.dumps(unshared))
    if ranks.rank == 1:
        forward, calls = model.run_with_cache, []

        def dies_on_second_shard(*args, **kwargs):
            calls.append(1)
            if len(calls) > 2:  # shard 1 took two batches of 3 contexts: the next shard dies
                os._exit(4)
            return forward(*args, **kwargs)

        model.run_with_cache = dies_on_second_shard
    harvest(model, harvest_contexts(), killed, **settings)


def transcoder_settings():
    import torch

    from mechscope.graphs.transcoders import TranscoderSetConfig

    contexts = torch.randint(3, 250, (24, 9), generator=torch.Generator().manual_seed(2))
    return contexts, TranscoderSetConfig(d_sae=32, architecture="batchtopk", k=4), train_config(steps=6)


def crosscoder_settings():
    from mechscope.diff.crosscoder import CrosscoderConfig

    config = CrosscoderConfig(d_model=64, d_sae=40, k=4, hook_names=(HOOK,), delta_scale=2.0, ft_exclusive=4)
    return config, train_config(steps=6)


def paired_data(pair: str, ranks=None):
    from mechscope.diff.paired import PairedActivations

    rank, world = (ranks.rank, ranks.world_size) if ranks is not None else (0, 1)
    return PairedActivations(pair, [HOOK], batch_size=32, seed=4, rank=rank, world_size=world)


def transcoder_scenarios(ranks, out: str, pair: str) -> None:
    """Every layer's transcoder: whole layers per rank (``placement="layers"``), then
    data-parallel (each step's 4 contexts split 2 + 2); then a crosscoder, data-parallel on the
    paired store ``pair`` (its change magnified, with designated fine-tune-only latents)."""
    import mechscope
    from mechscope.diff.crosscoder import train_crosscoder
    from mechscope.graphs.transcoders import train_transcoders

    model = mechscope.load_tiny("llama")
    contexts, config, settings = transcoder_settings()
    out = Path(out)
    for placement in ("layers", "data"):
        trained = train_transcoders(model, contexts, config, settings, batch_contexts=4, progress=False, ranks=ranks,
                                    placement=placement, checkpoint_dir=out / placement)
        for layer, sae in trained.items():
            _save(ranks, out, f"{placement}-{layer}", sae)
    config, settings = crosscoder_settings()
    crosscoder = train_crosscoder(paired_data(pair, ranks), config, settings, progress=False, ranks=ranks)
    _save(ranks, out, "crosscoder", crosscoder.sae)
