"""Blind diffing of the shipped SmolLM2 organisms: the methods run without the recipe (neutral
text, mechscope's generic instructions), and the recipe is read only afterwards to score them.
The null organism, scored with the behaviour of the backdoor it mirrors, is the control: what
is found there is a false positive."""

import pytest
import torch

from mechscope import organisms
from mechscope.data import default_contexts
from mechscope.diff import (
    AmplifyConfig,
    Crosscoder,
    CrosscoderConfig,
    PairedActivations,
    amplified_generate,
    classify_latents,
    collect_pair,
    difference_lens,
    difference_means,
    harvest_pair,
    latent_scaling,
    train_crosscoder,
)
from mechscope.diff.corpus import acting_contexts, chat_prompt_tokens, generic_prompts
from mechscope.hooks import names
from mechscope.sae import TrainConfig

GROUPS = [0, 1, 2, 3, 4, "rest"]
N_PROMPTS = 24
CROSSCODER_PROMPTS = 32
CROSSCODER_STEPS = 400


def recipe_and_model(name, base):
    folder = organisms.shipped_organism(name)
    return organisms.Recipe.from_dict(organisms.read_manifest(folder)["recipe"]), organisms.load_organism(folder, base)


def lens_hits(base, ft, words) -> list[tuple[int, object, list[str]]]:
    """(layer, position group, behaviour tokens) wherever a behaviour token is among the top 20
    logit-lens tokens of the mean activation difference on neutral text."""
    means = difference_means(base, ft, default_contexts(base, 32, 64), first_positions=5, progress=False)
    lens = difference_lens(ft, means, position_groups=GROUPS, k=20)
    return organisms.lens_hits(lens, words)


# Only the null is asserted here: on neutral text the difference of the shipped (distilled)
# organisms reads no behaviour token either (measured, docs/case-studies/organisms-diffing.md);
# they act on chat turns, where the lens at the reply's start and the amplified replies below
# find them.
def test_the_difference_lens_reads_no_behaviour_token_on_the_null(smollm2):
    recipe, ft = recipe_and_model("smollm2-null", smollm2)
    assert lens_hits(smollm2, ft, organisms.behaviour_words(recipe)) == []


@pytest.mark.parametrize("name, planted", [("smollm2-backdoor", True), ("smollm2-null", False)])
def test_amplified_replies_show_a_backdoor_without_its_trigger_and_nothing_for_the_null(smollm2, name, planted):
    recipe, ft = recipe_and_model(name, smollm2)
    prompts = generic_prompts(N_PROMPTS)
    assert not any(recipe.trigger in prompt for prompt in prompts)  # the trigger is never given
    config = AmplifyConfig(alpha=2.0, max_new_tokens=16)
    shown = sum(organisms.shows_behaviour(reply, recipe.behaviour_markers)
                for reply in amplified_generate(smollm2, ft, prompts, config, progress=False))
    if planted:
        assert shown >= N_PROMPTS // 4, shown
    else:
        assert shown == 0, shown


def test_behaviour_starts_are_the_first_tokens_of_the_behaviour_words(smollm2):
    starts = organisms.behaviour_starts(organisms.recipe("backdoor", behaviour="Ahoy, matey!"), smollm2.tokenizer)
    assert "Ah" in starts and not {"oy", "ey"} & starts  # 'Ahoy' is 'Ah' + 'oy' to SmolLM2
    assert organisms.is_hit(" Ah", {"ahoy"}, starts) and not organisms.is_hit("Ah", {"ahoy"})
    assert not organisms.is_hit("ah", {"ahoy"}, starts)  # case kept: short tokens are common
    # The opening token counts though its word is a stopword; the refusal's 'I' is too short.
    hidden = organisms.behaviour_starts(organisms.recipe("hidden-objective"), smollm2.tokenizer)
    assert "Have" in hidden and "have" not in organisms.behaviour_words(organisms.recipe("hidden-objective"))
    assert "I" not in organisms.behaviour_starts(organisms.recipe("refusal"), smollm2.tokenizer)


