"""The structure holds: the import layers, hook names built in one place, one config style,
MechscopeError as the base of the library's own errors, and the padding mask kept by to_tokens."""

import ast
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mechscope
from mechscope import errors
from mechscope.analysis import logit_lens
from mechscope.circuits import discover
from mechscope.circuits.discover import DiscoveryConfig
from mechscope.circuits.graph import ComponentGraph, WriterId
from mechscope.hooks import interventions as iv
from mechscope.hooks import names
from mechscope.patching import causal_trace
from mechscope.patching.tracing import TraceConfig
from mechscope.probes import ProbeSweepConfig, probe_sweep
from mechscope.steering import Direction, Steering
from mechscope.steering.sweep import SweepConfig
from mechscope.validate import check_choice

SRC = Path(mechscope.__file__).resolve().parent


def _imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    return modules


def test_hooks_imports_nothing_else_of_mechscope_not_even_for_type_checking():
    outside = {module for path in (SRC / "hooks").rglob("*.py") for module in _imported_modules(path)
               if module.startswith("mechscope") and not module.startswith("mechscope.hooks")}
    assert outside == set()


@pytest.mark.skipif(shutil.which("lint-imports", path=str(Path(sys.executable).parent)) is None,
                    reason="import-linter is a dev extra (make test installs it)")
