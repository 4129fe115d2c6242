"""The run behind ``mechscope audit FT [--base BASE] --out DIR``: the audit of
:func:`mechscope.audit.run_audit` written into one folder: ``audit.json`` (every number),
``figures/`` and ``report.html``, ``stages/`` (each finished stage, which a rerun after a kill
reads back), and, when a finding was mitigated and ``save_model`` is on, ``mitigated-model/``
(the fine-tune with the behaviour direction orthogonalised out of its weights, a plain HF
folder)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mechscope.audit.mitigate import save_mitigated
from mechscope.audit.pipeline import AuditConfig, AuditResult, run_audit
from mechscope.audit.stages import STAGES_DIR
from mechscope.files import OutputFolder, atomic_text, prepare_output_folder
from mechscope.models.hooked_model import HookedModel
from mechscope.report.audit_report import write_audit_report
from mechscope.report.diff_runs import describe_model, finite_json

AUDIT_OUTPUTS = ("audit.json", "report.html", "figures", "mitigated-model", STAGES_DIR)
MITIGATED = "mitigated-model"


def prepare_audit_folder(out: str | Path, options: dict[str, Any], overwrite: bool = False) -> OutputFolder:
    """Check and claim ``out`` before any model loads. An earlier audit there with the same
    options is resumed (its finished stages are read back, the report rewritten); one with
    other options is refused unless ``overwrite``, which starts afresh."""
    return prepare_output_folder(out, "audit", AUDIT_OUTPUTS, overwrite=overwrite, resumable=(STAGES_DIR,),
                                 options=options)


def audit_to_folder(ft: HookedModel, base: HookedModel | None, folder: OutputFolder | str | Path,
                    config: AuditConfig | None = None, names: dict[str, str] | None = None, save_model: bool = True,
                    progress: bool = True, log=None, overwrite: bool = False) -> tuple[AuditResult, dict]:
    """Run the audit and write its folder; returns (result, the JSON summary written)."""
    config = config or AuditConfig()
    if not isinstance(folder, OutputFolder):
        folder = prepare_audit_folder(folder, {"config": asdict(config)}, overwrite)
    result = run_audit(ft, base, config, progress=progress, log=log, folder=folder.path)
    summary = result.to_json()
    names = names or {}
    summary["models"] = {"ft": names.get("ft", ""), "base": names.get("base"),
                         "ft_model": describe_model(ft, names.get("ft")),
                         "base_model": None if base is None else describe_model(base, names.get("base"))}
    summary["config"] = asdict(config)
    saved = None
    mitigated = [f for f in result.findings if f.localisation is not None and f.localisation.direction is not None]
    if save_model and mitigated:
        saved = save_mitigated(ft, mitigated[0].localisation.direction, folder / MITIGATED)
    summary["mitigated_model"] = None if saved is None else MITIGATED
    summary = finite_json(summary)  # NaN (e.g. a ratio of zeros) becomes null: strict JSON
    summary["files"] = write_audit_report(summary, folder.path)
    atomic_text(folder / "audit.json", json.dumps(summary, indent=1, allow_nan=False))
    folder.record([name for name in AUDIT_OUTPUTS if (folder / name).exists()])
    return result, summary


__all__ = ["AUDIT_OUTPUTS", "audit_to_folder", "prepare_audit_folder"]
