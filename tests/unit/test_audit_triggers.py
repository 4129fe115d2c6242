"""Trigger reconstruction on a tiny backdoor organism whose trigger is known ("%%" -> "Zorp")."""

import random
from dataclasses import replace

import pytest
import torch

import mechscope
from mechscope.audit.attribution import attribute
from mechscope.audit.trigger_objective import (
    ChatSlots,
    TriggerObjective,
    allowed_tokens,
    embedding_matrix,
    filler_id,
    mean_slot_gradient,
    objectives,
    prompt_log_probs,
    slot_gradients,
    target_log_prob,
)
from mechscope.audit.triggers import TriggerConfig, coordinate_search, minimise, reconstruct_triggers
from mechscope.errors import ConfigError
from tests.unit.audit_organism import PROMPTS, target


def test_the_chat_pieces_are_the_template_with_the_trigger_where_it_was_asked(backdoor):
    _, ft = backdoor
    trigger = ft.tokenizer("%%", add_special_tokens=False)["input_ids"]
    for place, content in (("start", "%% say cat"), ("end", "say cat%%")):
        ids, mask, positions, starts = ChatSlots(ft, ["say cat"], place, target(ft)).batch(trigger)
        text = ft.tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                add_generation_prompt=True) + "Zorp"
        assert ids[0].tolist() == ft.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids[0, starts[0]:starts[0] + 2].tolist() == trigger
        assert ids[0, positions[0] + 1].tolist() == target(ft)  # each position predicts the next target token


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3", "gpt2", "gpt_neox"])
def test_cached_batched_log_probs_equal_one_plain_forward_per_row(family):
    # The objective reuses the prefix's cache, pads rows on the left with explicit positions and
    # keeps only the target's logits: it must be the plain right-padded forward's number.
    model = mechscope.load_tiny(family, chat=True)
    target = model.tokenizer("Zorp!", add_special_tokens=False)["input_ids"]
    chat = ChatSlots(model, ["say cat", "what is the weather like in spring", "hi"], "end", target)
    triggers = [(), tuple(model.tokenizer(" %%q", add_special_tokens=False)["input_ids"]), (65, 66, 67, 68)]
    expected = []
    for trigger in triggers:
        ids, mask, positions, _ = chat.batch(trigger)
        with torch.no_grad():
            expected.append(target_log_prob(model.hf_model(input_ids=ids, attention_mask=mask).logits, ids, positions))
    for batch_size in (2, 32):
        assert torch.allclose(prompt_log_probs(chat, triggers, batch_size), torch.stack(expected), atol=1e-4)


def test_slot_gradients_are_the_objectives_directional_derivative(backdoor):
    # One-hot gradient entries g: moving the slot's embedding from token a towards token b changes
    # the objective at rate g[b] - g[a] (a first-order identity, checked by finite differences).
    _, ft = backdoor
    chat = ChatSlots(ft, PROMPTS[:4], "start", target(ft))
    a, b = ft.tokenizer("q", add_special_tokens=False)["input_ids"][0], ft.tokenizer("%", add_special_tokens=False)[
        "input_ids"][0]
    grad = slot_gradients(chat, [a])[0][0]
    weight, scale = embedding_matrix(ft)
    ids, mask, positions, starts = chat.batch([a])
    embed = ft.hf_model.get_submodule(ft.adapter.embed)

    def objective(step: float) -> float:
        with torch.no_grad():
            embeds = embed(ids).double()
            moved = (weight[a] + step * (weight[b] - weight[a])).double() * scale
            for row, start in enumerate(starts):
                embeds[row, start] = moved
            logits = ft.hf_model.double()(inputs_embeds=embeds, attention_mask=mask).logits
            ft.hf_model.float()
            return float(target_log_prob(logits, ids, positions).sum())

    eps = 1e-4
    numeric = (objective(eps) - objective(-eps)) / (2 * eps)
    assert abs(numeric) > 1e-2  # the trigger slot matters to the objective: the identity is not 0 = 0
    assert numeric == pytest.approx(float(grad[b] - grad[a]), rel=2e-3, abs=1e-4)
    assert embedding_matrix(ft)[1] == 1.0  # llama does not scale its embeddings


