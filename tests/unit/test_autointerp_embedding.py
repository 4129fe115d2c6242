"""The sentence embedder (all-MiniLM-L6-v2 from its package, offline), the ``embedding`` scorer and
the records' nearest-neighbour negatives."""

import importlib.util
import json

import pytest
import torch

from mechscope.autointerp import (
    RecordsConfig,
    SentenceEmbedder,
    UnitRecords,
    embedding_score,
    embedding_scores,
    unit_records,
    window_texts_embeddings,
)
from mechscope.autointerp.embedder import INSTALL_HINT, PACKAGE
from mechscope.errors import ConfigError, FileFormatError, MechscopeError, MissingFileError, NonFiniteError

COOKING = [
    "Whisk the eggs with a pinch of salt before pouring them into the hot pan.",
    "She simmered the tomato sauce for an hour with garlic and fresh basil.",
    "Knead the bread dough until it is smooth, then let it rise overnight.",
    "The chef seared the steak in butter and finished it in the oven.",
    "Add the chopped onions to the pot and stir until they turn golden.",
    "Our grandmother's apple pie recipe calls for cinnamon and a flaky crust.",
    "Roast the vegetables at two hundred degrees until the edges caramelise.",
    "He seasoned the soup with pepper, thyme and a splash of lemon juice.",
    "Boil the pasta in salted water and drain it a minute before it is done.",
    "The risotto needs constant stirring while you add the warm stock.",
    "Marinate the chicken in yoghurt and spices for at least four hours.",
    "She baked three dozen chocolate chip cookies for the school fair.",
    "Fry the dumplings until the bottoms are crisp, then steam them with a lid.",
    "A good vinaigrette is three parts olive oil to one part vinegar.",
    "Slice the mushrooms thinly and sauté them in a little butter.",
    "The restaurant's kitchen prepares fresh noodles every morning.",
    "Grate the cheese over the casserole and bake until it bubbles.",
    "He sharpened his knife before dicing the carrots and celery.",
    "Let the cake cool on a rack before you spread the frosting.",
    "Stir-fry the beef with ginger, soy sauce and spring onions.",
]
ASTRONOMY = [
    "Jupiter's four largest moons were first seen by Galileo through a telescope.",
    "The light from that distant galaxy left it billions of years ago.",
    "A neutron star can spin hundreds of times every second.",
    "Astronomers detected an exoplanet by the tiny dip in its star's brightness.",
    "Saturn's rings are made mostly of ice and small rocks.",
    "The comet's tail always points away from the Sun.",
    "On a clear night you can see the Milky Way stretching across the sky.",
    "A total solar eclipse happens when the Moon covers the Sun completely.",
    "The Hubble telescope orbits the Earth far above the atmosphere.",
    "Mars has the tallest volcano in the solar system, Olympus Mons.",
    "Black holes bend the light of stars that pass behind them.",
    "The Andromeda galaxy is slowly approaching our own.",
    "Venus is the hottest planet because of its thick carbon dioxide clouds.",
    "A light year is the distance light travels in one year.",
    "The observatory's radio dishes listen for signals from pulsars.",
    "Meteor showers occur when Earth passes through the debris of a comet.",
    "Red giants are old stars that have swollen after using up their hydrogen.",
    "The International Space Station circles the planet every ninety minutes.",
    "Neptune was found by mathematics before anyone saw it in a telescope.",
    "Nebulae are vast clouds of gas and dust where new stars are born.",
]
WINDOWS = COOKING + ASTRONOMY
FIRES = torch.tensor([True] * len(COOKING) + [False] * len(ASTRONOMY))  # a unit that fires on cooking


@pytest.fixture(scope="module")
def minilm():
    return SentenceEmbedder()


# -- the embedder -------------------------------------------------------------------------------------------


