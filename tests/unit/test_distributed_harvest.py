"""Harvesting on 2 real gloo ranks: the shards' union is bit-identical to one process's
harvest, the manifest says which rank wrote which contexts, and a harvest killed on 2 ranks
resumes on 1 to the same store."""

import json

import pytest

import mechscope
from mechscope.data import StoredActivations, harvest
from mechscope.distributed import run_ranks
from tests.unit import distributed_ranks as scenario

pytestmark = pytest.mark.usefixtures("one_thread")
SETTINGS = {"hook_names": [scenario.HOOK, "blocks.0.hook_mlp_out"], "shard_contexts": 4, "batch_contexts": 3,
            "progress": False}


@pytest.fixture(scope="module")
def harvested(tmp_path_factory):
    folder = tmp_path_factory.mktemp("harvests")
    outcomes = run_ranks(scenario.harvest_scenarios, 2, folder / "work", str(folder / "two"), str(folder / "killed"),
                         timeout_s=240, collective_timeout_s=5)
    one = harvest(mechscope.load_tiny("llama"), scenario.harvest_contexts(), folder / "one", **SETTINGS)
    return folder, outcomes, one


def shard_bytes(folder):
    return {path.name: path.read_bytes() for path in sorted(folder.glob("shard_*.safetensors"))}


def test_two_rank_shards_are_bit_identical_to_one_process(harvested):
    folder, outcomes, one = harvested
    two = folder / "two"
    assert shard_bytes(two) == shard_bytes(one) and len(shard_bytes(one)) == 5
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["contexts_done"] == 18
    assert [entry["contexts"] for entry in manifest["shards"]] == [[0, 4], [4, 8], [8, 12], [12, 16], [16, 18]]
    assert [(entry["rank"], entry["world_size"]) for entry in manifest["shards"]] == [(0, 2), (1, 2), (0, 2),
                                                                                   (1, 2), (0, 2)]
    single = json.loads((one / "manifest.json").read_text())
    assert [entry["sha256"] for entry in manifest["shards"]] == [entry["sha256"] for entry in single["shards"]]
    # Training reads the same batches (and records the same fingerprint) from either store.
    a, b = (StoredActivations(f, scenario.HOOK, batch_size=16, seed=2) for f in (two, one))
    assert a.fingerprint() == b.fingerprint()
    assert all(a.batch(step).equal(b.batch(step)) for step in range(6))


def test_a_harvest_killed_on_two_ranks_resumes_on_one(harvested):
    folder, outcomes, one = harvested
    killed = folder / "killed"
    assert outcomes[1].exit_code == 4
    assert outcomes[0].error_type == "DistributedError" and "rank 0 of 2" in outcomes[0].error
    before = json.loads((killed / "manifest.json").read_text())
    # Rank 0 finished shards 0, 2 and 4; rank 1 shard 1 only (its record is merged on resume).
    recorded = sorted(int(p.stem.split("_")[1]) for p in killed.glob("shard_*.json"))
    assert recorded == [0, 1, 2, 4] and before["contexts_done"] < 18
    model = mechscope.load_tiny("llama")
    forward, calls = model.run_with_cache, []
    model.run_with_cache = lambda *a, **k: calls.append(1) or forward(*a, **k)
    harvest(model, scenario.harvest_contexts(), killed, **SETTINGS)
    assert len(calls) == 2  # only shard 3 (4 contexts: two batches of 3) was harvested again
    assert shard_bytes(killed) == shard_bytes(one)
    after = json.loads((killed / "manifest.json").read_text())
    assert after["contexts_done"] == 18
    assert [(entry["rank"], entry["world_size"]) for entry in after["shards"]] == [(0, 2), (1, 2), (0, 2), (0, 1),
                                                                                 (0, 2)]


def test_a_slow_rank_is_waited_for_and_an_unshared_folder_is_refused(harvested):
    """The scenario's first phase had rank 1 busy for 7 s against a 5 s collective timeout, and
    the harvests after it ran (rank 0 waited). A harvest whose folder is not shared stops with
    an error on every rank, not with a manifest that lacks half the shards."""
    folder, outcomes, _ = harvested
    assert (folder / "two" / "manifest.json").is_file()
    rank0, rank1 = (json.loads((folder / f"two-unshared.rank{rank}.json").read_text()) for rank in (0, 1))
    assert rank0["type"] == "MissingFileError" and "needs a folder every rank sees" in rank0["error"]
    assert rank1["type"] == "DistributedError" and "rank 0 failed" in rank1["error"]