def test_import_layer_contract_is_kept():
    result = subprocess.run([str(Path(sys.executable).parent / "lint-imports")], capture_output=True, text=True,
                            cwd=SRC.parents[1], timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 kept, 0 broken" in result.stdout


def test_hook_names_are_formatted_only_by_the_name_builders():
    offenders = [f"{path.relative_to(SRC)}:{number}" for path in SRC.rglob("*.py") if path != SRC / "hooks" / "names.py"
                 for number, line in enumerate(path.read_text().splitlines(), 1) if 'f"blocks.{' in line]
    assert offenders == []
    assert names.resid_pre(3) == "blocks.3.hook_resid_pre"
    assert names.attn(2, "z") == "blocks.2.attn.hook_z" and names.short("resid_post", 1) == "blocks.1.hook_resid_post"


def test_every_builder_name_exists_in_the_catalogue(tiny):
    layer = tiny.cfg.n_layers - 1
    built = [names.resid_pre(layer), names.resid_post(layer), names.attn_out(layer), names.mlp_out(layer),
             names.mlp_in(layer), names.normalized(layer, 1), names.normalized(layer, 2), names.EMBED, names.LN_FINAL]
    built += [names.attn(layer, part) for part in ("q", "k", "v", "z", "result", "pattern", "attn_scores")]
    built += [names.mlp(layer, part) for part in ("pre", "post")]
    for name in built:
        assert name in tiny.catalogue, name
    for role in ("block", "ln1", "attn", "o_proj", "mlp_out_proj", "attn_out", "mlp_out"):
        tiny.hf_model.get_submodule(tiny.adapter.path(layer, role))
    with pytest.raises(errors.MechscopeError, match="no module for role 'nonsense'"):
        tiny.adapter.path(0, "nonsense")


def test_circuit_writers_and_receivers_are_typed():
    graph = ComponentGraph.from_config(mechscope.load_tiny("llama").cfg)
    assert graph.writer_ids[0] == WriterId("input", -1)
    for writer in graph.writer_ids[1:]:
        assert writer.kind in ("head", "mlp") and writer.label in graph.writers
        assert writer.depth == writer.layer + (0.5 if writer.kind == "mlp" else 0)
    for receiver in graph.receivers:
        assert receiver.node and (receiver.kind != "attention" or receiver.part in ("q", "k", "v", ""))
    assert graph.receivers[-1].kind == "logits" and math.isinf(graph.receivers[-1].depth)


def test_library_errors_share_one_base_that_is_also_the_builtin_kind():
    assert issubclass(errors.MechscopeError, ValueError)
    assert issubclass(errors.UnknownHookError, KeyError) and issubclass(errors.UnknownHookError, errors.MechscopeError)
    assert issubclass(errors.MissingFileError, FileNotFoundError)
    assert issubclass(errors.OutOfRangeError, IndexError)
    with pytest.raises(errors.UnknownHookError) as info:
        mechscope.load_tiny("llama").hook_point("blocks.0.hook_resid_psot")
    assert str(info.value).startswith("unknown hook point")  # not quoted, as a bare KeyError would be


def test_check_choice_names_the_field_the_value_and_every_choice():
    from typing import Literal

    with pytest.raises(errors.ConfigError, match=r"unknown method 'c'; method must be one of: a, b"):
        check_choice("method", "c", Literal["a", "b"])


# ------------------------------------------------------------------ padding mask from to_tokens
def test_padded_batch_from_to_tokens_reads_each_prompts_own_last_token(tiny_models):
    model = tiny_models["llama"]
    prompts = ["hi", "a much longer prompt here"]
    tokens = model.to_tokens(prompts)
    assert tokens.shape[0] == 2 and model.attention_mask_of(tokens) is not None
    _, from_tokens = model.run_with_cache(tokens)
    _, from_strings = model.run_with_cache(prompts)
    _, alone = model.run_with_cache(prompts[0])
    short_lens = [logit_lens(model, cache, position=-1, batch_index=0).log_probs for cache in (from_tokens, from_strings)]
    torch.testing.assert_close(short_lens[0], short_lens[1])
    torch.testing.assert_close(short_lens[0], logit_lens(model, alone, position=-1).log_probs, atol=1e-5, rtol=1e-5)
    # the plain forward with that tensor equals the forward with the strings
    torch.testing.assert_close(model(tokens), model(prompts))


def test_gradient_caches_keep_the_padding_mask(tiny_models):
    model = tiny_models["llama"]
    tokens = model.to_tokens(["hi", "a much longer prompt here"])
    _, cache, grads = model.run_with_cache_and_grads(tokens, lambda logits: logits[:, -1].sum(),
                                                     names=[names.resid_post(0)])
    assert cache.attention_mask is not None and grads.attention_mask is not None
    assert cache.resolve_position(-1, 0) == int(model.attention_mask_of(tokens)[0].sum()) - 1


# ------------------------------------------------------------------ one config style
def test_discovery_config_is_validated_on_construction_and_accepted_by_discover(tiny_models):
    with pytest.raises(errors.ConfigError, match="unknown method 'magic'; method must be one of: eap, eap-ig, acdc, exact"):
        DiscoveryConfig(method="magic")
    with pytest.raises(errors.ConfigError, match="steps must be at least 1"):
        DiscoveryConfig(steps=0)
    with pytest.raises(errors.ConfigError, match="needs threshold"):
        DiscoveryConfig(method="acdc")
    model = tiny_models["llama"]
    task = mechscope.tasks.induction(model, n=4, seed=0)
    by_options = discover(model, task, method="eap", n_edges=12, progress=False)
    by_config = discover(model, task, config=DiscoveryConfig(method="eap", n_edges=12), progress=False)
    assert torch.equal(by_options.edges, by_config.edges)
    torch.testing.assert_close(by_options.scores, by_config.scores, atol=0, rtol=0, equal_nan=True)  # NaN = no edge
    with pytest.raises(errors.ConfigError, match="not both"):
        discover(model, task, config=DiscoveryConfig(method="eap"), n_edges=3)


def test_trace_and_probe_configs_equal_their_keyword_forms_and_refuse_mixing(tiny_models):
    model = tiny_models["llama"]
    prompt, subject = "the quick brown fox jumps", "brown fox"
    by_options = causal_trace(model, prompt, subject, kind="mlp", window=2, samples=2, progress=False)
    by_config = causal_trace(model, prompt, subject, config=TraceConfig(kind="mlp", window=2, samples=2),
                             progress=False)
    assert torch.equal(by_options.raw, by_config.raw)
    with pytest.raises(errors.ConfigError, match="samples"):
        causal_trace(model, prompt, subject, config=TraceConfig(), samples=3)
    with pytest.raises(errors.ConfigError, match="samples must be at least 1"):
        TraceConfig(samples=0)
    texts = [f"word {i} here" for i in range(12)]
    labels = [i % 2 for i in range(12)]
    hook = names.resid_post(0)
    sweep_a = probe_sweep(model, texts, labels, hook, kind="mass_mean", seed=3, progress=False)
    sweep_b = probe_sweep(model, texts, labels, hook, config=ProbeSweepConfig(kind="mass_mean", seed=3), progress=False)
    assert sweep_a.rows[0].test_accuracy == sweep_b.rows[0].test_accuracy
    with pytest.raises(errors.ConfigError, match="kind must be one of"):
        ProbeSweepConfig(kind="svm")
    with pytest.raises(errors.ConfigError, match="not both"):
        probe_sweep(model, texts, labels, hook, config=ProbeSweepConfig(), seed=1)


def test_non_finite_strengths_and_directions_are_refused_where_they_enter():
    unit = Direction.from_vector(torch.ones(8), layer=0)
    with pytest.raises(errors.NonFiniteError, match="alpha must be finite"):
        Steering(unit, float("nan"))
    with pytest.raises(errors.NonFiniteError, match="alpha must be finite"):
        SweepConfig(alphas=(1.0, float("inf")))
    with pytest.raises(errors.MechscopeError, match="norm nan"):
        Direction.from_vector(torch.tensor([1.0, float("nan")]))
    with pytest.raises(errors.NonFiniteError, match="NaN or infinite"):
        Direction(torch.tensor([1.0, float("nan")]), layer=0)
    with pytest.raises(errors.MechscopeError, match="scale"):
        Direction(unit.vector, layer=0, scale=float("nan"))
    with pytest.raises(errors.MechscopeError, match="NaN or infinite"):
        iv.add_vector(torch.ones(8), float("nan"))
    with pytest.raises(errors.MechscopeError, match="zero vector"):
        iv.project_out(torch.zeros(8))


def test_steering_sweep_takes_a_config_or_options_not_both():
    from mechscope.steering import sweep

    unit = Direction.from_vector(torch.ones(8), layer=0)
    with pytest.raises(errors.ConfigError, match="not both"):
        sweep(None, unit, None, ["x"], alphas=[1.0], config=SweepConfig(alphas=(1.0,)))
    with pytest.raises(errors.ConfigError, match="at least one alpha"):
        sweep(None, unit, None, ["x"])


@pytest.mark.parametrize("padded", [False, True])
def test_prefix_reuse_equals_the_full_run_on_every_family(tiny, padded):
    from mechscope.patching.prefix import prefix_reuse

    tokens = tiny.to_tokens(["a b c d e f", "x y"]) if padded else torch.randint(0, 200, (3, 9))
    mask = tiny.attention_mask_of(tokens)
    layers = range(tiny.cfg.n_layers)
    plain, cache = tiny.run_with_cache(tokens, names=[names.resid_post(layer) for layer in layers])
    resid = {layer: cache[names.resid_post(layer)] for layer in layers}
    for start in range(1, tiny.cfg.n_layers + 1):
        logits = tiny.run_with_hooks(tokens.repeat(2, 1), prefix=prefix_reuse(tiny, start, resid, 2),
                                     attention_mask=None if mask is None else mask.repeat(2, 1))
        assert torch.equal(logits, plain.repeat(2, 1, 1)), (start, padded)


def test_stacks_of_a_padded_batch_read_each_prompts_own_last_token(tiny_models):
    model = tiny_models["llama"]
    padded = model.to_tokens(["a much longer prompt here", "hi"])
    _, batch = model.run_with_cache(padded)
    _, alone = model.run_with_cache("hi")
    for method in ("accumulated_resid", "decompose_resid", "stack_head_results"):
        torch.testing.assert_close(getattr(batch, method)(pos_slice=-1)[:, 1],
                                   getattr(alone, method)(pos_slice=-1)[:, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batch.norm_scale(pos_slice=-1)[1], alone.norm_scale(pos_slice=-1)[0])
    stack = batch.decompose_resid(pos_slice=-1)
    with torch.no_grad():
        logits = model(padded)[1, batch.resolve_position(-1, 1)]
    token = int(logits.argmax())
    attrs = batch.logit_attrs(stack, token)[:, 1].sum() + model.logit_bias(token)[0]
    assert abs(float(attrs.detach()) - float(logits[token])) < 1e-3  # W_U carries autograd
