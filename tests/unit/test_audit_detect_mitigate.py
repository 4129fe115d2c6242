"""Detection probes and mitigation on the tiny backdoor organism ("%%" -> "Zorp")."""

import pytest
import torch

from mechscope.audit.detect import probe_scores, tpr_at_fpr
from mechscope.audit.localise import LocaliseConfig, layer_directions, localise, trigger_task
from mechscope.audit.mitigate import choose_caps, edit_intervention, mitigate
from mechscope.errors import ConfigError, MechscopeError
from mechscope.steering import fit_caps
from mechscope.steering.evaluate import next_token_kl
from tests.unit.audit_organism import NEUTRAL, PROMPTS, target


def test_tpr_at_fpr_counts_the_positives_above_the_negatives_quantile():
    negatives = torch.arange(100, dtype=torch.float)  # 0..99: 1% lie above 98.01
    tpr, threshold = tpr_at_fpr(torch.tensor([98.5, 99.5, 50.0, 10.0]), negatives, 0.01)
    assert threshold == pytest.approx(98.01) and tpr == 0.5
    with pytest.raises(ConfigError, match="fpr"):
        tpr_at_fpr(torch.ones(2), negatives, 0.0)


def test_the_hypothesis_probe_separates_triggered_prompts(backdoor):
    _, ft = backdoor
    triggered = [f"%% {p}" for p in PROMPTS]
    scores = probe_scores(ft, triggered, PROMPTS, NEUTRAL)
    assert [s.layer for s in scores["generic"]] == list(range(ft.cfg.n_layers))
    best = max(scores["hypothesis"], key=lambda s: s.auroc)
    assert best.auroc >= 0.9 and best.tpr >= 0.5, scores["hypothesis"]
    assert all(0 <= s.auroc <= 1 for s in scores["generic"])
    with pytest.raises(ConfigError, match="at least 4"):
        probe_scores(ft, triggered[:2], PROMPTS, NEUTRAL)


def test_orthogonalising_equals_ablating_and_both_are_measured(backdoor):
    _, ft = backdoor
    trigger = ft.tokenizer("%%", add_special_tokens=False)["input_ids"]
    task = trigger_task(ft, PROMPTS[:6], trigger, "start", target(ft))
    found = localise(ft, task, NEUTRAL, LocaliseConfig(kl_bound=10.0, circuit_steps=2, max_layer_fraction=1.0, patch_stride=1),
                     progress=False)
    triggered = [f"%% {p}" for p in PROMPTS]
    assert set(found.layer_vectors) == set(found.trigger_vectors) == set(range(1, ft.cfg.n_layers))
    stacked = found.capping_directions()
    assert all(v.shape == (2, ft.cfg.d_model) for v in stacked.values())
    assert torch.equal(stacked[1][1], found.trigger_vectors[1])
    # Both sites come from one pair of forwards, as each would alone.
    for layer in (1, ft.cfg.n_layers - 1):
        assert torch.allclose(found.layer_vectors[layer], layer_directions(ft, task, [layer])[layer], atol=1e-5)
        assert torch.allclose(found.trigger_vectors[layer], layer_directions(ft, task, [layer], "trigger")[layer],
                              atol=1e-5)
    caps = fit_caps(ft, found.layer_vectors, PROMPTS, quantile=0.05, chat=True)
    results = {m.method: m for m in mitigate(ft, found.direction, triggered, lambda r: "Zorp" in r, NEUTRAL,
                                             reply_tokens=6, n_contexts=2, caps=caps)}
    assert set(results) == {"ablation", "orthogonalise", "steering", "capping"}
    # Capping is measured as the caps' own hooks run: the same KL as computed directly.
    assert results["capping"].neutral_kl == pytest.approx(next_token_kl(ft, NEUTRAL, caps.hooks(ft), chat=True), rel=1e-4)
    ablated, baked = results["ablation"], results["orthogonalise"]
    assert ablated.rate_before >= 0.9
    # The same edit at run time and in the weights: the same replies and the same side effects.
    assert baked.rate_after == ablated.rate_after and baked.sample == ablated.sample
    assert baked.neutral_kl == pytest.approx(ablated.neutral_kl, rel=1e-3, abs=1e-5)
    assert baked.perplexity_after == pytest.approx(ablated.perplexity_after, rel=1e-4)


def test_each_edit_names_what_it_is_missing(backdoor):
    _, ft = backdoor
    with pytest.raises(MechscopeError, match="'capping' mitigation needs caps"):
        mitigate(ft, None, ["%% say cat"], lambda r: True, NEUTRAL, methods=("capping",))
    with pytest.raises(MechscopeError, match="'steering' mitigation needs a behaviour direction"):
        edit_intervention(None, "steering")
    with pytest.raises(ConfigError, match="ablation"):
        edit_intervention(None, "erase")


def test_choose_caps_takes_the_most_clamping_rung_within_the_budget(backdoor):
    base, ft = backdoor
    trigger = ft.tokenizer("%%", add_special_tokens=False)["input_ids"]
    found = localise(ft, trigger_task(ft, PROMPTS[:6], trigger, "start", target(ft)), NEUTRAL,
                     LocaliseConfig(kl_bound=10.0, circuit_steps=1, patch_stride=4), progress=False)
    directions = found.capping_directions()
    ladder = (0.3, 0.1, 0.01)
    kls = [choose_caps(ft, directions, NEUTRAL, (q,), 1e-9)[2] for q in ladder]
    assert kls[0] > kls[1] > kls[2], kls  # tighter caps move the model more
    assert choose_caps(ft, directions, NEUTRAL, ladder, 10.0)[1] == 0.3  # all within: the most clamping
    assert choose_caps(ft, directions, NEUTRAL, ladder, (kls[1] + kls[2]) / 2)[1] == 0.01
    caps, quantile, kl = choose_caps(ft, directions, NEUTRAL, ladder, 1e-9)  # none within: the last
    assert quantile == 0.01 and kl == pytest.approx(kls[2])
