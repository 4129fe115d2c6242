"""Steering on tiny random models of every family: directions are unit-norm and round-trip through
safetensors + JSON, alpha = 0 is a no-op, steering adds exactly alpha * direction where asked,
ablation removes the direction everywhere, orthogonalised weights equal the runtime ablation, and
steered generation agrees with a steered forward pass over the generated text."""

import json

import pytest
import torch

import mechscope
from mechscope.steering import (
    Direction,
    DirectionalAblation,
    LogitBehaviour,
    Steering,
    caa_direction,
    contrast_directions,
    diff_in_means,
    generate,
    next_token_kl,
    orthogonalise,
    pca_direction,
    save_orthogonalised,
    sweep,
    token_log_odds,
)
from tests.helpers import random_tokens

ORTHOGONALISABLE = [family for family in mechscope.SUPPORTED_FAMILIES if family != "gemma3"]


def random_direction(model, seed=0, layer=1):
    vector = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(seed))
    return Direction.from_vector(vector, layer=layer)


def test_directions_are_unit_norm_and_round_trip(tmp_path):
    direction = Direction.from_vector(torch.tensor([3.0, 4.0]), layer=2, metadata={"dataset": "x"})
    assert direction.scale == pytest.approx(5.0)
    torch.testing.assert_close(direction.vector, torch.tensor([0.6, 0.8]))
    tensors, meta = direction.save(tmp_path / "dir")
    assert json.loads(meta.read_text())["metadata"] == {"dataset": "x"}
    loaded = Direction.load(tensors)
    assert torch.equal(loaded.vector, direction.vector)
    assert (loaded.layer, loaded.method, loaded.scale) == (2, "user", direction.scale)
    with pytest.raises(ValueError, match="unit-norm"):
        Direction(torch.tensor([3.0, 4.0]))
    with pytest.raises(ValueError, match="norm 0"):
        Direction.from_vector(torch.zeros(4))
    with pytest.raises(ValueError, match="unknown direction method 'magic'; valid: diff_in_means"):
        Direction(torch.tensor([1.0, 0.0]), method="magic")
    meta.unlink()
    with pytest.raises(FileNotFoundError, match="dir.json"):
        Direction.load(tmp_path / "dir")


def test_contrast_builders_recover_a_planted_direction():
    generator = torch.Generator().manual_seed(0)
    planted = torch.nn.functional.normalize(torch.randn(64, generator=generator), dim=0)
    base = torch.randn(200, 64, generator=generator)
    positive = base + 3 * planted + 0.3 * torch.randn(200, 64, generator=generator)
    negative = base + 0.3 * torch.randn(200, 64, generator=generator)
    # A random unit vector in 64 dimensions has |cosine| ~ 0.12 with the planted one.
    assert float(diff_in_means(positive, negative).vector @ planted) > 0.95
    pca = pca_direction(positive, negative)
    assert float(pca.vector @ planted) > 0.95  # signed towards positive
    assert pca.scale == pytest.approx(3.0, abs=0.2)


def test_alpha_zero_is_a_no_op(tiny):
    tokens = random_tokens(tiny)
    steering = Steering(random_direction(tiny), alpha=0.0, layers=[0, 1])
    assert torch.equal(tiny.run_with_hooks(tokens, fwd_hooks=steering.hooks(tiny)), tiny(tokens))


def test_steering_adds_alpha_times_direction_at_chosen_positions(tiny):
    tokens = random_tokens(tiny)
    direction = random_direction(tiny)
    _, clean = tiny.run_with_cache(tokens, names=["blocks.1.hook_resid_pre"])
    hooks = Steering(direction, alpha=2.5, layers=1, positions=[0, 3]).hooks(tiny)
    _, steered = tiny.run_with_cache(tokens, names=["blocks.1.hook_resid_pre"], fwd_hooks=hooks)
    shift = steered["blocks.1.hook_resid_pre"] - clean["blocks.1.hook_resid_pre"]
    expected = torch.zeros_like(shift)
    expected[:, [0, 3]] = 2.5 * direction.vector
    torch.testing.assert_close(shift, expected, atol=1e-5, rtol=0)


