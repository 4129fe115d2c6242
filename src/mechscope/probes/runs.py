"""The run behind ``mechscope probe``: a linear-probe sweep over layers on a bundled probing
dataset, options checked before any model loads, results written atomically."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, get_args

from mechscope import checks
from mechscope.errors import ConfigError
from mechscope.files import OutputFolder, atomic_figure, atomic_text, plain_name, prepare_output_folder
from mechscope.hooks.names import block_hook_name
from mechscope.models.catalogue import check_hook_syntax
from mechscope.models.hooked_model import HookedModel
from mechscope.probes.datasets import PROBE_DATASETS, ProbeDataset, probe_dataset
from mechscope.probes.linear import KINDS
from mechscope.probes.sweep import ProbeSweep, probe_sweep
from mechscope.validate import check_choice, check_int

ControlKind = Literal["word", "shuffle"]
CONTROLS: tuple[str, ...] = get_args(ControlKind)
PROBE_OUTPUTS = ("sweep.json", "sweep.html", "probes")
_LAYERS = re.compile(r"\s*(all|\d+(\s*-\s*\d+)?(\s*,\s*(\d+(\s*-\s*\d+)?)?)*)\s*", re.IGNORECASE)


def parse_layers(text: str, n_layers: int | None = None) -> list[int]:
    """"all", "0,5,10", "5-15" or a mix, as a sorted list of distinct layers; with ``n_layers``
    each must be in range (``n_layers`` None checks the syntax only, before a model loads)."""
    if not _LAYERS.fullmatch(str(text)) or not str(text).strip(" ,"):
        raise ConfigError(f"layers must look like all, 0,5,10 or 5-15, got {text!r}")
    if str(text).strip().lower() == "all":
        return [] if n_layers is None else list(range(n_layers))
    return sorted(checks.parse_indices(text, "layers", size=n_layers, what="layers in the model"))


@dataclass(frozen=True)
class ProbeOptions:
    """``mechscope probe``'s options; checked on creation, before any model loads."""

    dataset: str = "sentiment"
    kind: str = "logistic"
    layers: str = "all"
    hook: str = "resid_post"
    position: int = -1
    chat: bool | None = None
    control: str = "word"
    limit: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("dataset", self.dataset, PROBE_DATASETS)
        check_choice("kind", self.kind, KINDS)
        check_choice("control", self.control, CONTROLS)
        parse_layers(self.layers)
        check_hook_syntax(block_hook_name(0, self.hook), field="hook")
        check_int("position", self.position, -checks.MAX_POSITION, checks.MAX_POSITION)
        if self.limit is not None:
            check_int("limit", self.limit, 4, None)
        check_int("seed", self.seed, 0, checks.MAX_SEED)

    def splits(self) -> tuple[ProbeDataset, ProbeDataset]:
        """The train and test splits, cut to ``limit`` examples each."""
        train, test = probe_dataset(self.dataset, "train"), probe_dataset(self.dataset, "test")
        if self.limit is not None:
            train, test = train.head(self.limit), test.head(self.limit)
        return train, test


def hook_names(model: HookedModel, options: ProbeOptions) -> list[str]:
    """The probed hook points on ``model``, each checked against its catalogue."""
    names = [block_hook_name(layer, options.hook) for layer in parse_layers(options.layers, model.cfg.n_layers)]
    for name in names:
        point = model.hook_point(name)  # an UnknownHookError names the close matches
        if len(point.axes) != 3:  # a probe reads one vector per text: [batch, pos, width] points only
            raise ConfigError(f"{name} has axes {point.axes}: probes read [batch, pos, width] points (residual, "
                              "attention or MLP outputs)")
    return names


def prepare_probe_folder(out: str | Path, options: ProbeOptions, overwrite: bool = False,
                         model: str | None = None) -> OutputFolder:
    return prepare_output_folder(out, "probe", PROBE_OUTPUTS, overwrite=overwrite,
                                 options={**asdict(options), "model": model})


def run_probe(model: HookedModel, options: ProbeOptions, out: OutputFolder | str | Path | None = None,
              names: list[str] | None = None, overwrite: bool = False) -> ProbeSweep:
    """Train a probe (and a control probe) per hook on the train split, score them on the test
    split; with ``out``, write sweep.json, sweep.html and probes/<hook>.safetensors."""
    folder = out if isinstance(out, OutputFolder) or out is None else prepare_probe_folder(out, options, overwrite)
    train, test = options.splits()
    names = names if names is not None else hook_names(model, options)
    chat = options.chat
    if chat is None:
        chat = None if options.dataset == "harmful-harmless" else False  # None: the template when the model has one
    keys = options.control == "word"
    sweep = probe_sweep(model, train.texts, train.labels, names, position=options.position, kind=options.kind,
                        test_texts=test.texts, test_labels=test.labels, control_keys=train.keys if keys else None,
                        test_control_keys=test.keys if keys else None, chat=chat, seed=options.seed)
    if folder is not None:
        atomic_text(folder / "sweep.json", json.dumps(sweep.to_json(), indent=1))
        atomic_figure(folder / "sweep.html", sweep.plot())
        for name, probe in sweep.probes.items():
            probe.save(folder / "probes" / plain_name(f"{name}.safetensors", folder / "sweep.json", "a probe's name"))  # LinearProbe.save is atomic
        folder.record()
    return sweep
