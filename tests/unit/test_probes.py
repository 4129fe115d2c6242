"""Linear probes: a planted direction is recovered, AUROC matches its definition, control tasks
catch memorisation, sweeps run end to end, files round-trip exactly, bad input is refused."""

import json

import pytest
import torch

import mechscope
from mechscope.probes import (
    KINDS,
    LinearProbe,
    accuracy,
    auroc,
    control_labels,
    probe_dataset,
    probe_features,
    probe_sweep,
    stratified_split,
    train_probe,
)


def planted(n=1000, d=64, noise=0.1, seed=0):
    """x ~ N(0, I_d); label = 1[x . u + noise * eps > 0] for a random unit u. The Bayes accuracy is
    1 - arctan(noise) / pi = 0.968 at noise 0.1."""
    generator = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=generator)
    u /= u.norm()
    x = torch.randn(n, d, generator=generator)
    labels = (x @ u + noise * torch.randn(n, generator=generator) > 0).long()
    return x, labels, u


@pytest.mark.parametrize("kind", KINDS)
def test_planted_direction_is_recovered(kind):
    x, labels, u = planted()
    sweep = probe_features(x, labels, kind=kind, progress=False)
    row, probe = sweep.rows[0], sweep.probes["features"]
    # A random unit vector in 64 dimensions has |cos| with u of about 1/8 (0.32 at the 99th percentile),
    # and its probe would sit at 50% accuracy; 0.9 for both needs the planted direction itself.
    assert abs(float(probe.direction @ u)) > 0.9
    assert float(probe.direction @ u) > 0  # the sign convention: positive points towards label 1
    assert row.test_accuracy > 0.9 and row.test_auroc > 0.95
    assert sweep.n_train == 800 and sweep.n_test == 200
    # The shuffled control has no structure to find on held-out data: near chance (std ~0.035 at n = 200).
    assert abs(row.control_accuracy - 0.5) < 0.12
    assert row.selectivity == pytest.approx(row.test_accuracy - row.control_accuracy)


def test_whitening_helps_under_correlated_noise_and_keeps_the_steering_direction():
    """Class means differ along u; a large noise component lies along w, 45 degrees from u. The
    plain mass-mean boundary is tilted by that noise, the whitened (iid) one is not; both keep the
    class-mean difference (u) as their steering ``direction``."""
    generator = torch.Generator().manual_seed(1)
    d, n = 16, 2000
    u = torch.zeros(d)
    u[0] = 1
    w = torch.zeros(d)
    w[:2] = 2 ** -0.5
    labels = torch.arange(n) % 2
    x = (labels.float() - 0.5)[:, None] * 2 * u + 0.5 * torch.randn(n, d, generator=generator)
    x += 4 * torch.randn(n, 1, generator=generator) * w
    plain = probe_features(x, labels, kind="mass_mean", progress=False)
    iid = probe_features(x, labels, kind="mass_mean_iid", progress=False)
    # Bayes (LDA) accuracy here is Phi(1.42) = 0.92; the plain difference of means, which ignores the
    # covariance, is Phi(1 / 2.87) = 0.64 (the noise along u has standard deviation 2.87).
    assert iid.rows[0].test_accuracy > 0.88
    assert plain.rows[0].test_accuracy < 0.75
    for sweep in (plain, iid):
        assert float(sweep.probes["features"].direction @ u) > 0.99
    assert float(iid.probes["features"].weight @ w) / float(iid.probes["features"].weight.norm()) < 0.2


def test_probe_scores_are_in_the_original_space_and_training_is_deterministic():
    x, labels, _ = planted(n=300, seed=2)
    x = x * torch.linspace(0.1, 50, x.shape[1]) + 7  # badly scaled, offset features: standardisation is internal
    first, second = train_probe(x, labels), train_probe(x, labels)
    assert torch.equal(first.weight, second.weight) and first.bias == second.bias
    assert torch.allclose(first.score(x), x @ first.weight + first.bias)
    assert accuracy(first.score(x), labels) > 0.95
    mass = train_probe(x, labels, kind="mass_mean")
    means = torch.stack([x[labels == 1].mean(0), x[labels == 0].mean(0)])
    assert torch.allclose(mass.score(means), torch.tensor([0.5, -0.5]), atol=1e-4)