def test_ablation_removes_the_direction_from_every_residual_point(tiny):
    direction = random_direction(tiny)
    _, cache = tiny.run_with_cache(random_tokens(tiny), names=lambda n: "resid" in n,
                                   fwd_hooks=DirectionalAblation(direction).hooks(tiny))
    for name in cache.keys():
        assert float((cache[name] @ direction.vector).abs().max()) < 1e-4, name


@pytest.mark.parametrize("family", ORTHOGONALISABLE)
def test_orthogonalised_weights_equal_the_runtime_ablation(tiny_models, family):
    model = tiny_models[family]
    tokens = random_tokens(model)
    direction = random_direction(model)
    runtime = model.run_with_hooks(tokens, fwd_hooks=DirectionalAblation(direction).hooks(model))
    edited = orthogonalise(model, direction)
    torch.testing.assert_close(edited(tokens), runtime, atol=1e-4, rtol=0)
    assert (runtime - model(tokens)).abs().max() > 0.01  # the ablation does change the model
    assert torch.equal(model(tokens), model(tokens))  # and the original is untouched


def test_orthogonalised_model_saved_as_hf_folder_reloads_equal(tiny_models, tmp_path):
    model = tiny_models["llama"]
    tokens = random_tokens(model)
    direction = random_direction(model)
    folder = save_orthogonalised(model, direction, tmp_path / "ortho")
    assert (folder / "model.safetensors").exists() and Direction.load(folder / "direction").layer == 1
    reloaded = mechscope.load(str(folder), dtype=torch.float32)
    runtime = model.run_with_hooks(tokens, fwd_hooks=DirectionalAblation(direction).hooks(model))
    torch.testing.assert_close(reloaded(tokens), runtime, atol=1e-4, rtol=0)
    with pytest.raises(FileExistsError, match="not empty"):
        save_orthogonalised(model, direction, folder)


def test_gemma_orthogonalisation_is_refused_with_the_reason(tiny_models):
    model = tiny_models["gemma3"]
    with pytest.raises(ValueError, match="norms after its output projections"):
        orthogonalise(model, random_direction(model))


def test_batched_generation_equals_one_prompt_at_a_time(tiny_models):
    model = tiny_models["llama"]
    prompts = ["hello there", "a b c d e f", "x y"]
    batched = generate(model, prompts, max_new_tokens=6, chat=False, batch_size=3, progress=False)
    assert batched == [model.generate(prompt, max_new_tokens=6, chat=False) for prompt in prompts]


@pytest.mark.parametrize("phase", ["all", "prompt", "generated"])
def test_generation_phases_match_a_steered_forward_over_the_generated_text(tiny_models, phase):
    """Greedy tokens generated under steering (with the KV cache) are the argmax of one forward
    pass over prompt + generation steered at the matching positions."""
    model = tiny_models["llama"]
    direction = random_direction(model, layer=1)
    prompt_tokens = model.to_tokens("hello there friend")
    n_prompt, n_new = prompt_tokens.shape[1], 5
    steering = Steering(direction, alpha=8.0, positions=phase)

    def greedy(hooks):  # token ids, not text: decoding and re-tokenizing need not round-trip
        with model.hooks(hooks):
            return model.hf_model.generate(input_ids=prompt_tokens, attention_mask=torch.ones_like(prompt_tokens),
                                           max_new_tokens=n_new, do_sample=False, use_cache=True, pad_token_id=0)

    full = greedy(steering.hooks(model, generating=True))
    assert not torch.equal(full, greedy([]))  # alpha 8 does change the generation in every phase
    steered_positions = {"all": list(range(full.shape[1])), "prompt": list(range(n_prompt)),
                         "generated": list(range(n_prompt, full.shape[1]))}[phase]
    hooks = Steering(direction, alpha=8.0, positions=steered_positions).hooks(model)
    logits = model.run_with_hooks(full, fwd_hooks=hooks)
    predicted = logits[0, n_prompt - 1:-1].argmax(-1)
    assert torch.equal(predicted, full[0, n_prompt:])


