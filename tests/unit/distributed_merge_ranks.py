"""What each rank runs in tests/unit/test_distributed_merge.py (importable, so spawned ranks
find it): the exact merges, the dashboard statistics, spread jobs, autointerp and patching on
each rank's share, written under ``out`` (safetensors and JSON) for the test to compare with
one process. Every data set here is a function of fixed seeds, so the test rebuilds it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

import mechscope
from mechscope import tasks
from mechscope.autointerp import run as autointerp_run
from mechscope.autointerp.records import RecordsConfig
from mechscope.autointerp.run import ExplainOptions, run_explain
from mechscope.autointerp.units import sae_units
from mechscope.distributed import (
    Ranks,
    contiguous_share,
    merge_top_k,
    merge_top_k_many,
    merged_histogram,
    rank_jobs,
    spread_jobs,
)
from mechscope.errors import DistributedError
from mechscope.models.hooked_model import HookedModel
from mechscope.patching import ablation_sweep, activation_patch
from mechscope.sae import SAE, SAEConfig
from mechscope.sae.dashboard import collect, summarise

HOOK = "blocks.1.hook_resid_post"
LATENTS = [0, 3, 5, 7, 11, 30]
BATCH_CONTEXTS = 4
K = 6
RECORDS = RecordsConfig(window=16, n_top=4, n_quantiles=2, per_quantile=4, n_random=6, n_same_tokens=4, n_neighbours=0)


# ---------------------------------------------------------------- data every process rebuilds
def tie_values() -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """(values [20], global index [20], which entries each of 2 ranks holds). Equal values sit
    at several global indices on both ranks, and the smaller index of a tie is often on rank 1,
    so any merge that orders ties by rank (or not at all) gets them wrong."""
    values = torch.tensor([5., 3., 5., 1., 3., 5., 2., 3., 0., 5., 4., 4., 1., 5., 3., 2., 4., 0., 5., 3.])
    index = torch.tensor([17, 4, 3, 0, 12, 8, 6, 1, 2, 11, 9, 5, 7, 19, 10, 14, 13, 16, 15, 18])
    shares = [torch.tensor([0, 1, 4, 5, 8, 9, 12, 13, 16, 17]), torch.tensor([2, 3, 6, 7, 10, 11, 14, 15, 18, 19])]
    return values, index, shares


def histogram_cases() -> dict[str, list[torch.Tensor]]:
    """Per case, each rank's values: the maximum on rank 0 and again on rank 1 (it must land in
    the last bin), an empty rank, no values anywhere, one repeated value (min = max)."""
    generator = torch.Generator().manual_seed(5)
    spread = torch.rand(301, generator=generator) * 7 - 2
    top = float(spread.max())
    return {"split": [spread[:150], torch.cat([spread[150:], torch.tensor([top, top])])],
            "empty_rank": [spread, torch.zeros(0)],
            "all_empty": [torch.zeros(0), torch.zeros(0)],
            "constant": [torch.full((3,), 2.5), torch.full((4,), 2.5)],
            "float64": [spread[:40].double(), spread[40:].double()]}


def dashboard_inputs() -> tuple[HookedModel, SAE, torch.Tensor]:
    """A tiny llama, a TopK dictionary and 20 contexts whose 12..15 repeat 0..3: at the same
    row of their batch of 4, so their activations are bit-equal ties, on different ranks."""
    model = mechscope.load_tiny("llama")
    sae = SAE(SAEConfig(model.cfg.d_model, 32, "topk", k=4, hook_name=HOOK), seed=1)
    contexts = torch.randint(3, model.cfg.d_vocab, (20, 10), generator=torch.Generator().manual_seed(2))
    contexts[12:16] = contexts[0:4]
    return model, sae, contexts


def quick_contexts(model, n_contexts: int = 16, context_length: int = 128, seed: int = 0, skip: int = 0):
    """Stands in for the default corpus (whose parse takes ~10 s per process): random tokens
    after BOS, fixed by ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, model.cfg.d_vocab, (n_contexts + skip, context_length), generator=generator)
    tokens[:, 0] = model.tokenizer.bos_token_id
    return tokens[skip:]


def explain_options() -> ExplainOptions:
    return ExplainOptions(explainer="tokens", scorers=("lexicon",), contexts=12, context_length=65, records=RECORDS,
                          n_boot=100)


def patching_task(model):
    return tasks.induction(model, n=3, seq_len=5, seed=2)