def test_auroc_equals_the_pairwise_count_with_ties():
    generator = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 6, (60,), generator=generator).float()  # many ties
    labels = torch.randint(0, 2, (60,), generator=generator)
    positive, negative = scores[labels == 1], scores[labels == 0]
    wins = (positive[:, None] > negative[None, :]).double() + 0.5 * (positive[:, None] == negative[None, :]).double()
    assert auroc(scores, labels) == pytest.approx(float(wins.mean()), abs=1e-12)
    assert auroc(torch.tensor([0.1, 0.2, 0.9, 1.5]), [0, 0, 1, 1]) == 1.0
    assert auroc(torch.tensor([0.1, 0.2, 0.9, 1.5]), [1, 1, 0, 0]) == 0.0
    assert auroc(torch.ones(4), [1, 0, 1, 0]) == 0.5
    random_scores = torch.randn(4000, generator=generator)
    assert abs(auroc(random_scores, torch.randint(0, 2, (4000,), generator=generator)) - 0.5) < 0.03
    assert accuracy(torch.tensor([-1.0, 2.0, 3.0, -0.5]), [0, 1, 0, 0]) == 0.75


def test_control_labels_are_per_key_balanced_and_seeded():
    keys = [f"word{i % 7}" for i in range(70)]
    labels = torch.arange(70) % 2
    control = control_labels(labels, keys, seed=0)
    for key in set(keys):
        assert len({int(control[i]) for i, k in enumerate(keys) if k == key}) == 1
    per_key = {k: int(control[i]) for i, k in enumerate(keys)}
    assert sum(per_key.values()) in (3, 4)  # 7 keys: balanced up to the odd one out
    assert torch.equal(control_labels(labels, keys[::-1], seed=0), control.flip(0))  # order-free assignment
    assert any(not torch.equal(control, control_labels(labels, keys, seed=s)) for s in range(1, 5))
    shuffled = control_labels(labels, seed=0)
    assert int(shuffled.sum()) == 35 and not torch.equal(shuffled, labels)