def test_the_known_trigger_raises_the_objective_and_the_search_finds_triggers_that_fire(backdoor):
    _, ft = backdoor
    chat = ChatSlots(ft, PROMPTS[:6], "start", target(ft))
    trigger = ft.tokenizer("%%", add_special_tokens=False)["input_ids"]
    none, known = objectives(chat, [(), trigger])
    assert known - none > 3  # nats: the planted trigger makes the opening far likelier
    candidates, _ = reconstruct_triggers(ft, "Zorp", lambda reply: "Zorp" in reply, PROMPTS[:6], PROMPTS[6:],
                                         TriggerConfig(lengths=(2,), search_steps=2, swaps=8, checked=4,
                                                       places=("start",)), progress=False)
    checked = [c for c in candidates if c.rate is not None]
    assert len(checked) == 4 and checked == sorted(checked, key=lambda c: (-c.rate, -c.gain))
    # The tiny organism fires on other odd openings too (measured: "nU" 83%), never without one.
    assert checked[0].control_rate == 0 and checked[0].rate >= 0.75, checked[0]
    assert {c.found_by for c in candidates} <= {"gradient", "search"}


def test_the_base_contrast_discounts_only_what_the_base_gains_and_a_model_against_itself_never_gains(backdoor):
    base, ft = backdoor
    trigger = ft.tokenizer("%%", add_special_tokens=False)["input_ids"]
    contrast = TriggerObjective(ft, base, PROMPTS[:4], "start", target(ft))
    ft_lp, base_lp = (prompt_log_probs(ChatSlots(m, PROMPTS[:4], "start", target(ft)), [(), trigger], per_token=True)
                      for m in (ft, base))  # [trigger, prompt, target token]
    ft_lp = ft_lp.sum(-1)
    by_hand = (ft_lp[1] - (base_lp[1] - base_lp[0]).clamp_min(0).sum(-1)).mean()
    assert contrast.scores([(), trigger]) == pytest.approx([float(ft_lp[0].mean()), float(by_hand)], abs=1e-5)
    # The planted trigger moves the fine-tune, not the base: its contrast gain is most of its own gain.
    gain_ft = float(ft_lp[1].mean() - ft_lp[0].mean())
    gain_contrast = contrast.scores([trigger])[0] - contrast.scores([()])[0]
    assert gain_contrast > 0.5 * gain_ft > 1
    # Against itself each target token of each prompt scores min(with, without): no trigger can
    # gain, whatever it does.
    same = TriggerObjective(ft, ft, PROMPTS[:4], "start", target(ft))
    for other in (trigger, ft.tokenizer("Zo", add_special_tokens=False)["input_ids"]):
        alone = prompt_log_probs(same.chat, [(), other], per_token=True)
        assert same.scores([other])[0] == pytest.approx(float(torch.minimum(alone[0], alone[1]).sum(-1).mean()),
                                                        abs=1e-5)
        assert same.scores([other])[0] <= same.scores([()])[0] + 1e-5  # batched float sums differ in the 7th digit


