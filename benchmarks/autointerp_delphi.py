"""Detection and fuzzing scores, mechscope against Delphi (eai-delphi), on the same cases and judge.

    python benchmarks/autointerp_delphi.py --delphi-python /tmp/delphi-venv/bin/python

Delphi must live in its own venv. eai-delphi 0.1.3 requires vllm>=0.10.2 (a CUDA build pinning its
own torch) although its scorers never call it, so install it without dependencies and add what
its scorers import (benchmarks/delphi_child.py registers an empty stand-in for vllm):

    python3 -m venv /tmp/delphi-venv
    /tmp/delphi-venv/bin/pip install torch==2.13.0
    /tmp/delphi-venv/bin/pip install --no-deps eai-delphi==0.1.3
    /tmp/delphi-venv/bin/pip install torch==2.13.0 transformers sentence-transformers faiss-cpu \\
        eai-sparsify orjson blobfile simple_parsing jaxtyping beartype asyncer aiofiles tiktoken \\
        safetensors httpx pandas scikit-learn plotly

One judge for both: ``mechscope serve-llm`` (SmolLM2-135M-Instruct by default) on a free loopback
port; mechscope asks it through OpenAIBackend, Delphi through a small client of its Client class,
both over HTTP with the same number of requests in flight. The cases: ``--units`` planted units
(mechscope.autointerp.planted), each with its true explanation and one false one, each judged on
the same ``--activating`` windows where the unit fires and ``--silent`` windows where it does not
(``--window`` tokens from planted_windows). Detection shows every window unmarked; fuzzing shows
each activating window marked where the unit fires and marked at as many tokens where it does not.
The wrong marks are mechscope's own draw (fuzzing_score's seed), checked against the prompts
mechscope sent, and handed to Delphi, so both judge the same marked tokens (``--native-fuzz``: Delphi
draws its own). Each library uses its own prompts, rendering and answer parsing: mechscope asks
about one window per request; Delphi shows ``--examples-per-prompt`` (its CLI's default, 5) per
request after its few-shot examples, which show five, and wants a list of that many labels back.
The libraries run in ABBA order over two halves of the units (mechscope, Delphi, Delphi,
mechscope), so a load that drifts on a shared machine weighs on both; only scoring is timed.

What each side computes: mechscope reports the AUROC of the judge's P("1") vs P("0") on the first
answer token (top 20 alternatives); Delphi reports balanced accuracy ("accuracy") and F1 over the
answers it could parse and, with log_prob=True, the AUC of P("1") read from its answer's tokens
(top 5 alternatives). Like for like, both AUROC and balanced accuracy (mechscope: P("1") > 0.5;
Delphi: its parsed label) are computed here by the same code (mechscope.autointerp.score.base) from
each side's per-window answers; Delphi's own result_analysis numbers are saved with them.

``--judge oracle`` replaces the model with a judge that answers every question correctly from the
explanations' rules (benchmarks/delphi_oracle.py), served the same way: where SmolLM2 answers at
chance, this shows whether the two libraries turn the same right answers into the same scores.
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import torch

from mechscope.autointerp.backends.base import Backend, ChatRequest, Completion

CHILD = Path(__file__).parent / "delphi_child.py"
SETUP = """Delphi's venv is missing ({python}); create it with:

    python3 -m venv /tmp/delphi-venv
    /tmp/delphi-venv/bin/pip install torch==2.13.0
    /tmp/delphi-venv/bin/pip install --no-deps eai-delphi==0.1.3
    /tmp/delphi-venv/bin/pip install torch==2.13.0 transformers sentence-transformers faiss-cpu \\
        eai-sparsify orjson blobfile simple_parsing jaxtyping beartype asyncer aiofiles tiktoken \\
        safetensors httpx pandas scikit-learn plotly

