"""Data-parallel dictionary training on 2 real gloo ranks (spawned here, file:// rendezvous)
equals one process on the whole batch; the per-rank BatchTopK control does not; bad starts
and dead ranks end with clear errors; checkpoints resume on another world size."""

import json

import pytest
import torch
from safetensors.torch import load_file

import mechscope
from mechscope.data import harvest
from mechscope.distributed import Ranks, run_ranks
from mechscope.errors import ConfigError, InputTypeError
from mechscope.sae.train import TrainConfig, train
from tests.unit import distributed_ranks as scenario

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny llama's activations harvested in float64, then every training scenario on 2 ranks."""
    folder = tmp_path_factory.mktemp("distributed")
    model = mechscope.load_tiny("llama")
    contexts = torch.randint(3, model.cfg.d_vocab, (40, 17), generator=torch.Generator().manual_seed(0))
    harvest(model, contexts, folder / "store", [scenario.HOOK], shard_contexts=8, dtype=torch.float64, progress=False)
    out = folder / "out"
    out.mkdir()
    outcomes = run_ranks(scenario.training_scenarios, 2, folder / "work", str(folder / "store"), str(out),
                         model.cfg.d_model, timeout_s=240, collective_timeout_s=30)
    return folder, out, outcomes, model.cfg.d_model


def one_process(folder, d_in, architecture, **changes):
    (sae,) = train(scenario.sae_config(architecture, d_in), scenario.store_data(folder / "store"),
                   scenario.train_config(**changes), progress=False)
    return sae.state_dict()


def largest_difference(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float((a[name] - b[name]).abs().max()) for name in a)


@pytest.mark.parametrize("architecture", ["topk", "batchtopk"])
def test_two_ranks_of_32_equal_one_process_of_64(trained, architecture):
    folder, out, outcomes, d_in = trained
    single = one_process(folder, d_in, architecture)
    for rank in (0, 1):
        both = load_file(str(out / f"{architecture}-global.rank{rank}.safetensors"))
        assert both["W_enc"].dtype == torch.float64
        assert largest_difference(both, single) < 1e-10
    # The run moved: a test of equality between two untrained dictionaries could not fail.
    assert largest_difference(single, scenario_untrained(d_in, architecture)) > 1e-2


def test_decoder_bias_from_the_global_batch_mean_equals_one_process(trained):
    folder, out, _, d_in = trained
    single = one_process(folder, d_in, "topk", decoder_bias_init="mean")
    both = load_file(str(out / "topk-global-mean.rank1.safetensors"))
    assert largest_difference(both, single) < 1e-10
    # The mean start is another run than the zero start (so the option did something).
    assert largest_difference(single, one_process(folder, d_in, "topk")) > 1e-3


def scenario_untrained(d_in, architecture):
    return mechscope.sae.SAE(scenario.sae_config(architecture, d_in)).double().state_dict()


def test_the_cutoff_is_the_kth_largest_of_all_ranks_values_however_they_are_spread(trained):
    _, out, _, _ = trained
    for rank in (0, 1):
        cuts = json.loads((out / f"cuts.rank{rank}.json").read_text())
        for name, values in scenario.skewed_values().items():
            everything = torch.cat(values).sort(descending=True).values
            # 200 is more than the 50 values: the smallest of them all.
            assert cuts[name] == [float(everything[min(count, 50) - 1]) for count in (1, 5, 12, 40, 200)], name


def test_per_rank_batchtopk_cutoff_diverges_from_one_process(trained):
    """The negative control: the same run with BatchTopK's cut-off, AuxK and dead counts taken
    on each rank's half of the batch is another function of the data."""
    folder, out, _, d_in = trained
    single = one_process(folder, d_in, "batchtopk")
    per_rank = load_file(str(out / "batchtopk-per_rank.rank0.safetensors"))
    assert largest_difference(per_rank, single) > 1e-3


def test_ranks_started_with_different_settings_are_refused_on_every_rank(trained):
    _, out, _, _ = trained
    for rank in (0, 1):
        message = json.loads((out / f"mismatch.rank{rank}.json").read_text())
        assert "different training settings" in message and "train" in message and "0.02" in message


def test_resume_on_one_process_after_an_interrupted_two_rank_run(trained):
    folder, out, _, d_in = trained
    checkpoints = out / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "step-3"
    assert json.loads((checkpoints / "step-3" / "state.json").read_text())["world_size"] == 2
    config = scenario.train_config(steps=10, checkpoint_every=4)
    (resumed,) = train(scenario.sae_config("batchtopk", d_in), scenario.store_data(folder / "store"), config,
                       checkpoints, progress=False)
    (straight,) = train(scenario.sae_config("batchtopk", d_in), scenario.store_data(folder / "store"), config,
                        progress=False)
    assert largest_difference(resumed.state_dict(), straight.state_dict()) < 1e-10