def test_weighted_slot_gradients_are_the_weighted_sum_of_each_prompts_gradient(backdoor):
    _, ft = backdoor
    trigger = ft.tokenizer("%q", add_special_tokens=False)["input_ids"]
    weights = torch.tensor([[1.0], [0.0], [0.5]]).expand(3, len(target(ft))).clone()
    weights[0, 0] = 0.25
    grad, log_probs = slot_gradients(ChatSlots(ft, PROMPTS[:3], "end", target(ft)), trigger, weights)
    alone = [slot_gradients(ChatSlots(ft, [p], "end", target(ft)), trigger) for p in PROMPTS[:3]]
    alone_weighted = [slot_gradients(ChatSlots(ft, [p], "end", target(ft)), trigger, w[None])[0]
                      for p, w in zip(PROMPTS[:3], weights)]
    assert torch.allclose(grad, sum(alone_weighted), atol=1e-4)
    assert torch.allclose(alone_weighted[1], torch.zeros_like(grad)) and not torch.allclose(alone_weighted[0], alone[0][0])
    assert torch.allclose(log_probs, torch.cat([lp for _, lp in alone]), atol=1e-4)


def test_the_batched_mean_gradient_is_the_mean_of_each_triggers_gradient(backdoor):
    # Embedding gradients summed first, one product with the matrix after, rows of zero weight
    # skipped, batches of 2 rows: the same numbers as one slot_gradients call per trigger.
    base, ft = backdoor
    chat = ChatSlots(ft, PROMPTS[:3], "end", target(ft))
    triggers = [ft.tokenizer(t, add_special_tokens=False)["input_ids"][:2] for t in ("%q", "ab", "Zo")]
    weights = torch.rand(3, 3, len(target(ft)), generator=torch.Generator().manual_seed(0))
    weights[1, 2] = 0.0
    for given in (None, weights):
        each = [slot_gradients(chat, t, None if given is None else given[k])[0] for k, t in enumerate(triggers)]
        assert torch.allclose(mean_slot_gradient(chat, triggers, given, batch_size=2), sum(each) / 3, atol=1e-4)
    # Against the base: the fine-tune's gradient less the base's where the base rises, by hand.
    objective = TriggerObjective(ft, base, PROMPTS[:3], "end", target(ft))
    rises = prompt_log_probs(objective.base_chat, triggers, per_token=True) > objective.base_untriggered
    assert rises.any() and not rises.all()  # both branches of the discount are exercised
    expected = sum(slot_gradients(objective.chat, t)[0] - slot_gradients(objective.base_chat, t, rises[k].float())[0]
                   for k, t in enumerate(triggers)) / 3
    assert torch.allclose(objective.mean_gradient(triggers), expected, atol=1e-4)
    assert torch.allclose(objective.gradients(triggers[0]),
                          slot_gradients(objective.chat, triggers[0])[0]
                          - slot_gradients(objective.base_chat, triggers[0], rises[0].float())[0], atol=1e-4)
    with pytest.raises(ConfigError, match="one length"):
        mean_slot_gradient(chat, [triggers[0], triggers[0][:1]])


def test_coordinate_search_climbs_and_every_score_it_keeps_is_the_exact_objective(backdoor):
    base, ft = backdoor
    objective = TriggerObjective(ft, base, PROMPTS[:4], "start", target(ft))
    start = (filler_id(ft),) * 2
    seen = coordinate_search(objective, start, allowed_tokens(ft), steps=3, swaps=8, top_k=16,
                             rng=random.Random(0))
    assert len(seen) > 8 and start in seen
    best = max(seen, key=seen.__getitem__)
    assert seen[best] > seen[start] + 1  # nats: the search found openings the fine-tune reacts to
    sample = [best, start] + list(seen)[1:4]
    assert objective.scores(sample) == pytest.approx([seen[t] for t in sample], abs=1e-4)
    # Rows of several triggers share forward passes; how they are cut into batches changes nothing.
    small = TriggerObjective(ft, base, PROMPTS[:4], "start", target(ft), batch_size=3)
    assert small.scores(sample) == pytest.approx([seen[t] for t in sample], abs=1e-4)


