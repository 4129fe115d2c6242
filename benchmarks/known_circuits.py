"""ROC AUC of every discovery method against the known circuits (hand-set and trained induction
models), edge and node level, with wall time; one run, side by side.

    python benchmarks/known_circuits.py

Goal (circuits issue): EAP-IG and ACDC AUC >= 0.95 on every ground-truth model; EAP's reported
as it is.
"""

from __future__ import annotations

from mechscope.circuits import benchmark

METHODS = [
    ("eap", {}),
    ("eap-ig", {"steps": 5}),
    ("eap-ig", {"steps": 5, "ig_variant": "activations"}),
    ("acdc", {"threshold": 1e-3}),
    ("exact", {}),
]


def main() -> None:
    print(f"{'model':18s} {'method':40s} {'edges':>6s} {'circuit':>7s} {'edge AUC':>9s} {'node AUC':>9s} {'time':>8s}")
    for method, options in METHODS:
        label = method + "".join(f" {key}={value}" for key, value in options.items())
        for row in benchmark(method, **options):
            print(f"{row['model']:18s} {label:40s} {row['edges']:6d} {row['circuit_edges']:7d} "
                  f"{row['edge_auc']:9.4f} {row['node_auc']:9.4f} {row['seconds']:7.2f}s", flush=True)


if __name__ == "__main__":
    main()
