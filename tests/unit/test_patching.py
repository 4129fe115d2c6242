"""Batched activation patching: equal to the one-site-per-forward reference, and known values."""

import pytest
import torch

import mechscope
from mechscope import tasks
from mechscope.patching import PatchingResult, activation_patch
from mechscope.patching.reference import activation_patch_naive


@pytest.fixture(scope="module", params=["llama", "gpt2", "gemma3"])
def setup(request):
    model = mechscope.load_tiny(request.param)
    return model, tasks.induction(model, n=3, seq_len=5, seed=2)


@pytest.mark.parametrize("sites", ["resid_pre", "resid_post", "attn_out", "mlp_out", "heads", "heads_by_pos",
                                   "q", "k", "v", "pattern"])
@pytest.mark.parametrize("mode", ["denoise", "noise"])
def test_batched_equals_one_site_per_forward(setup, sites, mode):
    model, task = setup
    batched = activation_patch(model, task, sites, mode=mode, batch_size=7, progress=False)
    naive = activation_patch_naive(model, task, sites, mode=mode, progress=False)
    assert batched.info["forwards"] < naive.info["forwards"]
    torch.testing.assert_close(batched.raw, naive.raw, atol=1e-5, rtol=1e-5)
    assert batched.scores.shape == naive.scores.shape


def test_denoising_the_final_residual_at_end_restores_the_clean_run(setup):
    model, task = setup
    result = activation_patch(model, task, "resid_post", progress=False)
    end = task.clean_tokens.shape[1] - 1
    assert result.scores[-1, end].item() == pytest.approx(1.0, abs=1e-5)
    assert result.scores[-1, :end].abs().max().item() < 1e-5  # earlier positions cannot reach END's logits
    noised = activation_patch(model, task, "resid_post", mode="noise", progress=False)
    assert noised.scores[-1, end].item() == pytest.approx(0.0, abs=1e-5)


def test_identical_clean_and_corrupted_give_zero_effect(setup):
    model, task = setup
    same = tasks.Task("same", task.clean_tokens, task.clean_tokens.clone(), task.answer_tokens,
                      task.wrong_tokens, dict(task.positions))
    result = activation_patch(model, same, "heads", metric="kl", progress=False)
    assert result.raw.abs().max().item() < 1e-6
    assert not result.normalised


def test_result_top_json_round_trip_and_plot(setup, tmp_path):
    model, task = setup
    result = activation_patch(model, task, "heads", progress=False)
    top = result.top(3)
    assert len(top) == 3 and abs(top[0][1]) >= abs(top[1][1]) >= abs(top[2][1])
    path = result.save(tmp_path / "r.json")
    loaded = PatchingResult.load(path)
    assert torch.equal(loaded.scores, result.scores) and loaded.labels == result.labels
    figure = result.plot()
    assert figure.data[0].z.shape == tuple(result.scores.shape)


def test_bad_sites_and_modes_are_clear_errors(setup):
    model, task = setup
    with pytest.raises(ValueError, match="unknown site kind"):
        activation_patch(model, task, "residual", progress=False)
    with pytest.raises(ValueError, match="mode must be"):
        activation_patch(model, task, "heads", mode="restore", progress=False)
    with pytest.raises(ValueError, match="unknown metric"):
        activation_patch(model, task, "heads", metric="accuracy", progress=False)
    with pytest.raises(ValueError, match="out of range"):
        activation_patch(model, task, "heads", layers=[7], progress=False)


def test_attribution_patching_matches_exact_patching_to_first_order(setup):
    """AtP shares the exact sweep's baselines and tracks its scores (random tiny models are far
    from linear, so the floor here is loose; the SmolLM2 test sets the real one)."""
    from mechscope.patching import attribution_patch, correlation

    model, task = setup
    exact = activation_patch(model, task, "heads", progress=False)
    estimate = attribution_patch(model, task, "heads")
    assert estimate.scores.shape == exact.scores.shape
    assert estimate.info["forwards"] == 2 and estimate.info["backwards"] == 1
    assert correlation(estimate, exact) > 0.5
    assert estimate.clean_value == pytest.approx(exact.clean_value, abs=1e-5)
    assert estimate.corrupted_value == pytest.approx(exact.corrupted_value, abs=1e-5)
    with pytest.raises(ValueError, match="KL"):
        attribution_patch(model, task, "heads", metric="kl")


@pytest.mark.parametrize("method", ["zero", "mean", "resample"])
def test_ablation_sweep_equals_patching_in_the_ablated_value(setup, method):
    """Each unit's score equals a single run with that unit replaced by the ablated value, and
    mean ablation uses the mean over the reference prompts."""
    from mechscope.hooks import interventions as iv
    from mechscope.patching import ablation_sweep

    model, task = setup
    reference = tasks.induction(model, n=5, seq_len=5, seed=9).clean_tokens
    result = ablation_sweep(model, task, "heads", method=method, reference=reference, seed=4, progress=False)
    layer, head = 1, 2
    name = f"blocks.{layer}.attn.hook_z"
    _, ref_cache = model.run_with_cache(reference, names=[name])
    if method == "zero":
        hook = iv.zero_ablate(heads=[head])
    elif method == "mean":
        manual_mean = ref_cache[name].mean(0, keepdim=True)
        hook = iv.patch_from(manual_mean.expand(len(task), *manual_mean.shape[1:]), heads=[head])
    else:
        rows = torch.randint(reference.shape[0], (len(task),), generator=torch.Generator().manual_seed(4))
        hook = iv.patch_from(ref_cache[name][rows], heads=[head])
    logits = model.run_with_hooks(task.clean_tokens, fwd_hooks=[(name, hook)])
    assert result.raw[layer, head].item() == pytest.approx(task.logit_diff(logits).mean().item(), abs=1e-5)
    assert result.mode == f"{method}-ablation"


def test_prefix_reuse_goes_through_hooks_and_leaves_the_blocks_alone(setup):
    """Prefix reuse runs in the hook session: a block's instance forward (accelerate's dispatch
    wrappers live there) is never replaced, the skipped blocks run on one row only, and the
    logits equal the run that computes the prefix for every row."""
    from mechscope.hooks.names import resid_post
    from mechscope.patching.prefix import prefix_reuse

    model, task = setup
    block = model.hf_model.get_submodule(model.adapter.path(0))
    original = block.forward
    rows_seen = []

    def wrapper(*args, **kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        rows_seen.append(hidden.shape[0])
        return original(*args, **kwargs)

    block.forward = wrapper
    try:
        tokens = task.clean_tokens
        names = [resid_post(layer) for layer in range(model.cfg.n_layers)]
        plain, cache = model.run_with_cache(tokens, names=names)
        resid = {layer: cache[resid_post(layer)] for layer in range(model.cfg.n_layers)}
        for start in range(model.cfg.n_layers + 1):
            rows_seen.clear()
            reuse = prefix_reuse(model, start, resid, 2)
            assert (reuse is None) == (start == 0)
            logits = model.run_with_hooks(tokens.repeat(2, 1), prefix=reuse)
            torch.testing.assert_close(logits, plain.repeat(2, 1, 1), atol=1e-5, rtol=1e-5)
            assert rows_seen == [1 if start > 0 else 2 * len(task)]  # skipped: one row, not the batch
        assert block.__dict__["forward"] is wrapper
        assert not model.hf_model.get_submodule(model.adapter.path(0))._forward_pre_hooks  # all removed
    finally:
        block.__dict__.pop("forward", None)