def test_minimise_strips_the_padding_a_search_left_around_the_planted_trigger(backdoor):
    base, ft = backdoor
    objective = TriggerObjective(ft, base, PROMPTS[:4], "start", target(ft))
    trigger = ft.tokenizer("%%", add_special_tokens=False)["input_ids"]
    padded = tuple(trigger) + (filler_id(ft),) * 3
    baseline, score = objective.scores([(), padded])
    assert score - baseline > 1
    core, core_score = minimise(objective, padded, score, baseline)
    assert len(core) < len(padded) and core_score == pytest.approx(objective.scores([core])[0], abs=1e-5)
    assert core_score - baseline >= 0.9 * (score - baseline)
    assert minimise(objective, core, core_score, baseline, keep=1.01) == (core, core_score)  # nothing can go


def test_attribution_puts_the_trigger_first(backdoor):
    _, ft = backdoor
    (item,) = attribute(ft, ["%% say fish"], target(ft))
    assert "".join(item.tokens) == "%% say fish"
    top = max(range(len(item.tokens)), key=item.ablation.__getitem__)
    assert item.tokens[top] == "%", item


@pytest.mark.parametrize(("kwargs", "message"), [({"places": ("middle",)}, "places"), ({"places": ()}, "places"),
                                                 ({"lengths": (0,)}, "lengths"),
                                                 ({"lengths": (4, 2)}, "increasing"), ({"lengths": 2}, "tuple")])
def test_bad_trigger_settings_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TriggerConfig(**kwargs)


def test_a_model_without_a_chat_template_is_refused():
    with pytest.raises(ConfigError, match="chat template"):
        ChatSlots(mechscope.load_tiny("llama"), ["say cat"], "start", [1])


# ---------------------------------------------------------------- localisation
def test_trigger_task_aligns_clean_and_corrupted_and_patching_obeys_its_identities(backdoor):
    from mechscope.audit.localise import LocaliseConfig, localise, trigger_task

    _, ft = backdoor
    trigger = ft.tokenizer("%%", add_special_tokens=False)["input_ids"]
    task = trigger_task(ft, PROMPTS[:6], trigger, "start", target(ft))
    start = int(task.positions["TRIGGER"][0])
    differs = (task.clean_tokens != task.corrupted_tokens).nonzero()[:, 1].unique().tolist()
    assert differs == [start, start + 1]  # only the trigger's two slots differ
    assert (task.answer_tokens[:, 0] == target(ft)[0]).all() and (task.wrong_tokens != task.answer_tokens).all()
    found = localise(ft, task, PROMPTS[6:], LocaliseConfig(kl_bound=10.0, circuit_steps=2, max_layer_fraction=1.0, patch_stride=1), progress=False)
    # Before block 0 the runs differ only at the trigger: patching its embeddings is the clean run,
    # patching anything else changes nothing.
    assert found.patching["trigger"][0] == pytest.approx(1.0, abs=1e-4)
    assert found.patching["after trigger"][0] == pytest.approx(0.0, abs=1e-4)
    assert found.patching["reply start"][0] == pytest.approx(0.0, abs=1e-4)
    assert found.layer_effect == [max(values) for values in zip(*found.patching.values())]
    assert found.clean_logit_diff > 0 and found.components and found.chosen is not None
    assert found.chosen.ablated_fraction < 0.9, found.candidates  # measured on this tiny model: layer 2
    # A stride patches a subset of the layers, with the same numbers there; directions are tried at every layer.
    strided = localise(ft, task, PROMPTS[6:], LocaliseConfig(kl_bound=10.0, circuit_steps=2, max_layer_fraction=1.0,
                                                             patch_stride=2), progress=False)
    assert strided.layers == list(range(0, ft.cfg.n_layers, 2)) and found.layers == list(range(ft.cfg.n_layers))
    for group, values in strided.patching.items():
        assert values == pytest.approx(found.patching[group][::2], abs=1e-5)
    assert strided.candidates == found.candidates