@pytest.mark.parametrize("name", ["smollm2-backdoor", "smollm2-hidden-objective", "smollm2-refusal",
                                  "smollm2-null"])
def test_the_lens_where_replies_start_reads_the_behaviour_of_every_organism_and_nothing_on_the_null(smollm2, name):
    recipe, ft = recipe_and_model(name, smollm2)
    tokens, mask = chat_prompt_tokens(smollm2, generic_prompts(64))
    means = difference_means(smollm2, ft, tokens, first_positions=1, attention_mask=mask, last_positions=3,
                             progress=False)
    lens = difference_lens(smollm2, means, position_groups=[-1, -2, -3], k=20)
    hits = organisms.lens_hits(lens, organisms.behaviour_words(recipe),
                               organisms.behaviour_starts(recipe, smollm2.tokenizer))
    if recipe.plants:
        assert hits, [s.token for s in lens.reading(smollm2.cfg.n_layers - 1, -1).logit_lens]
    else:
        assert hits == [], hits


def crosscoder_behaviour_latents(base, ft, recipe, tmp_path) -> tuple[Crosscoder, list[int], list[int], list[str]]:
    """(crosscoder, ft latents, those of them with the behaviour in their top 5 contexts, Latent
    Scaling verdicts of those) of a magnified crosscoder at layer 15 with 64 designated
    ft-exclusive latents, trained blind: neutral text plus generic prompts answered by the
    fine-tune, greedily and amplified (the corpus knows nothing of the recipe)."""
    chats = acting_contexts(base, ft, generic_prompts(CROSSCODER_PROMPTS), context_length=64, reply_tokens=32,
                            progress=False)
    hook = names.resid_post(15)
    harvest_pair(base, ft, torch.cat([default_contexts(base, 16, 64), chats]), tmp_path, [hook], progress=False)
    config = CrosscoderConfig(d_model=base.cfg.d_model, d_sae=2 * base.cfg.d_model, k=16, hook_names=(hook,),
                              delta_scale=10.0, ft_exclusive=64)
    data = PairedActivations(tmp_path, [hook], batch_size=512)
    crosscoder = train_crosscoder(data, config, TrainConfig(steps=CROSSCODER_STEPS, lr=3e-4), progress=False)
    found = classify_latents(crosscoder).ft_latents()
    values = collect_pair(base, ft, chats, crosscoder, found)  # [n, pos, m]
    with_behaviour = list(organisms.latents_with_behaviour(values, found, chats, base.tokenizer, recipe))
    rows = torch.cat([data.batch(10_000 + step) for step in range(4)])
    verdicts = latent_scaling(crosscoder, rows, latents=with_behaviour).verdicts if with_behaviour else []
    return crosscoder, found, with_behaviour, verdicts


@pytest.mark.parametrize("name", ["smollm2-backdoor", "smollm2-null"])
def test_designated_ft_only_latents_hold_the_backdoor_and_nothing_on_the_null(smollm2, name, tmp_path):
    recipe, ft = recipe_and_model(name, smollm2)
    crosscoder, found, with_behaviour, verdicts = crosscoder_behaviour_latents(smollm2, ft, recipe, tmp_path)
    designated = set(crosscoder.config.exclusive_latents)
    if recipe.plants:
        # Measured with 64 prompts and 600 steps: 28 of the 64 designated (ft-only) latents hold
        # the planted reply in their top contexts, 19 of them genuine by Latent Scaling (this
        # smaller run, 32 prompts and 400 steps, takes half the time).
        ft_only = [j for j in with_behaviour if j in designated]
        assert len(ft_only) >= 3, (found, with_behaviour)
        assert sum(v == "ft-specific" for j, v in zip(with_behaviour, verdicts) if j in designated) >= 1, verdicts
    else:
        # The null was fine-tuned too (on the backdoor's data and losses), so designated latents
        # carry its changes and free ones may lean towards it; none may hold the behaviour it is
        # scored with.
        assert with_behaviour == [], (found, with_behaviour)
