"""Regenerate the trained known-circuit model and its stored circuit.

    python examples/known_circuits.py [--retrain] [--relative-threshold 0.02]

Trains the attention-only induction model (about 30 s on 2 cores) when --retrain is given or its
weights are missing, then characterises its circuit by exact edge patching on the induction task
and writes src/mechscope/circuits/known/data/trained_induction_circuit.json. It also checks the
circuit against the hand-set one: previous-token heads in layer 0 feed induction heads in layer
1 through their keys, the heads' values read the tokens, and the induction heads write the
answer into the logits.
"""

from __future__ import annotations

import argparse
import json

import torch

from mechscope import head_scores
from mechscope.circuits import ComponentGraph, edge_setup, exact_scores
from mechscope.circuits.known.registry import circuit_file, task_for
from mechscope.circuits.known.trained_induction import (
    DATA,
    InductionTraining,
    save_trained,
    train_induction_model,
    trained_induction_model,
)
from mechscope.files import atomic_text

TASK = {"name": "induction", "n": 32, "seq_len": 8, "seed": 100}


def motif_checks(graph: ComponentGraph, edges: set[tuple[str, str]], previous: list[str], induction: list[str]) -> dict:
    """For each (previous-token head, induction head) pair: which hand-set motif edges exist."""
    checks = {}
    for head in induction:
        checks[head] = {
            "reads tokens through v": ("input", f"{head}.v") in edges,
            "writes the logits": (head, "logits") in edges,
            "keys from previous-token heads": [p for p in previous if (p, f"{head}.k") in edges],
        }
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--relative-threshold", type=float, default=0.02)
    args = parser.parse_args()
    if args.retrain or not (DATA / "trained_induction.safetensors").exists():
        settings = InductionTraining()
        save_trained(train_induction_model(settings), settings)
    model = trained_induction_model()
    task = task_for(model, TASK)
    graph = ComponentGraph.from_config(model.cfg)
    setup = edge_setup(model, task, graph)
    scores = exact_scores(model, task, setup, progress=True)
    clean_end = setup.clean_end_logits
    accuracy = float((clean_end.argmax(-1) == task.answer_tokens[:, 0]).float().mean())
    with torch.no_grad():
        gap = float(task.logit_diff(clean_end).mean() - task.logit_diff(task.end_logits(model(task.corrupted_tokens))).mean())
    magnitude = torch.nan_to_num(scores.abs())
    chosen = (magnitude >= args.relative_threshold * abs(gap)).nonzero().tolist()
    edges = sorted(((graph.writers[w], graph.receivers[r].name, float(scores[w, r])) for w, r in chosen),
                   key=lambda edge: -abs(edge[2]))
    heads = head_scores(model, seq_len=8)
    layer0 = [f"L0H{h}" for h in range(model.cfg.n_heads) if heads.previous_token[0, h] > 0.5]
    layer1 = [f"L1H{h}" for h in range(model.cfg.n_heads) if heads.induction[1, h] > 0.5]
    checks = motif_checks(graph, {(a, b) for a, b, _ in edges}, layer0, layer1)
    data = {
        "model": "trained-induction",
        "source": f"exact edge patching: every edge with |effect| >= {args.relative_threshold} x the clean-corrupted "
                  "logit-difference gap (examples/known_circuits.py)",
        "task": TASK, "relative_threshold": args.relative_threshold, "clean_accuracy": accuracy, "gap": gap,
        "edges": [{"from": a, "to": b, "exact_effect": round(s, 5)} for a, b, s in edges],
        "previous_token_heads": layer0, "induction_heads": layer1,
        "previous_token_scores": [round(float(x), 3) for x in heads.previous_token[0]],
        "induction_scores": [round(float(x), 3) for x in heads.induction[1]],
        "motif": checks,
    }
    atomic_text(circuit_file("trained-induction"), json.dumps(data, indent=1) + "\n")
    print(f"clean accuracy {accuracy:.3f}, gap {gap:.2f}; {len(edges)} of {graph.n_edges} edges in the circuit")
    print(f"previous-token heads {layer0}, induction heads {layer1}")
    for head, check in checks.items():
        print(f"  {head}: {check}")


if __name__ == "__main__":
    main()