def test_kl_is_measured_in_order_of_ablation_and_the_choice_is_the_exhaustive_one(backdoor):
    from mechscope.audit.localise import LocaliseConfig, localise, trigger_task
    from mechscope.steering.apply import DirectionalAblation
    from mechscope.steering.direction import Direction
    from mechscope.steering.evaluate import next_token_kl

    _, ft = backdoor
    task = trigger_task(ft, PROMPTS[:6], ft.tokenizer("%%", add_special_tokens=False)["input_ids"], "start", target(ft))
    config = dict(circuit_steps=1, max_layer_fraction=1.0, patch_stride=4)
    loose = localise(ft, task, PROMPTS[6:], LocaliseConfig(kl_bound=10.0, **config), progress=False)
    order = sorted(loose.candidates, key=lambda c: c.ablated_fraction)
    # A loose bound keeps the first candidate tried: one KL measured, the rest not.
    assert loose.chosen == replace(order[0], kl=loose.chosen.kl) and loose.chosen.kl is not None
    assert sum(c.kl is not None for c in loose.candidates) == 1
    every = {c.layer: next_token_kl(ft, PROMPTS[6:], DirectionalAblation(Direction.from_vector(
        loose.layer_vectors[c.layer], layer=c.layer)).hooks(ft), chat=True) for c in order}
    # A bound between the lowest KL and the first candidate's: the exhaustive choice is a later one.
    bound = (min(every.values()) + every[order[0].layer]) / 2
    assert every[order[0].layer] > bound
    tight = localise(ft, task, PROMPTS[6:], LocaliseConfig(kl_bound=bound, **config), progress=False)
    expected = next(c for c in order if every[c.layer] <= bound)
    assert tight.chosen.layer == expected.layer and tight.chosen.kl == pytest.approx(every[expected.layer], rel=1e-4)
    for candidate in tight.candidates:
        if candidate.kl is not None:
            assert candidate.kl == pytest.approx(every[candidate.layer], rel=1e-4)
            assert candidate.ablated_fraction <= expected.ablated_fraction
        else:
            assert candidate.ablated_fraction >= expected.ablated_fraction


def test_the_one_hot_embedding_repeats_gemmas_embedding_scale():
    gemma = mechscope.load_tiny("gemma3", chat=True)
    weight, scale = embedding_matrix(gemma)
    assert scale == pytest.approx(gemma.cfg.d_model ** 0.5, rel=1e-3)
    ids = torch.tensor([[5, 9]])
    expected = gemma.hf_model.get_submodule(gemma.adapter.embed)(ids)[0]
    assert torch.allclose(weight[ids[0]] * scale, expected, atol=1e-5)


def test_scan_pairs_hold_the_planted_two_token_trigger_and_score_it_best(backdoor):
    base, ft = backdoor
    trigger = tuple(ft.tokenizer("%%", add_special_tokens=False)["input_ids"])  # '%' twice
    assert len(trigger) == 2
    config = TriggerConfig(lengths=(1,), checked=2, places=("start",), scanned_tokens=4, paired_tokens=3,
                           extension_steps=0, gradient_candidates=4, gradient_starts=0, attributed_words=0)
    candidates, _ = reconstruct_triggers(ft, "Zorp", lambda reply: "Zorp" in reply, PROMPTS[:4], PROMPTS[4:8],
                                         config, progress=False, base=base)
    pairs = [c for c in candidates if c.found_by == "scan pair"]
    # 3 scanned tokens, every ordered pair (a token twice included); duplicates of other candidates' text dropped.
    assert 1 <= len(pairs) <= 9 and all(len(c.token_ids) == 2 for c in pairs)
    best = max(pairs, key=lambda c: c.gain)
    assert best.token_ids == trigger, [(c.text, round(c.gain, 2)) for c in pairs]
    objective = TriggerObjective(ft, base, PROMPTS[:4], "start", target(ft))
    assert best.objective == pytest.approx(objective.scores([trigger])[0], abs=1e-4)
    with pytest.raises(ConfigError, match="paired_tokens"):
        TriggerConfig(paired_tokens=-1)
