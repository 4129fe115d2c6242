"""Speed of automated interpretability on 2 cores: units per minute per explainer and scorer, and
the speed-up from batching, the prefix cache and the answer cache over one request per window.

    python benchmarks/autointerp_speed.py [--units 4] [--windows 6] [--only-backends]

Units: planted units (their windows: ``--windows`` activating and as many silent windows of 32
tokens) for the input side; for the output side (the ``output`` explainer and the
``intervention`` scorer), directions that write a token (the token's unembedding column at layer
20). The judge is SmolLM2-135M-Instruct in process. Reported side by side in one run:

- units per minute of each explainer and scorer (seconds per unit, mean over the units);
- detection with the in-process backend batched (16 requests per forward), with and without the
  prefix cache (the instructions and explanation shared by a unit's requests computed once per
  batch), against one request at a time, with the same answers (the three interleaved, twice
  each, the least time kept);
- the same detection through ``mechscope serve-llm`` on loopback with 8 requests in flight (the
  server micro-batches them) against one in flight;
- the same detection asked again through the disk cache (nothing recomputed).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

import mechscope
from mechscope.autointerp import (
    SentenceEmbedder,
    detection_score,
    embedding_score,
    explain_llm,
    explain_output,
    explain_tokens,
    fuzzing_score,
    intervention_score,
    intruder_score,
    lexicon_score,
    output_records,
    planted_units,
    simulation_score,
    steered_pairs,
)
from mechscope.autointerp.backends import CachedBackend, LocalBackend, OpenAIBackend
from mechscope.autointerp.backends.server import background_server, create_app
from mechscope.autointerp.planted import planted_contexts
from mechscope.autointerp.records import RecordsConfig, UnitRecords
from mechscope.steering.direction import Direction


def timed(function):
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def unit_rows(model, cases) -> list[tuple[str, float, float]]:
    """(name, seconds per unit, units per minute) of every explainer and scorer."""
    local = LocalBackend(model, batch_size=16)
    embedder = SentenceEmbedder()
    rows = []

    def per_unit(name, run):
        seconds = [timed(lambda case=case: run(*case))[1] for case in cases]
        mean = sum(seconds) / len(seconds)
        rows.append((name, mean, 60 / mean))
        print(f"{name}: {mean:.2f} s per unit, {60 / mean:.1f} units per minute", flush=True)

    per_unit("explainer tokens", lambda u, w, a, i: explain_tokens(w, a))
    per_unit("explainer llm", lambda u, w, a, i: explain_llm(
        [UnitRecords(u.name, i, torch.stack(a), ["top" if x.any() else "random" for x in a], 0.0, RecordsConfig())],
        model.tokenizer, local))
    per_unit("scorer lexicon", lambda u, w, a, i: lexicon_score(u.true.rule, w, a, n_boot=1000))
    per_unit("scorer embedding", lambda u, w, a, i: embedding_score(
        u.true.words, ["".join(x) for x in w], torch.stack([x.any() for x in a]), embedder))
    per_unit("scorer detection", lambda u, w, a, i: detection_score(u.true.words, w, a, local))
    per_unit("scorer fuzzing", lambda u, w, a, i: fuzzing_score(u.true.words, w, a, local))
    per_unit("scorer simulation", lambda u, w, a, i: simulation_score(u.true.words, w, a, local))
    per_unit("scorer intruder", lambda u, w, a, i: intruder_score(w, a, local, n_trials=8, k=4))
    words = [" cat", " water", " music", " money"][:len(cases)]
    directions = [Direction.from_vector(model.W_U[:, model.to_single_token(w)].detach(), layer=20) for w in words]
    prompts = ["The weather today is", "My favourite thing is", "Yesterday I saw a", "The best way to"]
    seconds = []
    for direction in directions:
        (records, alpha), spent = timed(lambda d=direction: (output_records(model, d, prompts), None))
        found, more = timed(lambda r=records: explain_output(r))
        seconds.append(spent + more)
    rows.append(("explainer output", sum(seconds) / len(seconds), 60 * len(seconds) / sum(seconds)))
    print(f"explainer output: {rows[-1][1]:.2f} s per unit", flush=True)
    seconds = []
    for direction in directions:
        _, spent = timed(lambda d=direction: intervention_score(
            "makes the model talk about it", steered_pairs(model, d, prompts, 8.0 * 64), local))
        seconds.append(spent)
    rows.append(("scorer intervention", sum(seconds) / len(seconds), 60 * len(seconds) / sum(seconds)))
    print(f"scorer intervention: {rows[-1][1]:.2f} s per unit", flush=True)

    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=4)
    parser.add_argument("--windows", type=int, default=6)
    parser.add_argument("--only-backends", action="store_true",
                        help="skip the per-unit rates; time only batching, prefix cache, serving and disk cache")
    args = parser.parse_args()
    model = mechscope.load()
    ids = planted_contexts(model.tokenizer, 256, 32, seed=0)
    texts = [[model.tokenizer.decode([int(i)]) for i in row] for row in ids]
    units = [u for u in planted_units() if u.kind == "tokens"][:args.units]
    cases = []
    generator = torch.Generator().manual_seed(0)
    for unit in units:
        activations = [unit.activations(w) for w in texts]
        firing = [i for i, a in enumerate(activations) if a.any()]
        silent = [i for i, a in enumerate(activations) if not a.any()]
        pick = lambda pool: [pool[i] for i in torch.randperm(len(pool), generator=generator)[:args.windows].tolist()]
        chosen = sorted(pick(firing) + pick(silent))
        cases.append((unit, [texts[i] for i in chosen], [activations[i] for i in chosen], ids[chosen]))
    rows = [] if args.only_backends else unit_rows(model, cases)

    # Batching, serving and caching, all on the same detection requests.
    detect = lambda backend: [detection_score(u.true.words, w, a, backend, n_boot=10).value for u, w, a, _ in cases]
    # Interleaved and repeated (the least time kept), so a load that drifts weighs on all three.
    ways = {"batched": {"batch_size": 16}, "unshared": {"batch_size": 16, "prefix_cache": False},
            "single": {"batch_size": 1}}
    answers, spent = {}, {name: float("inf") for name in ways}
    for _ in range(2):
        for name, kwargs in ways.items():
            answers[name], seconds = timed(lambda kw=kwargs: detect(LocalBackend(model, **kw)))
            spent[name] = min(spent[name], seconds)
    (batched, t_batched), (unshared, t_unshared), (single, t_single) = (
        (answers[name], spent[name]) for name in ("batched", "unshared", "single"))
    app = create_app(LocalBackend(model, batch_size=16), "smollm2", batch_size=16)
    with background_server(app) as base:
        url = base + "/v1"
        served, t_served = timed(lambda: detect(OpenAIBackend(url, "smollm2", api_key_env=None, concurrency=8)))
        serial, t_serial = timed(lambda: detect(OpenAIBackend(url, "smollm2", api_key_env=None, concurrency=1)))
    with tempfile.TemporaryDirectory() as folder:
        cached = CachedBackend(LocalBackend(model, batch_size=16), folder)
        _, t_fill = timed(lambda: detect(cached))
        again, t_again = timed(lambda: detect(cached))
    n = len(cases) * 2 * args.windows
    print(f"\nsame answers: batched vs single {max(abs(a - b) for a, b in zip(batched, single)):.2e}, prefix "
          f"cache vs none {max(abs(a - b) for a, b in zip(batched, unshared)):.2e}, served vs "
          f"local {max(abs(a - b) for a, b in zip(served, batched)):.2e}, cached vs fresh "
          f"{max(abs(a - b) for a, b in zip(again, batched)):.2e} (largest score difference)")
    print("\n| explainer / scorer | seconds per unit | units per minute |\n|---|---|---|")
    for name, mean, rate in rows:
        print(f"| {name} | {mean:.2f} | {rate:.1f} |")
    print(f"\n| detection, {n} requests | seconds | speed-up over one request at a time |\n|---|---|---|")
    for name, spent, base in (("in process, one request per forward", t_single, t_single),
                              ("in process, batches of 16, no prefix cache", t_unshared, t_single),
                              ("in process, batches of 16, prefix cache", t_batched, t_single),
                              ("serve-llm, 1 in flight", t_serial, t_serial),
                              ("serve-llm, 8 in flight (micro-batched)", t_served, t_serial),
                              ("disk cache, first run (batches of 16)", t_fill, t_single),
                              ("disk cache, second run", t_again, t_single)):
        print(f"| {name} | {spent:.1f} | {base / spent:.1f}x |")


if __name__ == "__main__":
    main()
