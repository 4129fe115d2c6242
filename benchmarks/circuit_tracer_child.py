"""Runs inside a circuit-tracer 0.5.0 venv (see graphs_vs_circuit_tracer.py): traces each prompt
with circuit-tracer's own ReplacementModel (nnsight backend) and attribute(), prunes with its
prune_graph, and writes the adjacency, node lists, masks, scores and timings as safetensors + JSON.
mechscope is not imported here."""

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import save_file


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--transcoders", required=True, help="folder of layer_{l}.safetensors")
    parser.add_argument("--prompts", required=True, help="JSON list of token id lists")
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-features", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    from circuit_tracer import ReplacementModel, attribute
    from circuit_tracer.graph import compute_graph_scores, prune_graph
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set

    torch.set_grad_enabled(True)
    folder = Path(args.transcoders)
    paths = {int(p.stem.split("_")[1]): str(p) for p in folder.glob("layer_*.safetensors")}
    transcoders = load_transcoder_set(paths, scan="mechscope-parity", feature_input_hook="mlp.hook_in",
                                      feature_output_hook="hook_mlp_out", device=torch.device("cpu"),
                                      dtype=torch.float32, lazy_encoder=False, lazy_decoder=False)
    started = time.perf_counter()
    model = ReplacementModel.from_pretrained_and_transcoders(args.model, transcoders, backend="nnsight",
                                                             device=torch.device("cpu"), dtype=torch.float32)
    load_seconds = time.perf_counter() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for index, ids in enumerate(json.loads(Path(args.prompts).read_text())):
        tokens = torch.tensor(ids)
        attribute(tokens, model, batch_size=args.batch_size, max_feature_nodes=args.max_features)  # warm-up
        started = time.perf_counter()
        graph = attribute(tokens, model, batch_size=args.batch_size, max_feature_nodes=args.max_features)
        seconds = time.perf_counter() - started
        pruned = prune_graph(graph, 0.8, 0.98)
        replacement, completeness = compute_graph_scores(graph)
        save_file({"adjacency": graph.adjacency_matrix.float().contiguous(),
                   "active_features": graph.active_features.long().contiguous(),
                   "selected_features": graph.selected_features.long().contiguous(),
                   "activation_values": graph.activation_values.float().contiguous(),
                   "node_mask": pruned.node_mask.contiguous(), "edge_mask": pruned.edge_mask.contiguous()},
                  str(out / f"graph_{index}.safetensors"))
        results.append({"seconds": seconds, "logits": [int(t.vocab_idx) for t in graph.logit_targets],
                        "logit_probabilities": graph.logit_probabilities.float().tolist(),
                        "replacement_score": float(replacement), "completeness_score": float(completeness)})
    (out / "results.json").write_text(json.dumps({"load_seconds": load_seconds, "graphs": results}))


if __name__ == "__main__":
    main()