def test_the_embedder_reproduces_the_published_cosines_of_all_minilm_l6_v2(minilm):
    # The sentence-transformers README's example for this model: mean pooling over the attention
    # mask, then unit length. CLS pooling would give 0.85, 0.72, 0.68 here.
    readme = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
    vectors = minilm.embed(readme)
    assert vectors.shape == (3, 384) and vectors.dtype == torch.float32
    cosines = vectors @ vectors.T
    assert cosines[0, 1].item() == pytest.approx(0.6660, abs=5e-4)
    assert cosines[0, 2].item() == pytest.approx(0.1046, abs=5e-4)
    assert cosines[1, 2].item() == pytest.approx(0.1411, abs=5e-4)
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_paraphrases_are_closer_than_unrelated_sentences(minilm):
    pairs = [("A man is playing a guitar.", "Someone plays the guitar."),
             ("The cat sleeps on the sofa.", "A kitten is napping on the couch."),
             ("The stock market fell sharply today.", "Share prices dropped steeply this afternoon.")]
    left = minilm.embed([a for a, _ in pairs])
    right = minilm.embed([b for _, b in pairs])
    cosines = left @ right.T  # [3, 3]: paraphrases on the diagonal
    paraphrase, unrelated = cosines.diagonal(), cosines[~torch.eye(3, dtype=torch.bool)]
    assert paraphrase.min() > 0.6 and unrelated.max() < 0.3, cosines


def test_an_embedding_does_not_depend_on_its_batch_or_padding(minilm):
    text = "Knead the dough."
    alone = minilm.embed([text])[0]
    long = "A much longer sentence that forces the short one in its batch to be padded by many tokens " * 3
    for batch, batch_size in (([long, text, "x"], 64), ([text, long] * 5, 3), (WINDOWS[:7] + [text], 2)):
        vectors = minilm.embed(batch, batch_size=batch_size)
        for row in (i for i, t in enumerate(batch) if t == text):
            assert (vectors[row] - alone).abs().max() < 1e-5
    assert minilm.embed([]).shape == (0, 384)


def test_texts_are_truncated_at_256_tokens(minilm):
    # About 400 tokens: past 256 (MiniLM's max_seq_length), short of BERT's 512. A different tail
    # after the cut changes nothing; a different head changes the embedding.
    body = " ".join(f"word{i}" for i in range(180))
    assert 300 < len(minilm.tokenizer(body)["input_ids"]) < 500
    a, b, c = minilm.embed([body + " the end", body + " a completely different ending", "start " + body])
    assert (a - b).abs().max() < 1e-5
    assert (a - c).abs().max() > 1e-3


def test_the_embedder_refuses_a_single_string_and_names_a_missing_package(minilm, monkeypatch, tmp_path):
    from mechscope.models.loading import MissingPackageError

    with pytest.raises(MechscopeError, match="not one str"):
        minilm.embed("a text")
    with pytest.raises(MechscopeError, match="item 1 is int"):
        minilm.embed(["a text", 3])
    with pytest.raises(ConfigError, match="batch_size must be at least 1"):
        minilm.embed(["a"], batch_size=0)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr("importlib.util.find_spec",
                        lambda name, *rest: None if name == PACKAGE else find_spec(name, *rest))
    with pytest.raises(MissingPackageError, match=f"'{PACKAGE}'.*{INSTALL_HINT}"):
        SentenceEmbedder()
    monkeypatch.undo()
    with pytest.raises(MissingFileError, match="not found"):
        SentenceEmbedder(tmp_path / "nothing")
    with pytest.raises(FileFormatError, match="cannot load a sentence encoder"):
        SentenceEmbedder(tmp_path)


# -- the embedding scorer -----------------------------------------------------------------------------------


