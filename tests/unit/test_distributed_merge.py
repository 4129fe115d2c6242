"""Exact merges on 2 real gloo ranks (one spawn for the module, file:// rendezvous): top-k with
ties broken by global index, histograms, dashboard statistics and pages, spread jobs,
autointerp and patching sweeps all equal one process on all the data; a failing job stops both
ranks with its name; a naive merge that orders ties by rank does not pass."""

import json

import pytest
import torch
from safetensors.torch import load_file

from mechscope.autointerp import run as autointerp_run
from mechscope.autointerp.run import run_explain
from mechscope.autointerp.units import sae_units
from mechscope.distributed import (
    Ranks,
    contiguous_share,
    merge_top_k,
    merged_histogram,
    rank_jobs,
    run_ranks,
    spread_jobs,
    top_k,
)
from mechscope.errors import ConfigError, InputTypeError, NonFiniteError
from mechscope.patching import ablation_sweep, activation_patch
from mechscope.sae.dashboard import collect, sae_dashboards, summarise
from tests.unit import distributed_merge_ranks as scenario

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ranks_out(tmp_path_factory):
    folder = tmp_path_factory.mktemp("merge")
    out = folder / "out"
    out.mkdir()
    outcomes = run_ranks(scenario.merge_scenarios, 2, folder / "work", str(out), timeout_s=240,
                         collective_timeout_s=30)
    assert [o.ok for o in outcomes] == [True, True], [(o.error_type, o.error) for o in outcomes]
    return out


def both(out, name):
    return [json.loads((out / f"{name}.rank{rank}.json").read_text()) for rank in (0, 1)]


@pytest.fixture(scope="module")
def dashboard_inputs():
    return scenario.dashboard_inputs()


def test_top_k_orders_ties_by_global_index_whatever_the_input_order():
    values, index, _ = scenario.tie_values()
    best_values, best_index = top_k(values, index, 7)
    assert best_values.tolist() == [5.0] * 6 + [4.0]
    assert best_index.tolist() == [3, 8, 11, 15, 17, 19, 5]
    shuffled = torch.randperm(len(values), generator=torch.Generator().manual_seed(1))
    assert top_k(values[shuffled], index[shuffled], 7)[1].tolist() == best_index.tolist()
    assert top_k(values, index, 0)[0].numel() == 0 and len(top_k(values, index, 50)[0]) == len(values)
    with pytest.raises(NonFiniteError, match="NaN"):
        top_k(torch.tensor([1.0, float("nan")]), torch.tensor([0, 1]), 1)
    with pytest.raises(InputTypeError, match="global_index must be an integer tensor"):
        top_k(values, index.float(), 3)
    with pytest.raises(ConfigError, match="k must be at least 0"):
        top_k(values, index, -1)


def test_merged_top_k_with_ties_split_over_ranks_equals_one_process(ranks_out):
    values, index, _ = scenario.tie_values()
    for merged in both(ranks_out, "topk"):
        for k in (1, 4, 7, 25):
            expected = top_k(values, index, k)
            assert merged[str(k)] == [expected[0].tolist(), expected[1].tolist()]
        assert merged["many"][1] == [[], []]  # empty on every rank
        rank0 = scenario.tie_values()[2][0]
        assert merged["many"][2] == [t.tolist() for t in top_k(values[rank0], index[rank0], 4)]
    assert both(ranks_out, "topk")[0] == both(ranks_out, "topk")[1]


def test_naive_merge_without_the_global_tie_break_is_caught(ranks_out):
    """The negative control: ordering ties by rank gives another list, which the comparison above
    would reject."""
    values, index, _ = scenario.tie_values()
    naive = both(ranks_out, "topk")[0]["naive"]
    assert naive != top_k(values, index, 7)[1].tolist()
    assert sorted(naive[:6]) == [3, 8, 11, 15, 17, 19]  # the same set: only the tie order is wrong


def test_merged_histograms_equal_torch_histogram_of_everything(ranks_out):
    for rank in (0, 1):
        merged = load_file(str(ranks_out / f"histograms.rank{rank}.safetensors"))
        for name, parts in scenario.histogram_cases().items():
            counts, edges = torch.histogram(torch.cat(parts), bins=7)
            assert torch.equal(merged[f"{name}.edges"], edges), name
            assert torch.equal(merged[f"{name}.counts"], counts), name
    split = scenario.histogram_cases()["split"]
    assert load_file(str(ranks_out / "histograms.rank0.safetensors"))["split.counts"][-1] >= 3  # the max, 3 times
    assert merged_histogram(Ranks(), split[0], 7)[1].sum() == len(split[0])


def test_dashboard_statistics_on_two_ranks_equal_one_process(ranks_out, dashboard_inputs):
    model, sae, contexts = dashboard_inputs
    values = collect(model, contexts, scenario.HOOK, lambda x: sae.encode(x)[..., scenario.LATENTS],
                     batch_contexts=scenario.BATCH_CONTEXTS, progress=False)
    single = scenario.features_json(summarise(values, [f"latent {i}" for i in scenario.LATENTS], None,
                                              k=scenario.K, seed=3))
    shares = []
    for merged in both(ranks_out, "features"):
        assert merged["features"] == single
        shares.append(merged["share"])
    assert shares == [[0, 12], [12, 20]]
    # The test has teeth: contexts 12..15 repeat 0..3 on the other rank, so tops hold exact ties
    # whose order only the global index fixes, and the quantile samples come from both ranks.
    assert torch.equal(values[12:16], values[0:4])
    tied = 0
    for j, feature in enumerate(single):
        keys = [(-float(values[c, p, j]), c * (values.shape[1] - 1) + p - 1) for c, p in feature["top"]]
        assert keys == sorted(keys)  # largest first, ties by global token index
        tied += len(keys) - len({value for value, _ in keys})
    assert tied > 0
    picked = {c for f in single for picks in f["quantiles"].values() for c, _ in picks}
    assert min(picked) < 12 <= max(picked)


