"""Many-layer runs on 2 real gloo ranks: whole layers per rank, or each batch split; both equal
one process, and a layer's checkpoint folder is a one-process folder on any world size."""

from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

import mechscope
from mechscope.data import ModelActivations
from mechscope.diff.crosscoder import train_crosscoder
from mechscope.diff.paired import harvest_pair
from mechscope.distributed import Ranks, run_ranks
from mechscope.errors import ConfigError
from mechscope.graphs.replacement import mlp_input, mlp_output
from mechscope.graphs.transcoders import train_transcoders
from mechscope.sae.spread import dictionary_folder
from mechscope.sae.train import train
from tests.unit import distributed_ranks as scenario

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def spread(tmp_path_factory):
    out = tmp_path_factory.mktemp("layers")
    base, ft = mechscope.load_tiny("llama"), mechscope.load_tiny("llama")
    with torch.no_grad():  # a fine-tune with something to find: one MLP's output scaled
        ft.hf_model.model.layers[0].mlp.down_proj.weight.mul_(1.5)
    contexts = torch.randint(3, 250, (8, 9), generator=torch.Generator().manual_seed(3))
    pair = harvest_pair(base, ft, contexts, out / "pair", [scenario.HOOK], shard_contexts=4, progress=False)
    outcomes = run_ranks(scenario.transcoder_scenarios, 2, out / "work", str(out), str(pair), timeout_s=240,
                         collective_timeout_s=30)
    assert all(outcome.ok for outcome in outcomes), outcomes
    model = mechscope.load_tiny("llama")
    contexts, config, settings = scenario.transcoder_settings()
    single = train_transcoders(model, contexts, config, settings, batch_contexts=4, progress=False)
    return out, model, single, pair


def difference(saved: dict, sae) -> float:
    return max(float((saved[name] - value.detach()).abs().max()) for name, value in sae.state_dict().items())


def test_whole_layers_per_rank_equal_one_process(spread):
    out, model, single, _ = spread
    assert len(single) == model.cfg.n_layers == 3
    for layer, sae in single.items():
        for rank in (0, 1):  # every rank returns every layer, trained on its owner
            assert difference(load_file(str(out / f"layers-{layer}.rank{rank}.safetensors")), sae) < 1e-6
    # Layers 0 and 2 trained on rank 0, layer 1 on rank 1, each in its own folder.
    assert sorted(p.name for p in (out / "layers").iterdir()) == ["dictionary_000", "dictionary_001", "dictionary_002"]


def test_each_batch_split_over_ranks_equals_one_process(spread):
    """Each rank runs the model on 2 of the step's 4 contexts (a row's activations do not depend
    on the other rows of the batch here), and the float64 training agrees to rounding."""
    out, _, single, _ = spread
    for layer, sae in single.items():
        assert difference(load_file(str(out / f"data-{layer}.rank0.safetensors")), sae) < 1e-10


def test_layer_folders_resume_in_one_process(spread):
    out, model, single, _ = spread
    contexts, config, settings = scenario.transcoder_settings()
    again = train_transcoders(model, contexts, config, settings, batch_contexts=4, progress=False, ranks=Ranks(),
                              placement="layers", checkpoint_dir=out / "layers")
    for layer, sae in single.items():
        assert difference(again[layer].state_dict(), sae) < 1e-6
    # Layer 1's folder is an ordinary one-process checkpoint folder of that dictionary alone.
    hooks = [name for layer in range(3) for name in (mlp_input(layer), mlp_output(layer))]
    data = ModelActivations(model, contexts, hooks, batch_contexts=4, seed=settings.seed)
    (alone,) = train(config.layer_config(model, 1), data, replace(settings, seed=settings.seed + 1),
                     dictionary_folder(out / "layers", 1), progress=False)
    assert difference(alone.state_dict(), single[1]) < 1e-6
    with pytest.raises(ConfigError, match="needs a checkpoint_dir"):
        train_transcoders(model, contexts, config, settings, placement="layers")
    with pytest.raises(ConfigError, match="placement must be one of"):
        train_transcoders(model, contexts, config, settings, placement="heads")


def test_a_crosscoder_trained_on_two_ranks_equals_one_process(spread):
    out, _, _, pair = spread
    config, settings = scenario.crosscoder_settings()
    single = train_crosscoder(scenario.paired_data(pair), config, settings, progress=False).sae
    assert difference(load_file(str(out / "crosscoder.rank1.safetensors")), single) < 1e-10
    # The designated fine-tune-only latents kept their base decoder half at zero on both sides.
    assert float(single.W_dec.detach()[-4:, :64].abs().max()) == 0.0
