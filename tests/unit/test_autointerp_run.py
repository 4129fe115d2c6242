"""``run_explain`` and ``mechscope explain`` on planted latents: an SAE whose latents detect one
token each (its encoder column is that token's embedding) must be explained as that token, dead
latents reported, a rerun resume without redoing finished units, and bad input refused."""

import json

import pytest
import torch
from typer.testing import CliRunner

from mechscope.autointerp.records import RecordsConfig
from mechscope.autointerp.run import ExplainOptions, run_explain, split_records
from mechscope.autointerp.units import (
    UnitSource,
    crosscoder_units,
    direction_units,
    head_units,
    neuron_units,
    sae_units,
    writes_before,
)
from mechscope.cli.app import app
from mechscope.errors import ConfigError, MechscopeError, OutOfRangeError, ResumeError
from mechscope.models.tiny import load_tiny
from mechscope.sae import SAEConfig, save_sae
from mechscope.sae.model import SAE
from mechscope.steering.direction import Direction

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
PLANTED = ("e", "t", "s")
RECORDS = RecordsConfig(window=16, n_top=4, n_quantiles=2, per_quantile=4, n_random=6, n_same_tokens=4,
                        n_neighbours=0)


@pytest.fixture(scope="module")
def model():
    return load_tiny("llama")


def planted_sae(model, planted=PLANTED) -> SAE:
    """Latent i fires (ReLU) exactly on the token planted[i]: its encoder column is the token's
    embedding and its bias sits halfway between the token's own score and the best other one's.
    The last latent never fires (bias far below any score)."""
    embeddings = model.hf_model.get_input_embeddings().weight.detach().float()  # [vocab, d_model]
    sae = SAE(SAEConfig(model.cfg.d_model, len(planted) + 1, "relu", hook_name="blocks.0.hook_resid_pre"))
    with torch.no_grad():
        sae.b_dec.zero_()
        for i, text in enumerate(planted):
            token = model.tokenizer(text, add_special_tokens=False)["input_ids"][0]
            scores = embeddings @ embeddings[token]
            own, other = float(scores[token]), float(scores[torch.arange(len(scores)) != token].max())
            assert own > other
            sae.W_enc[:, i] = embeddings[token]
            sae.b_enc[i] = -(own + other) / 2
        sae.W_enc[:, -1] = embeddings[0]
        sae.b_enc[-1] = -1e6
    return sae


def _options(**changes):
    return ExplainOptions(**{"explainer": "tokens", "scorers": ("lexicon",), "contexts": 12, "context_length": 65,
                             "records": RECORDS, "n_boot": 100, **changes})


def test_planted_latents_are_explained_as_their_token_and_the_dead_one_is_reported(model, tmp_path):
    sae = planted_sae(model)
    summary = run_explain(model, sae_units(model, sae, range(len(PLANTED) + 1)), _options(), tmp_path / "run",
                          progress=False)
    results = {r["unit"]: r for r in summary["units"]}
    for i, text in enumerate(PLANTED):
        result = results[f"latent {i}"]
        assert result["explanation"] == f'"{text}"'
        # Scored on windows the explainer never saw; 'E' shares the word but not the token.
        assert result["scores"]["lexicon"]["value"] > 0.95 and result["scores"]["lexicon"]["above_chance"]
        assert result["windows"]["explain"] > 0 and result["windows"]["score"] > 0
    assert summary["dead"] == [f"latent {len(PLANTED)}"]
    table = (tmp_path / "run" / "summary.md").read_text()
    assert '| latent 0 | "e" |' in table and "1 dead" in table


def test_a_rerun_resumes_and_redoes_only_what_is_missing(model, tmp_path):
    sae = planted_sae(model)
    source = sae_units(model, sae, range(3))
    out = tmp_path / "run"
    run_explain(model, source, _options(), out, progress=False)
    kept = out / "units" / "latent_0.json"
    stamp = kept.stat().st_mtime_ns
    (out / "units" / "latent_1.json").unlink()  # as if killed before this unit was written
    summary = run_explain(model, source, _options(), out, progress=False)
    assert kept.stat().st_mtime_ns == stamp  # not redone
    assert json.loads((out / "units" / "latent_1.json").read_text())["explanation"] == '"t"'
    assert len(summary["units"]) == 3
    with pytest.raises(ResumeError, match="other options"):
        run_explain(model, source, _options(seed=1), out, progress=False)


