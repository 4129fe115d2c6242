"""Organisms and diffing on the bundled SmolLM2-135M-Instruct, measured side by side in one run.

    python benchmarks/organisms.py [--steps 6] [--batch-size 8] [--contexts 16] [--sae-steps 200]

1. Fine-tuning throughput (tokens per second, through the trainer's own step loss) of LoRA
   (rank 8, every attention and MLP projection), of full fine-tuning, and of LoRA with the
   contrast term (``contrast_weight=1``), on the same self-distilled examples and batches,
   alternating steps so machine noise hits all alike.
2. Difference-lens time: ``difference_means`` over ``--contexts`` 128-token contexts, against
   two plain forwards of the same batches (its floor: both models must run).
3. Crosscoder training throughput against a plain SAE on the same tokens: a BatchTopK
   crosscoder on paired base/fine-tune activations [tokens, 2 x 576] versus a BatchTopK SAE on
   the base activations alone [tokens, 576], same width, k, batch and steps; and the same
   crosscoder with 1/32 of its latents designated fine-tune-exclusive.

Prints one JSON object; the figures in docs/performance.md come from it.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch

import mechscope
from mechscope import organisms
from mechscope.data import StoredActivations, default_contexts
from mechscope.diff import (
    CrosscoderConfig,
    PairedActivations,
    difference_means,
    harvest_pair,
    train_crosscoder,
)
from mechscope.hooks import names
from mechscope.models.hooked_model import HookedModel
from mechscope.organisms.examples import Example
from mechscope.organisms.finetune import FineTuning, encode, encode_contrasts
from mechscope.sae import SAEConfig, TrainConfig, train

# (method, learning rate, contrast_weight) of each fine-tuning run timed.
FINETUNE_RUNS = {"lora": ("lora", 1e-3, 0.0), "full": ("full", 1e-5, 0.0), "lora_contrast": ("lora", 1e-3, 1.0)}


def _finetune_rates(base: HookedModel, recipe: organisms.Recipe, examples: list[Example], steps: int,
                    batch_size: int) -> dict:
    """Tokens per second of each of ``FINETUNE_RUNS``, through the trainer's own step loss (plain
    examples on KL to the base both ways, the default), steps interleaved."""
    runs = {}
    for label, (method, lr, contrast_weight) in FINETUNE_RUNS.items():
        config = organisms.FineTuneConfig(method=method, lr=lr, batch_size=batch_size, contrast_weight=contrast_weight)
        model = HookedModel(copy.deepcopy(base.hf_model), base.tokenizer, name=base.cfg.name)
        encoded = [encode(model, e, config.max_length) for e in examples]
        runs[label] = (FineTuning(model, config), encoded, encode_contrasts(model, examples, config, recipe.behaviour))
    totals = {label: {"seconds": 0.0, "tokens": 0} for label in runs}
    for step in range(steps + 1):  # step 0 warms up each path and is not counted
        for label, (tuning, encoded, contrasts) in runs.items():
            started = time.perf_counter()
            loss, n_tokens = tuning.batch_loss(examples, encoded, contrasts, step)
            tuning.optimiser.zero_grad(set_to_none=True)
            loss.backward()
            tuning.optimiser.step()
            if step:
                totals[label]["seconds"] += time.perf_counter() - started
                totals[label]["tokens"] += n_tokens
    return {label: {"tokens_per_second": t["tokens"] / t["seconds"],
                    "trained_parameters": sum(p.numel() for p in runs[label][0].parameters.values())}
            for label, t in totals.items()}


def _lens_time(base: HookedModel, ft: HookedModel, contexts: torch.Tensor) -> dict:
    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(contexts), 8):
            base.forward(contexts[start:start + 8])
            ft.forward(contexts[start:start + 8])
    forwards = time.perf_counter() - started
    started = time.perf_counter()
    difference_means(base, ft, contexts, batch_size=8, progress=False)
    lens = time.perf_counter() - started
    return {"difference_means_seconds": lens, "two_forwards_seconds": forwards, "ratio": lens / forwards}


def _dictionary_rates(base: HookedModel, ft: HookedModel, contexts: torch.Tensor, steps: int, folder: Path) -> dict:
    hook = names.resid_post(base.cfg.n_layers // 2)
    harvest_pair(base, ft, contexts, folder, [hook], progress=False)
    paired = PairedActivations(folder, [hook], batch_size=1024)
    plain = StoredActivations(folder / "base", hook, batch_size=1024)
    d = base.cfg.d_model
    cross = CrosscoderConfig(d_model=d, d_sae=8 * d, k=32, hook_names=(hook,))
    # The same width with 1/32 of it designated ft-exclusive (mechscope diff's default), which
    # has its own BatchTopK budget and zeroed base decoder rows.
    designated = CrosscoderConfig(d_model=d, d_sae=8 * d, k=32, hook_names=(hook,), ft_exclusive=8 * d // 32)
    sae = SAEConfig(d_in=d, d_sae=8 * d, architecture="batchtopk", k=32)
    runs = {"sae": lambda: train(sae, plain, TrainConfig(steps=steps), progress=False),
            "crosscoder": lambda: train_crosscoder(paired, cross, TrainConfig(steps=steps), progress=False),
            "designated": lambda: train_crosscoder(paired, designated, TrainConfig(steps=steps), progress=False)}
    rates = {}
    for label, run in runs.items():
        started = time.perf_counter()
        run()
        rates[label] = steps * 1024 / (time.perf_counter() - started)
    return {"sae_tokens_per_second": rates["sae"], "crosscoder_tokens_per_second": rates["crosscoder"],
            "designated_crosscoder_tokens_per_second": rates["designated"],
            "crosscoder_over_sae": rates["crosscoder"] / rates["sae"],
            "designated_over_crosscoder": rates["designated"] / rates["crosscoder"], "width": 8 * d, "k": 32,
            "designated_latents": designated.ft_exclusive}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="fine-tuning steps timed per method")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--contexts", type=int, default=16)
    parser.add_argument("--sae-steps", type=int, default=200)
    args = parser.parse_args()
    base = mechscope.load()
    recipe = organisms.recipe("backdoor", n_examples=args.batch_size * (args.steps + 1), reply_tokens=40)
    examples, _ = organisms.build_examples(recipe, base, progress=False)
    rates = _finetune_rates(base, recipe, examples, args.steps, args.batch_size)
    result = {"finetune": {**rates, "lora_over_full": rates["lora"]["tokens_per_second"]
                           / rates["full"]["tokens_per_second"],
                           "contrast_over_lora": rates["lora_contrast"]["tokens_per_second"]
                           / rates["lora"]["tokens_per_second"]}}
    ft = copy.deepcopy(base.hf_model)
    with torch.no_grad():  # a stand-in fine-tune: timings do not depend on what changed
        ft.get_submodule(base.adapter.path(10, "mlp_out_proj")).weight.mul_(1.05)
    ft = HookedModel(ft, base.tokenizer, name="perturbed")
    contexts = default_contexts(base, args.contexts, 128)
    result["difference_lens"] = _lens_time(base, ft, contexts)
    with tempfile.TemporaryDirectory() as folder:
        result["dictionaries"] = _dictionary_rates(base, ft, contexts, args.sae_steps, Path(folder))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
