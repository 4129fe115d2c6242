"""Attribution graphs on the bundled SmolLM2 (30 layers, RMSNorm, grouped-query attention), with
small seeded transcoders (trained ones are built by examples/attribution_graphs_smollm2.py, not
in CI): the replacement model's logits equal the real model's; every target's input is its
incoming edges plus its constant; the graph command puts a start token before a prompt that has
none and refuses a target that is several tokens, naming them."""

import json

import pytest
import torch
from typer.testing import CliRunner

from mechscope.cli.app import app
from mechscope.errors import ConfigError
from mechscope.graphs import (
    ReplacementModel,
    attribute,
    constant_inputs,
    replacement_logits,
    save_transcoders,
)
from mechscope.graphs.runs import GraphOptions, run_graph, start_token
from mechscope.graphs.transcoders import TranscoderSetConfig
from mechscope.sae import SAE

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def replacement(smollm2):
    config = TranscoderSetConfig(d_sae=256, k=8, skip_connection=True)
    found = {}
    for layer in range(smollm2.cfg.n_layers):
        transcoder = SAE(config.layer_config(smollm2, layer), seed=layer)
        with torch.no_grad():
            transcoder.W_skip.normal_(0, 0.01)
        found[layer] = transcoder
    return ReplacementModel(smollm2, found)


def test_the_replacement_is_exact_on_smollm2(smollm2, replacement):
    tokens = start_token(smollm2, smollm2.to_tokens(PROMPT))
    assert tokens[0, 0] == smollm2.tokenizer.bos_token_id and tokens.shape[1] == 6
    with torch.no_grad():
        real = smollm2.hf_model(input_ids=tokens).logits[0].float()
    assert torch.allclose(replacement_logits(replacement, tokens), real, atol=2e-3, rtol=0)
    graph = attribute(replacement, tokens, max_features=48, batch_size=16, progress=False)
    assert graph.n_features == 48 and graph.info["active_features"] > 48
    explained = graph.adjacency.sum(1) + constant_inputs(replacement, graph)
    scale = float(graph.target_inputs.abs().max())
    assert torch.allclose(explained, graph.target_inputs, atol=1e-3 * scale, rtol=0)


def test_the_graph_run_on_smollm2(smollm2, replacement, tmp_path):
    summary = run_graph(smollm2, replacement, GraphOptions(PROMPT, max_features=32, head_targets=1, batch_size=64), tmp_path / "g",
                        progress=False)
    assert summary["tokens"] == 6 and summary["features"] == 32
    assert summary["logits"][0]["token"] == " Paris"
    assert summary["heads"] and summary["heads"][0]["top"]
    data = json.loads((tmp_path / "g" / "graph.json").read_text())
    assert data["metadata"]["prompt_tokens"][1:] == smollm2.to_str_tokens(PROMPT)
    with pytest.raises(ConfigError, match="is 2 tokens"):
        run_graph(smollm2, replacement, GraphOptions(PROMPT, target=" Parisian"), tmp_path / "h", progress=False)


def test_transcoders_of_another_width_are_refused_naming_the_widths(tmp_path):
    from mechscope.graphs import mlp_input, mlp_output
    from mechscope.sae import SAEConfig

    wrong = {layer: SAE(SAEConfig(64, 8, "topk", k=2, d_out=64, hook_name=mlp_input(layer),
                                  hook_name_out=mlp_output(layer))) for layer in range(30)}
    folder = save_transcoders(wrong, tmp_path / "wrong")
    result = CliRunner().invoke(app, ["graph", PROMPT, "--transcoders", str(folder), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "d_model is 576" in result.output
