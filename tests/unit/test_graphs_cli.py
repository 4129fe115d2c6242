"""``mechscope graph`` on a tiny model with per-layer transcoders saved as a folder: the graph JSON
in the viewers' format (every link between kept nodes, the output logits present, scores in the
metadata), the run registered in the store; bad input refused with the reason, before any work."""

import json

import pytest
from typer.testing import CliRunner

from mechscope.cli.app import app
from mechscope.graphs import mlp_input, mlp_output
from mechscope.graphs.export import load_transcoders, save_transcoders
from mechscope.sae import SAE, SAEConfig
from mechscope.store import RunStore
from tests.unit.test_cli import saved_tiny
from tests.unit.test_graphs import transcoders

runner = CliRunner()
PROMPT = "the cat sat on the mat"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("graph-cli")
    tiny, folder = saved_tiny(root, "llama")
    saved = save_transcoders(transcoders(tiny), root / "transcoders")
    return tiny, folder, saved, root


def test_the_graph_command_writes_the_viewers_json_and_registers_the_run(setup, results_store):
    tiny, folder, saved, root = setup
    assert sorted(load_transcoders(saved)) == list(range(tiny.cfg.n_layers))
    out = root / "graph"
    result = runner.invoke(app, ["graph", PROMPT, "--transcoders", str(saved), "--model", str(folder),
                                 "--out", str(out), "--node-share", "0.9"])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "graph.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    ids = {node["node_id"] for node in data["nodes"]}
    assert data["links"] and all(link["source"] in ids and link["target"] in ids for link in data["links"])
    kinds = {node["feature_type"] for node in data["nodes"]}
    assert kinds == {"cross layer transcoder", "mlp reconstruction error", "embedding", "logit"}
    logits = [node for node in data["nodes"] if node["feature_type"] == "logit"]
    assert len(logits) == len(summary["logits"]) and all(node["is_target_logit"] for node in logits)
    assert data["metadata"]["prompt_tokens"] == tiny.to_str_tokens(PROMPT)
    assert 0 < data["metadata"]["replacement_score"] < 1 and summary["kept"]["edges"] == len(data["links"])
    assert summary["kept"]["features"] <= summary["features"]
    with RunStore(results_store) as store:
        assert any(r.kind == "graph" and r.path == out.resolve() for r in store.runs())


def test_a_chosen_target_token_and_its_difference_from_another_are_the_targets(setup):
    tiny, folder, saved, root = setup
    token, other = tiny.to_str_tokens(PROMPT)[-1], tiny.to_str_tokens(PROMPT)[-2]
    result = runner.invoke(app, ["graph", PROMPT, "--transcoders", str(saved), "--model", str(folder),
                                 "--out", str(root / "target"), "--target", token, "--versus", other])
    assert result.exit_code == 0, result.output
    logits = [n for n in json.loads((root / "target" / "graph.json").read_text())["nodes"]
              if n["feature_type"] == "logit"]
    [token_id] = tiny.tokenizer.encode(token, add_special_tokens=False)
    assert [n["feature"] for n in logits] == [token_id, tiny.cfg.d_vocab]  # the token, then the difference
    assert logits[1]["clerp"].startswith("Target ") and " - " in logits[1]["clerp"]
    summary = json.loads((root / "target" / "summary.json").read_text())
    assert len(summary["logits"]) == 1 and len(summary["directions"]) == 1


def test_bad_input_is_refused_with_the_reason(setup, tmp_path):
    tiny, folder, saved, _ = setup
    base = ["graph", PROMPT, "--model", str(folder)]

    def error(*args):
        result = runner.invoke(app, [*base, *args])
        assert result.exit_code == 2, result.output
        return result.output

    assert "does not exist" in error("--transcoders", str(tmp_path / "none"), "--out", str(tmp_path / "a"))
    assert not (tmp_path / "a").exists()  # refused before the folder was claimed
    wide = {layer: SAE(SAEConfig(tiny.cfg.d_model + 4, 8, "topk", k=2, d_out=tiny.cfg.d_model + 4,
                                 hook_name=mlp_input(layer), hook_name_out=mlp_output(layer)))
            for layer in range(tiny.cfg.n_layers)}
    other = save_transcoders(wide, tmp_path / "wide")
    assert "another model" in error("--transcoders", str(other), "--out", str(tmp_path / "b"))
    assert "--max-positions" in error("--transcoders", str(saved), "--max-positions", "3", "--out",
                                      str(tmp_path / "c"))
    assert "tokens for this tokenizer" in error("--transcoders", str(saved), "--target", "cat dog", "--out",
                                                str(tmp_path / "d"))
    assert "node_share" in error("--transcoders", str(saved), "--node-share", "1.5", "--out", str(tmp_path / "e"))
    assert "--versus needs --target" in error("--transcoders", str(saved), "--versus", "t", "--out",
                                              str(tmp_path / "f"))