def job(index: int) -> dict:
    return {"job": index, "square": index * index, "half": index / 2, "pair": (index, -index)}


def failing_job(index: int) -> int:
    if index == 3:
        raise ValueError("planted failure in job 3")
    return index


def features_json(features) -> list[dict]:
    return json.loads(json.dumps([dataclasses.asdict(feature) for feature in features]))


# ---------------------------------------------------------------- what each rank runs
def _write(out: Path, name: str, ranks: Ranks, value) -> None:
    (out / f"{name}.rank{ranks.rank}.json").write_text(json.dumps(value))


def naive_merge(ranks: Ranks, values: torch.Tensor, index: torch.Tensor, k: int) -> list[int]:
    """The negative control: each rank's own argsort, gathered and re-sorted by value only, so
    ties come out in rank order rather than by global index."""
    local = values.argsort(descending=True)[:k]
    gathered_values = torch.cat(ranks.all_gather_rows(values[local]))
    gathered_index = torch.cat(ranks.all_gather_rows(index[local]))
    return gathered_index[gathered_values.argsort(descending=True, stable=True)[:k]].tolist()


def merge_scenarios(ranks: Ranks, out: str) -> None:
    """Every scenario of the test module, in one spawn (starting ranks costs seconds)."""
    out = Path(out)
    torch.manual_seed(0)
    values, index, shares = tie_values()
    mine = shares[ranks.rank]
    merged = {str(k): [t.tolist() for t in merge_top_k(ranks, values[mine], index[mine], k)] for k in (1, 4, 7, 25)}
    merged["naive"] = naive_merge(ranks, values[mine], index[mine], 7)
    # Several lists at once: one empty everywhere, one empty on rank 1 only.
    many = merge_top_k_many(ranks, [values[mine], values[:0], values[mine] if ranks.rank == 0 else values[:0]],
                            [index[mine], index[:0], index[mine] if ranks.rank == 0 else index[:0]], 4)
    merged["many"] = [[t.tolist() for t in pair] for pair in many]
    _write(out, "topk", ranks, merged)

    histograms = {}
    for name, parts in histogram_cases().items():
        edges, counts = merged_histogram(ranks, parts[ranks.rank], bins=7)
        histograms[f"{name}.edges"], histograms[f"{name}.counts"] = edges, counts
    save_file(histograms, str(out / f"histograms.rank{ranks.rank}.safetensors"))

    model, sae, contexts = dashboard_inputs()
    share = contiguous_share(ranks, len(contexts), BATCH_CONTEXTS)
    values = collect(model, contexts[share.start:share.stop], HOOK, lambda x: sae.encode(x)[..., LATENTS],
                     batch_contexts=BATCH_CONTEXTS, progress=False)
    features = summarise(values, [f"latent {i}" for i in LATENTS], None, k=K, seed=3, ranks=ranks,
                         first_context=share.start)
    _write(out, "features", ranks, {"share": [share.start, share.stop], "features": features_json(features)})
    from mechscope.sae.dashboard import sae_dashboards

    index_page = sae_dashboards(model, sae, contexts, LATENTS, out / "dashboards", progress=False, ranks=ranks,
                                batch_contexts=BATCH_CONTEXTS)
    _write(out, "dashboard_index", ranks, str(index_page))

    ran = []
    results = spread_jobs(ranks, 5, lambda i: ran.append(i) or job(i))
    _write(out, "jobs", ranks, {"results": results, "ran": ran, "mine": list(rank_jobs(ranks, 5))})
    try:
        spread_jobs(ranks, 5, failing_job, what="planted jobs")
        failure = None
    except DistributedError as error:
        failure = str(error)
    _write(out, "failure", ranks, failure)

    autointerp_run.default_contexts = quick_contexts  # this process only; the test patches its own
    summary = run_explain(model, sae_units(model, sae, LATENTS[:5]), explain_options(), out / "explain",
                          progress=False, ranks=ranks)
    _write(out, "explain", ranks, summary)

    task = patching_task(model)
    patched = activation_patch(model, task, "heads", batch_size=12, progress=False, ranks=ranks)
    ablated = ablation_sweep(model, task, "heads", method="mean", batch_size=7, progress=False, ranks=ranks)
    save_file({"patch.raw": patched.raw, "patch.scores": patched.scores, "ablation.raw": ablated.raw,
               "ablation.scores": ablated.scores}, str(out / f"patching.rank{ranks.rank}.safetensors"))
    _write(out, "patching_info", ranks, {"patch": patched.info, "ablation": ablated.info})
