"""Probe kinds side by side on SmolLM2-135M-Instruct: task accuracy, control accuracy and
selectivity of logistic, mass-mean and whitened mass-mean probes on the same activations.

    python benchmarks/probes.py [--dataset sentiment] [--layers 0,6,12,18,24,29]

Activations are read once (residual stream after each block, last token) and every kind is
fitted on them, with last-word control keys, so the kinds differ only in the probe.
"""

from __future__ import annotations

import argparse
import time

import mechscope
from mechscope.analysis import prompt_activations
from mechscope.probes import KINDS, PROBE_DATASETS, probe_dataset, probe_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="sentiment", choices=list(PROBE_DATASETS))
    parser.add_argument("--layers", default="0,6,12,18,24,29")
    args = parser.parse_args()
    model = mechscope.load()
    hooks = [f"blocks.{int(layer)}.hook_resid_post" for layer in args.layers.split(",")]
    train, test = probe_dataset(args.dataset, "train"), probe_dataset(args.dataset, "test")
    chat = args.dataset == "harmful-harmless"
    start = time.time()
    train_acts = {k: v[:, 0] for k, v in prompt_activations(model, train.texts, hooks, -1, chat).items()}
    test_acts = {k: v[:, 0] for k, v in prompt_activations(model, test.texts, hooks, -1, chat).items()}
    print(f"{args.dataset}: {len(train.texts)} train / {len(test.texts)} test, activations in "
          f"{time.time() - start:.0f} s")
    sweeps = {}
    for kind in KINDS:
        start = time.time()
        sweeps[kind] = probe_features(train_acts, train.labels, test_acts, test.labels, kind=kind,
                                      control_keys=train.keys, test_control_keys=test.keys, progress=False)
        print(f"{kind}: fitted {2 * len(hooks)} probes in {time.time() - start:.1f} s")
    print(f"task chance {sweeps[KINDS[0]].chance:.3f}, control chance {sweeps[KINDS[0]].control_chance:.3f}")
    header = "hook".ljust(26) + "".join(f"{kind + ' acc / ctrl / sel':>34}" for kind in KINDS)
    print(header)
    for index, hook in enumerate(hooks):
        cells = []
        for kind in KINDS:
            row = sweeps[kind].rows[index]
            cells.append(f"{row.test_accuracy:.3f} / {row.control_accuracy:.3f} / {row.selectivity:+.3f}".rjust(34))
        print(hook.ljust(26) + "".join(cells))


if __name__ == "__main__":
    main()
