"""Validity of every scorer, backend and explainer on planted units whose meaning is known.

    python benchmarks/autointerp_planted.py [--windows 8] [--scorers lexicon,embedding,detection,fuzzing,simulation]
        [--backends local,serve-llm-no-logprobs] [--explainers tokens,llm] [--out /tmp/autointerp-planted]

The 33 planted units (mechscope.autointerp.planted: word sets, token patterns, "the token after
X") fire exactly where their rule holds on windows of the default corpus. Each has one true
explanation and three or four false ones (near misses included). For each unit, ``--windows``
activating and as many silent windows of 16 tokens are drawn (seed 0); every scorer scores every
explanation on them, and the benchmark reports how often the true explanation ranks strictly
above every false one ("top-1"), the share of (true, false) pairs it wins ("pairwise"; ties
count half), how many true explanations are above chance, and the margin: the true explanation's
score minus the mean of its false ones, averaged over units with a 95% bootstrap interval over
units (a unit's 8 windows alone are too few to leave chance). The lexicon scorer reads the
explanations' rule form, the others their words. ``intruder`` needs no explanation: it is
reported as the share of units it finds the intruder above chance for (its margin: the mean
P(intruder) minus chance, 0.25).

Backends: ``local`` (SmolLM2-135M-Instruct in process, with logprobs), ``serve-llm`` (the same
model behind ``mechscope serve-llm`` on loopback, through the HTTP client: it must match local),
``serve-llm-no-logprobs`` (the same server answering without logprobs: scorers fall back to
parsed labels). Explainers: each unit's explanation by ``tokens`` and ``llm`` (written from
windows drawn with another seed), and where each scorer (the in-process judge for the judged
ones) ranks it among the unit's true and false explanations (1 = none scores above it).
Answers are cached under --out, so a rerun costs little.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import ExitStack
from pathlib import Path

import torch

import mechscope
from mechscope.autointerp import (
    SentenceEmbedder,
    bootstrap_interval,
    detection_score,
    embedding_score,
    explain_llm,
    explain_tokens,
    fuzzing_score,
    intruder_score,
    lexicon_score,
    planted_units,
    simulation_score,
)
from mechscope.autointerp.backends import CachedBackend, LocalBackend, OpenAIBackend
from mechscope.autointerp.backends.server import background_server, create_app
from mechscope.autointerp.lexicon import LexiconParseError
from mechscope.autointerp.planted import planted_contexts
from mechscope.autointerp.records import RecordsConfig, UnitRecords
from mechscope.files import atomic_text

WINDOW = 16  # short enough that even the densest unit (capitalised words) has silent windows
JUDGED = ("detection", "fuzzing", "simulation")


def unit_windows(ids: torch.Tensor, texts: list[list[str]], unit, n: int, seed: int):
    """(windows, activations, ids) of ``n`` activating and ``n`` silent windows of one unit."""
    activations = [unit.activations(w) for w in texts]
    firing = [i for i, a in enumerate(activations) if a.any()]
    silent = [i for i, a in enumerate(activations) if not a.any()]
    generator = torch.Generator().manual_seed(seed)
    pick = lambda pool: [pool[i] for i in torch.randperm(len(pool), generator=generator)[:n].tolist()]
    chosen = sorted(pick(firing) + pick(silent))
    return [texts[i] for i in chosen], [activations[i] for i in chosen], ids[chosen]


def score_one(name, explanation, rule, windows, activations, backend, embedder):
    if name == "lexicon":
        return lexicon_score(rule, windows, activations, n_boot=200)
    if name == "embedding":
        fires = torch.stack([a.any() for a in activations])
        return embedding_score(explanation, ["".join(w) for w in windows], fires, embedder, n_boot=200)
    scorer = {"detection": detection_score, "fuzzing": fuzzing_score, "simulation": simulation_score}[name]
    return scorer(explanation, windows, activations, backend, n_boot=200)


def ranks(true: float, false: list[float]) -> tuple[bool, float]:
    """(true strictly above every false, share of pairs won with ties counting half)."""
    wins = [1.0 if true > f else 0.5 if true == f else 0.0 for f in false]
    return all(true > f for f in false), sum(wins) / len(wins)


def pooled_margin(margins: list[float]) -> dict:
    """Mean over units of the true explanation's score minus the mean of its false ones (for
    intruder: its score minus chance), with a 95% bootstrap interval over units. One unit's 8
    windows give an interval too wide to leave chance; pooled over the units it can, so a scorer
    that helps a little shows here first."""
    mean, low, high = bootstrap_interval(torch.tensor(margins, dtype=torch.float64)[:, None],
                                         lambda rows: rows[..., 0].mean(-1), n_boot=2000)
    return {"mean": mean, "low": low, "high": high, "units": len(margins)}


def start_server(servers: ExitStack, model, logprobs: bool) -> str:
    """``mechscope serve-llm``'s app over ``model`` in a thread, on a free loopback port, until
    ``servers`` closes; returns its API's base URL."""
    app = create_app(LocalBackend(model, batch_size=16), "smollm2", batch_size=16, logprobs=logprobs)
    return servers.enter_context(background_server(app)) + "/v1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=6, help="activating (and as many silent) windows per unit")
    parser.add_argument("--scorers", default="lexicon,embedding,detection,fuzzing,simulation,intruder")
    parser.add_argument("--backends", default="local,serve-llm-no-logprobs")
    parser.add_argument("--fallback-scorers", default="detection",
                        help="the judged scorers run on the no-logprobs backend (parsed labels; simulation's "
                             "written fallback costs a long generation per window)")
    parser.add_argument("--explainers", default="tokens,llm")
    parser.add_argument("--units", type=int, default=0, help="only the first N units (0: all 33)")
    parser.add_argument("--every", type=int, default=1, help="every K-th unit (a subset spanning all kinds)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/autointerp-planted"))
    args = parser.parse_args()
    scorers = [s for s in args.scorers.split(",") if s]
    backend_names = [b for b in args.backends.split(",") if b]
    explainers = [e for e in args.explainers.split(",") if e]
    args.out.mkdir(parents=True, exist_ok=True)

    model = mechscope.load()
    ids = planted_contexts(model.tokenizer, 256, WINDOW, seed=0)
    texts = [[model.tokenizer.decode([int(i)]) for i in row] for row in ids]
    units = planted_units()[::args.every][:args.units or None]
    embedder = SentenceEmbedder() if "embedding" in scorers else None
    servers, backends = ExitStack(), {}
    for name in backend_names:
        if name == "local":
            inner = LocalBackend(model, batch_size=16)
        elif name in ("serve-llm", "serve-llm-no-logprobs"):
            url = start_server(servers, model, logprobs=name == "serve-llm")
            inner = OpenAIBackend(url, "smollm2", api_key_env=None, concurrency=16)
        else:
            raise SystemExit(f"unknown backend {name!r}; choose local, serve-llm, serve-llm-no-logprobs")
        backends[name] = CachedBackend(inner, args.out / "cache" / name)

    results: dict = {"units": len(units), "windows": args.windows, "scorers": {}, "explainers": {}, "seconds": {}}
    cases = [(unit, *unit_windows(ids, texts, unit, args.windows, seed=0)) for unit in units]
    # Each (scorer, backend) pair: the backend-free scorers run once, under "-".
    pairs = [(s, "-") for s in scorers if s in ("lexicon", "embedding")]
    fallback = set(args.fallback_scorers.split(","))
    pairs += [(s, b) for s in scorers if s in (*JUDGED, "intruder") for b in backends
              if b != "serve-llm-no-logprobs" or s in fallback]
    table: dict[tuple[str, str], dict] = {}
    for scorer, backend_name in pairs:
        started = time.perf_counter()
        backend = backends.get(backend_name)
        top1, pairwise, above, notes, unscored, margins = [], [], 0, set(), [], []
        for unit, windows, activations, _ in cases:
            fires = [bool(a.any()) for a in activations]
            if all(fires) or not any(fires):
                unscored.append(unit.name)  # no silent (or no activating) window: nothing to contrast
                continue
            if scorer == "intruder":
                score = intruder_score(windows, activations, backend, n_trials=8, k=4, n_boot=200)
                above += score.above_chance
                pairwise.append(score.value)
                margins.append(score.value - score.chance)
                notes.add(score.note)
                continue
            values = []
            for explanation in (unit.true, *unit.false):
                score = score_one(scorer, explanation.words, explanation.rule, windows, activations, backend, embedder)
                values.append(score.value)
                notes.add(score.note)
                if explanation is unit.true:
                    above += score.above_chance
            first, share = ranks(values[0], values[1:])
            top1.append(first)
            pairwise.append(share)
            margins.append(values[0] - statistics.mean(values[1:]))
        key = f"{scorer} / {backend_name}"
        table[(scorer, backend_name)] = row = {
            "top1": statistics.mean(top1) if top1 else None, "pairwise": statistics.mean(pairwise),
            "above_chance": above, "notes": sorted(n for n in notes if n)[:3], "unscored": unscored,
            "seconds": round(time.perf_counter() - started, 1), "margin": pooled_margin(margins)}
        results["scorers"][key] = row
        row["units"] = len(cases) - len(unscored)
        margin = row["margin"]
        print(f"{key}: top-1 {row['top1']}, pairwise {row['pairwise']:.3f}, above chance {above}/{row['units']}, "
              f"margin {margin['mean']:+.3f} [{margin['low']:+.3f}, {margin['high']:+.3f}], {row['seconds']} s",
              flush=True)
        atomic_text(args.out / "results.json", json.dumps(results, indent=1))

    # Explainers: written from windows of another draw, ranked by each scorer among the unit's explanations.
    explain_backend = backends.get("local") or next(iter(backends.values()), None)
    for explainer in explainers:
        if explainer == "llm" and explain_backend is None:
            continue
        started = time.perf_counter()
        found = []
        for unit, *_ in cases:
            windows, activations, chosen_ids = unit_windows(ids, texts, unit, args.windows, seed=1)
            if explainer == "tokens":
                found.append(explain_tokens(windows, activations).text)
            else:
                records = UnitRecords(unit.name, chosen_ids, torch.stack(activations),
                                      ["top" if a.any() else "random" for a in activations], 0.0, RecordsConfig())
                found.append(explain_llm([records], model.tokenizer, explain_backend)[0].text)
        row = {"examples": {u.name: text for (u, *_), text in zip(cases[:6], found)}, "ranks": {},
               "seconds": round(time.perf_counter() - started, 1)}
        for scorer, backend_name in pairs:
            if scorer == "intruder" or backend_name not in ("-", "local"):
                continue  # ranked with logprobs in process only: the other backends repeat it at more cost
            placed = []
            for (unit, windows, activations, _), text in zip(cases, found):
                if all(a.any() for a in activations):
                    continue
                try:
                    mine = score_one(scorer, text, text, windows, activations, backends.get(backend_name),
                                     embedder).value
                except LexiconParseError:
                    continue  # an llm explanation in free words is no rule: lexicon cannot rank it
                others = [score_one(scorer, e.words, e.rule, windows, activations, backends.get(backend_name),
                                    embedder).value for e in (unit.true, *unit.false)]
                placed.append(1 + sum(o > mine for o in others))
            if placed:
                row["ranks"][f"{scorer} / {backend_name}"] = {"mean rank": statistics.mean(placed),
                                                              "first": sum(p == 1 for p in placed) / len(placed),
                                                              "units": len(placed)}
        results["explainers"][explainer] = row
        print(f"explainer {explainer}: {json.dumps(row['ranks'])} ({row['seconds']} s)", flush=True)
        atomic_text(args.out / "results.json", json.dumps(results, indent=1))

    for name, backend in backends.items():
        results["seconds"][name] = backend.usage.to_json()
    atomic_text(args.out / "results.json", json.dumps(results, indent=1))
    print("\n| scorer / backend | top-1 | pairwise | true above chance | margin over units [95%] | seconds |\n"
          "|---|---|---|---|---|---|")
    for key, row in results["scorers"].items():
        top1 = "-" if row["top1"] is None else f"{row['top1']:.2f}"
        margin = row["margin"]
        print(f"| {key} | {top1} | {row['pairwise']:.2f} | {row['above_chance']}/{row['units']} | "
              f"{margin['mean']:+.3f} [{margin['low']:+.3f}, {margin['high']:+.3f}] | {row['seconds']} |")
    servers.close()


if __name__ == "__main__":
    main()