def test_the_true_topic_retrieves_the_activating_windows_and_others_do_not(minilm):
    explanations = ["cooking and food", "planets and stars", "sports and football"]
    true, swapped, unrelated = embedding_scores(explanations, WINDOWS, FIRES, minilm)
    # Measured: 0.99 [0.97, 1.0]; 0.0 [0.0, 0.0] (the other topic's explanation ranks every silent
    # window first); 0.43 [0.24, 0.62].
    assert true.value > 0.95 and true.low > 0.9 and true.above_chance
    assert (true.chance, true.n, true.metric) == (0.5, 40, "auroc")
    assert swapped.value < 0.05 and swapped.high < 0.5 and not swapped.above_chance
    assert unrelated.low < 0.5 < unrelated.high and not unrelated.above_chance
    # With the labels shuffled no explanation has anything to retrieve: chance on average
    # (measured: mean 0.50, from 0.32 to 0.68 over 20 shuffles).
    vectors = {}

    class Cached:  # the same texts every time: embedded once
        def embed(self, texts, batch_size=64):
            key = tuple(texts)
            if key not in vectors:
                vectors[key] = minilm.embed(texts, batch_size)
            return vectors[key]

    generator = torch.Generator().manual_seed(0)
    labels = [FIRES[torch.randperm(40, generator=generator)] for _ in range(20)]
    shuffled = torch.tensor([embedding_score("cooking and food", WINDOWS, y, Cached(), n_boot=10).value
                             for y in labels])
    assert abs(shuffled.mean() - 0.5) < 0.1 and shuffled.max() < true.value


def test_many_explanations_score_as_each_alone(minilm):
    explanations = ["cooking and food", "recipes", "the night sky", "a"]
    together = embedding_scores(explanations, WINDOWS, FIRES, minilm, n_boot=300, seed=4)
    alone = [embedding_score(e, WINDOWS, FIRES, minilm, n_boot=300, seed=4) for e in explanations]
    assert together == alone
    assert together[0].value > together[3].value  # not all the same number
    embedded = []

    class Counting:  # the windows are embedded once for all explanations
        def embed(self, texts, batch_size=64):
            embedded.append(len(texts))
            return minilm.embed(texts, batch_size)

    embedding_scores(explanations, WINDOWS, FIRES, Counting(), n_boot=10)
    assert embedded == [40, 1, 1, 1, 1]


def test_the_embedding_scorer_refuses_what_it_cannot_score(minilm):
    with pytest.raises(MechscopeError, match="at least one window"):
        embedding_score("food", [], torch.zeros(0, dtype=torch.bool), minilm)
    with pytest.raises(MechscopeError, match="3 windows but 2 fires labels"):
        embedding_score("food", WINDOWS[:3], FIRES[:2], minilm)
    with pytest.raises(MechscopeError, match="fires in all of the 20 windows.*undefined"):
        embedding_score("food", COOKING, torch.ones(20, dtype=torch.bool), minilm)
    with pytest.raises(MechscopeError, match="fires in none of the 20 windows.*undefined"):
        embedding_score("food", COOKING, torch.zeros(20, dtype=torch.bool), minilm)
    with pytest.raises(MechscopeError, match="must be a boolean tensor"):
        embedding_score("food", WINDOWS, FIRES.float(), minilm)
    with pytest.raises(MechscopeError, match="not one str"):
        embedding_score("food", "a window", FIRES[:1], minilm)
    with pytest.raises(MechscopeError, match="non-empty str"):
        embedding_score("  ", WINDOWS, FIRES, minilm)
    with pytest.raises(MechscopeError, match="for one explanation use embedding_score"):
        embedding_scores("food", WINDOWS, FIRES, minilm)
    with pytest.raises(MechscopeError, match="at least one explanation"):
        embedding_scores([], WINDOWS, FIRES, minilm)


# -- nearest-neighbour negatives in the records --------------------------------------------------------

WINDOW, STAR = 4, 7