def test_supernodes_are_written_to_the_viewers_query_and_unknown_members_refused(setup):
    from mechscope.errors import ConfigError
    from mechscope.graphs import ReplacementModel, attribute, prune
    from mechscope.graphs.export import graph_json

    tiny, _, saved, _ = setup
    replacement = ReplacementModel(tiny, load_transcoders(saved))
    graph = attribute(replacement, tiny.to_tokens(PROMPT), batch_size=64, progress=False)
    pruned = prune(graph)
    kept = [node["node_id"] for node in graph_json(tiny, graph, pruned)["nodes"]
            if node["feature_type"] == "cross layer transcoder"][:2]
    data = graph_json(tiny, graph, pruned, supernodes={"a pair": kept})
    assert data["qParams"]["supernodes"] == [["a pair", *kept]]
    with pytest.raises(ConfigError, match="not in the pruned graph"):
        graph_json(tiny, graph, pruned, supernodes={"ghost": ["99_99_99"]})


def test_head_targets_write_which_heads_carry_each_link(setup, tmp_path):
    tiny, folder, saved, _ = setup
    out = tmp_path / "heads"
    result = runner.invoke(app, ["graph", PROMPT, "--transcoders", str(saved), "--model", str(folder), "--out",
                                 str(out), "--head-targets", "2", "--node-share", "1", "--edge-share", "1"])
    assert result.exit_code == 0, result.output
    assert "heads carrying the edges into" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["heads"]) == 2 and summary["heads"][0]["target"].startswith("logit")
    data = json.loads((out / "graph.json").read_text())
    top_logit = [n["node_id"] for n in data["nodes"] if n["feature_type"] == "logit"][0]
    into = [link for link in data["links"] if link["target"] == top_logit]
    carried = [link for link in into if link.get("heads")]
    assert carried and all(0 <= h["layer"] < tiny.cfg.n_layers and 0 <= h["head"] < tiny.cfg.n_heads
                           for link in carried for h in link["heads"])
    # An embedding at an earlier position reaches the last position only through heads.
    earlier = [link for link in carried if link["source"].startswith("E_") and not link["source"].endswith(
        f"_{len(tiny.to_str_tokens(PROMPT)) - 1}")]
    assert earlier and all(abs(link["heads"][0]["weight"]) > 0 for link in earlier)


def test_supernodes_from_the_command_line_reach_the_viewers_query(setup, tmp_path):
    tiny, folder, saved, _ = setup
    first = tmp_path / "first"
    base = ["graph", PROMPT, "--transcoders", str(saved), "--model", str(folder)]
    assert runner.invoke(app, base + ["--out", str(first)]).exit_code == 0
    kept = [n["node_id"] for n in json.loads((first / "graph.json").read_text())["nodes"]
            if n["feature_type"] == "cross layer transcoder"][:2]
    out = tmp_path / "grouped"
    result = runner.invoke(app, base + ["--out", str(out), "--supernode", f"pair={kept[0]},{kept[1]}",
                                        "--supernode", f"one={kept[0]}"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "graph.json").read_text())["qParams"]["supernodes"] == [["pair", *kept], ["one", kept[0]]]
    for bad, reason in (("nolabel", "must look like LABEL=ID"), ("=1_2_3", "must look like LABEL=ID")):
        refused = runner.invoke(app, base + ["--out", str(tmp_path / "bad"), "--supernode", bad])
        assert refused.exit_code != 0 and reason in refused.output
    twice = runner.invoke(app, base + ["--out", str(tmp_path / "bad"), "--supernode", f"a={kept[0]}", "--supernode",
                                       f"a={kept[1]}"])
    assert twice.exit_code != 0 and "labels must differ" in twice.output


def test_a_start_token_goes_before_a_prompt_that_has_none(setup):
    import torch

    from mechscope.graphs.runs import start_token

    tiny = setup[0]
    with_bos = tiny.to_tokens(PROMPT)
    assert torch.equal(start_token(tiny, with_bos), with_bos)  # already there: unchanged
    bare = with_bos[:, 1:]
    assert start_token(tiny, bare).tolist() == [[tiny.tokenizer.bos_token_id] + bare[0].tolist()]
