"""The default corpus, corpus loaders and context packing."""

import json

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
