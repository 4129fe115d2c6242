"""The default corpus, corpus loaders and context packing."""

import json
import sys

import pytest
import torch

import mechscope
from mechscope.data import load_texts, pack, stdlib_docstrings


def test_default_corpus_is_english_prose_and_deterministic():
    first, again = stdlib_docstrings(limit=300), stdlib_docstrings(limit=300)
    assert first == again and len(first) == 300 and len(set(first)) == 300
    assert all(len(text) >= 200 for text in first)
    words = " ".join(first).split()
    common = sum(word.lower() in {"the", "a", "of", "to", "is", "and"} for word in words) / len(words)
    assert common > 0.08  # English function words: prose, not code


def test_pack_contexts_start_with_bos_and_are_seeded():
    model = mechscope.load_tiny("llama")
    texts = [f"document number {i} " * 20 for i in range(30)]
    contexts = pack(model.tokenizer, texts, 16, seed=3)
    assert contexts.shape[1] == 16 and (contexts[:, 0] == model.tokenizer.bos_token_id).all()
    assert torch.equal(contexts, pack(model.tokenizer, texts, 16, seed=3))
    assert not torch.equal(contexts, pack(model.tokenizer, texts, 16, seed=4))
    assert pack(model.tokenizer, texts, 16, n_contexts=5).shape == (5, 16)
    # Every token of the corpus (plus one EOS per document) lands in a context, in order.
    total = sum(len(model.tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts)
    assert contexts.shape[0] == total // 15
    with pytest.raises(ValueError, match="fewer than"):
        pack(model.tokenizer, ["hi"], 64)


def test_loaders(tmp_path):
    (tmp_path / "a.txt").write_text("alpha text")
    (tmp_path / "b.md").write_text("beta text")
    assert load_texts(tmp_path) == ["alpha text", "beta text"]
    lines = tmp_path / "c.jsonl"
    lines.write_text(json.dumps({"text": "one"}) + "\n" + json.dumps({"text": "two"}) + "\n")
    assert load_texts(lines) == ["one", "two"]
    with pytest.raises(ValueError, match="no field 'body'"):
        load_texts(lines, field="body")
    with pytest.raises(FileNotFoundError):
        load_texts(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="unsupported"):
        (tmp_path / "x.csv").write_text("a,b")
        load_texts(tmp_path / "x.csv")



def test_hub_dataset_names_go_to_datasets_load_dataset(monkeypatch):
    """A name that is no local path is loaded with datasets.load_dataset (faked here: the
    sandbox is offline); failures say that both the local path and the hub were tried."""
    import types

    class Table:
        column_names = ["text", "id"]

        def __getitem__(self, column):
            return {"text": ["first", "second"], "id": [1, 2]}[column]

    def load_dataset(name, split):
        if name == "someone/offline":
            raise ConnectionError("no internet")
        assert (name, split) == ("someone/corpus", "validation")
        return Table()

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert load_texts("someone/corpus", split="validation") == ["first", "second"]
    with pytest.raises(ValueError, match="no column 'body'; columns: text, id"):
        load_texts("someone/corpus", field="body", split="validation")
    with pytest.raises(FileNotFoundError, match="no local file or folder.*ConnectionError"):
        load_texts("someone/offline")


HARVEST_SCRIPT = """
import sys, time, torch
import mechscope
from mechscope.data import harvest
model = mechscope.load_tiny("llama")
contexts = torch.randint(0, 250, (24, 9), generator=torch.Generator().manual_seed(0))
original = model.run_with_cache
def slow(*args, **kwargs):
    time.sleep(0.3)
    return original(*args, **kwargs)
model.run_with_cache = slow
harvest(model, contexts, sys.argv[1], ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"], shard_contexts=4,
        batch_contexts=2, progress=False)
"""


def test_harvest_survives_kill_and_resumes_without_losing_or_duplicating_tokens(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from mechscope.data import StoredActivations, harvest

    folder = tmp_path / "store"
    process = subprocess.Popen([sys.executable, "-c", HARVEST_SCRIPT, str(folder)])
    deadline = time.time() + 60
    while not (folder / "shard_00001.safetensors").exists():
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done = json.loads((folder / "manifest.json").read_text())["contexts_done"]
    assert 0 < done < 24 and done % 4 == 0

    model = mechscope.load_tiny("llama")
    contexts = torch.randint(0, 250, (24, 9), generator=torch.Generator().manual_seed(0))
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"]
    harvest(model, contexts, folder, hooks, shard_contexts=4, batch_contexts=2, progress=False)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["contexts_done"] == 24 and len(manifest["shards"]) == 6
    assert not list(folder.glob("*.tmp"))
    # Exactly the tokens of a direct run, in context order, BOS dropped.
    _, cache = model.run_with_cache(contexts, names=hooks)
    from safetensors.torch import load_file

    stored = torch.cat([load_file(folder / shard["file"])[hooks[0]] for shard in manifest["shards"]])
    torch.testing.assert_close(stored, cache[hooks[0]][:, 1:].flatten(0, 1))

    reader = StoredActivations(folder, hooks[0], batch_size=50, seed=1, target_hook=hooks[1])
    total = 24 * 8
    seen = torch.cat([reader.batch(step)[0] for step in range(total // 50 + 1)])[:total]
    # One epoch of batches is a permutation of all stored tokens.
    assert torch.equal(seen.sort(0).values, stored.sort(0).values)
    again = StoredActivations(folder, hooks[0], batch_size=50, seed=1, target_hook=hooks[1])
    assert torch.equal(again.batch(3)[1], reader.batch(3)[1])
    with pytest.raises(ValueError, match="was not harvested"):
        StoredActivations(folder, "blocks.0.hook_mlp_out")
    (folder / manifest["shards"][0]["file"]).write_bytes(b"corrupt")
    with pytest.raises(ValueError, match="checksum"):
        StoredActivations(folder, hooks[0], batch_size=500).batch(0)


def test_model_activations_on_the_fly_are_seeded_and_cover_an_epoch():
    from mechscope.data import ModelActivations
    from mechscope.sae import SAEConfig, TrainConfig, train

    model = mechscope.load_tiny("llama")
    contexts = torch.randint(0, 250, (12, 7), generator=torch.Generator().manual_seed(3))
    hook = "blocks.0.hook_resid_post"
    source = ModelActivations(model, contexts, hook, batch_contexts=4, seed=2)
    epoch = torch.cat([source.batch(step) for step in range(3)])
    _, cache = model.run_with_cache(contexts, names=[hook])
    everything = cache[hook][:, 1:].flatten(0, 1)
    assert epoch.shape == everything.shape
    assert torch.allclose(epoch.sort(0).values, everything.sort(0).values, atol=1e-5)
    assert torch.equal(source.batch(5), ModelActivations(model, contexts, hook, batch_contexts=4, seed=2).batch(5))
    (sae,) = train(SAEConfig(model.cfg.d_model, 32, "topk", k=4), source, TrainConfig(steps=6), progress=False)
    assert sae.W_dec.shape == (32, model.cfg.d_model)
    with pytest.raises(KeyError, match="hook_resid_post"):
        ModelActivations(model, contexts, "blocks.0.hook_resid_pots")
