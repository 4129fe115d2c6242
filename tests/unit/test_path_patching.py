"""Path patching equals a direct, unbatched implementation of its definition."""

import pytest
import torch

import mechscope
from mechscope import tasks
from mechscope.hooks import interventions as iv
from mechscope.patching import activation_patch, path_patch


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def setup(request):
    model = mechscope.load_tiny(request.param)
    return model, tasks.induction(model, n=3, seq_len=5, seed=5)


def naive_path_value(model, task, sender, receivers, inputs, freeze_mlps):
    wanted = lambda name: name.endswith("hook_z") or name.endswith("hook_mlp_out")  # noqa: E731
    _, clean = model.run_with_cache(task.clean_tokens, names=wanted)
    _, corrupted = model.run_with_cache(task.corrupted_tokens, names=wanted)
    layer, head = sender

    def freeze(activation, hook):
        frozen = clean[hook.name].clone()
        if hook.layer() == layer:
            frozen[:, :, head] = corrupted[hook.name][:, :, head]
        return frozen

    hooks = [(lambda n: n.endswith("hook_z"), freeze)]
    if freeze_mlps:
        hooks.append((lambda n: n.endswith("hook_mlp_out") and int(n.split(".")[1]) >= layer,
                      lambda a, h: clean[h.name]))
    captured = {}
    for receiver_layer, _ in receivers if receivers != "logits" else []:
        for kind in inputs:
            hooks.append((f"blocks.{receiver_layer}.attn.hook_{kind}",
                          lambda a, h: captured.__setitem__(h.name, a.clone())))
    logits = model.run_with_hooks(task.clean_tokens, fwd_hooks=hooks)
    if receivers != "logits":
        group = model.cfg.n_query_per_kv
        patch = [(f"blocks.{rl}.attn.hook_{kind}",
                  iv.patch_from(captured[f"blocks.{rl}.attn.hook_{kind}"], heads=[rh if kind == "q" else rh // group]))
                 for rl, rh in receivers for kind in inputs]
        logits = model.run_with_hooks(task.clean_tokens, fwd_hooks=patch)
    return task.logit_diff(logits).mean().item()


@pytest.mark.parametrize("receivers,inputs,freeze_mlps", [
    ("logits", ("q",), False),
    ("logits", ("q",), True),
    ([(2, 1)], ("q",), False),
    ([(2, 0), (2, 3)], ("k", "v"), False),
    ([(1, 2)], ("q", "k", "v"), True),
    ([(1, 0), (2, 1)], ("q", "v"), False),  # receivers in two layers; senders between them
    ([(0, 1), (2, 1)], ("q",), False),  # a receiver inside the reused prefix of a later sender
])
def test_batched_path_patching_equals_the_definition(setup, receivers, inputs, freeze_mlps):
    model, task = setup
    result = path_patch(model, task, receivers=receivers, receiver_input=inputs, freeze_mlps=freeze_mlps,
                        batch_size=5, progress=False)
    for sender in [(0, 0), (0, 3), (1, 1)]:
        if receivers != "logits" and sender[0] >= max(r[0] for r in receivers):
            continue
        expected = naive_path_value(model, task, sender, receivers, inputs, freeze_mlps)
        assert result.raw[sender].item() == pytest.approx(expected, abs=1e-5), sender


def test_last_layer_senders_to_logits_equal_noising_that_head(setup):
    model, task = setup
    last = model.cfg.n_layers - 1
    paths = path_patch(model, task, receivers="logits", progress=False)
    noised = activation_patch(model, task, "heads", mode="noise", layers=[last], progress=False)
    torch.testing.assert_close(paths.raw[last], noised.raw[0], atol=1e-5, rtol=1e-5)


def test_senders_without_a_path_score_as_clean(setup):
    model, task = setup
    result = path_patch(model, task, receivers=[(1, 0)], receiver_input="q", progress=False)
    assert torch.allclose(result.raw[1:], torch.tensor(result.clean_value))
    with pytest.raises(ValueError, match="out of range"):
        path_patch(model, task, receivers=[(9, 0)], progress=False)
    with pytest.raises(ValueError, match="receiver_input"):
        path_patch(model, task, receivers=[(1, 0)], receiver_input="o", progress=False)
