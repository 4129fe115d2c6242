"""Control tasks (Hewitt & Liang 2019, "Designing and Interpreting Probes with Control Tasks").

A probe that reaches 95% on a task may be reading a property the model represents, or it may
be a flexible classifier memorising whatever identity information the activations carry. A
control task keeps the task's *structure* but makes its labels meaningless: every distinct
key (a word type, an entity, a template filler) gets a random label, fixed by a seed. A probe
can do well on it only by memorising keys, so its control accuracy measures how much of the
task accuracy the probe could have had from memorisation alone. Selectivity is

    selectivity = task test accuracy - control test accuracy

and is high only when the probe is good at the task *and* bad at memorising. Keys must recur
between train and test for the control to be learnable at all; with keys that never recur
(or with no keys, below) the control is at chance by construction, and selectivity then only
says how far above chance the task probe is.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch

from mechscope.errors import MechscopeError
from mechscope.probes.metrics import as_binary_labels


def control_labels(labels, keys: Sequence[Hashable] | None = None, seed: int = 0) -> torch.Tensor:
    """[n] long control labels for ``labels`` [n] (0/1).

    With ``keys`` (one hashable per example): the distinct keys, ordered by ``str`` so the
    assignment does not depend on example order or Python's per-process string hashing, get a
    seeded random labelling that is balanced over keys (half 0, half 1; one extra 0 or 1 at
    random when their number is odd). Examples sharing a key share a control label.

    Without keys: a seeded permutation of ``labels``, i.e. every example is its own type. This
    keeps the class balance exactly, but a probe cannot generalise from it to unseen examples,
    so the control's *test* accuracy is chance whatever the representation (its *train*
    accuracy still shows how well the probe can memorise random labels).
    """
    labels = as_binary_labels(labels)
    generator = torch.Generator().manual_seed(seed)
    if keys is None:
        return labels[torch.randperm(len(labels), generator=generator)]
    keys = list(keys)
    if len(keys) != len(labels):
        raise MechscopeError(f"keys has {len(keys)} entries but labels has {len(labels)}; give one key per example")
    distinct = sorted(dict.fromkeys(keys), key=str)  # first appearance breaks ties between equal strs
    if len(distinct) < 2:
        raise MechscopeError(f"control task needs at least 2 distinct keys, got {len(distinct)}")
    n_keys = len(distinct)
    balanced = torch.arange(n_keys) % 2  # n_keys // 2 ones, the odd key out a 0 before the coin flip
    if n_keys % 2 and torch.rand(1, generator=generator) < 0.5:
        balanced[-1] = 1
    assignment = balanced[torch.randperm(n_keys, generator=generator)]
    of_key = {key: int(label) for key, label in zip(distinct, assignment)}
    return torch.tensor([of_key[key] for key in keys], dtype=torch.long)


def selectivity(task_accuracy: float, control_accuracy: float) -> float:
    """Task test accuracy minus control test accuracy (Hewitt & Liang's selectivity)."""
    return task_accuracy - control_accuracy
