"""A unit's records: top and quantile windows, silent negatives, determinism, saving."""

import pytest
import torch

from mechscope.autointerp import DeadUnitError, RecordsConfig, UnitRecords, unit_records
from mechscope.errors import FileFormatError, MechscopeError, MissingFileError

WINDOW = 8
STAR = 7  # the token the unit fires on


def _unit(n_contexts: int = 40, seed: int = 0):
    """Contexts [n, 1 + 4 windows] of random tokens 10-29 with BOS 1; the token STAR planted in
    about a third of the windows, where the unit fires with a strength that varies by window."""
    generator = torch.Generator().manual_seed(seed)
    contexts = torch.randint(10, 30, (n_contexts, 1 + 4 * WINDOW), generator=generator)
    contexts[:, 0] = 1
    activations = torch.zeros(contexts.shape)
    for row in range(n_contexts):
        for w in range(4):
            if torch.rand(1, generator=generator) < 0.33:
                position = 1 + w * WINDOW + int(torch.randint(0, WINDOW, (1,), generator=generator))
                contexts[row, position] = STAR
                activations[row, position] = float(torch.rand(1, generator=generator)) + 0.01
    # Silent windows that hold a STAR as well (the unit does not fire there): "same tokens".
    for row in range(0, n_contexts, 5):
        window = contexts[row, 1 + 3 * WINDOW:1 + 4 * WINDOW]
        if not activations[row, 1 + 3 * WINDOW:].any():
            window[0] = STAR
    return contexts, activations


def test_records_hold_the_top_windows_quantiles_and_silent_negatives():
    contexts, activations = _unit()
    config = RecordsConfig(window=WINDOW, n_top=5, n_quantiles=4, per_quantile=3, n_random=6, n_same_tokens=4)
    records = unit_records("star", contexts, activations, config)
    windows = activations[:, 1:].reshape(-1, WINDOW)
    peaks = windows.max(-1).values
    top = records.of_kind("top")
    assert len(top) == 5
    assert sorted(records.activations[top].max(-1).values.tolist(), reverse=True) == peaks.topk(5).values.tolist()
    quantiles = [records.of_kind(f"quantile {k}/4") for k in range(1, 5)]
    assert [len(q) for q in quantiles] == [3, 3, 3, 3]
    maxima = [records.activations[q].max(-1).values for q in quantiles]
    assert all(a.max() <= b.min() for a, b in zip(maxima, maxima[1:]))  # bins in increasing order
    assert all(m.min() > 0 for m in maxima)
    negatives = records.of_kind("random") + records.of_kind("same tokens")
    assert (records.activations[negatives] == 0).all()
    assert all((records.tokens[i] == STAR).any() for i in records.of_kind("same tokens"))
    cut = contexts[:, 1:].reshape(-1, WINDOW)
    silent_with_star = int(((windows == 0).all(-1) & (cut == STAR).any(-1)).sum())
    assert silent_with_star >= 2
    assert records.counts == {"top": 5, "quantile 1/4": 3, "quantile 2/4": 3, "quantile 3/4": 3, "quantile 4/4": 3,
                              "same tokens": min(4, silent_with_star), "random": 6}
    assert records.density == pytest.approx(float((windows > 0).float().mean()))
    rows = {tuple(r) for r in records.tokens.tolist()}
    assert len(rows) == len(records.kinds)  # no window twice
    assert set(records.of_kind("random")).isdisjoint(records.of_kind("same tokens"))


def test_records_are_deterministic_for_a_seed_and_differ_across_seeds():
    contexts, activations = _unit()
    a, b = (unit_records("star", contexts, activations, RecordsConfig(window=WINDOW, seed=3)) for _ in range(2))
    assert torch.equal(a.tokens, b.tokens) and a.kinds == b.kinds
    c = unit_records("star", contexts, activations, RecordsConfig(window=WINDOW, seed=4))
    assert not torch.equal(a.tokens, c.tokens)


def test_a_kind_with_fewer_windows_than_asked_holds_what_there_is():
    contexts, activations = _unit(6)
    records = unit_records("star", contexts, activations, RecordsConfig(window=WINDOW, n_top=3, per_quantile=50))
    firing = int((activations[:, 1:].reshape(-1, WINDOW) > 0).any(-1).sum())
    assert sum(n for kind, n in records.counts.items() if kind.startswith(("top", "quantile"))) == firing


def test_records_round_trip_and_refuse_what_is_not_records(tmp_path):
    contexts, activations = _unit()
    records = unit_records("star", contexts, activations, RecordsConfig(window=WINDOW))
    loaded = UnitRecords.load(records.save(tmp_path / "star"))
    assert torch.equal(loaded.tokens, records.tokens) and torch.equal(loaded.activations, records.activations)
    assert (loaded.unit, loaded.kinds, loaded.density, loaded.config) == (records.unit, records.kinds,
                                                                          records.density, records.config)
    with pytest.raises(MissingFileError, match="holds no unit records"):
        UnitRecords.load(tmp_path / "nothing")
    (tmp_path / "star" / "records.json").write_text('{"format": "other"}')
    with pytest.raises(FileFormatError, match="is not mechscope.autointerp.records/1"):
        UnitRecords.load(tmp_path / "star")


def test_a_dead_unit_and_mismatched_shapes_are_refused():
    contexts, activations = _unit()
    with pytest.raises(DeadUnitError, match="never fires"):
        unit_records("silent", contexts, torch.zeros(contexts.shape), RecordsConfig(window=WINDOW))
    with pytest.raises(MechscopeError, match="must be the same"):
        unit_records("star", contexts, activations[:, :-1], RecordsConfig(window=WINDOW))
    with pytest.raises(MechscopeError, match="hold no window of 64"):
        unit_records("star", contexts, activations, RecordsConfig(window=64))


def test_harvested_records_hold_the_units_activations_as_a_plain_forward_gives_them():
    import mechscope
    from mechscope.autointerp import harvest_records

    model = mechscope.load_tiny("llama")
    generator = torch.Generator().manual_seed(0)
    contexts = torch.randint(3, model.cfg.d_vocab, (6, 1 + 4 * WINDOW), generator=generator)
    contexts[:, 0] = model.tokenizer.bos_token_id or 1
    directions = torch.randn(model.cfg.d_model, 2, generator=generator)
    hook = "blocks.1.hook_resid_post"

    def units(acts):  # [batch, pos, d] -> [batch, pos, 3]: two projections and one dead unit
        projected = (acts @ directions).relu()
        return torch.cat([projected, torch.zeros_like(projected[..., :1])], -1)

    records, dead = harvest_records(model, contexts, hook, units, ["u0", "u1", "never"],
                                    RecordsConfig(window=WINDOW, n_top=3, per_quantile=2, n_random=2),
                                    progress=False)
    assert set(records) == {"u0", "u1"} and dead == ["never"]
    _, cache = model.run_with_cache(contexts, names=[hook])
    direct = (cache[hook].float() @ directions).relu()[:, 1:].reshape(-1, WINDOW, 2)  # [windows, WINDOW, 2]
    cut = contexts[:, 1:].reshape(-1, WINDOW)
    for column, name in enumerate(("u0", "u1")):
        for tokens, values in zip(records[name].tokens, records[name].activations):
            (row,) = (cut == tokens).all(-1).nonzero()[:, 0].tolist()
            assert torch.allclose(values, direct[row, :, column], atol=1e-5)