def test_generated_phase_outside_generation_is_an_error(tiny):
    with pytest.raises(ValueError, match="only during generation"):
        Steering(random_direction(tiny), 1.0, positions="generated").hooks(tiny)
    with pytest.raises(ValueError, match="positions must be one of"):
        Steering(random_direction(tiny), 1.0, positions="middle").hooks(tiny)
    with pytest.raises(ValueError, match=r"layers \[7\] invalid; the model has layers 0\.\.2"):
        Steering(random_direction(tiny), 1.0, layers=7).hooks(tiny)


def test_contrast_and_caa_directions_equal_their_definitions(tiny_models):
    from mechscope.analysis import prompt_activations

    model = tiny_models["llama"]
    positive, negative = ["good day", "great food here"], ["bad day", "awful food"]
    directions = contrast_directions(model, positive, negative, layers=[1], positions=[-1, -2], progress=False)
    acts_p = prompt_activations(model, positive, "blocks.1.hook_resid_pre", -2, progress=False)["blocks.1.hook_resid_pre"]
    acts_n = prompt_activations(model, negative, "blocks.1.hook_resid_pre", -2, progress=False)["blocks.1.hook_resid_pre"]
    expected = acts_p[:, 0].mean(0) - acts_n[:, 0].mean(0)
    torch.testing.assert_close(directions[(1, -2)].vector * directions[(1, -2)].scale, expected)
    items = [{"question": "Pick one (A) yes (B) no", "answer_matching_behavior": "(A)",
              "answer_not_matching_behavior": "(B)"}]
    caa = caa_direction(model, items, layers=1, chat=False, progress=False)[1]
    with_a = prompt_activations(model, ["Pick one (A) yes (B) no(A"], "blocks.1.hook_resid_pre", -1, progress=False)
    with_b = prompt_activations(model, ["Pick one (A) yes (B) no(B"], "blocks.1.hook_resid_pre", -1, progress=False)
    raw = with_a["blocks.1.hook_resid_pre"][0, 0] - with_b["blocks.1.hook_resid_pre"][0, 0]
    torch.testing.assert_close(caa.vector, raw / raw.norm())
    with pytest.raises(ValueError, match="lacks"):
        caa_direction(model, [{"question": "q"}], layers=1, chat=False)


def test_token_log_odds_matches_its_definition():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    p = logits.softmax(-1)[0, [0, 2]].sum()
    torch.testing.assert_close(token_log_odds(logits, torch.tensor([0, 2])), torch.log(p / (1 - p)).reshape(1))


def test_sweep_trades_behaviour_against_kl_and_chooses_under_a_budget(tiny_models):
    """Adding a token's unembedding direction before the last block raises that token's log-odds
    monotonically with alpha, while KL on neutral prompts grows from exactly 0."""
    model = tiny_models["llama"]
    target = 5
    direction = Direction.from_vector(model.W_U[:, target].detach(), layer=model.cfg.n_layers - 1)
    prompts = ["hello there", "a b c"]
    behaviour = LogitBehaviour(prompts, tokens=[target], chat=False)
    result = sweep(model, direction, behaviour, ["x y z", "one two"], alphas=[0.0, 2.0, 8.0, 32.0],
                   layers=[model.cfg.n_layers - 1], chat=False, progress=False)
    scores = [point.behaviour for point in result.points]
    assert scores == sorted(scores) and scores[-1] > scores[0] + 1
    assert result.points[0].kl == pytest.approx(0.0, abs=1e-6)
    assert result.points[0].behaviour == pytest.approx(result.baseline_behaviour, abs=1e-5)
    budget = result.points[1].kl + 1e-9
    assert result.choose(budget).alpha == 2.0
    with pytest.raises(ValueError, match="no setting keeps KL within"):
        result.choose(-1.0)
    assert len(result.plot().data) == 1
    assert next_token_kl(model, prompts, [], chat=False) == pytest.approx(0.0, abs=1e-6)


