"""``mechscope audit FT [--base BASE] --out DIR``: look for a hidden behaviour in FT, blind, and
back every claim with numbers (audit.json, figures/, report.html, mitigated-model/)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mechscope.cli.core import console, load_model_or_organism, say
from mechscope.cli.diff import WHICH, _model_argument
from mechscope.cli.options import Overwrite, Seed, out_option


def audit(
    ft: Annotated[str, typer.Argument(metavar="FT", help=f"the model to audit: {WHICH}", callback=_model_argument,
                                      show_default=False)],
    base: Annotated[str | None, typer.Option("--base", help=f"the model FT was fine-tuned from: {WHICH}; without "
                                                            "it the tools that compare the two do not run")] = None,
    out: Annotated[Path, out_option("folder for audit.json, report.html, figures/ and mitigated-model/")] = Path(
        "mechscope-audit"),
    quick: Annotated[bool, typer.Option("--quick", help="a reduced audit, about half the time (no crosscoder, "
                                                        "single-token triggers and pairs only, one finding, capping "
                                                        "only)")] = False,
    prompts: Annotated[Path | None, typer.Option(help="JSON list of prompts discovery reads (default: mechscope's "
                                                      "generic instructions)")] = None,
    neutral_prompts: Annotated[Path | None, typer.Option(help="JSON list of neutral prompts triggers are inserted into "
                                                              "and side effects measured on (default: mechscope's "
                                                              "held-out harmless instructions)")] = None,
    save_model: Annotated[bool, typer.Option(help="write the mitigated model (the behaviour direction "
                                                  "orthogonalised out of FT's weights) as a HF folder")] = True,
    seed: Seed = 0,
    overwrite: Overwrite = False,
) -> None:
    """Audit FT for a hidden behaviour: discovery (what FT says that BASE does not), trigger
    reconstruction, localisation, detection probes and mitigation, each with its cost."""
    from dataclasses import asdict, replace

    from mechscope.audit.pipeline import AuditConfig, with_seed
    from mechscope.cli.organism import prompt_file
    from mechscope.report.audit_runs import audit_to_folder, prepare_audit_folder
    from mechscope.report.diff_runs import load_ft

    config = with_seed(AuditConfig.quick() if quick else AuditConfig(), seed)
    given, neutral = prompt_file(prompts, "--prompts"), prompt_file(neutral_prompts, "--neutral-prompts")
    config = replace(config, prompts=given, neutral_prompts=neutral,
                     n_neutral=config.n_neutral if neutral is None else min(config.n_neutral, len(neutral)))
    folder = prepare_audit_folder(out, {"ft": ft, "base": base, "config": asdict(config)}, overwrite)
    say(folder.describe())
    base_model = None if base is None else load_model_or_organism(base)
    with console.status(f"loading {ft} ..."):
        ft_model = load_model_or_organism(ft) if base_model is None else load_ft(ft, base_model)
    if base_model is None:
        say("no --base: the tools that compare FT with its base are skipped (listed in the report)")
    result, summary = audit_to_folder(ft_model, base_model, folder, config, {"ft": ft, "base": base}, save_model,
                                      log=lambda line: say(f"- {line}"))
    console.print(f"verdict: [bold]{result.verdict}[/bold]")
    for finding in result.findings:
        trigger = finding.trigger
        where = f"; trigger {trigger.text!r} ({trigger.rate:.0%} vs {trigger.control_rate:.0%})" if trigger else ""
        confidence = finding.assessment.confidence if finding.assessment else "-"
        console.print(f"- {finding.hypothesis.surface!r} ({confidence} confidence){where}", markup=False,
                      highlight=False)
    for lead in result.leads[:5]:
        console.print(f"- lead (no control): {lead['phrase']!r} in {lead['share']:.0%} of replies", markup=False,
                      highlight=False)
    console.print(f"\nreport: [bold]{folder / 'report.html'}[/bold]  numbers: {folder / 'audit.json'}")
