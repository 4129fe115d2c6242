"""Attribution graphs on SmolLM2: graph time and peak memory by prompt length, and transcoder
training throughput (every layer from one forward pass, against one layer at a time).

    .venv/bin/python benchmarks/graphs.py [--transcoders DIR]

Graphs: prompts of 16 and 64 tokens cut from the default corpus, traced with at most
``--max-features`` feature nodes (chosen by influence) through the transcoders in DIR (default:
random TopK transcoders of 2048 latents, k = 32: the same number of active features per token
as the trained set, which is what the cost depends on). Peak memory is the process's resident
peak during the graph, above what it held before (model and transcoders loaded).

Training: seconds per step of the one-pass trainer for all 30 layers, and of the same trainer
for one layer; the ratio says what training the layers one at a time (30 model passes per
step) would cost against one shared pass.
"""

from __future__ import annotations

import argparse
import time

import torch
from _memory import reset_peak, status_mib

import mechscope
from mechscope.data import default_contexts
from mechscope.data.store import ModelActivations
from mechscope.graphs import ReplacementModel, attribute, load_transcoders, mlp_input, mlp_output
from mechscope.graphs.transcoders import TranscoderSetConfig, train_transcoders
from mechscope.sae import SAE, TrainConfig, train


def random_transcoders(model, d_sae: int, k: int) -> dict[int, SAE]:
    config = TranscoderSetConfig(d_sae=d_sae, k=k)
    return {layer: SAE(config.layer_config(model, layer), seed=layer) for layer in range(model.cfg.n_layers)}


def graph_rows(model, replacement, lengths: list[int], max_features: int, batch_size: int) -> None:
    print("\n| prompt tokens | active features | feature nodes | graph time | peak memory above the loaded model |")
    print("|---|---|---|---|---|")
    contexts = default_contexts(model, 1, 128, seed=3)
    for length in lengths:
        tokens = contexts[:, :length]
        attribute(replacement, tokens[:, :8], max_features=16, batch_size=batch_size, progress=False)  # warm-up
        base = reset_peak()
        started = time.perf_counter()
        graph = attribute(replacement, tokens, max_features=max_features, batch_size=batch_size, progress=False)
        seconds = time.perf_counter() - started
        peak = status_mib("VmHWM") - base
        print(f"| {length} | {graph.info['active_features']:,} | {graph.n_features:,} | {seconds:.1f} s | "
              f"{peak:,.0f} MiB |", flush=True)


def training_rows(model, d_sae: int, k: int, steps: int) -> None:
    contexts = default_contexts(model, 64, 128, seed=0)
    step_tokens = 16 * 127
    config = TranscoderSetConfig(d_sae=d_sae, k=k, skip_connection=True)
    settings = TrainConfig(steps=steps, warmup_steps=1)
    started = time.perf_counter()
    train_transcoders(model, contexts, config, settings, batch_contexts=16, progress=False)
    every_layer = (time.perf_counter() - started) / steps
    data = ModelActivations(model, contexts, mlp_input(15), batch_contexts=16, target_hook=mlp_output(15))
    started = time.perf_counter()
    train(config.layer_config(model, 15), data, settings, progress=False)
    one_layer = (time.perf_counter() - started) / steps
    layers = model.cfg.n_layers
    print(f"\nTranscoder training ({d_sae} latents, k = {k}, skip; {step_tokens:,} tokens per step):")
    print(f"- all {layers} layers from one forward pass: {every_layer:.1f} s per step = "
          f"{step_tokens / every_layer:,.0f} tokens/s (each token trains all {layers} transcoders)")
    print(f"- one layer alone: {one_layer:.1f} s per step = {step_tokens / one_layer:,.0f} tokens/s")
    print(f"- {layers} layers one at a time / one shared pass = {layers * one_layer / every_layer:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--transcoders", default=None, help="a transcoder folder (default: random TopK ones)")
    parser.add_argument("--max-features", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--training-steps", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = mechscope.load()
    transcoders = load_transcoders(args.transcoders) if args.transcoders else random_transcoders(model, 2048, 32)
    print(f"SmolLM2-135M-Instruct, {torch.get_num_threads()} CPU threads; transcoders: "
          f"{args.transcoders or 'random TopK, 2048 latents, k = 32'}; at most {args.max_features} feature nodes, "
          f"batches of {args.batch_size}")
    graph_rows(model, ReplacementModel(model, transcoders), [16, 64], args.max_features, args.batch_size)
    training_rows(model, 2048, 32, args.training_steps)


if __name__ == "__main__":
    main()