(or pass --delphi-python PATH to a venv's python that has eai-delphi==0.1.3)"""


@dataclass
class Recording(Backend):
    """``inner``'s answers, each kept with its request, so per-window answers can be read back."""

    inner: Backend = None  # type: ignore[assignment]
    log: list[tuple[ChatRequest, Completion]] = field(default_factory=list)

    @property
    def identity(self) -> str:
        return self.inner.identity

    def _answer(self, requests, progress):
        completions = self.inner.chat(requests, progress)
        self.log.extend(zip(requests, completions))
        return completions


# ---------------------------------------------------------------------------------------------- cases
def _pick_units(units, rows_of, n_units: int, n_activating: int, n_silent: int, names: list[str] | None):
    """Units with enough activating and silent windows: those named, else round-robin over kinds."""
    eligible = []
    for unit in units:
        fires = [bool(row.any()) for row in rows_of(unit)]
        if sum(fires) >= n_activating and len(fires) - sum(fires) >= n_silent:
            eligible.append(unit)
    if names:
        chosen = [unit for unit in eligible if unit.name in names]
        missing = sorted(set(names) - {unit.name for unit in chosen})
        if missing:
            raise SystemExit(f"units without enough activating and silent windows, or unknown: {missing}")
        return chosen
    kinds: dict[str, list] = {}
    for unit in eligible:
        kinds.setdefault(unit.kind, []).append(unit)
    chosen = []
    while len(chosen) < n_units and any(kinds.values()):
        for group in kinds.values():
            if group and len(chosen) < n_units:
                chosen.append(group.pop(0))
    return chosen


def fuzzing_masks(rows: list[torch.Tensor], seed: int) -> list[dict]:
    """The marks mechscope's fuzzing_score draws for these windows (the same generator and order):
    per activating window, the correct mask and, with enough silent tokens, the wrong one."""
    generator = torch.Generator().manual_seed(seed)
    masks = []
    for index, values in enumerate(rows):
        fires = values > 0
        if not fires.any():
            continue
        masks.append({"window": index, "correct": True, "mask": fires.tolist()})
        silent = (~fires).nonzero()[:, 0]
        if len(silent) < int(fires.sum()):
            continue
        wrong = torch.zeros_like(fires)
        wrong[silent[torch.randperm(len(silent), generator=generator)[:int(fires.sum())]]] = True
        masks.append({"window": index, "correct": False, "mask": wrong.tolist()})
    return masks


def build_cases(args) -> list[dict]:
    import mechscope
    from mechscope.autointerp.planted import planted_units, planted_windows

    tokenizer = mechscope.load(args.model).tokenizer
    pool = planted_windows(tokenizer, n_windows=args.pool, window=args.window, seed=args.seed)
    cache: dict[str, list[torch.Tensor]] = {}

    def rows_of(unit):
        if unit.name not in cache:
            cache[unit.name] = [unit.activations(tokens) for tokens in pool]
        return cache[unit.name]

    names = [name.strip() for name in args.unit_names.split(",")] if args.unit_names else None
    cases = []
    for unit in _pick_units(planted_units(), rows_of, args.units, args.activating, args.silent, names):
        rows = rows_of(unit)
        firing = [i for i, row in enumerate(rows) if row.any()][:args.activating]
        silent = [i for i, row in enumerate(rows) if not row.any()][:args.silent]
        picked = firing + silent
        windows = [{"tokens": pool[i], "activations": rows[i].tolist(), "fires": bool(rows[i].any())}
                   for i in picked]
        masks = fuzzing_masks([rows[i] for i in picked], args.seed)
        for item in masks:
            shown = picked[item["window"]]
            item["tokens"], item["activations"] = pool[shown], rows[shown].tolist()
        false = unit.false[args.false_index % len(unit.false)]
        for kind, explanation in (("true", unit.true), ("false", false)):
            cases.append({"id": len(cases), "unit": unit.name, "kind": kind, "explanation": explanation.words,
                          "rule": explanation.rule, "windows": windows, "fuzzing": masks})
    return cases


# ---------------------------------------------------------------------------------------------- server
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(args, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = args.port or free_port()
    command = [sys.executable, "-c", "from mechscope.cli.app import app; app()", "serve-llm",
               "--model", args.model, "--port", str(port), "--batch-size", str(args.server_batch)]
    log = open(log_path, "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"mechscope serve-llm exited ({process.returncode}); its log:\n"
                             f"{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base_url}/models", timeout=2).status_code == 200:
                return process, base_url
        except httpx.TransportError:
            pass
        time.sleep(1)
    process.terminate()
    raise SystemExit(f"mechscope serve-llm did not answer within 600 s; its log: {log_path}")


# ---------------------------------------------------------------------------------------------- scoring
def run_mechscope(cases: list[dict], base_url: str, args, done: int = 0, total: int = 0
                  ) -> tuple[list[dict], float, dict]:
    """mechscope's detection and fuzzing scores per case, and each window's P("1") read back from
    the recorded answers (in the order the scorers asked)."""
    from mechscope.autointerp import prompts
    from mechscope.autointerp.backends import OpenAIBackend
    from mechscope.autointerp.score.judge import choice_probabilities, detection_score, fuzzing_score

    inner = OpenAIBackend(base_url, args.model, api_key_env=None, concurrency=args.concurrency,
                          timeout=args.timeout)
    backend = Recording(inner=inner)
    rows = []
    start = time.perf_counter()
    for number, case in enumerate(cases, 1):
        tokens = [w["tokens"] for w in case["windows"]]
        activations = [torch.tensor(w["activations"]) for w in case["windows"]]
        row = {"id": case["id"]}
        for name, scorer in (("detection", detection_score), ("fuzzing", fuzzing_score)):
            before = len(backend.log)
            score = scorer(case["explanation"], tokens, activations, backend, seed=args.seed)
            asked = backend.log[before:]
            probabilities, _, parsed, unreadable = choice_probabilities([c for _, c in asked], ("1", "0"))
            if name == "detection":
                truth = [w["fires"] for w in case["windows"]]
                expected = [prompts.detection_request(case["explanation"], prompts.render(t)) for t in tokens]
            else:
                truth = [item["correct"] for item in case["fuzzing"]]
                expected = [prompts.fuzzing_request(case["explanation"],
                                                    prompts.render(item["tokens"], item["mask"]))
                            for item in case["fuzzing"]]
            if [request for request, _ in asked] != expected:
                raise SystemExit(f"case {case['id']} {name}: the requests mechscope sent are not the ones "
                                 "this benchmark handed to Delphi (has fuzzing_score's draw changed?)")
            row[name] = {"value": score.value, "metric": score.metric, "note": score.note, "truth": truth,
                         "p_yes": probabilities[:, 0].tolist(), "readable": len(asked) - unreadable,
                         "read_from_text": parsed}
        rows.append(row)
        print(f"mechscope: {done + number}/{total or len(cases)} cases scored", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - start
    usage = backend.usage.to_json()
    backend.inner.close()
    return rows, seconds, usage


def run_delphi(cases_path: Path, out_path: Path, base_url: str, args) -> tuple[dict, float, list[str]]:
    command = [args.delphi_python, str(CHILD), str(cases_path), str(out_path), "--base-url", base_url,
               "--model", args.model, "--examples-per-prompt", str(args.examples_per_prompt),
               "--concurrency", str(args.concurrency), "--cases-at-once", str(args.concurrency),
               "--timeout", str(args.timeout)]
    if args.max_tokens:
        command += ["--max-tokens", str(args.max_tokens)]
    if args.native_fuzz:
        command.append("--native-fuzz")
    start = time.perf_counter()
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    other: list[str] = []
    for line in process.stderr:  # type: ignore[union-attr]
        if line.startswith("delphi: "):
            print(line.rstrip(), file=sys.stderr, flush=True)
        else:
            other.append(line)
    process.wait()
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"the Delphi child failed ({process.returncode}):\n{''.join(other)[-4000:]}")
    return json.loads(out_path.read_text()), wall, other


def run_both(cases: list[dict], base_url: str, args) -> tuple[list[dict], dict, dict]:
    """Both libraries on all cases in ABBA order (mechscope on the first half of the units, Delphi
    on it, Delphi on the second half, mechscope on it), so a load that drifts on a shared machine
    weighs on both alike. Returns mechscope's rows, Delphi's merged result, and the timings."""
    half = 2 * (len(cases) // 4)  # whole units: two cases each
    parts = [cases[:half], cases[half:]] if half else [cases]
    mech_rows: list[dict] = []
    delphi: dict = {"cases": [], "seconds": 0.0, "import_seconds": 0.0, "usage": {}}
    timing: dict = {"mechscope_parts_s": [], "delphi_parts_s": [], "delphi_wall_s": 0.0,
                    "mechscope_usage": {}}
    log: list[str] = []

    def mechscope_part(index: int) -> None:
        before = sum(map(len, parts[:index]))
        rows, seconds, usage = run_mechscope(parts[index], base_url, args, before, len(cases))
        mech_rows.extend(rows)
        timing["mechscope_parts_s"].append(seconds)
        for key, value in usage.items():
            timing["mechscope_usage"][key] = timing["mechscope_usage"].get(key, 0) + value

    def delphi_part(index: int) -> None:
        path = args.work / f"cases-{index}.json"
        path.write_text(json.dumps({"cases": parts[index]}))
        result, wall, lines = run_delphi(path, args.work / f"delphi-{index}.json", base_url, args)
        log.extend(lines)
        delphi["cases"].extend(result["cases"])
        for key in ("version", "vllm_stub", "examples_per_prompt", "native_fuzz"):
            delphi[key] = result[key]
        delphi["seconds"] += result["seconds"]
        delphi["import_seconds"] += result["import_seconds"]
        for key, value in result["usage"].items():
            delphi["usage"][key] = delphi["usage"].get(key, type(value)()) + value  # counts; answer texts
        timing["delphi_parts_s"].append(result["seconds"])
        timing["delphi_wall_s"] += wall

    mechscope_part(0)
    delphi_part(0)
    if len(parts) == 2:
        delphi_part(1)
        mechscope_part(1)
        mech_rows.sort(key=lambda row: row["id"])
    (args.work / "delphi-stderr.log").write_text("".join(log))
    delphi["logged_errors"] = sum("failed" in line or "Error" in line for line in log)
    return mech_rows, delphi, timing


# ---------------------------------------------------------------------------------------------- metrics
def same_metrics(p_yes: list[float | None], labels: list[bool | None], truth: list[bool]) -> dict:
    """AUROC of the P("1")s and balanced accuracy of the labels against ``truth``, by mechscope's
    code, over the answers that have them (Delphi drops answers it could not parse)."""
    from mechscope.autointerp.score.base import auroc, balanced_accuracy

    scored = [(p, t) for p, t in zip(p_yes, truth) if p is not None]
    value = None
    if scored and any(t for _, t in scored) and not all(t for _, t in scored):
        value = float(auroc(torch.tensor([p for p, _ in scored], dtype=torch.float64),
                            torch.tensor([t for _, t in scored])))
    labelled = [(bool(p), t) for p, t in zip(labels, truth) if p is not None]
    counts = torch.tensor([sum(p and t for p, t in labelled), sum(t for _, t in labelled),
                           sum(not p and not t for p, t in labelled), sum(not t for _, t in labelled)],
                          dtype=torch.float64)
    return {"auroc": value, "bacc": float(balanced_accuracy(counts)) if labelled else None,
            "n_prob": len(scored), "n_label": len(labelled)}


def compare(cases: list[dict], mech: list[dict], delphi: dict) -> list[dict]:
    rows = []
    for case, m, d in zip(cases, mech, sorted(delphi["cases"], key=lambda r: r["id"])):
        row = {"unit": case["unit"], "kind": case["kind"], "explanation": case["explanation"]}
        for name in ("detection", "fuzzing"):
            mine = m[name]
            labels = [p > 0.5 for p in mine["p_yes"]]
            row[f"{name}_mechscope"] = same_metrics(mine["p_yes"], labels, mine["truth"])
            row[f"{name}_mechscope"]["native"] = mine["value"]
            # Delphi's answers (shuffled by Delphi), checked against the examples the parent sent.
            outputs = d[name]["outputs"]
            if name == "detection":
                sent = sorted((i, w["fires"]) for i, w in enumerate(case["windows"]))
            else:
                sent = sorted((item["window"], item["correct"]) for item in case["fuzzing"])
            if name == "detection" or not delphi["native_fuzz"]:
                judged = sorted((o["window"], o["activating"]) for o in outputs)
                assert judged == sent, f"case {case['id']} {name}: Delphi judged other examples"
            row[f"{name}_delphi"] = same_metrics([o["probability"] for o in outputs],
                                                 [o["prediction"] for o in outputs],
                                                 [o["activating"] for o in outputs])
            row[f"{name}_delphi"]["own"] = d[name]["delphi"]
        rows.append(row)
    return rows


def _pearson(xs: list[float], ys: list[float]) -> float | None:
    pairs = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None]
    if len(pairs) < 3:
        return None
    mx, my = sum(x for x, _ in pairs) / len(pairs), sum(y for _, y in pairs) / len(pairs)
    sxy = sum((x - mx) * (y - my) for x, y in pairs)
    sxx, syy = sum((x - mx) ** 2 for x, _ in pairs), sum((y - my) ** 2 for _, y in pairs)
    return None if sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)


def _fmt(value) -> str:
    return "  -  " if value is None else f"{value:.3f}"


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def ranking(rows: list[dict], key: str, metric: str) -> dict:
    """Per unit, whether each side scores the true explanation above the false one (ties half),
    and in how many units both sides order the pair the same way."""
    ranks: dict[str, list[float]] = {"mechscope": [], "delphi": [], "agree": []}
    for unit in dict.fromkeys(row["unit"] for row in rows):
        pair = {row["kind"]: row for row in rows if row["unit"] == unit}
        signs = {}
        for side in ("mechscope", "delphi"):
            true, false = pair["true"][f"{key}_{side}"][metric], pair["false"][f"{key}_{side}"][metric]
            if true is not None and false is not None:
                signs[side] = (true > false) - (true < false)
                ranks[side].append(1.0 if true > false else 0.5 if true == false else 0.0)
        if len(signs) == 2:
            ranks["agree"].append(float(signs["mechscope"] == signs["delphi"]))
    return {side: {"share": _mean(values), "units": len(values)} for side, values in ranks.items()}


def summarise(rows: list[dict], timing: dict) -> dict:
    summary: dict = {}
    print("\nPer case: AUROC of P(\"1\") and balanced accuracy of the labels, mechscope/Delphi, both "
          "computed by mechscope's code\nfrom each side's per-window answers (Delphi's: those it parsed):")
    print(f"{'unit':<16} {'expl':<5} {'det AUROC m/D':>15} {'fuzz AUROC m/D':>15} {'det bacc m/D':>15} "
          f"{'fuzz bacc m/D':>15} {'D parsed':>9}")
    for row in rows:
        cells = [f"{_fmt(row[f'{name}_mechscope'][metric])}/{_fmt(row[f'{name}_delphi'][metric])}"
                 for metric in ("auroc", "bacc") for name in ("detection", "fuzzing")]
        parsed = sum(row[f"{name}_delphi"]["n_label"] for name in ("detection", "fuzzing"))
        total = sum(row[f"{name}_delphi"]["own"]["n"] for name in ("detection", "fuzzing"))
        print(f"{row['unit']:<16} {row['kind']:<5} " + " ".join(f"{cell:>15}" for cell in cells)
              + f" {parsed:>4}/{total:<4}")
    print()
    for metric in ("auroc", "bacc"):
        for name in ("detection", "fuzzing"):
            mine = [row[f"{name}_mechscope"][metric] for row in rows]
            theirs = [row[f"{name}_delphi"][metric] for row in rows]
            both = [(m, d) for m, d in zip(mine, theirs) if m is not None and d is not None]
            key = f"{name} {metric}"
            summary[key] = {"cases": len(both), "mean_abs_diff": _mean([abs(m - d) for m, d in both]),
                            "mean_mechscope": _mean([m for m, _ in both]),
                            "mean_delphi": _mean([d for _, d in both]), "pearson": _pearson(mine, theirs),
                            "true_above_false": ranking(rows, name, metric)}
            s, r = summary[key], summary[key]["true_above_false"]
            print(f"{key:<16} {s['cases']:>2} cases: mean mechscope {_fmt(s['mean_mechscope'])}, Delphi "
                  f"{_fmt(s['mean_delphi'])}; mean |diff| {_fmt(s['mean_abs_diff'])}; "
                  f"Pearson r {_fmt(s['pearson'])}; true above false in mechscope "
                  f"{_fmt(r['mechscope']['share'])}, Delphi "
                  f"{_fmt(r['delphi']['share'])} of units; same order in {_fmt(r['agree']['share'])} of "
                  f"{r['agree']['units']}")
    # Delphi's own metrics (result_analysis) against the same-code numbers for Delphi's answers.
    gaps = {"auroc": [], "bacc": []}
    for row in rows:
        for name in ("detection", "fuzzing"):
            ours, own = row[f"{name}_delphi"], row[f"{name}_delphi"]["own"]
            for metric, theirs in (("auroc", own["auc"]), ("bacc", own["accuracy"])):
                if ours[metric] is not None and theirs is not None:
                    gaps[metric].append(abs(ours[metric] - theirs))
    summary["delphi_own_vs_same_code"] = {metric: max(values, default=None)
                                          for metric, values in gaps.items()}
    print(f"Delphi's own result_analysis vs the same-code numbers on its answers: max |diff| AUC "
          f"{_fmt(summary['delphi_own_vs_same_code']['auroc'])}, accuracy "
          f"{_fmt(summary['delphi_own_vs_same_code']['bacc'])}")
    mech, delphi = timing["mechscope_usage"], timing["delphi_usage"]
    print(f"\nmechscope: {timing['mechscope_s']:.1f} s for {mech['requests']} requests "
          f"({mech['prompt_tokens']} prompt tokens, {mech['completion_tokens']} answer tokens)")
    print(f"Delphi {timing['delphi_version']}: {timing['delphi_s']:.1f} s for {delphi['requests']} requests "
          f"({delphi['prompt_tokens']} prompt tokens, {delphi['completion_tokens']} answer tokens); "
          f"its process {timing['delphi_wall_s']:.1f} s, {timing['delphi_import_s']:.1f} s of it imports")
    ratio = timing["delphi_s"] / timing["mechscope_s"]
    print("ABBA halves, seconds: mechscope " + ", ".join(f"{t:.1f}" for t in timing["mechscope_parts_s"])
          + "; Delphi " + ", ".join(f"{t:.1f}" for t in timing["delphi_parts_s"]))
    print(f"speed: mechscope scored the same cases {ratio:.2f}x as fast as Delphi (scoring only; same "
          "server, same requests in flight)")
    summary["speed_ratio"] = ratio
    return summary


def check_delphi(path: Path) -> None:
    """Exit with the commands that create Delphi's venv when ``path`` is not a python with eai-delphi."""
    if not path.exists():
        raise SystemExit(SETUP.format(python=path))
    version = "import importlib.metadata as m; print(m.version('eai-delphi'))"
    check = subprocess.run([str(path), "-c", version], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        raise SystemExit(SETUP.format(python=f"{path} has no eai-delphi"))
    if check.stdout.strip() != "0.1.3":
        print(f"warning: {path} has eai-delphi {check.stdout.strip()}, not 0.1.3", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delphi-python", default="/tmp/delphi-venv/bin/python",
                        help="python of a venv with eai-delphi==0.1.3 (see the module docstring)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/mechscope-autointerp-delphi"))
    parser.add_argument("--model", default="smollm2-135m-instruct", help="the judge serve-llm serves")
    parser.add_argument("--judge", choices=("serve-llm", "oracle"), default="serve-llm",
                        help="serve-llm: --model behind mechscope serve-llm; oracle: a judge that answers every "
                             "question correctly from the explanations' rules (benchmarks/delphi_oracle.py)")
    parser.add_argument("--units", type=int, default=6,
                        help="planted units (each: true + one false explanation)")
    parser.add_argument("--unit-names", help="comma-separated planted unit names instead of the default pick")
    parser.add_argument("--false-index", type=int, default=2, help="which of each unit's false explanations")
    parser.add_argument("--activating", type=int, default=5, help="windows per case where the unit fires")
    parser.add_argument("--silent", type=int, default=5, help="windows per case where it does not")
    parser.add_argument("--window", type=int, default=32, help="tokens per window")
    parser.add_argument("--pool", type=int, default=256, help="windows drawn from the corpus to pick from")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight, each library")
    parser.add_argument("--server-batch", type=int, default=8, help="serve-llm's --batch-size")
    parser.add_argument("--port", type=int, default=0, help="serve-llm's port (0: a free one)")
    parser.add_argument("--examples-per-prompt", type=int, default=5,
                        help="Delphi's n_examples_shown: its CLI's default 5, what its few-shot prompts show "
                             "(with 1, SmolLM2 still answers five labels and Delphi parses none)")
    parser.add_argument("--max-tokens", type=int, help="Delphi's answer budget (default 2 per example + 6)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    parser.add_argument("--native-fuzz", action="store_true", help="Delphi draws its own wrong highlights")
    args = parser.parse_args()
    check_delphi(Path(args.delphi_python))
    for what, count in (("detection", args.activating + args.silent), ("fuzzing", 2 * args.activating)):
        if count % args.examples_per_prompt:
            print(f"warning: {count} {what} examples per case is not a multiple of --examples-per-prompt "
                  f"{args.examples_per_prompt}; Delphi 0.1.3 parses a short last prompt only when the judge "
                  f"still answers {args.examples_per_prompt} labels", file=sys.stderr)
    args.work.mkdir(parents=True, exist_ok=True)

    cases = None
    if args.judge == "oracle":  # the oracle must know the cases before it answers
        from delphi_oracle import OracleServer

        cases = build_cases(args)
        server = OracleServer(cases, args.model)
        base_url = server.base_url
    else:
        server, base_url = start_server(args, args.work / "serve-llm.log")
    try:
        cases = cases or build_cases(args)
        cases_path = args.work / "cases.json"
        cases_path.write_text(json.dumps({"cases": cases}))
        print(f"{len(cases)} cases ({len(cases) // 2} planted units x true and false explanation), "
              f"{args.activating}+{args.silent} windows of {args.window} tokens each; judge "
              f"{'the oracle' if args.judge == 'oracle' else args.model} at "
              f"{base_url}", file=sys.stderr, flush=True)
        from mechscope.autointerp.backends import OpenAIBackend
        warm = OpenAIBackend(base_url, args.model, api_key_env=None, timeout=args.timeout)
        warm.chat([ChatRequest.user("Answer 1.", max_tokens=1)])
        warm.close()
        mech, delphi, timing = run_both(cases, base_url, args)
    finally:
        server.terminate()
        server.wait(timeout=30)

    rows = compare(cases, mech, delphi)
    timing.update({"mechscope_s": sum(timing["mechscope_parts_s"]), "delphi_s": delphi["seconds"],
                   "delphi_import_s": delphi["import_seconds"], "delphi_usage": delphi["usage"],
                   "delphi_version": delphi["version"]})
    read = sum(row[name]["read_from_text"] for row in mech for name in ("detection", "fuzzing"))
    fuzz = "its own draw of wrong highlights" if delphi["native_fuzz"] else "the same highlighted tokens"
    print(f"\nmechscope: AUROC of the judge's P(\"1\") vs P(\"0\") on the first answer token (top 20), "
          f"one window per request ({read} answers without 1/0 among the top 20 read from their text).\n"
          f"Delphi {delphi['version']}: DetectionScorer and FuzzingScorer, n_examples_shown="
          f"{delphi['examples_per_prompt']}, log_prob=True (P(\"1\") per example from its answer tokens' "
          f"top 5); its 'accuracy' is balanced accuracy over the answers it parsed; fuzzing on {fuzz}"
          f"{'; vllm stubbed' if delphi['vllm_stub'] else ''}; {delphi['logged_errors']} error lines "
          f"logged by Delphi ({args.work / 'delphi-stderr.log'}).")
    answers = Counter(delphi["usage"].get("answers", [])).most_common(4)
    print("Delphi's judge answered: " + ", ".join(f"{text!r} x{count}" for text, count in answers))
    summary = summarise(rows, timing)
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows, "summary": summary,
              "timing": timing, "mechscope_answers": mech, "delphi_answers": delphi["cases"]}
    (args.work / "result.json").write_text(json.dumps(result, indent=1))
    print(f"\nper-window answers and Delphi's own metrics: {args.work / 'result.json'}")


if __name__ == "__main__":
    main()