def _planted():
    """40 windows of 4 tokens (10 contexts of BOS + 4 windows; tokens 10-29). The unit fires on a
    STAR at the start of windows 0-7 (strength 2.0 down to 1.3; the top 3 are windows 0, 1, 2).
    Embeddings [40, 6]: the firing windows point along e0; every silent window is orthogonal to
    e0 except 33, 11 and 20 (cosine 0.9, 0.8, 0.7) and 25 (0.99), which holds a STAR and so is
    taken as "same tokens" first."""
    generator = torch.Generator().manual_seed(0)
    cut = torch.randint(10, 30, (40, WINDOW), generator=generator)  # [windows, WINDOW]
    values = torch.zeros(cut.shape)
    for w in range(8):
        cut[w, 0] = STAR
        values[w, 0] = 2.0 - 0.1 * w
    cut[25, 2] = STAR  # silent
    contexts = torch.cat([torch.ones(10, 1, dtype=torch.long), cut.reshape(10, 4 * WINDOW)], 1)  # BOS 1
    activations = torch.cat([torch.zeros(10, 1), values.reshape(10, 4 * WINDOW)], 1)
    embeddings = torch.nn.functional.pad(torch.randn(40, 5, generator=generator), (1, 0))  # e0 component 0
    embeddings[:8] = torch.tensor([1.0, 0, 0, 0, 0, 0])
    for w, cosine in ((33, 0.9), (11, 0.8), (20, 0.7), (25, 0.99)):
        embeddings[w] = torch.tensor([cosine, (1 - cosine ** 2) ** 0.5, 0, 0, 0, 0])
    return contexts, activations, torch.nn.functional.normalize(embeddings, dim=-1), cut


def _config(**changes):
    return RecordsConfig(**{"window": WINDOW, "n_top": 3, "n_quantiles": 1, "per_quantile": 5,
                            "n_random": 100, "n_same_tokens": 5, "n_neighbours": 3, **changes})


def test_the_neighbours_are_the_silent_windows_nearest_the_top_windows():
    contexts, activations, embeddings, cut = _planted()
    records = unit_records("star", contexts, activations, _config(), window_embeddings=embeddings)
    rows = [next(i for i in range(40) if torch.equal(cut[i], t)) for t in records.tokens]
    kinds = dict(zip(rows, records.kinds))
    assert [r for r in rows if kinds[r] == "top"] == [0, 1, 2]
    assert [r for r in rows if kinds[r] == "same tokens"] == [25]
    assert [r for r in rows if kinds[r] == "neighbours"] == [33, 11, 20]  # most similar first
    assert (records.activations[records.of_kind("neighbours")] == 0).all()
    assert records.counts == {"top": 3, "quantile 1/1": 5, "same tokens": 1, "neighbours": 3, "random": 28}
    assert len(set(rows)) == len(rows) == 40  # every window once: random holds the 28 silent ones left
    # Past the three near ones every silent window has cosine 0: the tie goes to the lowest index.
    wider = unit_records("star", contexts, activations, _config(n_neighbours=5), window_embeddings=embeddings)
    near = [next(i for i in range(40) if torch.equal(cut[i], wider.tokens[j]))
            for j in wider.of_kind("neighbours")]
    assert near == [33, 11, 20, 8, 9]
    again = unit_records("star", contexts, activations, _config(n_neighbours=5), window_embeddings=embeddings)
    assert torch.equal(again.tokens, wider.tokens) and again.kinds == wider.kinds


def test_without_embeddings_there_are_no_neighbours_and_nothing_else_changes():
    contexts, activations, embeddings, _ = _planted()
    plain = unit_records("star", contexts, activations, _config())
    assert "neighbours" not in plain.counts and plain.counts["random"] == 31
    off = unit_records("star", contexts, activations, _config(n_neighbours=0), window_embeddings=embeddings)
    assert torch.equal(off.tokens, plain.tokens) and off.kinds == plain.kinds


def test_window_embeddings_must_match_the_windows_cut():
    contexts, activations, embeddings, _ = _planted()
    with pytest.raises(MechscopeError, match=r"\(39, 6\) must be \[n_windows, d\].*40 windows of 4 tokens"):
        unit_records("star", contexts, activations, _config(), window_embeddings=embeddings[:39])
    with pytest.raises(MechscopeError, match="must be \\[n_windows, d\\]"):
        unit_records("star", contexts, activations, _config(), window_embeddings=embeddings[:, 0])
    embeddings[3, 2] = float("nan")
    with pytest.raises(NonFiniteError, match="window_embeddings holds 1 NaN"):
        unit_records("star", contexts, activations, _config(), window_embeddings=embeddings)
    with pytest.raises(ConfigError, match="n_neighbours must be at least 0"):
        RecordsConfig(n_neighbours=-1)