def test_dashboard_pages_from_two_ranks_equal_one_process(ranks_out, dashboard_inputs, tmp_path):
    model, sae, contexts = dashboard_inputs
    index = sae_dashboards(model, sae, contexts, scenario.LATENTS, tmp_path / "single", progress=False,
                           batch_contexts=scenario.BATCH_CONTEXTS)
    assert both(ranks_out, "dashboard_index") == [str(ranks_out / "dashboards" / "index.html")] * 2
    assert (ranks_out / "dashboards" / "features.jsonl").read_text() == (index.parent / "features.jsonl").read_text()
    assert sorted(p.name for p in (ranks_out / "dashboards").glob("feature_*.html")) == \
        sorted(p.name for p in index.parent.glob("feature_*.html"))


def test_spread_jobs_returns_the_serial_list_in_job_order(ranks_out):
    serial = [json.loads(json.dumps(scenario.job(i))) for i in range(5)]
    assert spread_jobs(Ranks(), 5, scenario.job) == serial
    for rank, outcome in enumerate(both(ranks_out, "jobs")):
        assert outcome["results"] == serial
        assert outcome["ran"] == outcome["mine"] == list(range(rank, 5, 2))  # job i on rank i % 2
    assert list(rank_jobs(Ranks(), 3)) == [0, 1, 2]
    assert [contiguous_share(Ranks(rank=r, world_size=3), 10) for r in range(3)] == [range(0, 4), range(4, 7),
                                                                                       range(7, 10)]


def test_a_job_failing_on_one_rank_stops_both_with_its_name(ranks_out):
    for message in both(ranks_out, "failure"):
        assert message is not None
        assert "planted jobs: job 3 failed on rank 1 of 2: ValueError: planted failure in job 3" in message
    with pytest.raises(ValueError, match="planted failure"):  # one process: the job's own error
        spread_jobs(Ranks(), 5, scenario.failing_job)


def _without_seconds(summary: dict) -> dict:
    return {**summary, "units": [{k: v for k, v in unit.items() if k != "seconds"} for unit in summary["units"]]}


def test_autointerp_spread_over_ranks_equals_one_process(ranks_out, dashboard_inputs, tmp_path, monkeypatch):
    model, sae, _ = dashboard_inputs
    monkeypatch.setattr(autointerp_run, "default_contexts", scenario.quick_contexts)
    single = run_explain(model, sae_units(model, sae, scenario.LATENTS[:5]), scenario.explain_options(),
                         tmp_path / "explain", progress=False)
    assert [u["unit"] for u in single["units"]] == [f"latent {i}" for i in scenario.LATENTS[:5]]
    assert {u["status"] for u in single["units"]} & {"explained", "unexplained"}
    for summary in both(ranks_out, "explain"):
        assert _without_seconds(summary) == _without_seconds(single)
    for unit in single["units"]:
        name = unit["unit"].replace(" ", "_")
        written = json.loads((ranks_out / "explain" / "units" / f"{name}.json").read_text())
        assert {k: v for k, v in written.items() if k != "seconds"} == \
            {k: v for k, v in unit.items() if k != "seconds"}
    assert (ranks_out / "explain" / "summary.md").read_text() == (tmp_path / "explain" / "summary.md").read_text()


def test_patching_sweeps_spread_over_ranks_equal_one_process(ranks_out, dashboard_inputs):
    model, _, _ = dashboard_inputs
    task = scenario.patching_task(model)
    patched = activation_patch(model, task, "heads", batch_size=12, progress=False)
    ablated = ablation_sweep(model, task, "heads", method="mean", batch_size=7, progress=False)
    assert patched.info["forwards"] == 3 and ablated.info["forwards"] == 6  # uneven and even splits
    for rank in (0, 1):
        merged = load_file(str(ranks_out / f"patching.rank{rank}.safetensors"))
        for name, result in (("patch", patched), ("ablation", ablated)):
            assert torch.equal(merged[f"{name}.raw"], result.raw)
            assert torch.equal(merged[f"{name}.scores"], result.scores)
    assert both(ranks_out, "patching_info")[0]["patch"] == json.loads(json.dumps(patched.info))
    assert patched.raw.abs().max() > 0


def test_merge_functions_in_a_world_of_one_refuse_bad_input():
    with pytest.raises(InputTypeError, match="ranks must be"):
        merge_top_k("2", torch.ones(2), torch.arange(2), 1)
    with pytest.raises(InputTypeError, match="values must be a 1-d"):
        merge_top_k(Ranks(), torch.ones(2, 2), torch.arange(2), 1)
    with pytest.raises(ConfigError, match="bins must be at least 1"):
        merged_histogram(Ranks(), torch.ones(3), 0)
    with pytest.raises(NonFiniteError, match=r"columns \[0\] hold NaN"):
        merged_histogram(Ranks(), torch.tensor([1.0, float("nan")]), 3)
    with pytest.raises(InputTypeError, match="run_job must be a function"):
        spread_jobs(Ranks(), 2, [1, 2])
    with pytest.raises(ConfigError, match="n_jobs must be at least 0"):
        spread_jobs(Ranks(), -1, scenario.job)
