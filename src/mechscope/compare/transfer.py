"""Transfer of probes and steering directions from model A to model B through a stitch.

A probe on A scores ``x_a @ w + c``. To read B with it, B's activations must be carried into A's
space, so the stitch runs B -> A (``x_a ~ x_b @ W + b``, :func:`mechscope.compare.stitch.fit_affine`
with B's rows as input) and :func:`transfer_probe` folds it into a probe on B:
``(x_b @ W + b) @ w + c = x_b @ (W w) + (b @ w + c)``. :func:`probe_transfer` compares that probe
with B's own (native) probe on B's held-out rows, against the majority-class rate and a null (the
same transfer through a stitch fitted on row-shuffled pairs).

A steering direction is a displacement, not a position, so it goes the other way through the
linear part alone: ``v_b = v_a @ W_ab`` (the bias cancels in a difference; the image of A's
difference in means is the difference in means of the predicted B activations).
:func:`steering_transfer` steers B with it, with B's native direction and with a random one, each
at the strength that gives the same next-token KL on neutral prompts, and measures a behaviour.

Shapes: activations [n, d_a] / [n, d_b]; stitch weights [d_in, d_out]; directions [d].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from mechscope.compare.grid import aligned_activations
from mechscope.compare.stitch import AffineMap, fit_affine, held_out_r2
from mechscope.errors import ConfigError
from mechscope.hooks import names
from mechscope.hooks.interventions import add_vector
from mechscope.models.hooked_model import HookedModel
from mechscope.probes.datasets import PROBE_DATASETS, probe_dataset
from mechscope.probes.linear import KINDS, LinearProbe, train_probe
from mechscope.probes.metrics import accuracy, as_binary_labels
from mechscope.probes.sweep import prompt_activations_at
from mechscope.steering.direction import Direction
from mechscope.steering.evaluate import Behaviour, last_token_logits, next_token_kl
from mechscope.validate import check_choice, check_int, check_number


def _matrix(name: str, value: torch.Tensor, width: int | None = None) -> torch.Tensor:
    value = torch.as_tensor(value)
    if value.dim() != 2 or len(value) == 0:
        raise ConfigError(f"{name} must be activations [n, d] with n >= 1; got shape {tuple(value.shape)}")
    if width is not None and value.shape[1] != width:
        raise ConfigError(f"{name} has width {value.shape[1]}, but the other activations of its model have {width}")
    return value.double()


def transfer_probe(probe: LinearProbe, stitch: AffineMap) -> LinearProbe:
    """A's ``probe`` [d_a] read through ``stitch`` B -> A (weight [d_b, d_a]): a probe on B [d_b]
    whose scores equal ``probe.score(stitch(x_b))``."""
    if stitch.weight.shape[1] != probe.d:
        raise ConfigError(f"the stitch maps into width {stitch.weight.shape[1]} but the probe reads width {probe.d}: "
                          "fit the stitch from B to A (x_a ~ x_b @ W + b), i.e. fit_affine(b_rows, a_rows)")
    weight = stitch.weight.double() @ probe.weight.double()
    bias = float(stitch.bias.double() @ probe.weight.double()) + probe.bias
    direction = stitch.weight.double() @ probe.direction.double()
    return LinearProbe(weight.float(), bias, probe.kind, (direction / direction.norm().clamp_min(1e-30)).float(),
                       {**probe.info, "transferred": "through a stitch B -> A"})


@dataclass(frozen=True)
class ProbeTransfer:
    """Accuracies on B's test rows: ``native`` (a probe trained on B's training rows),
    ``transferred`` (A's probe through the stitch B -> A), ``null`` (the same through a stitch fitted
    on row-shuffled pairs), ``chance`` (the majority class's share); ``source`` is A's probe on A's
    test rows; ``stitch_r2`` the stitch's held-out R² on the pairs (20% of them)."""

    native: float
    transferred: float
    null: float
    chance: float
    source: float
    stitch_r2: float
    n_train: int
    n_test: int
    n_pairs: int

    def to_json(self) -> dict:
        return asdict(self)


def probe_transfer(train_a: torch.Tensor, train_b: torch.Tensor, train_labels, test_a: torch.Tensor,
                   test_b: torch.Tensor, test_labels, pairs_a: torch.Tensor, pairs_b: torch.Tensor,
                   kind: str = "logistic", ridge: float = 1e-3, seed: int = 0) -> ProbeTransfer:
    """Probe transfer on activation matrices: ``train_a`` [n, d_a] and ``train_b`` [n, d_b] are the
    same labelled examples read in A and B (likewise ``test_a`` / ``test_b`` [m, ...]); the stitch
    B -> A is fitted on ``pairs_a`` [p, d_a] / ``pairs_b`` [p, d_b], paired rows that should not be
    the probe's examples (unlabelled text): fitted on labelled rows, a stitch can learn the label
    correspondence itself and carry a probe between unrelated representations."""
    check_choice("kind", kind, KINDS)
    check_int("seed", seed, 0)
    train_a, train_b = _matrix("train_a", train_a), _matrix("train_b", train_b)
    test_a, pairs_a = _matrix("test_a", test_a, train_a.shape[1]), _matrix("pairs_a", pairs_a, train_a.shape[1])
    test_b, pairs_b = _matrix("test_b", test_b, train_b.shape[1]), _matrix("pairs_b", pairs_b, train_b.shape[1])
    for what, a, b in (("train", train_a, train_b), ("test", test_a, test_b), ("pairs", pairs_a, pairs_b)):
        if len(a) != len(b):
            raise ConfigError(f"{what}_a has {len(a)} rows and {what}_b {len(b)}; each row is one example in both models")
    train_labels = as_binary_labels(train_labels, len(train_a), "train_labels")
    test_labels = as_binary_labels(test_labels, len(test_a), "test_labels", both_classes=False)
    probe_a, native = train_probe(train_a, train_labels, kind), train_probe(train_b, train_labels, kind)
    stitch = fit_affine(pairs_b, pairs_a, ridge)
    # The null keeps every row's marginal distribution and breaks only the pairing.
    order = torch.randperm(len(pairs_a), generator=torch.Generator().manual_seed(seed))
    shuffled = fit_affine(pairs_b, pairs_a[order], ridge)
    _, r2 = held_out_r2(pairs_b, pairs_a, ridge=ridge, seed=seed)
    counts = torch.bincount(test_labels, minlength=2)
    return ProbeTransfer(
        native=accuracy(native.score(test_b), test_labels),
        transferred=accuracy(transfer_probe(probe_a, stitch).score(test_b), test_labels),
        null=accuracy(transfer_probe(probe_a, shuffled).score(test_b), test_labels),
        chance=float(counts.max()) / len(test_labels), source=accuracy(probe_a.score(test_a), test_labels),
        stitch_r2=r2, n_train=len(train_a), n_test=len(test_a), n_pairs=len(pairs_a))


def model_probe_transfer(model_a: HookedModel, model_b: HookedModel, stitch_texts: list[str], layer_a: int,
                         layer_b: int, dataset: str = "sentiment", kind: str = "logistic", ridge: float = 1e-3,
                         seed: int = 0, batch_size: int = 16, limit: int | None = None,
                         progress: bool = False) -> ProbeTransfer:
    """:func:`probe_transfer` on two models: probes read each text of probe dataset ``dataset``
    at its last token (``hook_resid_post`` of ``layer_a`` / ``layer_b``, no chat template, as the
    stitch sees plain text); the stitch is fitted on the aligned positions of ``stitch_texts``
    (e.g. :func:`mechscope.compare.runs.corpus_texts`). ``limit``: at most this many examples of
    each split (class proportions kept)."""
    check_choice("dataset", dataset, PROBE_DATASETS)
    limit = None if limit is None else check_int("limit", limit, 4)
    hook_a, hook_b = names.resid_post(layer_a), names.resid_post(layer_b)
    pairs = aligned_activations(model_a, model_b, stitch_texts, [layer_a], [layer_b], progress=progress)
    splits = {split: probe_dataset(dataset, split) for split in ("train", "test")}
    splits = {split: data if limit is None else data.head(limit) for split, data in splits.items()}
    # keyed by side, not by model: A and B may be one model read at two layers
    read = {(side, split): prompt_activations_at(model, splits[split].texts, [hook], -1, False, batch_size,
                                                 progress)[hook]
            for side, model, hook in (("a", model_a, hook_a), ("b", model_b, hook_b)) for split in splits}
    return probe_transfer(read["a", "train"], read["b", "train"], splits["train"].labels,
                          read["a", "test"], read["b", "test"], splits["test"].labels,
                          pairs.a[layer_a], pairs.b[layer_b], kind, ridge, seed)


def transfer_direction(direction: Direction | torch.Tensor, stitch: AffineMap) -> Direction:
    """A's ``direction`` [d_a] (with its length ``scale``) carried by the linear part of ``stitch``
    A -> B (weight [d_a, d_b]): a direction in B whose ``scale`` is the mapped length."""
    vector = direction.vector * direction.scale if isinstance(direction, Direction) else torch.as_tensor(direction)
    if vector.dim() != 1 or vector.shape[0] != stitch.weight.shape[0]:
        raise ConfigError(f"the direction has shape {tuple(vector.shape)} but the stitch A -> B reads width "
                          f"{stitch.weight.shape[0]}: fit it from A to B (fit_affine(a_rows, b_rows))")
    mapped = vector.double() @ stitch.weight.double()
    return Direction.from_vector(mapped.float(), metadata={"transferred": "through a stitch A -> B"})


@dataclass(frozen=True)
class SteeredAtKL:
    """One direction at the matched KL: ``scale`` the norm of the vector added at every position,
    ``kl`` the next-token KL(unsteered || steered) it reached, ``effect`` the behaviour's change
    from the unsteered model, ``steps`` the KL evaluations the search took."""

    scale: float
    kl: float
    effect: float
    steps: int


@dataclass(frozen=True)
class SteeringTransfer:
    """``native`` (B's own direction), ``transferred`` (A's through the stitch) and ``random`` (a
    seeded Gaussian direction, the null) steered at ``target_kl``; ``cosine`` between the
    transferred and native directions; ``baseline`` the unsteered behaviour score."""

    target_kl: float
    baseline: float
    cosine: float
    native: SteeredAtKL
    transferred: SteeredAtKL
    random: SteeredAtKL

    def to_json(self) -> dict:
        return asdict(self)


def scale_for_kl(kl_at: Callable[[float], float], target: float, start: float, tolerance: float,
                 max_steps: int) -> tuple[float, float, int]:
    """(scale, KL there, evaluations): doubling from ``start`` until ``kl_at`` passes ``target``,
    then bisection until within ``tolerance`` x target, in at most ``max_steps`` evaluations. The
    KL of an added vector grows with its norm in practice; the closest scale seen is returned."""
    low, high, steps = 0.0, start, 1
    kl_high = kl_at(high)
    while kl_high < target:
        if steps >= max_steps:
            raise ConfigError(f"the target KL {target} was not reached: KL {kl_high:.4g} at scale {high:.4g} after "
                              f"{steps} steps; lower target_kl or raise max_steps")
        low, high, steps = high, 2 * high, steps + 1
        kl_high = kl_at(high)
    best = (high, kl_high)
    while abs(best[1] - target) > tolerance * target and steps < max_steps:
        middle = (low + high) / 2
        kl, steps = kl_at(middle), steps + 1
        low, high = (middle, high) if kl < target else (low, middle)
        best = min(best, (middle, kl), key=lambda pair: abs(pair[1] - target))
    return best[0], best[1], steps


def steering_transfer(model_b: HookedModel, layer_b: int, direction_a: Direction | torch.Tensor,
                      stitch_ab: AffineMap, native_b: Direction | torch.Tensor, behaviour: Behaviour,
                      prompts: Sequence[str], target_kl: float = 0.1, tolerance: float = 0.05,
                      max_steps: int = 40, chat: bool | None = False, seed: int = 0) -> SteeringTransfer:
    """Steer ``model_b`` at ``hook_resid_post`` of ``layer_b`` (where the stitch was fitted) with
    A's ``direction_a`` [d_a] mapped through ``stitch_ab`` A -> B, with B's ``native_b`` [d_b], and
    with a random direction, each at the scale whose next-token KL on ``prompts`` (neutral text)
    is ``target_kl`` nats; ``behaviour.score(model_b, hooks)`` measures the effect."""
    target_kl = check_number("target_kl", target_kl, 0, strict_minimum=True)
    tolerance = check_number("tolerance", tolerance, 0, 1, strict_minimum=True)
    max_steps, seed = check_int("max_steps", max_steps, 2), check_int("seed", seed, 0)
    check_int("layer_b", layer_b, 0, model_b.cfg.n_layers - 1)
    if not prompts:
        raise ConfigError("give at least one neutral prompt to measure the KL on")
    d_b = model_b.cfg.d_model
    if stitch_ab.weight.shape[1] != d_b:
        raise ConfigError(f"the stitch maps into width {stitch_ab.weight.shape[1]} but model B has d_model {d_b}: "
                          "fit it from A to B at layer_b")
    native = native_b if isinstance(native_b, Direction) else Direction.from_vector(torch.as_tensor(native_b))
    if native.d_model != d_b:
        raise ConfigError(f"native_b has width {native.d_model} but model B has d_model {d_b}")
    transferred = transfer_direction(direction_a, stitch_ab)
    noise = torch.randn(d_b, generator=torch.Generator().manual_seed(seed))
    hook = names.resid_post(layer_b)
    reference = last_token_logits(model_b, list(prompts), (), chat)
    baseline = behaviour.score(model_b, ())

    def steered(vector: torch.Tensor, scale: float) -> list:
        return [(hook, add_vector(vector, scale))]

    def arm(vector: torch.Tensor) -> SteeredAtKL:
        # Every arm starts from the native difference's length, so the searches share a unit.
        scale, kl, steps = scale_for_kl(
            lambda s: next_token_kl(model_b, list(prompts), steered(vector, s), chat, reference),
            target_kl, native.scale, tolerance, max_steps)
        return SteeredAtKL(scale, kl, behaviour.score(model_b, steered(vector, scale)) - baseline, steps)

    return SteeringTransfer(target_kl, baseline, float(transferred.vector @ native.vector), arm(native.vector),
                            arm(transferred.vector), arm(noise / noise.norm()))


__all__ = ["ProbeTransfer", "SteeredAtKL", "SteeringTransfer", "model_probe_transfer", "probe_transfer",
           "scale_for_kl", "steering_transfer", "transfer_direction", "transfer_probe"]