def test_split_keeps_top_windows_for_the_explainer_and_halves_the_rest(model):
    from mechscope.autointerp.records import unit_records

    generator = torch.Generator().manual_seed(0)
    contexts = torch.randint(0, 50, (8, 65), generator=generator)
    records = unit_records("u", contexts, (contexts == 3).float(), RECORDS)
    explain, score = split_records(records, seed=0)
    assert explain.counts["top"] == records.counts["top"] and "top" not in score.counts
    for kind, count in records.counts.items():
        if kind != "top":
            assert explain.counts.get(kind, 0) + score.counts.get(kind, 0) == count
            assert explain.counts.get(kind, 0) - score.counts.get(kind, 0) in (0, 1)


def test_options_and_sources_refuse_bad_input(model):
    with pytest.raises(MechscopeError, match="explainer"):
        ExplainOptions(explainer="guess")
    with pytest.raises(MechscopeError, match="scorer"):
        ExplainOptions(scorers=("vibes",))
    with pytest.raises(ConfigError, match="needs a language model backend"):
        run_explain(model, sae_units(model, planted_sae(model), [0]), _options(explainer="llm"), "/tmp/never",
                    progress=False)
    with pytest.raises(MechscopeError, match="out of range"):
        sae_units(model, planted_sae(model), [99])
    with pytest.raises(MechscopeError, match="block boundary"):
        writes_before("blocks.0.attn.hook_z", 3)
    assert writes_before("blocks.0.hook_resid_post", 3) == 1 and writes_before("blocks.1.hook_resid_pre", 3) == 1


def test_neuron_and_direction_units_read_what_a_plain_forward_gives(model):
    tokens = torch.randint(0, 200, (2, 10), generator=torch.Generator().manual_seed(1))
    _, cache = model.run_with_cache(tokens, ["blocks.1.mlp.hook_post", "blocks.1.hook_resid_pre"])
    neurons = neuron_units(model, 1, [0, 5])
    assert torch.equal(neurons.activation_fn(cache["blocks.1.mlp.hook_post"]),
                       cache["blocks.1.mlp.hook_post"][..., [0, 5]])
    # A neuron's direction is what the down-projection writes for it: its weight column.
    weight = model.hf_model.model.layers[1].mlp.down_proj.weight.detach()
    direction = neurons.direction(1)
    assert torch.allclose(direction.vector * direction.scale, weight[:, 5], atol=1e-6) and direction.layer == 2
    vector = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(2))
    probe = direction_units({"probe": Direction.from_vector(vector, layer=1)})
    projected = probe.activation_fn(cache["blocks.1.hook_resid_pre"])[..., 0]
    assert torch.allclose(projected, cache["blocks.1.hook_resid_pre"] @ (vector / vector.norm()), atol=1e-5)


def test_head_units_read_each_heads_write_along_its_top_output_direction(model):
    tokens = torch.randint(0, 200, (2, 10), generator=torch.Generator().manual_seed(3))
    _, cache = model.run_with_cache(tokens, ["blocks.1.attn.hook_z"])
    z = cache["blocks.1.attn.hook_z"]  # [batch, pos, n_heads, d_head]
    heads = head_units(model, 1, [2, 0], sides="both")
    assert heads.names == ("L1H2", "L1H0", "L1H2-", "L1H0-")
    values = heads.activation_fn(z)
    o_proj = model.hf_model.model.layers[1].self_attn.o_proj
    for i, head in enumerate([2, 0, 2, 0]):
        # The head's own write: the output projection of z with every other head zeroed.
        alone = torch.zeros_like(z)
        alone[..., head, :] = z[..., head, :]
        with torch.no_grad():
            write = o_proj(alone.flatten(-2)) - o_proj(torch.zeros_like(alone.flatten(-2)))
        direction = heads.direction(i)
        assert torch.allclose(values[..., i], write @ direction.vector, atol=1e-5)
        # Along its top singular direction: the largest write a unit z can make.
        w_o = model.W_O(1)[head].detach().float()
        assert direction.scale == pytest.approx(float(torch.linalg.matrix_norm(w_o, ord=2)), rel=1e-5)
        assert direction.layer == 2 and direction.metadata["head"] == head
    assert torch.allclose(values[..., 2], -values[..., 0]) and torch.allclose(values[..., 3], -values[..., 1])
    with pytest.raises(OutOfRangeError, match="heads \\[9\\] out of range"):
        head_units(model, 1, [9])
    with pytest.raises(ConfigError, match="positive"):
        head_units(model, 1, [0], sides="negative")
    assert head_units(model, model.cfg.n_layers - 1, [0]).direction is None  # nothing follows the last block


