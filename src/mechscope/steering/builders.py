"""Directions read off the model: differences in means between two prompt sets (per layer and
position) and CAA's A/B answer contrast."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from mechscope.analysis.activations import prompt_activations
from mechscope.errors import MechscopeError
from mechscope.hooks.names import resid_pre
from mechscope.models.hooked_model import HookedModel
from mechscope.steering.apply import checked_layers
from mechscope.steering.direction import Direction, diff_in_means


def contrast_directions(
    model: HookedModel,
    positive: Sequence[str],
    negative: Sequence[str],
    layers: int | Sequence[int] | None = None,
    positions: int | Sequence[int] = -1,
    chat: bool | None = None,
    batch_size: int = 16,
    progress: bool = True,
    skip_identical: bool = False,
) -> dict[tuple[int, int], Direction]:
    """mean(positive) - mean(negative) of hook_resid_pre activations, for every (layer, position)
    pair: {(layer, position): Direction}. Negative positions count from each prompt's end (with
    ``chat``, -1 ... -k are the template's post-instruction tokens).

    Where both sets have identical activations (e.g. before block 0 at a template token that
    every prompt shares) there is no direction: an error, or with ``skip_identical`` the pair is
    left out of the result."""
    layer_list = checked_layers(model, layers)
    position_list = [positions] if isinstance(positions, int) else list(positions)
    names = [resid_pre(layer) for layer in layer_list]
    acts_pos = prompt_activations(model, positive, names, position_list, chat, batch_size=batch_size, progress=progress)
    acts_neg = prompt_activations(model, negative, names, position_list, chat, batch_size=batch_size, progress=progress)
    directions = {}
    for layer, name in zip(layer_list, names):
        for index, position in enumerate(position_list):
            meta = {"model": model.cfg.name, "position": position, "chat": chat, "hook": name}
            positive_acts, negative_acts = acts_pos[name][:, index], acts_neg[name][:, index]
            if torch.equal(positive_acts.mean(0), negative_acts.mean(0)):
                if skip_identical:
                    continue
                raise MechscopeError(f"at layer {layer}, position {position} both prompt sets have the same mean "
                                 "activation, so there is no direction (e.g. a shared template token before any "
                                 "attention); choose other layers or positions, or pass skip_identical=True")
            directions[(layer, position)] = diff_in_means(positive_acts, negative_acts, layer, meta)
    return directions


def caa_direction(
    model: HookedModel,
    items: Sequence[Mapping[str, str]],
    layers: int | Sequence[int] | None = None,
    chat: bool | None = None,
    progress: bool = True,
) -> dict[int, Direction]:
    """Contrastive activation addition: for each A/B item ({"question",
    "answer_matching_behavior", "answer_not_matching_behavior"}, answers like "(A)"), the
    hook_resid_pre activation at the answer letter when the reply starts with the matching
    answer, minus that with the other answer; averaged over items. {layer: Direction}."""
    if not items:
        raise MechscopeError("no A/B items given")
    keys = ("question", "answer_matching_behavior", "answer_not_matching_behavior")
    for index, item in enumerate(items):
        missing = [key for key in keys if key not in item]
        if missing:
            raise MechscopeError(f"item {index} lacks {missing}; CAA items need {keys}")
    layer_list = checked_layers(model, layers)
    names = [resid_pre(layer) for layer in layer_list]
    questions = [item["question"] for item in items]

    def letter(answer: str) -> str:  # "(A)" -> "(A": read at the letter, before the answer is closed
        return answer.rstrip(")").rstrip()

    matching = prompt_activations(model, questions, names, -1, chat, [letter(i[keys[1]]) for i in items],
                                  progress=progress)
    other = prompt_activations(model, questions, names, -1, chat, [letter(i[keys[2]]) for i in items],
                               progress=progress)
    return {layer: Direction.from_vector((matching[name][:, 0] - other[name][:, 0]).mean(0), layer, "caa",
                                         {"model": model.cfg.name, "n_items": len(items), "hook": name})
            for layer, name in zip(layer_list, names)}
