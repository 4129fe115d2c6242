"""Resuming an audit after a kill: each finished stage's full result is kept in
``DIR/stages/`` (JSON, and safetensors for directions and caps), written atomically with the key of
the run it belongs to (configuration and both models' fingerprints). A rerun into the same
folder reads every stage whose key matches instead of recomputing it, so an audit killed in
its trigger search restarts there, with discovery's result as it was.

The JSON written here is the whole state a later stage needs (every reply, every phrase's
reply indices), unlike ``audit.json``, which is the report's summary.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mechscope.audit.attribution import TokenAttribution
from mechscope.audit.detect import ProbeScore
from mechscope.audit.discovery import Discovery, Hypothesis, TextSource, TokenEvidence
from mechscope.audit.localise import DirectionCandidate, Localisation
from mechscope.audit.mitigate import METHODS, Method, Mitigation, edit_intervention
from mechscope.audit.phrases import Phrase
from mechscope.audit.triggers import TriggerCandidate
from mechscope.files import atomic_file, atomic_text
from mechscope.steering.capping import ActivationCap
from mechscope.steering.direction import Direction
from mechscope.validate import check_choice

STAGES_DIR = "stages"


def stage_path(folder: str | Path, stage: str) -> Path:
    """Where the audit in ``folder`` keeps ``stage`` (without suffix: .json, .safetensors)."""
    return Path(folder) / STAGES_DIR / re.sub(r"[^a-z0-9]+", "-", stage.lower()).strip("-")


def _read(path: Path) -> tuple[dict, dict[str, torch.Tensor]] | None:
    """(the saved JSON, its tensors) of the stage at ``path``, or None where it is absent or
    half written."""
    try:
        saved = json.loads(path.with_suffix(".json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    tensors = load_file(str(path.with_suffix(".safetensors"))) if saved.get("tensors") else {}
    return saved, tensors


class StageStore:
    """Finished stages of one audit run in ``folder / "stages"`` (no folder: nothing kept).
    ``key`` (JSON-able) identifies the run; a stage saved under another key is ignored."""

    def __init__(self, folder: str | Path | None, key: dict[str, Any]):
        self.folder = None if folder is None else Path(folder)  # the audit's folder
        self.key = json.loads(json.dumps(key, default=str))

    def load(self, stage: str) -> tuple[Any, dict[str, torch.Tensor]] | None:
        """(the stage's saved state, its tensors), or None when it is not saved for this run."""
        read = None if self.folder is None else _read(stage_path(self.folder, stage))
        if read is None or read[0].get("key") != self.key or read[0].get("stage") != stage:
            return None
        return read[0]["state"], read[1]

    def save(self, stage: str, state: Any, tensors: dict[str, torch.Tensor] | None = None) -> None:
        """Keep ``state`` (JSON-able) and ``tensors``; the JSON goes last, so a kill in between
        leaves the stage unsaved rather than half saved."""
        if self.folder is None:
            return
        path = stage_path(self.folder, stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        if tensors:
            plain = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
            atomic_file(path.with_suffix(".safetensors"), lambda p: save_file(plain, str(p)))
        atomic_text(path.with_suffix(".json"), json.dumps({"stage": stage, "key": self.key, "state": state,
                                                           "tensors": bool(tensors)}))


# ------------------------------------------------------------------ each stage's state
def discovery_state(discovery: Discovery) -> dict:
    return asdict(discovery)


def discovery_from_state(state: dict, tensors: dict | None = None) -> Discovery:
    sources = tuple(TextSource(s["name"], tuple(s["prompts"]), tuple(s["ft_texts"]), tuple(s["control_texts"]),
                               tuple(Phrase(**{**p, "replies": tuple(p["replies"])}) for p in s["phrases"]))
                    for s in state["sources"])
    evidence = tuple(TokenEvidence(e["tool"], e["where"], tuple(e["tokens"])) for e in state["evidence"])
    hypotheses = tuple(Hypothesis(h["label"], tuple(h["phrases"]), h["surface"],
                                  {name: tuple(v) for name, v in h["sources"].items()},
                                  tuple(tuple(s) for s in h["support"])) for h in state["hypotheses"])
    return Discovery(sources, evidence, hypotheses, tuple(state["kl_prompts"]))


def triggers_state(result: tuple[list[TriggerCandidate], list[TokenAttribution]]) -> dict:
    candidates, attributions = result
    return {"candidates": [c.to_json() for c in candidates], "attributions": [a.to_json() for a in attributions]}


def triggers_from_state(state: dict, tensors: dict | None = None) -> tuple[list[TriggerCandidate], list[TokenAttribution]]:
    candidates = [TriggerCandidate(**{**c, "token_ids": tuple(c["token_ids"])}) for c in state["candidates"]]
    attributions = [TokenAttribution(a["prompt"], tuple(a["tokens"]), tuple(a["gradient_x_input"]),
                                     tuple(a["ablation"])) for a in state["attributions"]]
    return candidates, attributions


def localisation_state(found: Localisation) -> tuple[dict, dict[str, torch.Tensor]]:
    state = found.to_json()
    direction = found.direction
    state["direction"] = None if direction is None else {"layer": direction.layer, "method": direction.method,
                                                         "scale": direction.scale, "metadata": direction.metadata}
    tensors = {f"layer {layer}": vector for layer, vector in found.layer_vectors.items()}
    tensors.update({f"trigger {layer}": vector for layer, vector in found.trigger_vectors.items()})
    if direction is not None:
        tensors["direction"] = direction.vector
    return state, tensors


def localisation_from_state(state: dict, tensors: dict[str, torch.Tensor] | None = None) -> Localisation:
    saved = state["direction"]
    direction = None if saved is None else Direction((tensors or {})["direction"], saved["layer"], saved["method"],
                                                     saved["scale"], saved["metadata"])
    return Localisation(state["layer_effect"], state["patching"],
                        [(c["name"], c["score"]) for c in state["components"]], direction,
                        None if state["chosen"] is None else DirectionCandidate(**state["chosen"]),
                        [DirectionCandidate(**c) for c in state["candidates"]], state["clean_logit_diff"],
                        state.get("layers", []),
                        *({int(key.split()[1]): vector for key, vector in (tensors or {}).items()
                           if key.startswith(f"{site} ")} for site in ("layer", "trigger")))


def probes_state(probes: dict[str, list[ProbeScore]]) -> dict:
    return {kind: [s.to_json() for s in rows] for kind, rows in probes.items()}


def probes_from_state(state: dict, tensors: dict | None = None) -> dict[str, list[ProbeScore]]:
    return {kind: [ProbeScore(**row) for row in rows] for kind, rows in state.items()}


def mitigations_state(result: tuple[list[Mitigation], ActivationCap | None, dict | None]
                      ) -> tuple[dict, dict[str, torch.Tensor]]:
    mitigations, caps, setting = result
    caps_state, tensors = (None, {}) if caps is None else caps.to_state()
    return {"mitigations": [dict(vars(m)) for m in mitigations], "caps": caps_state, "setting": setting}, tensors


def mitigations_from_state(state: dict, tensors: dict | None = None
                           ) -> tuple[list[Mitigation], ActivationCap | None, dict | None]:
    caps = None if state["caps"] is None else ActivationCap.from_state(state["caps"], tensors or {})
    return [Mitigation(**row) for row in state["mitigations"]], caps, state.get("setting")


def saved_localisation(folder: str | Path, finding_index: int) -> Localisation | None:
    """The localisation of finding ``finding_index`` (its ``index`` in ``audit.json``) of the
    audit written to ``folder``, with its direction and per-layer vectors; None where the stage
    is not there. Read from the stage files alone, whatever run they belong to."""
    read = _read(stage_path(folder, f"finding {finding_index}: localisation"))
    return None if read is None else localisation_from_state(read[0]["state"]["result"], read[1])


def saved_direction(folder: str | Path, finding_index: int) -> Direction | None:
    """The behaviour direction localisation chose for finding ``finding_index`` of the audit
    written to ``folder`` (:func:`saved_localisation`); None where none was chosen or the stage
    is not there."""
    found = saved_localisation(folder, finding_index)
    return None if found is None else found.direction


def saved_edit(folder: str | Path, finding_index: int, method: Method):
    """The intervention ``method`` applied to finding ``finding_index`` of the audit written to
    ``folder`` (as :func:`saved_direction`; :func:`~mechscope.audit.mitigate.edit_intervention`),
    to run on other prompts. None where that edit's direction or caps were not saved."""
    check_choice("method", method, METHODS)
    if method == "capping":
        read = _read(stage_path(folder, f"finding {finding_index}: mitigation"))
        caps = None if read is None else mitigations_from_state(read[0]["state"]["result"], read[1])[1]
        return None if caps is None else edit_intervention(None, method, caps)
    direction = saved_direction(folder, finding_index)
    return None if direction is None else edit_intervention(direction, method)


__all__ = ["STAGES_DIR", "StageStore", "saved_direction", "saved_edit", "saved_localisation", "stage_path"]