def test_crosscoder_latents_are_read_through_both_models_and_explained(model, tiny_llama_folder, tmp_path):
    """A crosscoder whose latents read the fine-tune's half with the planted SAE's encoder fires
    where that SAE does: explained as the planted tokens, the dead latent reported."""
    from mechscope.diff.crosscoder import Crosscoder, CrosscoderConfig, collect_pair, save_crosscoder

    planted = planted_sae(model)
    d = model.cfg.d_model
    config = CrosscoderConfig(d_model=d, d_sae=len(PLANTED) + 1, architecture="relu",
                              hook_names=("blocks.0.hook_resid_pre",), delta_scale=4.0)
    crosscoder = Crosscoder(SAE(config.sae_config()), config)
    with torch.no_grad():
        crosscoder.sae.W_enc.zero_()
        crosscoder.sae.W_enc[d:] = planted.W_enc  # the ft half
        crosscoder.sae.b_enc.copy_(planted.b_enc)
        crosscoder.sae.b_dec.zero_()
    units = crosscoder_units(model, model, crosscoder, range(len(PLANTED) + 1))
    contexts = torch.randint(3, 200, (3, 12), generator=torch.Generator().manual_seed(0))
    assert torch.equal(units.activations(model, contexts, progress=False),
                       collect_pair(model, model, contexts, crosscoder, range(len(PLANTED) + 1)))
    summary = run_explain(model, units, _options(), tmp_path / "run", progress=False)
    results = {r["unit"]: r for r in summary["units"]}
    assert [results[f"latent {i}"]["explanation"] for i in range(len(PLANTED))] == [f'"{t}"' for t in PLANTED]
    assert summary["dead"] == [f"latent {len(PLANTED)}"]
    # The direction: the fine-tune's decoder half with the magnification undone.
    base_half, ft_half = crosscoder.sae.W_dec[1, :d], crosscoder.sae.W_dec[1, d:]
    direction = units.direction(1)
    assert torch.allclose(direction.vector * direction.scale, base_half + (ft_half - base_half) / 4, atol=1e-6)
    with pytest.raises(OutOfRangeError, match="the crosscoder has 4"):
        crosscoder_units(model, model, crosscoder, [4])
    # The command: --crosscoder with --base-model, the same explanations.
    folder = save_crosscoder(crosscoder, tmp_path / "cc")
    args = ["explain", "--crosscoder", str(folder), "--latents", "0-1", "--explainer", "tokens", "--scorers",
            "lexicon", "--model", str(tiny_llama_folder), "--contexts", "16", "--out", str(tmp_path / "cli")]
    alone = runner.invoke(app, args)
    assert alone.exit_code == 2 and "--base-model" in alone.output
    result = runner.invoke(app, [*args, "--base-model", str(tiny_llama_folder)])
    assert result.exit_code == 0, result.output
    assert '| latent 0 | "e" |' in (tmp_path / "cli" / "summary.md").read_text()


def test_a_unit_source_needs_one_way_to_its_activations(model):
    with pytest.raises(ConfigError, match="exactly one of activation_fn"):
        UnitSource("blocks.0.hook_resid_pre", ("u",), None)
    wrong = UnitSource("x", ("a", "b"), None, collect=lambda contexts, progress: torch.zeros(*contexts.shape, 3))
    with pytest.raises(MechscopeError, match="expected \\(2, 5, 2\\)"):
        wrong.activations(model, torch.zeros(2, 5, dtype=torch.long))


