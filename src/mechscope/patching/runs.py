"""The runs behind ``mechscope patch`` and ``mechscope trace``: options checked before any model
loads, then the sweep, written atomically into a checked output folder."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from mechscope import checks
from mechscope.errors import ConfigError
from mechscope.files import OutputFolder, atomic_figure, prepare_output_folder
from mechscope.models.hooked_model import HookedModel
from mechscope.patching.activation import MODES, activation_patch
from mechscope.patching.attribution import attribution_patch
from mechscope.patching.metrics import METRICS
from mechscope.patching.result import PatchingResult
from mechscope.patching.sites import SITE_KINDS
from mechscope.patching.tracing import KINDS as TRACE_KINDS
from mechscope.patching.tracing import causal_trace
from mechscope.tasks.base import Task
from mechscope.validate import check_choice, check_int

PATCH_OUTPUTS = ("result.json", "heatmap.html")


def build_task(model: HookedModel, name: str, n: int, seed: int) -> Task:
    """Task ``name`` on ``model``: ``n`` prompts drawn with ``seed`` (factual-recall uses the
    capitals the model knows, however many that is)."""
    from mechscope import tasks

    check_choice("task", name, tasks.TASKS)
    return tasks.TASKS[name](model) if name == "factual-recall" else tasks.TASKS[name](model, n=n, seed=seed)


def check_task_options(task: str, n: int, seed: int) -> None:
    from mechscope import tasks

    check_choice("task", task, tasks.TASKS)
    check_int("n", n, 1, checks.MAX_PROMPTS)
    check_int("seed", seed, 0, checks.MAX_SEED)


@dataclass(frozen=True)
class PatchOptions:
    """``mechscope patch``'s options; checked on creation, so before any model loads."""

    task: str = "ioi"
    sites: str = "heads"
    mode: str = "denoise"
    metric: str = "logit_diff"
    atp: bool = False
    n: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        check_task_options(self.task, self.n, self.seed)
        check_choice("sites", self.sites, SITE_KINDS)
        check_choice("mode", self.mode, MODES)
        check_choice("metric", self.metric, METRICS)
        if self.atp and self.metric == "kl":
            raise ConfigError("attribution patching (--atp) needs a metric with a useful gradient; KL to the clean "
                              "run is flat there: use logit_diff, prob or prob_diff")


def prepare_patch_folder(out: str | Path, options: PatchOptions, overwrite: bool = False,
                         model: str | None = None) -> OutputFolder:
    return prepare_output_folder(out, "patch", PATCH_OUTPUTS, overwrite=overwrite,
                                 options={**asdict(options), "model": model})


def run_patch(model: HookedModel, options: PatchOptions, out: OutputFolder | str | Path,
              overwrite: bool = False) -> tuple[PatchingResult, Task]:
    """Activation (or attribution) patching of ``options.sites`` on the task; writes
    ``result.json`` and ``heatmap.html`` into ``out``."""
    folder = out if isinstance(out, OutputFolder) else prepare_patch_folder(out, options, overwrite)
    built = build_task(model, options.task, options.n, options.seed)
    patch = attribution_patch if options.atp else activation_patch
    result = patch(model, built, options.sites, mode=options.mode, metric=options.metric)
    result.save(folder / "result.json")
    atomic_figure(folder / "heatmap.html", result.plot())
    folder.record()
    return result, built


@dataclass(frozen=True)
class TraceOptions:
    """``mechscope trace``'s options. The subject must occur in the prompt: checked on the
    strings, before any model loads."""

    prompt: str
    subject: str
    kinds: tuple[str, ...] = ("resid", "attn", "mlp")
    window: int = 10
    samples: int = 8

    def __post_init__(self) -> None:
        checks.check_text("prompt", self.prompt)
        checks.check_text("subject", self.subject)
        if self.subject not in self.prompt:
            raise ConfigError(f"subject {self.subject!r} does not occur in the prompt {self.prompt!r}")
        if not self.kinds:
            raise ConfigError(f"kinds must name at least one of {', '.join(TRACE_KINDS)}")
        for kind in self.kinds:
            check_choice("kind", kind, TRACE_KINDS)
        check_int("window", self.window, 1, checks.MAX_WINDOW)
        check_int("samples", self.samples, 1, checks.MAX_SAMPLES)

    @classmethod
    def parse_kinds(cls, text: str) -> tuple[str, ...]:
        """``"resid,attn"`` -> ("resid", "attn"), without repeats."""
        return tuple(dict.fromkeys(kind.strip() for kind in text.split(",") if kind.strip()))

    @property
    def outputs(self) -> list[str]:
        return [f"trace-{kind}.{ext}" for kind in self.kinds for ext in ("json", "html")]


def prepare_trace_folder(out: str | Path, options: TraceOptions, overwrite: bool = False,
                         model: str | None = None) -> OutputFolder:
    return prepare_output_folder(out, "trace", options.outputs, overwrite=overwrite,
                                 options={**asdict(options), "model": model})


def run_trace(model: HookedModel, options: TraceOptions, out: OutputFolder | str | Path,
              overwrite: bool = False) -> dict[str, PatchingResult]:
    """Causal tracing of each kind; writes ``trace-{kind}.json`` and ``trace-{kind}.html``."""
    folder = out if isinstance(out, OutputFolder) else prepare_trace_folder(out, options, overwrite)
    checks.check_context(model, model.to_tokens(options.prompt).shape[1], "the prompt")
    results = {}
    for kind in options.kinds:
        result = causal_trace(model, options.prompt, options.subject, kind=kind, window=options.window,
                              samples=options.samples)
        result.save(folder / f"trace-{kind}.json")
        figure = result.plot(title=f"causal trace ({kind}): p({result.info['answer']!r}) restored; clean "
                                   f"{result.clean_value:.3f}, noised {result.corrupted_value:.3f}")
        atomic_figure(folder / f"trace-{kind}.html", figure)
        results[kind] = result
    folder.record()
    return results