def test_orthogonalising_a_tied_model_unties_it_and_keeps_the_unembedding(tiny_models):
    """With tied embeddings, editing the embedding in place would also edit the unembedding; the
    copy is untied first, so only residual writes lose the direction."""
    import copy

    from transformers import AutoModelForCausalLM

    base = tiny_models["llama"]
    config = copy.deepcopy(base.hf_model.config)
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    tied = mechscope.HookedModel(AutoModelForCausalLM.from_config(config).eval(), base.tokenizer)
    assert tied.hf_model.lm_head.weight is tied.hf_model.get_input_embeddings().weight
    direction = random_direction(tied)
    tokens = random_tokens(tied)
    edited = orthogonalise(tied, direction)
    runtime = tied.run_with_hooks(tokens, fwd_hooks=DirectionalAblation(direction).hooks(tied))
    torch.testing.assert_close(edited(tokens), runtime, atol=1e-4, rtol=0)
    torch.testing.assert_close(edited.hf_model.lm_head.weight, tied.hf_model.lm_head.weight)
    assert edited.hf_model.config.tie_word_embeddings is False


def test_probe_direction_takes_a_trained_probe():
    from mechscope.probes import train_probe
    from mechscope.steering import probe_direction

    generator = torch.Generator().manual_seed(1)
    planted = torch.nn.functional.normalize(torch.randn(32, generator=generator), dim=0)
    features = torch.randn(300, 32, generator=generator)
    labels = (features @ planted > 0).long()
    probe = train_probe(features, labels, kind="mass_mean")
    direction = probe_direction(probe, layer=3)
    assert direction.method == "probe" and direction.layer == 3
    torch.testing.assert_close(direction.vector, probe.direction / probe.direction.norm())
    assert float(direction.vector @ planted) > 0.9  # a random unit vector in 32 dims: |cos| ~ 0.18


def test_sweep_over_per_layer_directions_with_relative_alphas(tiny_models):
    model = tiny_models["llama"]
    directions = {layer: random_direction(model, seed=layer, layer=layer) for layer in (0, 2)}
    for layer, direction in directions.items():
        direction.scale = 3.0 + layer
    behaviour = LogitBehaviour(["hello there"], tokens=[5], chat=False)
    result = sweep(model, directions, behaviour, ["x y z"], alphas=[0.5, 2.0], relative=True, chat=False,
                   progress=False)
    assert [(p.layer, p.alpha, p.scale) for p in result.points] == [(0, 1.5, 3.0), (0, 6.0, 3.0), (2, 2.5, 5.0),
                                                                    (2, 10.0, 5.0)]
    expected = behaviour.score(model, Steering(directions[2], 10.0, layers=2).hooks(model))
    assert result.points[-1].behaviour == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"no direction for layers \[1\]"):
        sweep(model, directions, behaviour, ["x"], alphas=[1.0], layers=[1], chat=False, progress=False)


def test_probe_behaviour_reads_the_steered_activation(tiny_models):
    """A probe along the steering direction, read where the steering is added, moves by exactly
    alpha (its score is linear), while a read before that layer does not move at all."""
    from types import SimpleNamespace

    from mechscope.steering import ProbeBehaviour

    model = tiny_models["llama"]
    direction = random_direction(model, layer=1)
    probe = SimpleNamespace(score=lambda x: x @ direction.vector.to(x.device))
    prompts = ["hello there", "a b c d"]
    steer = Steering(direction, 3.0).hooks(model)
    at_layer = ProbeBehaviour(prompts, probe, "blocks.1.hook_resid_pre", chat=False)
    assert at_layer.score(model, steer) == pytest.approx(at_layer.score(model) + 3.0, abs=1e-4)
    before = ProbeBehaviour(prompts, probe, "blocks.0.hook_resid_post", chat=False)
    assert before.score(model, steer) == pytest.approx(before.score(model), abs=1e-6)
