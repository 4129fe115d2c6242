"""The audit's cost per stage on SmolLM2-135M-Instruct, against its budget, in one run.

    python benchmarks/audit.py [--organism smollm2-backdoor] [--configs quick,full]

Runs ``run_audit`` on a shipped organism against the bundled SmolLM2 under each named
configuration (``quick``: ``AuditConfig.quick()``, as ``mechscope audit --quick``; ``full``: the
default), one after the other in this process, and prints one JSON object: per configuration,
the seconds of each stage, the total, and its ratio to the issue's budget (full: 15 minutes on 2
CPU cores; quick: 5 minutes, "a few"), plus quick / full. Nothing is cached between the two runs
but the loaded models.
"""

from __future__ import annotations

import argparse
import json
import time

import mechscope
from mechscope import organisms
from mechscope.audit import AuditConfig, run_audit

BUDGETS = {"quick": 5 * 60.0, "full": 15 * 60.0}  # seconds, on 2 CPU cores


def measure(ft, base, config: AuditConfig) -> dict:
    started = time.perf_counter()
    result = run_audit(ft, base, config, progress=False)
    total = time.perf_counter() - started
    stages: dict[str, float] = {}
    for stage in result.stages:
        stages[stage["stage"]] = stages.get(stage["stage"], 0.0) + stage["seconds"]
    findings = [{"surface": f.hypothesis.surface, "confidence": f.assessment.confidence,
                 "trigger": None if f.trigger is None else [f.trigger.text, f.trigger.rate, f.trigger.control_rate],
                 "mitigations": [[m.method, m.rate_before, m.rate_after, round(m.neutral_kl, 3)]
                                 for m in f.mitigations]} for f in result.findings]
    return {"verdict": result.verdict, "findings": findings, "stages": {k: round(v, 1) for k, v in stages.items()},
            "total_seconds": round(total, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--organism", default="smollm2-backdoor")
    parser.add_argument("--configs", default="quick,full", help="comma-separated: quick, full")
    args = parser.parse_args()
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = sorted(set(names) - set(BUDGETS))
    if unknown or not names:
        parser.error(f"--configs: unknown {unknown or 'nothing given'}; choose from {sorted(BUDGETS)}")
    base = mechscope.load()
    ft = organisms.load_organism(organisms.shipped_organism(args.organism), base)
    report = {"organism": args.organism, "threads": __import__("torch").get_num_threads()}
    for name in names:
        config = AuditConfig.quick() if name == "quick" else AuditConfig()
        row = measure(ft, base, config)
        row["budget_seconds"] = BUDGETS[name]
        row["total_over_budget"] = round(row["total_seconds"] / BUDGETS[name], 3)
        report[name] = row
    if "quick" in report and "full" in report:
        report["quick_over_full"] = round(report["quick"]["total_seconds"] / report["full"]["total_seconds"], 3)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
