"""``mechscope explain``: records, explanations and scores for many units, resumable.

For the units of a :class:`~mechscope.autointerp.units.UnitSource` over contexts of the default
corpus, a run writes into its output folder:

- ``records/<unit>/``: each unit's windows (:mod:`~mechscope.autointerp.records`), harvested once;
- ``units/<unit>.json``: its explanation, by whom, and every score asked for (or why a score could
  not be given: an explanation that is no lexicon rule, a unit without silent windows);
- ``cache/``: every language-model answer (:class:`~mechscope.autointerp.backends.CachedBackend`);
- ``summary.json`` and ``summary.md``: one row per unit, the dead units, what the backend spent.

Explanations are written from one half of each unit's windows and scored on the other half (the
top windows go to the explainer, every other kind is split in two for ``seed``; a unit with too
few activating windows for quantile bins has its top windows alternated), so a score never
rewards an explanation for restating the windows it was written from. A killed run resumes: units
with a result file are not redone, records are read back, and answered requests come from the
cache. A backend that fails (an unreachable endpoint) stops the run with its error; what was
done stays.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, get_args

import torch
from tqdm.auto import tqdm

from mechscope.autointerp.backends.base import Backend, BackendError
from mechscope.autointerp.explain.llm import explain_llm
from mechscope.autointerp.explain.output import explain_output, output_records
from mechscope.autointerp.explain.tokens import NoTokenExplanationError, explain_tokens
from mechscope.autointerp.lexicon import LexiconParseError
from mechscope.autointerp.records import RecordsConfig, UnitRecords, records_from_values
from mechscope.autointerp.score import (
    detection_score,
    embedding_score,
    fuzzing_score,
    intervention_score,
    intruder_score,
    lexicon_score,
    simulation_score,
    steered_pairs,
)
from mechscope.autointerp.units import UnitSource
from mechscope.data.contexts import default_contexts
from mechscope.distributed import Ranks, check_ranks, rank_jobs, spread_jobs
from mechscope.errors import ConfigError, DistributedError, MechscopeError
from mechscope.files import OutputFolder, atomic_text, prepare_output_folder
from mechscope.models.hooked_model import HookedModel
from mechscope.validate import check_choice, check_int

Explainer = Literal["tokens", "output", "llm"]
Scorer = Literal["lexicon", "embedding", "detection", "fuzzing", "simulation", "intruder", "intervention"]
EXPLAINERS: tuple[str, ...] = get_args(Explainer)
SCORERS: tuple[str, ...] = get_args(Scorer)
JUDGED = ("detection", "fuzzing", "simulation", "intruder", "intervention")  # need a language model
OUTPUTS = ("records", "units", "cache", "summary.json", "summary.md")
RESUMABLE = ("records", "units", "cache")


def _default_records() -> RecordsConfig:
    return RecordsConfig(window=32, n_top=10, n_quantiles=4, per_quantile=10, n_random=20, n_same_tokens=10,
                         n_neighbours=10)


@dataclass(frozen=True)
class ExplainOptions:
    """``explainer`` and ``scorers`` (see the module docstring); ``contexts`` of
    ``context_length`` tokens from the default corpus; the ``records`` drawn per unit;
    ``steer_prompts`` prompts (the contexts' first 24 tokens) for the output side; ``n_boot``
    bootstrap draws per score; ``seed`` for every draw."""

    explainer: Explainer = "llm"
    scorers: tuple[Scorer, ...] = ("detection", "embedding")
    contexts: int = 256
    context_length: int = 128
    records: RecordsConfig = field(default_factory=_default_records)
    steer_prompts: int = 8
    n_boot: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("explainer", self.explainer, EXPLAINERS)
        object.__setattr__(self, "scorers", tuple(dict.fromkeys(self.scorers)))
        for name in self.scorers:
            check_choice("scorer", name, SCORERS)
        check_int("contexts", self.contexts, 1)
        check_int("context_length", self.context_length, self.records.window + 1)
        check_int("steer_prompts", self.steer_prompts, 1)
        check_int("n_boot", self.n_boot, 1)

    @property
    def needs_backend(self) -> bool:
        return self.explainer == "llm" or any(name in JUDGED for name in self.scorers)

    def to_json(self) -> dict:
        return {**asdict(self), "scorers": list(self.scorers)}


def split_records(records: UnitRecords, seed: int = 0) -> tuple[UnitRecords, UnitRecords]:
    """(windows to explain from, windows to score on): the top windows explain, every other kind
    is split in two at random for ``seed`` (odd counts give the explainer the extra one). A unit
    with no quantile windows (it fires in no more windows than ``n_top``) has its top windows
    alternated by rank between the two."""
    generator = torch.Generator().manual_seed(seed)
    top = records.of_kind("top")
    if not records.of_kind("quantile"):
        # A unit that fires in few windows has them all among its top ones: alternate them by
        # rank, so the scores are not left without an activating window.
        explain, score = top[0::2], top[1::2]
    else:
        explain, score = list(top), []
    for kind in dict.fromkeys(k for k in records.kinds if k != "top"):
        indices = torch.tensor(records.of_kind(kind))
        shuffled = indices[torch.randperm(len(indices), generator=generator)].tolist()
        half = (len(shuffled) + 1) // 2
        explain += shuffled[:half]
        score += shuffled[half:]

    def part(rows: list[int]) -> UnitRecords:
        rows = sorted(rows)
        return UnitRecords(records.unit, records.tokens[rows], records.activations[rows],
                           [records.kinds[i] for i in rows], records.density, records.config)

    return part(explain), part(score)


def explain_activations(unit: str, contexts: torch.Tensor, activations: torch.Tensor, tokenizer,
                        config: RecordsConfig | None = None, seed: int = 0, n_boot: int = 200) -> dict:
    """The ``tokens`` explanation of one unit from its ``activations`` [n, pos] over token
    ``contexts`` [n, pos] (position 0 BOS), written from half its windows and scored by
    ``lexicon`` on the other half (:func:`split_records`): no language model, seconds. Returns
    {"unit", "explanation", "precision", "recall", "lexicon" (a Score's JSON), "label"}; a unit
    that never fires raises :class:`~mechscope.autointerp.records.DeadUnitError`."""
    from mechscope.autointerp.records import unit_records
    from mechscope.autointerp.results import label

    records = unit_records(unit, contexts, activations, config or RecordsConfig(window=16, n_neighbours=0, seed=seed))
    explain_part, score_part = split_records(records, seed)
    found = explain_tokens(explain_part.texts(tokenizer), list(explain_part.activations), records.config.threshold)
    score = lexicon_score(found.text, score_part.texts(tokenizer), list(score_part.activations),
                          records.config.threshold, n_boot=n_boot, seed=seed)
    result = {"unit": unit, "status": "explained", "explanation": found.text, "precision": found.precision,
              "recall": found.recall, "scores": {"lexicon": score.to_json()}}
    return {**result, "label": label(result)}


def _steer_prompts(model: HookedModel, options: ExplainOptions, contexts: torch.Tensor | None = None) -> list[str]:
    """The prompts the output side steers on: the first 24 tokens (after BOS) of the first
    ``steer_prompts`` corpus contexts."""
    if contexts is None:
        contexts = default_contexts(model, options.steer_prompts, options.context_length, options.seed)
    return [model.tokenizer.decode(row[1:25]) for row in contexts[:options.steer_prompts]]


def _safe_name(unit: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in unit)


@dataclass
class _Context:
    """What every unit of one run shares."""

    model: HookedModel
    source: UnitSource
    options: ExplainOptions
    backend: Backend | None
    embedder: object | None
    prompts: list[str]


def _explain(context: _Context, index: int, unit: str, part: UnitRecords) -> tuple[str, dict]:
    """(explanation, what the explainer reports) for one unit."""
    tokenizer = context.model.tokenizer
    if context.options.explainer == "tokens":
        found = explain_tokens(part.texts(tokenizer), list(part.activations), part.config.threshold)
        return found.text, found.to_json()
    if context.options.explainer == "output":
        records = output_records(context.model, _direction(context, index), context.prompts, unit)
        found = explain_output(records)
        return found.text, {**found.to_json(), "records": records.to_json()}
    [found] = explain_llm([part], tokenizer, context.backend)
    return found.text, found.to_json()


def _direction(context: _Context, index: int):
    if context.source.direction is None:
        raise MechscopeError(f"the units at {context.source.hook_name} have no residual direction; the output "
                             "explainer and the intervention scorer need one")
    return context.source.direction(index)


def _score(context: _Context, name: str, explanation: str, index: int, part: UnitRecords, alpha: float | None):
    options, backend = context.options, context.backend
    windows, activations = part.texts(context.model.tokenizer), list(part.activations)
    common = {"n_boot": options.n_boot, "seed": options.seed}
    threshold = part.config.threshold
    if name == "lexicon":
        return lexicon_score(explanation, windows, activations, threshold, **common)
    if name == "embedding":
        fires = torch.stack([a > threshold for a in activations]).any(-1)
        return embedding_score(explanation, ["".join(w) for w in windows], fires, context.embedder, **common)
    if name == "detection":
        return detection_score(explanation, windows, activations, backend, threshold, **common)
    if name == "fuzzing":
        return fuzzing_score(explanation, windows, activations, backend, threshold, **common)
    if name == "simulation":
        return simulation_score(explanation, windows, activations, backend, **common)
    if name == "intruder":
        return intruder_score(windows, activations, backend, threshold, **common)
    direction = _direction(context, index)
    pairs = steered_pairs(context.model, direction, context.prompts,
                          alpha if alpha is not None else output_records(context.model, direction,
                                                                         context.prompts[:2]).alpha)
    return intervention_score(explanation, pairs, backend, **common)


def _scores(context: _Context, explanation: str, index: int, part: UnitRecords, alpha: float | None) -> dict:
    scores = {}
    for name in context.options.scorers:
        try:
            scores[name] = _score(context, name, explanation, index, part, alpha).to_json()
        except BackendError:
            raise  # an unreachable or failing model stops the run; what was done stays
        except LexiconParseError as error:
            scores[name] = {"error": f"not scored: the explanation is no lexicon rule ({error})"}
        except MechscopeError as error:
            scores[name] = {"error": f"not scored: {error}"}
    return scores


def score_explanation(model: HookedModel, source: UnitSource, index: int, explanation: str, windows: UnitRecords,
                      options: ExplainOptions, backend: Backend | None = None, embedder=None) -> dict[str, dict]:
    """{scorer: score JSON, or {"error": why not}} of ``explanation`` for unit ``index`` of
    ``source`` on ``windows`` (e.g. the scoring half of :func:`split_records`), with the
    options' scorers; any explanation (another unit's, for a shuffled null) can be scored."""
    prompts = _steer_prompts(model, options) if "intervention" in options.scorers else []
    return _scores(_Context(model, source, options, backend, embedder, prompts), explanation, index, windows, None)


def _unit_result(context: _Context, index: int, unit: str, records: UnitRecords) -> dict:
    started = time.perf_counter()
    explain_part, score_part = split_records(records, context.options.seed)
    try:
        explanation, detail = _explain(context, index, unit, explain_part)
    except NoTokenExplanationError as error:  # the unit fires, but no word marks it: said, not fatal
        return {"unit": unit, "status": "unexplained", "explainer": context.options.explainer, "reason": str(error),
                "density": records.density, "seconds": round(time.perf_counter() - started, 2)}
    alpha = detail.get("records", {}).get("alpha")
    scores = _scores(context, explanation, index, score_part, alpha)
    return {"unit": unit, "status": "explained", "explainer": context.options.explainer,
            "explanation": explanation, "detail": detail, "scores": scores, "density": records.density,
            "windows": {"explain": len(explain_part.kinds), "score": len(score_part.kinds)},
            "seconds": round(time.perf_counter() - started, 2)}


def prepare_explain_folder(out: str | Path, units: Sequence[str], options: ExplainOptions, overwrite: bool = False,
                           extra: dict | None = None) -> OutputFolder:
    return prepare_output_folder(out, "explain", OUTPUTS, overwrite=overwrite, resumable=RESUMABLE,
                                 options={"units": list(units), **options.to_json(), **(extra or {})})


def run_explain(model: HookedModel, source: UnitSource, options: ExplainOptions, out: OutputFolder | str | Path,
                backend: Backend | None = None, embedder=None, overwrite: bool = False, progress: bool = True, *,
                ranks: Ranks | None = None) -> dict:
    """Explain and score every unit of ``source`` (see the module docstring); returns the summary.

    With ``ranks`` of several, every rank makes the same call with ``out`` on a file system
    every rank sees: rank 0 prepares the folder and harvests (or reads back) the records, the
    others read them; unit i is explained on rank ``i % world_size``
    (:func:`~mechscope.distributed.spread_jobs`), which writes its file; rank 0 writes the
    summary, with the backends' usage summed over the ranks. Every rank returns the summary one
    process gives (each unit's ``seconds`` aside). A unit that fails (an unreachable backend)
    stops every rank with a :class:`~mechscope.errors.DistributedError` naming it; finished units
    stay written, so a rerun resumes."""
    ranks = check_ranks(ranks)
    if options.needs_backend and backend is None:
        raise ConfigError(f"explainer {options.explainer!r} with scorers {list(options.scorers)} needs a language "
                          "model backend (a LocalBackend or an OpenAIBackend)")
    if "embedding" in options.scorers and embedder is None:
        from mechscope.autointerp.embedder import SentenceEmbedder

        embedder = SentenceEmbedder()
    prepared: dict = {}  # rank 0's output folder and records

    def prepare_folder() -> str:
        folder = out if isinstance(out, OutputFolder) else prepare_explain_folder(out, source.names, options, overwrite)
        (folder / "units").mkdir(parents=True, exist_ok=True)
        prepared["folder"] = folder
        return str(folder.path)

    where = Path(ranks.on_main(prepare_folder, "preparing the output folder"))
    contexts = default_contexts(model, options.contexts, options.context_length, options.seed)
    ranks.on_main(lambda: prepared.update(records=_records(model, source, options, prepared["folder"], contexts,
                                                           embedder, progress)), "harvesting the records")
    records = _shared_records(ranks, source, where, prepared.get("records"))
    folder = prepared.get("folder", where)
    context = _Context(model, source, options, backend, embedder, _steer_prompts(model, options, contexts))
    bar = tqdm(total=len(rank_jobs(ranks, len(source.names))), desc="explaining", unit="unit",
               disable=not (progress and ranks.is_main))

    def explain_unit(index: int) -> dict:
        unit = source.names[index]
        path = folder / "units" / f"{_safe_name(unit)}.json"
        if path.exists():  # done by an earlier, interrupted run
            result = json.loads(path.read_text())
        else:
            result = {"unit": unit, "status": "dead"} if unit not in records else \
                _unit_result(context, index, unit, records[unit])
            atomic_text(path, json.dumps(result, indent=1))
        bar.update()
        return result

    results = spread_jobs(ranks, len(source.names), explain_unit, what="explaining units")
    bar.close()
    usages = ranks.gather_json(None if backend is None else backend.usage.to_json(), what="the backends' usage")
    usage = None if backend is None else {key: sum(one[key] for one in usages) for key in usages[0]}

    def write_summary() -> dict:
        summary = _summary(prepared["folder"], options, backend, results, usage)
        prepared["folder"].record()
        return summary

    return ranks.on_main(write_summary, "writing the summary")


def _shared_records(ranks: Ranks, source: UnitSource, folder: Path,
                    harvested: dict[str, UnitRecords] | None) -> dict[str, UnitRecords]:
    """Every live unit's records on every rank: rank 0's ``harvested``; the other ranks read what
    rank 0 has just written into ``folder``. A rank that cannot (the folder is not on a file
    system every rank sees) stops every rank."""
    if ranks.is_main:
        records, error = harvested or {}, None
    else:
        records, error = {}, None
        try:
            root = folder / "records"
            dead = set(json.loads((root / "dead.json").read_text())) if (root / "dead.json").exists() else set()
            records = {unit: UnitRecords.load(root / _safe_name(unit)) for unit in source.names if unit not in dead}
        except (OSError, MechscopeError) as failure:
            error = (f"rank {ranks.rank} cannot read the records rank 0 wrote in {folder} ({failure}); the output "
                     "folder must be on a file system every rank sees")
    if not ranks.distributed:
        return records
    errors = [one for one in ranks.gather_json(error, what="reading the records") if one]
    if errors:
        raise DistributedError("; ".join(errors))
    return records


def _records(model, source, options, folder, contexts, embedder, progress) -> dict[str, UnitRecords]:
    """Every live unit's records: read back when saved, else harvested (all missing units at once)."""
    root = folder / "records"
    dead_file = root / "dead.json"
    dead = set(json.loads(dead_file.read_text())) if dead_file.exists() else set()
    saved = {unit: UnitRecords.load(root / _safe_name(unit)) for unit in source.names
             if (root / _safe_name(unit) / "records.json").exists()}
    missing = [i for i, unit in enumerate(source.names) if unit not in saved and unit not in dead]
    if missing:
        names = [source.names[i] for i in missing]
        index = torch.tensor(missing)
        neighbours = embedder if options.records.n_neighbours else None
        if neighbours is None and options.records.n_neighbours:
            from mechscope.autointerp.embedder import SentenceEmbedder

            neighbours = SentenceEmbedder()
        values = source.activations(model, contexts, progress)[..., index]  # [n, pos, missing]
        fresh, newly_dead = records_from_values(model.tokenizer, contexts, values, names, options.records,
                                                progress=progress, embedder=neighbours)
        for unit, unit_records in fresh.items():
            unit_records.save(root / _safe_name(unit))
        saved.update(fresh)
        dead |= set(newly_dead)
        root.mkdir(parents=True, exist_ok=True)
        atomic_text(dead_file, json.dumps(sorted(dead)))
    return saved


def _cell(score: dict) -> str:
    if "error" in score:
        return "not scored"
    mark = "" if score["above_chance"] else " (not above chance)"
    return f"{score['value']:.2f} [{score['low']:.2f}, {score['high']:.2f}]{mark}"


def _summary(folder: OutputFolder, options: ExplainOptions, backend: Backend | None, results: list[dict],
             usage: dict | None) -> dict:
    """Write ``summary.json`` and ``summary.md`` from every unit's ``results`` (in unit order) and
    the backends' ``usage`` (summed over ranks); returns the summary."""
    explained = [r for r in results if r["status"] == "explained"]
    summary = {"options": options.to_json(), "units": results,
               "dead": [r["unit"] for r in results if r["status"] == "dead"],
               "unexplained": [r["unit"] for r in results if r["status"] == "unexplained"],
               "usage": usage,
               "backend": None if backend is None else backend.identity,
               "logprobs": None if backend is None else backend.logprobs}
    atomic_text(folder / "summary.json", json.dumps(summary, indent=1))
    lines = [f"# Explanations ({options.explainer} explainer)", "",
             f"{len(explained)} units explained, {len(summary['dead'])} dead (never fire on {options.contexts} "
             f"contexts of {options.context_length} tokens)" + (": " + ", ".join(summary["dead"]) if summary["dead"]
                                                                else "") + "." +
             (f" No explanation for {', '.join(summary['unexplained'])}: no word marks their firing windows "
              "precisely enough." if summary["unexplained"] else ""),
             "Scores: value [95% bootstrap interval]; chance is 0.5 (0 for simulation, 1/k for intruder).", ""]
    if backend is not None:
        lines += [f"Backend {backend.identity}; logprobs: {backend.logprobs}; requests this run: "
                  f"{usage['requests']} ({usage['cached']} from the cache).", ""]
    lines += ["| unit | explanation | " + " | ".join(options.scorers) + " |",
              "|---|---|" + "---|" * len(options.scorers)]
    for result in explained:
        cells = [_cell(result["scores"][name]) for name in options.scorers]
        text = result["explanation"].replace("|", "\\|")
        lines.append(f"| {result['unit']} | {text} | " + " | ".join(cells) + " |")
    notes = [f"{r['unit']}, {name}: {s.get('note') or s.get('error')}" for r in explained
             for name, s in r["scores"].items() if s.get("note") or s.get("error")]
    if notes:
        lines += ["", "Notes:", *[f"- {note}" for note in notes]]
    atomic_text(folder / "summary.md", "\n".join(lines) + "\n")
    return summary


__all__ = ["EXPLAINERS", "SCORERS", "ExplainOptions", "explain_activations", "prepare_explain_folder", "run_explain",
           "score_explanation", "split_records"]
