"""Probe sweeps: one probe (and one control probe) per hook point, scored on held-out examples."""

from __future__ import annotations

import json
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mechscope.errors import MechscopeError
from mechscope.files import atomic_text, plain_name
from mechscope.hooks.names import resid_posts, split_block_name
from mechscope.probes.control import control_labels, selectivity
from mechscope.probes.linear import KINDS, LinearProbe, ProbeKind, train_probe
from mechscope.probes.metrics import accuracy, as_binary_labels, auroc
from mechscope.validate import check_choice, check_int, check_number, options_from


@dataclass(frozen=True)
class ProbeRow:
    """Scores of the probes at one hook point. Accuracies are at score 0; control_* are the
    control probe's (same kind, same examples, control labels), selectivity = test_accuracy -
    control_accuracy."""

    hook_name: str
    train_accuracy: float
    test_accuracy: float
    test_auroc: float
    control_train_accuracy: float
    control_accuracy: float
    selectivity: float


METRICS = tuple(name for name in ProbeRow.__dataclass_fields__ if name != "hook_name")


@dataclass
class ProbeSweep:
    """One :class:`ProbeRow` per hook, in the order probed. probes: {hook name: task probe}.
    chance / control_chance: the test accuracy of always answering the majority class of the
    task's / the control task's test labels (per-key control labels need not be balanced over
    examples, so the control's baseline can sit above 0.5)."""

    rows: list[ProbeRow]
    probes: dict[str, LinearProbe]
    kind: str
    n_train: int
    n_test: int
    chance: float
    control_chance: float
    info: dict = field(default_factory=dict)

    def best(self, metric: str = "test_accuracy") -> ProbeRow:
        """The row with the highest ``metric`` (the earliest on ties)."""
        if metric not in METRICS:
            raise MechscopeError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
        return max(self.rows, key=lambda row: getattr(row, metric))  # max keeps the first of equals

    def table(self) -> list[dict]:
        return [asdict(row) for row in self.rows]

    def to_json(self) -> dict:
        return {"kind": self.kind, "n_train": self.n_train, "n_test": self.n_test, "chance": self.chance,
                "control_chance": self.control_chance, "info": self.info, "rows": self.table()}

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/sweep.json``, ``folder/sweep.html`` (the plot, plotly.js embedded so it
        opens offline) and ``folder/probes/<hook name>.safetensors`` (see :meth:`LinearProbe.load`)."""
        folder = Path(folder)
        atomic_text(folder / "sweep.json", json.dumps(self.to_json(), indent=1))
        atomic_text(folder / "sweep.html", self.plot().to_html(include_plotlyjs=True, full_html=True))
        for hook_name, probe in self.probes.items():
            probe.save(folder / "probes" / plain_name(f"{hook_name}.safetensors", folder / "sweep.json", "a probe's name"))
        return folder

    def plot(self, title: str | None = None):
        """A plotly figure of every metric against layer (or hook name when hooks are not all
        ``blocks.{L}.*``), with the majority-class chance levels as dotted lines."""
        import plotly.graph_objects as go

        parts = [split_block_name(row.hook_name) for row in self.rows]  # names are parsed only there
        by_layer = all(parts) and len({part[0] for part in parts}) == len(parts)
        x = [part[0] for part in parts] if by_layer else [row.hook_name for row in self.rows]
        figure = go.Figure()
        styles = {"train_accuracy": "dot", "test_accuracy": "solid", "test_auroc": "solid",
                  "control_accuracy": "dash", "selectivity": "solid"}
        for metric, dash in styles.items():
            figure.add_trace(go.Scatter(x=x, y=[getattr(row, metric) for row in self.rows], name=metric,
                                        mode="lines+markers", line={"dash": dash}))
        figure.add_hline(y=self.chance, line_dash="dot", line_color="gray", annotation_text="chance")
        if self.control_chance != self.chance:
            figure.add_hline(y=self.control_chance, line_dash="dot", line_color="silver",
                             annotation_text="control chance", annotation_position="bottom right")
        figure.update_layout(title=title or f"{self.kind} probes ({self.n_train} train / {self.n_test} test)",
                             xaxis_title="layer" if by_layer else "hook", yaxis_title="score",
                             yaxis_range=[min(0.0, min(row.selectivity for row in self.rows)) - 0.02, 1.02])
        return figure


def stratified_split(labels, test_fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, test indices), each sorted: a seeded shuffle of each class, its first
    round(test_fraction * class size) examples (at least 1) going to test. Every class keeps
    at least 2 training examples, or this raises."""
    labels = as_binary_labels(labels)
    if not 0 < test_fraction < 1:
        raise MechscopeError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    generator = torch.Generator().manual_seed(seed)
    train, test = [], []
    for value in (0, 1):
        members = (labels == value).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_test = max(1, round(test_fraction * len(members)))
        if len(members) - n_test < 2:
            raise MechscopeError(f"class {value} has {len(members)} examples: too few to hold out "
                             f"{test_fraction:.0%} and keep 2 for training")
        test.append(members[:n_test])
        train.append(members[n_test:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def _as_feature_dict(features, what: str) -> dict[str, torch.Tensor]:
    """{name: [n, d]}, every entry with the same n (a bare tensor is named "features")."""
    if isinstance(features, torch.Tensor):
        features = {"features": features}
    if not isinstance(features, dict) or not features:
        raise MechscopeError(f"{what} must be a tensor [n, d] or a non-empty dict {{hook name: tensor [n, d]}}")
    rows = {name: len(value) for name, value in features.items()}
    if len(set(rows.values())) > 1:
        raise MechscopeError(f"{what} must have the same number of examples at every hook, got {rows}")
    return dict(features)


def probe_features(
    features: torch.Tensor | dict[str, torch.Tensor],
    labels,
    test_features: torch.Tensor | dict[str, torch.Tensor] | None = None,
    test_labels=None,
    kind: str = "logistic",
    test_fraction: float = 0.2,
    control_keys: Sequence[Hashable] | None = None,
    test_control_keys: Sequence[Hashable] | None = None,
    seed: int = 0,
    l2: float = 1e-2,
    progress: bool = True,
    info: dict | None = None,
) -> ProbeSweep:
    """Probe precomputed activations: ``features`` is [n, d] or {hook name: [n, d]}, ``labels``
    [n] (0/1). With ``test_features`` / ``test_labels`` (same hooks, [m, d] and [m]) those are
    the test set; otherwise a stratified ``test_fraction`` of the examples is held out (seeded).

    The control task (see :mod:`mechscope.probes.control`) is drawn over train and test
    together, so a key keeps its control label across the split: ``control_keys`` gives one key
    per example of ``features`` and, with explicit test features, ``test_control_keys`` one per
    test example. Without keys the control labels are a seeded shuffle of the labels.
    """
    if kind not in KINDS:
        raise MechscopeError(f"unknown probe kind {kind!r}; choose one of: {', '.join(KINDS)}")
    train_set = _as_feature_dict(features, "features")
    n = len(next(iter(train_set.values())))
    labels = as_binary_labels(labels, n, "labels").cpu()
    if (test_features is None) != (test_labels is None):
        raise MechscopeError("give both test_features and test_labels, or neither (to split off test_fraction)")
    if control_keys is not None and len(control_keys) != n:
        raise MechscopeError(f"control_keys has {len(control_keys)} entries but there are {n} examples")
    if test_features is None:
        if test_control_keys is not None:
            raise MechscopeError("test_control_keys needs explicit test_features; with a random split, "
                             "control_keys covers every example")
        train_index, test_index = stratified_split(labels, test_fraction, seed)
        combined = train_set
        all_labels = labels
        all_keys = control_keys
    else:
        test_set = _as_feature_dict(test_features, "test_features")
        if set(test_set) != set(train_set):
            raise MechscopeError(f"test_features has hooks {sorted(test_set)} but features has {sorted(train_set)}")
        m = len(next(iter(test_set.values())))
        test_labels = as_binary_labels(test_labels, m, "test_labels").cpu()
        if (control_keys is None) != (test_control_keys is None):
            raise MechscopeError("with explicit test features, give control_keys and test_control_keys together")
        if test_control_keys is not None and len(test_control_keys) != m:
            raise MechscopeError(f"test_control_keys has {len(test_control_keys)} entries but there are {m} test examples")
        combined = {name: _concat(train_set[name], test_set[name], name) for name in train_set}
        all_labels = torch.cat([labels, test_labels])
        all_keys = None if control_keys is None else list(control_keys) + list(test_control_keys)
        train_index, test_index = torch.arange(n), torch.arange(n, n + m)
    control = control_labels(all_labels, all_keys, seed=seed)
    y_train, y_test = all_labels[train_index], all_labels[test_index]
    c_train, c_test = control[train_index], control[test_index]
    rows, probes = [], {}
    for name, x in tqdm(combined.items(), desc="probes", disable=not progress or len(combined) < 2):
        x_train, x_test = x[train_index].cpu(), x[test_index].cpu()
        probe = train_probe(x_train, y_train, kind, l2=l2, info={"hook_name": name, **(info or {})})
        try:
            control_probe = train_probe(x_train, c_train, kind, l2=l2)
        except ValueError as error:
            raise MechscopeError(f"control task: {error} (the control labels come from control_keys; "
                             "give more distinct keys or more examples)") from error
        test_accuracy = accuracy(probe.score(x_test), y_test)
        control_accuracy = accuracy(control_probe.score(x_test), c_test)
        rows.append(ProbeRow(name, accuracy(probe.score(x_train), y_train), test_accuracy,
                             auroc(probe.score(x_test), y_test), accuracy(control_probe.score(x_train), c_train),
                             control_accuracy, selectivity(test_accuracy, control_accuracy)))
        probes[name] = probe
    return ProbeSweep(rows, probes, kind, len(train_index), len(test_index), _majority(y_test), _majority(c_test),
                      dict(info or {}))


def _majority(labels: torch.Tensor) -> float:
    share = float(labels.float().mean())
    return max(share, 1 - share)


def _concat(train: torch.Tensor, test: torch.Tensor, name: str) -> torch.Tensor:
    if train.dim() != 2 or test.dim() != 2 or train.shape[1] != test.shape[1]:
        raise MechscopeError(f"{name}: features {tuple(train.shape)} and test features {tuple(test.shape)} must both be "
                         "[n, d] with the same d")
    return torch.cat([train.cpu(), test.cpu()])


def resid_post_hooks(model) -> list[str]:
    """The default sweep: the residual stream after every block, ``blocks.{L}.hook_resid_post``."""
    return resid_posts(model.cfg.n_layers)


@dataclass(frozen=True)
class ProbeSweepConfig:
    """The options of :func:`probe_sweep`, checked on construction (before any model runs)."""

    position: int = -1
    kind: ProbeKind = "logistic"
    test_fraction: float = 0.2
    chat: bool | None = False
    batch_size: int = 16
    seed: int = 0
    l2: float = 1e-2

    def __post_init__(self) -> None:
        check_int("position", self.position, minimum=None)
        check_choice("kind", self.kind, ProbeKind)
        check_number("test_fraction", self.test_fraction, minimum=0, maximum=1, strict_minimum=True)
        check_int("batch_size", self.batch_size, minimum=1)
        check_int("seed", self.seed, minimum=None)
        check_number("l2", self.l2, minimum=0)


def probe_sweep(
    model,
    texts: Sequence[str],
    labels,
    hook_names: str | Sequence[str] | None = None,
    position: int = -1,
    kind: ProbeKind = "logistic",
    test_texts: Sequence[str] | None = None,
    test_labels=None,
    test_fraction: float = 0.2,
    control_keys: Sequence[Hashable] | None = None,
    test_control_keys: Sequence[Hashable] | None = None,
    chat: bool | None = False,
    batch_size: int = 16,
    seed: int = 0,
    l2: float = 1e-2,
    progress: bool = True,
    config: ProbeSweepConfig | None = None,
) -> ProbeSweep:
    """Probe ``model``'s activations at token ``position`` of each text (negative positions count
    back from the text's last token; with ``chat=True`` -1 is the chat template's last token)
    at every hook of ``hook_names`` (default: :func:`resid_post_hooks`). ``labels`` [n] are 0/1.
    Train / test and the control task are as in :func:`probe_features`. ``config``: a
    :class:`ProbeSweepConfig` in place of the separate options."""
    options = options_from(ProbeSweepConfig, config, position=position, kind=kind, test_fraction=test_fraction,
                           chat=chat, batch_size=batch_size, seed=seed, l2=l2)
    position, kind, test_fraction, chat = options.position, options.kind, options.test_fraction, options.chat
    batch_size, seed, l2 = options.batch_size, options.seed, options.l2
    texts = list(texts)
    labels = as_binary_labels(labels, len(texts), "labels")
    if (test_texts is None) != (test_labels is None):
        raise MechscopeError("give both test_texts and test_labels, or neither (to split off test_fraction)")
    test_texts = list(test_texts or [])
    if test_labels is not None:
        test_labels = as_binary_labels(test_labels, len(test_texts), "test_labels")
    names = resid_post_hooks(model) if hook_names is None else (
        [hook_names] if isinstance(hook_names, str) else list(hook_names))
    activations = prompt_activations_at(model, texts + test_texts, names, position, chat, batch_size, progress)
    train = {name: value[: len(texts)] for name, value in activations.items()}
    test = {name: value[len(texts):] for name, value in activations.items()} if test_texts else None
    info = {"position": position, "chat": chat, "model": getattr(model.cfg, "name", None)}
    return probe_features(train, labels, test, test_labels, kind=kind, test_fraction=test_fraction,
                          control_keys=control_keys, test_control_keys=test_control_keys, seed=seed, l2=l2,
                          progress=progress, info=info)


def prompt_activations_at(model, texts: list[str], hook_names: list[str], position: int, chat: bool | None,
                          batch_size: int, progress: bool) -> dict[str, torch.Tensor]:
    """{hook name: [n_texts, d]} float32 on the CPU: one token position per text."""
    from mechscope.analysis import prompt_activations

    activations = prompt_activations(model, texts, hook_names, positions=position, chat=chat,
                                     batch_size=batch_size, progress=progress)
    return {name: value[:, 0] for name, value in activations.items()}