def test_a_bad_batch_on_one_rank_stops_both_with_its_reason(trained):
    _, out, _, _ = trained
    rank0, rank1 = (json.loads((out / f"nonfinite.rank{rank}.json").read_text()) for rank in (0, 1))
    assert rank1["type"] == "NonFiniteError" and "data.batch(3)" in rank1["error"]
    assert rank0["type"] == "DistributedError" and "step 3 failed its checks on 1 other rank" in rank0["error"]


def test_per_rank_statistics_keep_no_checkpoints_and_distributed_data_needs_a_fingerprint(tmp_path, trained):
    folder, _, _, d_in = trained
    with pytest.raises(ConfigError, match="negative control .* keep no checkpoints"):
        train(scenario.sae_config("batchtopk", d_in), scenario.store_data(folder / "store"), scenario.train_config(),
              tmp_path / "c", batch_statistics="per_rank")

    class Rows:  # a rank's share of some batches, with nothing that identifies the global ones
        rank, world_size = 0, 2

        def batch(self, step):
            return torch.ones(4, d_in)

    with pytest.raises(ConfigError, match="needs data with a fingerprint"):
        train(scenario.sae_config("topk", d_in), Rows(), scenario.train_config(), ranks=Ranks(rank=0, world_size=2))


def test_a_dead_rank_stops_the_other_with_a_clear_error(trained):
    _, out, outcomes, _ = trained
    assert outcomes[1].exit_code == 3  # rank 1 died at its step 2, as planned
    assert not (out / "dead.rank1.json").exists()
    survivor = json.loads((out / "dead.rank0.json").read_text())
    assert survivor["error"] is not None and "rank 0 of 2" in survivor["error"]
    assert "relaunch the same command" in survivor["error"]
    assert survivor["seconds"] < 60  # well inside the test's deadline: an error, not a hang
    assert outcomes[0].exit_code == 0


def test_data_split_must_match_the_ranks(tmp_path, trained):
    folder, _, _, d_in = trained
    data = scenario.store_data(folder / "store")
    with pytest.raises(ConfigError, match="rank 1 of 2, but the data gives the share of rank 0 of 1"):
        train(scenario.sae_config("topk", d_in), data, scenario.train_config(), ranks=Ranks(rank=1, world_size=2))
    with pytest.raises(ConfigError, match="does not split evenly over 3 ranks"):
        scenario.StoredActivations(folder / "store", scenario.HOOK, batch_size=64, rank=0, world_size=3)
    with pytest.raises(InputTypeError, match="ranks must be"):
        train(scenario.sae_config("topk", d_in), data, scenario.train_config(), ranks="2")
    with pytest.raises(ConfigError, match="decoder_bias_init must be one of: zero, mean"):
        TrainConfig(steps=1, decoder_bias_init="median")
    with pytest.raises(ConfigError, match="dtype must be one of: float32, float64"):
        TrainConfig(steps=1, dtype="float16")
    with pytest.raises(ConfigError, match="device must be a torch device such as 'cpu'"):
        train(scenario.sae_config("topk", d_in), data, scenario.train_config(), device="abacus")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="needs CUDA, which this process does not have"):
            train(scenario.sae_config("topk", d_in), data, scenario.train_config(), device="cuda:0")
    with pytest.raises(ConfigError, match="batch_statistics must be one of: global, per_rank"):
        train(scenario.sae_config("topk", d_in), data, scenario.train_config(), batch_statistics="local")


def test_each_data_kind_splits_a_global_batch_into_equal_shares(tmp_path, trained):
    """The ranks' shares, concatenated in rank order, are the one-process batch, for stored,
    paired and on-the-fly activations; the fingerprint (what checkpoints record) is the same."""
    from mechscope.data import ModelActivations
    from mechscope.diff.paired import PairedActivations, harvest_pair

    folder, _, _, _ = trained
    model = mechscope.load_tiny("llama")
    contexts = torch.randint(3, 250, (8, 9), generator=torch.Generator().manual_seed(5))
    pair = harvest_pair(model, model, contexts, tmp_path / "pair", [scenario.HOOK], shard_contexts=4, progress=False)
    makers = {
        "stored": lambda rank, world: scenario.StoredActivations(folder / "store", scenario.HOOK, batch_size=64,
                                                                 seed=3, rank=rank, world_size=world),
        "paired": lambda rank, world: PairedActivations(pair, [scenario.HOOK], batch_size=16, seed=1, rank=rank,
                                                        world_size=world),
        "model": lambda rank, world: ModelActivations(model, contexts, scenario.HOOK, batch_contexts=4, seed=2,
                                                      rank=rank, world_size=world),
    }
    for kind, make in makers.items():
        whole, halves = make(0, 1), [make(rank, 2) for rank in (0, 1)]
        assert halves[0].fingerprint() == whole.fingerprint(), kind
        for step in (0, 3):
            parts = [half.batch(step) for half in halves]
            assert parts[0].shape[0] == parts[1].shape[0] > 0, kind
            assert torch.equal(torch.cat(parts), whole.batch(step)), kind