def keyed(n_keys=20, per_key=20, d=32, task_in_features=False, seed=0):
    """Each example has a key (an 'entity'); features = the key's random embedding + noise,
    plus (optionally) a planted task direction. Task labels alternate within every key, so the
    key says nothing about the task label."""
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(n_keys, d, generator=generator)
    keys = torch.arange(n_keys * per_key) % n_keys
    labels = (torch.arange(n_keys * per_key) // n_keys) % 2
    x = 0.1 * torch.randn(len(keys), d, generator=generator)
    if task_in_features:
        x[:, 0] += 3 * (labels.float() - 0.5)
    else:
        x += embeddings[keys]
    return x, labels, [f"entity{k}" for k in keys.tolist()]


def test_control_task_exposes_a_probe_that_only_memorises_identities():
    x, labels, keys = keyed()
    memoriser = probe_features(x, labels, control_keys=keys, progress=False).rows[0]
    # The features hold identities only: the per-key control is learnable, the task is not. (The task
    # lands at or below chance: a key's majority label in train is its minority in test.)
    assert memoriser.control_accuracy > 0.9
    assert memoriser.test_accuracy < 0.6
    assert memoriser.selectivity < -0.3
    x, labels, keys = keyed(task_in_features=True)
    reader = probe_features(x, labels, control_keys=keys, progress=False).rows[0]
    # The features hold the task only: the identities' random labels cannot be read off them.
    assert reader.test_accuracy > 0.95 and reader.control_accuracy < 0.7 and reader.selectivity > 0.25


def test_explicit_test_set_keeps_control_labels_consistent_across_the_split():
    x, labels, keys = keyed()
    train_index, test_index = stratified_split(labels, 0.25, seed=0)
    split = probe_features({"h": x[train_index]}, labels[train_index], {"h": x[test_index]}, labels[test_index],
                           control_keys=[keys[i] for i in train_index], test_control_keys=[keys[i] for i in test_index],
                           progress=False)
    assert split.rows[0].control_accuracy > 0.9  # would be ~0.5 if the test keys were relabelled independently
    control = control_labels(torch.cat([labels[train_index], labels[test_index]]),
                             [keys[i] for i in torch.cat([train_index, test_index])])[len(train_index):]
    assert split.control_chance == max(control.float().mean().item(), 1 - control.float().mean().item())


def test_stratified_split_is_seeded_and_keeps_class_proportions():
    labels = torch.tensor([1] * 30 + [0] * 70)
    train, test = stratified_split(labels, 0.2, seed=5)
    assert len(test) == 20 and int(labels[test].sum()) == 6
    assert set(train.tolist()).isdisjoint(test.tolist()) and len(train) + len(test) == 100
    assert torch.equal(test, stratified_split(labels, 0.2, seed=5)[1])
    assert not torch.equal(test, stratified_split(labels, 0.2, seed=6)[1])


def test_probe_file_and_dict_round_trips_are_exact(tmp_path):
    x, labels, _ = planted(n=200)
    for kind in KINDS:
        probe = train_probe(x, labels, kind=kind, info={"hook_name": "blocks.3.hook_resid_post", "position": -1})
        loaded = LinearProbe.load(probe.save(tmp_path / f"{kind}.safetensors"))
        again = LinearProbe.from_dict(json.loads(json.dumps(probe.to_dict())))
        for copy in (loaded, again):
            assert torch.equal(copy.weight, probe.weight) and torch.equal(copy.direction, probe.direction)
            assert copy.bias == probe.bias and copy.kind == kind and copy.info == probe.info
            assert torch.equal(copy.score(x), probe.score(x))


def test_sweep_on_a_tiny_model_reads_the_last_token(tmp_path):
    """Label = the text's last character (x or z). At the last position every layer's residual
    stream carries that token's embedding, so even a random model's probes must get it right."""
    model = mechscope.load_tiny("llama")
    generator = torch.Generator().manual_seed(0)
    words = ["cat", "dog", "sun", "map", "tree", "ink", "box", "sea"]
    texts, labels = [], []
    for i in range(96):
        picks = torch.randint(len(words), (3,), generator=generator).tolist()
        texts.append(" ".join(words[p] for p in picks) + (" x" if i % 2 else " z"))
        labels.append(i % 2)
    sweep = probe_sweep(model, texts, labels, kind="mass_mean_iid", progress=False)
    assert [row.hook_name for row in sweep.rows] == [f"blocks.{layer}.hook_resid_post" for layer in range(3)]
    for row in sweep.rows:
        assert row.test_accuracy == 1.0 and row.test_auroc == 1.0
        assert 0 <= row.control_accuracy <= 1 and 0 <= row.control_train_accuracy <= 1
    assert sweep.best("selectivity").selectivity == max(row.selectivity for row in sweep.rows)
    earlier = probe_sweep(model, texts, labels, "blocks.0.hook_resid_pre", position=-3, progress=False)
    assert earlier.rows[0].test_accuracy < 0.8  # the token before the space knows nothing of x / z
    saved = sweep.save(tmp_path / "sweep")
    data = json.loads((saved / "sweep.json").read_text())
    assert data["rows"] == sweep.table() and data["info"]["position"] == -1
    assert "Plotly.newPlot(" in (saved / "sweep.html").read_text()
    probe = LinearProbe.load(saved / "probes" / "blocks.2.hook_resid_post.safetensors")
    assert torch.equal(probe.weight, sweep.probes["blocks.2.hook_resid_post"].weight)


def test_probe_datasets_are_balanced_binary_and_keyed():
    sentiment = probe_dataset("sentiment", "test")
    assert len(sentiment) == 154 and int(sentiment.labels.sum()) == 77
    assert sentiment.keys[:2] == ["superb", "appalling"]
    facts = probe_dataset("facts", "train")
    assert set(facts.labels.tolist()) == {0, 1}
    small = probe_dataset("harmful-harmless", "train").head(50)
    assert len(small) == 50 and int(small.labels.sum()) == 21  # 41% harmful, as in the full split


@pytest.mark.parametrize("features, labels, message", [
    (torch.randn(6, 4), [0, 1, 2, 0, 1, 0], "must be binary"),
    (torch.randn(6, 4), [1] * 6, "only one class"),
    (torch.randn(6, 4), [0, 1, 0, 1, 0], "has 5 entries but there are 6"),
    (torch.randn(6, 4), [0, 0, 0, 0, 0, 1], "at least 2 examples of each class"),
    (torch.randn(6), [0, 1, 0, 1, 0, 1], "must be [n_examples, d]"),
    (torch.full((4, 2), float("nan")), [0, 1, 0, 1], "NaN"),
])
def test_bad_training_input_is_refused_clearly(features, labels, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        train_probe(features, labels)


def test_bad_options_name_the_valid_choices():
    x, labels, _ = planted(n=40)
    with pytest.raises(ValueError, match="logistic, mass_mean, mass_mean_iid"):
        train_probe(x, labels, kind="svm")
    sweep = probe_features(x, labels, progress=False)
    with pytest.raises(ValueError, match="test_accuracy"):
        sweep.best("f1")
    with pytest.raises(ValueError, match="sentiment, facts, harmful-harmless"):
        probe_dataset("truthfulqa")
    with pytest.raises(ValueError, match="trained on 64"):
        sweep.probes["features"].score(torch.randn(3, 10))
    with pytest.raises(ValueError, match="at least 2 distinct keys"):
        control_labels(labels, ["same"] * len(labels))
    with pytest.raises(ValueError, match="give both test_features and test_labels"):
        probe_features(x, labels, test_features=x)