def test_the_explain_command_writes_the_summary_and_refuses_bad_input(model, tiny_llama_folder, tmp_path):
    sae = planted_sae(model)
    folder = save_sae(sae, tmp_path / "sae")
    out = tmp_path / "out"
    args = ["explain", "--sae", str(folder), "--latents", "0-1", "--explainer", "tokens", "--scorers", "lexicon",
            "--model", str(tiny_llama_folder), "--contexts", "16", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "explained 2 units" in result.output
    assert '"e"' in (out / "summary.md").read_text()
    bad = runner.invoke(app, [*args[:7], "--scorers", "lexicon,vibes", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "vibes" in bad.output and "detection" in bad.output
    neither = runner.invoke(app, ["explain", "--explainer", "tokens", "--out", str(tmp_path / "y")])
    assert neither.exit_code == 2 and "--sae" in neither.output and "--heads" in neither.output
    both = runner.invoke(app, [*args, "--heads", "1:0"])
    assert both.exit_code == 2 and "give one of" in both.output
    malformed = runner.invoke(app, ["explain", "--heads", "one:0", "--out", str(tmp_path / "h")])
    assert malformed.exit_code == 2 and "--heads must look like LAYER:INDICES" in malformed.output
    heads = runner.invoke(app, ["explain", "--heads", "1:0-1", "--explainer", "tokens", "--scorers", "lexicon",
                                "--model", str(tiny_llama_folder), "--contexts", "16", "--out", str(tmp_path / "h")])
    assert heads.exit_code == 0, heads.output
    assert "L1H0" in (tmp_path / "h" / "summary.md").read_text()
    ftp = runner.invoke(app, [*args[:5], "--backend", "ftp://host", "--out", str(tmp_path / "z")])
    assert ftp.exit_code == 2 and "http://" in ftp.output


def test_an_unreachable_judge_stops_the_run_with_a_clear_error_and_keeps_the_records(model, tiny_llama_folder,
                                                                                      tmp_path):
    # "(" is rare enough that some windows are silent: detection has something to ask.
    folder = save_sae(planted_sae(model, ("(",)), tmp_path / "sae")
    out = tmp_path / "out"
    # Port 9 (discard) has no listener on loopback: every try is refused at once.
    result = runner.invoke(app, ["explain", "--sae", str(folder), "--latents", "0", "--explainer", "tokens",
                                 "--scorers", "detection", "--backend", "http://127.0.0.1:9/v1", "--judge", "m",
                                 "--model", str(tiny_llama_folder), "--contexts", "16", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "127.0.0.1:9" in result.output and "mechscope serve-llm" in result.output
    assert (out / "records" / "latent_0" / "records.json").exists()  # the harvest is kept for the rerun


def test_a_rare_unit_keeps_activating_windows_on_both_sides_of_the_split():
    from mechscope.autointerp.records import unit_records

    contexts = torch.randint(10, 50, (8, 65), generator=torch.Generator().manual_seed(0))
    contexts[:3, 5] = 3  # fires in three windows only: all of them are top windows
    records = unit_records("u", contexts, (contexts == 3).float(), RECORDS)
    assert "quantile 1/2" not in records.counts
    explain, score = split_records(records)
    assert (explain.activations > 0).any(-1).sum() == 2 and (score.activations > 0).any(-1).sum() == 1


def test_output_records_read_a_planted_token_direction_and_the_explanation_names_it(model):
    from mechscope.autointerp import OutputRecords, explain_output, output_records

    token = model.tokenizer("q", add_special_tokens=False)["input_ids"][0]
    direction = Direction.from_vector(model.W_U[:, token].detach(), layer=1)
    records = output_records(model, direction, ["the cat sat", "a dog ran to the"], "q-writer", k=5)
    # The unembedding column of "q" raises "q"'s own logit most (the final norm's weight is ones).
    assert records.promoted[0][0] == "q" and records.rising[0][0] == "q" and records.rising[0][1] > 0
    assert records.n_positions == 12 + 17 and records.alpha > 0  # byte tokens and BOS
    found = explain_output(records, n_tokens=3)
    assert found.tokens[0] == "q" and found.text.startswith('makes the model say "q"')
    # Tokens that steering raises and the projection promotes come first; unreadable bytes never.
    synthetic = OutputRecords("u", (("b", 2.0), ("c", 1.0)), (), (("a", 3.0), ("\ufffd", 2.5), ("c", 2.0), ("", 1.0)),
                              1.0, 4)
    assert explain_output(synthetic, 3).tokens == ("c", "a", "b")
