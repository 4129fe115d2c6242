"""Circuit discovery cost on SmolLM2 (IOI, every edge of the graph): EAP and EAP-IG as multiples
of one forward+backward, ACDC wall time, faithfulness-curve time, peak memory; measured in one run.

    python benchmarks/circuits.py [--n 8] [--steps 5] [--acdc-threshold 0.05]

Each variant runs in its own child process (the short ones: best of 3 runs); peak memory is the peak resident set (VmHWM, reset
after the model is loaded) minus the resident set at that point. The baseline is one forward of
the IOI batch and the backward of its mean logit difference, parameters frozen (gradients of
activations only, as the methods compute), which is cheaper than a training step's backward, so
the ratios are conservative. Method times include everything each needs: the clean and
corrupted writer caches, gradient passes and the score contraction. ACDC runs at node level
(one trial per component, 300 for SmolLM2); edge-level ACDC needs one trial per edge (70,651),
and its projected time is printed from the measured time per trial.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from _memory import reset_peak, status_mib

VARIANTS = ("forward_backward", "eap", "eap_ig", "curve", "acdc_node")


def child(variant: str, n: int, steps: int, threshold: float) -> None:
    import torch

    import mechscope
    from mechscope import tasks
    from mechscope.circuits import (
        ComponentGraph,
        acdc,
        eap_ig_scores,
        eap_scores,
        edge_setup,
        faithfulness_curve,
    )
    from mechscope.patching.metrics import row_metric

    model = mechscope.load()
    task = tasks.ioi(model, n=n, seed=0)
    graph = ComponentGraph.from_config(model.cfg)
    prepared = edge_setup(model, task, graph) if variant == "curve" else None
    scores = eap_scores(model, task, prepared) if variant == "curve" else None
    baseline = reset_peak()  # the peak model loading left is not counted
    info: dict = {}

    def run_once() -> None:
        if variant == "forward_backward":
            for param in model.hf_model.parameters():
                param.requires_grad_(False)
            embeddings = model.hf_model.get_input_embeddings()(task.clean_tokens).detach().requires_grad_(True)
            logits = model.hf_model(inputs_embeds=embeddings, use_cache=False).logits
            row_metric(task, "logit_diff")(task.end_logits(logits), torch.arange(n)).mean().backward()
        elif variant == "eap":
            eap_scores(model, task, edge_setup(model, task, graph, clean=False))
        elif variant == "eap_ig":
            eap_ig_scores(model, task, edge_setup(model, task, graph), steps=steps)
        elif variant == "curve":
            curve = faithfulness_curve(model, task, prepared, scores)
            info["circuits"] = len(curve.fractions) + 2
        else:
            _, _, result = acdc(model, task, edge_setup(model, task, graph), threshold, level="node", progress=False)
            info.update(trials=result["trials"], forwards=result["forwards"])

    # This machine's timings are noisy: short variants take the best of 3 runs.
    times = []
    for _ in range(1 if variant == "acdc_node" else 3):
        start = time.perf_counter()
        run_once()
        times.append(time.perf_counter() - start)
    seconds = min(times)
    print(json.dumps({"variant": variant, "seconds": seconds, "peak_mib": status_mib("VmHWM") - baseline,
                      "threads": torch.get_num_threads(), "edges": graph.n_edges, **info}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--acdc-threshold", type=float, default=0.05)
    parser.add_argument("--child", choices=VARIANTS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.n, args.steps, args.acdc_threshold)
        return
    results = {}
    for variant in VARIANTS:
        output = subprocess.run([sys.executable, __file__, "--child", variant, "--n", str(args.n), "--steps",
                                 str(args.steps), "--acdc-threshold", str(args.acdc_threshold)],
                                capture_output=True, text=True, check=True).stdout
        results[variant] = json.loads(output.strip().splitlines()[-1])
        print(f"  {variant:17s} {results[variant]['seconds']:7.2f} s   peak +{results[variant]['peak_mib']:6.0f} MiB",
              flush=True)
    unit = results["forward_backward"]["seconds"]
    first = results["forward_backward"]
    print(f"\nIOI, SmolLM2, {args.n} prompts, {first['edges']} edges ({first['threads']} threads)")
    print(f"  EAP:                 {results['eap']['seconds'] / unit:.2f}x one forward+backward (goal <= 3x)")
    print(f"  EAP-IG, {args.steps} steps:     {results['eap_ig']['seconds'] / unit:.2f}x (goal <= {args.steps + 2}x)")
    curve = results["curve"]
    print(f"  faithfulness curve:  {curve['seconds']:.1f} s for {curve['circuits']} circuits")
    node = results["acdc_node"]
    per_trial = node["seconds"] / node["trials"]
    print(f"  ACDC, node level:    {node['seconds']:.1f} s ({node['trials']} trials in {node['forwards']} forwards, "
          f"{per_trial:.2f} s per trial); edge level would take ~{per_trial * first['edges'] / 3600:.1f} h")


if __name__ == "__main__":
    main()
