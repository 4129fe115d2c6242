"""Steering on the bundled SmolLM2-135M-Instruct (tied embeddings, chat template): the orthogonalised
model, saved and reloaded, equals the runtime ablation; a harmful-minus-harmless direction read
from 16 prompts each moves the refusal score both ways."""

import pytest
import torch

import mechscope
from mechscope import datasets
from mechscope.steering import (
    DirectionalAblation,
    Steering,
    contrast_directions,
    last_token_logits,
    save_orthogonalised,
)
from mechscope.steering.refusal import refusal_score

# Layer 15, last token: the best of the layers (6, 9, 12, 15) and positions (-1, -5) tried when writing
# this test; the bounds below are about half the measured effects (-0.62 ablated, +1.6 added at 2x).
LAYER = 15


@pytest.fixture(scope="module")
def refusal_direction(smollm2):
    harmful, harmless = datasets.load("harmful")[:16], datasets.load("harmless")[:16]
    return contrast_directions(smollm2, harmful, harmless, LAYER, -1, chat=True, progress=False)[(LAYER, -1)]


def test_alpha_zero_is_exactly_the_model(smollm2, refusal_direction):
    prompts = datasets.load("harmless", "test")[:4]
    steered = last_token_logits(smollm2, prompts, Steering(refusal_direction, 0.0).hooks(smollm2), chat=True)
    assert torch.equal(steered, last_token_logits(smollm2, prompts, chat=True))


def test_saved_orthogonalised_model_equals_runtime_ablation(smollm2, refusal_direction, tmp_path):
    prompts = datasets.load("harmful", "test")[:4]
    runtime = last_token_logits(smollm2, prompts, DirectionalAblation(refusal_direction).hooks(smollm2), chat=True)
    folder = save_orthogonalised(smollm2, refusal_direction, tmp_path / "ortho")
    reloaded = mechscope.load(str(folder), dtype=torch.float32)
    assert reloaded.hf_model.config.tie_word_embeddings is False
    edited = last_token_logits(reloaded, prompts, chat=True)
    assert (edited - runtime).abs().max() < 1e-4
    assert (runtime - last_token_logits(smollm2, prompts, chat=True)).abs().max() > 0.1  # it is an edit


def test_refusal_direction_moves_the_refusal_score_both_ways(smollm2, refusal_direction):
    harmful, harmless = datasets.load("harmful", "test")[:16], datasets.load("harmless", "test")[:16]
    ablated = refusal_score(smollm2, harmful, DirectionalAblation(refusal_direction).hooks(smollm2))
    assert ablated < refusal_score(smollm2, harmful) - 0.3
    added = Steering(refusal_direction, 2 * refusal_direction.scale).hooks(smollm2)
    assert refusal_score(smollm2, harmless, added) > refusal_score(smollm2, harmless) + 1.0