def test_records_with_neighbours_round_trip_and_an_older_manifest_still_loads(tmp_path):
    contexts, activations, embeddings, _ = _planted()
    records = unit_records("star", contexts, activations, _config(), window_embeddings=embeddings)
    loaded = UnitRecords.load(records.save(tmp_path / "star"))
    assert loaded.kinds == records.kinds and loaded.config == records.config
    assert loaded.config.n_neighbours == 3
    manifest = json.loads((tmp_path / "star" / "records.json").read_text())
    del manifest["config"]["n_neighbours"]  # as written before the field existed
    (tmp_path / "star" / "records.json").write_text(json.dumps(manifest))
    old = UnitRecords.load(tmp_path / "star")
    assert old.config == _config(n_neighbours=10) and torch.equal(old.tokens, records.tokens)


def test_window_texts_are_the_windows_unit_records_cuts_embedded_once(minilm):
    import mechscope

    tokenizer = mechscope.load_tiny("llama").tokenizer
    contexts = torch.randint(3, 200, (3, 2 + 3 * WINDOW), generator=torch.Generator().manual_seed(1))
    seen = []

    class Recording:
        def embed(self, texts, progress=False):
            seen.append(list(texts))
            return minilm.embed(texts)

    embeddings = window_texts_embeddings(contexts, WINDOW, tokenizer, Recording())
    assert len(seen) == 1 and embeddings.shape == (9, 384)
    # Window 4 is the second window of context 1: tokens 1 + 4 to 1 + 8 (BOS and the tail left out).
    assert seen[0][4] == tokenizer.decode(contexts[1, 5:9].tolist())
    starts = [1 + WINDOW * (i % 3) for i in range(9)]
    expected = [tokenizer.decode(contexts[i // 3, s:s + WINDOW].tolist()) for i, s in enumerate(starts)]
    assert seen[0] == expected
    assert (embeddings[4] - minilm.embed([seen[0][4]])[0]).abs().max() < 1e-5
    with pytest.raises(MechscopeError, match="hold no window of 64"):
        window_texts_embeddings(contexts, 64, tokenizer, Recording())


def test_harvested_records_embed_every_window_once_for_all_units(minilm):
    import mechscope
    from mechscope.autointerp import harvest_records

    model = mechscope.load_tiny("llama")
    generator = torch.Generator().manual_seed(0)
    contexts = torch.randint(3, model.cfg.d_vocab, (8, 1 + 4 * WINDOW), generator=generator)
    contexts[:, 0] = model.tokenizer.bos_token_id or 1
    directions = torch.randn(model.cfg.d_model, 2, generator=generator)
    hook = "blocks.1.hook_resid_post"
    _, cache = model.run_with_cache(contexts, names=[hook])
    # A threshold that leaves about half the windows silent, so there are neighbours to find.
    projected = (cache[hook].float() @ directions)[:, 1:]  # [8, 16, 2]
    maxima = projected.reshape(-1, WINDOW, 2).amax(1).sort(0).values  # [32, 2]
    threshold = float(maxima[15:17].mean())  # between two windows' maxima, so no rounding decides
    calls = []

    class Counting:
        def embed(self, texts, progress=False):
            calls.append(len(texts))
            return minilm.embed(texts)

    config = RecordsConfig(window=WINDOW, n_top=2, per_quantile=1, n_random=2, n_same_tokens=1,
                           n_neighbours=2, threshold=threshold)
    records, dead = harvest_records(model, contexts, hook, lambda acts: acts @ directions, ["u0", "u1"],
                                    config, progress=False, embedder=Counting())
    assert calls == [32] and dead == []
    embeddings = window_texts_embeddings(contexts, WINDOW, model.tokenizer, minilm)
    for column, name in enumerate(("u0", "u1")):
        assert records[name].counts["neighbours"] == 2
        assert (records[name].activations[records[name].of_kind("neighbours")] <= threshold).all()
        values = torch.cat([torch.zeros(8, 1), projected[..., column]], 1)  # BOS 0, as collect sets it
        direct = unit_records(name, contexts, values, config, window_embeddings=embeddings)
        assert records[name].kinds == direct.kinds and torch.equal(records[name].tokens, direct.tokens)
