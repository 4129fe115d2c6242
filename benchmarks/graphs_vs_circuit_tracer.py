"""Attribution graphs: mechscope against circuit-tracer 0.5.0 on SmolLM2, same model, same transcoders.

    python3 -m venv /tmp/ct-venv && /tmp/ct-venv/bin/pip install torch==2.13.0 circuit-tracer==0.5.0
    .venv/bin/python benchmarks/graphs_vs_circuit_tracer.py --ct-python /tmp/ct-venv/bin/python

circuit-tracer lives in its own venv (it pins transformers <= 4.57.3 and nnsight); the child script
(benchmarks/circuit_tracer_child.py) runs it with its nnsight backend, which knows Llama models.
Both trace the same prompts through per-layer JumpReLU transcoders (the one activation both
libraries load: circuit-tracer reads ReLU / JumpReLU transcoders) built here with a fixed seed
and thresholds set so each latent fires on about ``--density`` of corpus tokens, exported to
circuit-tracer's file layout (W_enc [d_transcoder, d_model], activation_function.threshold).

Printed per prompt: the largest |difference| of the adjacency over the largest |edge| (every
feature, error, embedding and logit node, in both libraries' node order), the same for the
activations, whether the node lists and the logits agree, the pruned node sets under
circuit-tracer's pruning rule computed by mechscope (``prune(..., rule="circuit-tracer")``)
against circuit-tracer's own, both scores, and the time of one graph (after a warm-up) in each.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import mechscope
from mechscope.data import default_contexts
from mechscope.graphs import ReplacementModel, attribute, mlp_input, mlp_output, prune
from mechscope.graphs.prune import square
from mechscope.graphs.runs import start_token
from mechscope.sae import SAE, SAEConfig

HERE = Path(__file__).resolve().parent
PROMPTS = ["The capital of France is", "When Mary and John went to the store, John gave a drink to"]


def jumprelu_transcoders(model, d_sae: int, density: float, seed: int) -> dict[int, SAE]:
    """Random per-layer JumpReLU transcoders whose latents each fire on about ``density`` of the
    corpus tokens (thresholds at that quantile of their pre-activations)."""
    torch.manual_seed(seed)
    contexts = default_contexts(model, 8, 64, seed)
    hooks = [name for layer in range(model.cfg.n_layers) for name in (mlp_input(layer),)]
    _, cache = model.run_with_cache(contexts, names=hooks)
    found = {}
    for layer in range(model.cfg.n_layers):
        cfg = SAEConfig(model.cfg.d_model, d_sae, "jumprelu", d_out=model.cfg.d_model, hook_name=mlp_input(layer),
                        hook_name_out=mlp_output(layer), model_name=model.cfg.name)
        transcoder = SAE(cfg, seed=seed + layer)
        with torch.no_grad():
            transcoder.b_dec.normal_(0, 0.01)
            pre = transcoder.pre_activations(cache[mlp_input(layer)][:, 1:].flatten(0, 1).float())
            transcoder.threshold.copy_(pre.quantile(1 - density, dim=0).clamp_min(1e-3))
        found[layer] = transcoder
    return found


def export_for_circuit_tracer(transcoders: dict[int, SAE], folder: Path) -> None:
    for layer, transcoder in transcoders.items():
        tensors = {"W_enc": transcoder.W_enc.detach().T.contiguous(), "W_dec": transcoder.W_dec.detach().contiguous(),
                   "b_enc": transcoder.b_enc.detach().contiguous(), "b_dec": transcoder.b_dec.detach().contiguous(),
                   "activation_function.threshold": transcoder.threshold.detach().contiguous()}
        if transcoder.W_skip is not None:
            tensors["W_skip"] = transcoder.W_skip.detach().T.contiguous()
        save_file(tensors, str(folder / f"layer_{layer}.safetensors"))


def transformers4_copy(folder: Path, into: Path) -> Path:
    """The model folder as transformers 4.57 (circuit-tracer's pin) reads it: weights linked, the
    config's rope settings also under the old key and the tokenizer under its old class name
    (the folder was written by transformers 5)."""
    into.mkdir()
    for path in folder.iterdir():
        if path.name not in ("config.json", "tokenizer_config.json"):
            (into / path.name).symlink_to(path)
    config = json.loads((folder / "config.json").read_text())
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope:
        config["rope_theta"] = rope["rope_theta"]
    (into / "config.json").write_text(json.dumps(config))
    tokenizer = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer["tokenizer_class"] = "PreTrainedTokenizerFast"
    (into / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ct-python", required=True, help="python of a venv with circuit-tracer 0.5.0")
    parser.add_argument("--d-sae", type=int, default=1024)
    parser.add_argument("--density", type=float, default=0.004)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model = mechscope.load()
    transcoders = jumprelu_transcoders(model, args.d_sae, args.density, args.seed)
    replacement = ReplacementModel(model, transcoders)
    token_lists = [start_token(model, model.to_tokens(prompt))[0].tolist() for prompt in PROMPTS]
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        (scratch / "transcoders").mkdir()
        export_for_circuit_tracer(transcoders, scratch / "transcoders")
        (scratch / "prompts.json").write_text(json.dumps(token_lists))
        folder = transformers4_copy(Path(model.hf_model.config._name_or_path), scratch / "model")
        command = [args.ct_python, str(HERE / "circuit_tracer_child.py"), "--model", str(folder), "--transcoders",
                   str(scratch / "transcoders"), "--prompts", str(scratch / "prompts.json"), "--out",
                   str(scratch / "ct"), "--batch-size", str(args.batch_size)]
        print("running circuit-tracer:", " ".join(command), flush=True)
        subprocess.run(command, check=True)
        theirs = json.loads((scratch / "ct" / "results.json").read_text())
        their_graphs = [load_file(str(scratch / "ct" / f"graph_{i}.safetensors")) for i in range(len(PROMPTS))]

    print(f"\nSmolLM2-135M-Instruct, {model.cfg.n_layers} per-layer JumpReLU transcoders of {args.d_sae} latents "
          f"(density {args.density}), batch {args.batch_size}, CPU ({torch.get_num_threads()} threads)")
    for index, (prompt, ids) in enumerate(zip(PROMPTS, token_lists)):
        tokens = torch.tensor([ids])
        attribute(replacement, tokens, batch_size=args.batch_size, progress=False)  # warm-up, as for theirs
        started = time.perf_counter()
        graph = attribute(replacement, tokens, batch_size=args.batch_size, progress=False)
        ours_seconds = time.perf_counter() - started
        other, result = their_graphs[index], theirs["graphs"][index]
        ours_features = torch.tensor([[n.layer, n.position, n.feature] for n in graph.sources[:graph.n_features]])
        their_features = other["active_features"][other["selected_features"]]
        same_nodes = ours_features.shape == their_features.shape and bool((ours_features == their_features).all())
        same_logits = [n.feature for n in graph.targets[graph.n_features:]] == result["logits"] and torch.allclose(
            graph.logit_probabilities, torch.tensor(result["logit_probabilities"]), atol=1e-4)  # the same model
        print(f"\n{prompt!r}: {len(ids)} tokens, {graph.n_features} features (circuit-tracer "
              f"{len(their_features)}), same feature nodes in the same order: {same_nodes}; same logits: {same_logits}")
        if not (same_nodes and same_logits):
            continue
        ours_matrix, their_matrix = square(graph), other["adjacency"]
        scale = float(their_matrix.abs().max())
        print(f"  adjacency: max |difference| / max |edge| = {float((ours_matrix - their_matrix).abs().max()) / scale:.2e}"
              f" (max |edge| {scale:.3g}); activations: max |difference| "
              f"{float((graph.activations - other['activation_values'][other['selected_features']]).abs().max()):.2e}")
        pruned = prune(graph, 0.8, 0.98, rule="circuit-tracer")
        agree = bool((pruned.keep_nodes == other["node_mask"]).all())
        edges = bool((pruned.keep_edges == other["edge_mask"]).all())
        print(f"  pruned (0.8, 0.98), circuit-tracer's rule: mechscope keeps {int(pruned.keep_nodes.sum())} nodes, "
              f"circuit-tracer {int(other['node_mask'].sum())}; same node set: {agree}; same edge set: {edges}")
        print(f"  scores: replacement {pruned.replacement_score:.4f} vs {result['replacement_score']:.4f}, "
              f"completeness {pruned.completeness_score:.4f} vs {result['completeness_score']:.4f}")
        print(f"  one graph: mechscope {ours_seconds:.2f} s, circuit-tracer {result['seconds']:.2f} s -> "
              f"circuit-tracer / mechscope = {result['seconds'] / ours_seconds:.2f}x")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
