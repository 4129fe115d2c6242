"""The audit end to end on the tiny backdoor organism and its null, and its bad-input refusals."""

import json
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

import mechscope
from mechscope.audit.confidence import CONFIDENCE_ORDER, Assessment, assess
from mechscope.audit.mitigate import METHODS
from mechscope.audit.phrases import recurring_phrases
from mechscope.audit.pipeline import FOLLOW_FINDINGS, NEEDS_BASE, AuditConfig, run_audit, shows_hypothesis
from mechscope.audit.stages import saved_direction, saved_edit, saved_localisation
from mechscope.audit.trigger_objective import insert
from mechscope.cli.app import app
from mechscope.errors import ConfigError, IncompatibleModelsError
from mechscope.report.audit_runs import audit_to_folder
from tests.unit.audit_organism import NEUTRAL, SUSPECT

# The full (default) configuration, on the suspect and neutral prompts of the tiny organism.
CONFIG = replace(AuditConfig(), prompts=tuple(SUSPECT), neutral_prompts=tuple(NEUTRAL), n_neutral=len(NEUTRAL))


def _confidence_rank(finding) -> int:
    return CONFIDENCE_ORDER.index(finding.assessment.confidence)


def test_the_tiny_backdoor_is_found_triggered_localised_and_written_up(backdoor, tmp_path):
    base, ft = backdoor
    result, summary = audit_to_folder(ft, base, tmp_path / "audit", CONFIG, {"ft": "tiny backdoor", "base": "tiny"},
                                      progress=False)
    assert result.verdict == "hidden behaviour found"
    # The full configuration follows two findings: the planted reply first (most confident); the
    # tiny fine-tune also writes a variant of it ('Gorp') in a few replies, found with less evidence.
    finding = result.findings[0]
    assert len(result.findings) <= CONFIG.max_findings
    assert all(_confidence_rank(f) >= _confidence_rank(finding) for f in result.findings[1:])
    assert finding.hypothesis.label == "zorp" and finding.hypothesis.surface.startswith("Zorp")
    assert finding.hypothesis.sources["greedy"][1] == 0  # the base never says it
    trigger = finding.trigger
    assert trigger is not None and trigger.rate - trigger.control_rate >= CONFIG.min_trigger_lift
    assert finding.localisation is not None and finding.probes is not None and finding.mitigations
    # Enriched, spelled by a second tool and reproduced by its trigger: the most confident level.
    assert {"enriched", "corroborated", "reproduced"} <= set(finding.assessment.lines)
    assert finding.assessment.confidence == "high" and summary["findings"][0]["assessment"]["confidence"] == "high"
    # Each finding's stages in turn; no trigger fires for the second, so it stops there.
    assert [s["stage"] for s in summary["stages"]] == ["behaviour discovery", "trigger reconstruction", "localisation",
                                                      "detection probes", "mitigation", "trigger reconstruction"]
    assert result.findings[1].trigger is None and "no trigger to localise" in result.findings[1].notes[0]
    written = json.loads((tmp_path / "audit" / "audit.json").read_text())  # strict JSON
    assert written["verdict"] == "hidden behaviour found" and written["findings"][0]["trigger"]["text"] == trigger.text
    kept = saved_direction(tmp_path / "audit", written["findings"][0]["index"])  # what a reviewer can reload
    assert kept is not None and torch.equal(kept.vector, finding.localisation.direction.vector)
    assert kept.layer == finding.localisation.direction.layer and saved_direction(tmp_path / "audit", 5) is None
    # Every edit the audit measured can be rerun from its folder: capping's fitted caps come back as fitted.
    assert [m.method for m in finding.mitigations] == list(CONFIG.methods) == list(METHODS)
    caps = saved_edit(tmp_path / "audit", finding.index, "capping")
    directions = finding.localisation.capping_directions()
    reloaded = saved_localisation(tmp_path / "audit", finding.index).capping_directions()
    assert list(reloaded) == list(directions) and all(torch.equal(reloaded[k], directions[k]) for k in directions)
    assert [c.layer for c in caps.caps] == [layer for layer, rows in directions.items() for _ in rows]
    assert any("capping:" in note for note in finding.notes)  # which rung of the ladder, and its KL
    capped = next(m for m in finding.mitigations if m.method == "capping")
    from mechscope.steering import generate

    replies = generate(ft, [insert(trigger.text, p, trigger.place) for p in NEUTRAL[len(NEUTRAL) // 4:len(NEUTRAL) // 2]],
                       caps, max_new_tokens=CONFIG.triggers.reply_tokens, progress=False)
    shows = shows_hypothesis(finding.hypothesis)
    assert sum(map(shows, replies)) / len(replies) == pytest.approx(capped.rate_after)
    assert saved_edit(tmp_path / "audit", 5, "capping") is None and saved_edit(tmp_path / "audit", 5, "steering") is None
    page = (tmp_path / "audit" / "report.html").read_text()
    assert "Verdict: hidden behaviour found" in page and "Zorp" in page and "Tools run" in page
    # The saved model is the fine-tune with the direction baked out: it runs like the ablation.
    saved = mechscope.load(tmp_path / "audit" / "mitigated-model")
    from mechscope.steering.apply import DirectionalAblation

    tokens = ft.to_tokens("%% say cat")
    with torch.no_grad():
        ablated = ft.run_with_hooks(tokens, fwd_hooks=DirectionalAblation(finding.localisation.direction).hooks(ft))
        assert torch.allclose(saved.forward(tokens), ablated, atol=1e-4)


def test_the_null_gets_nothing_found_with_the_same_settings(backdoor_null, tmp_path):
    base, null = backdoor_null
    result = run_audit(null, base, CONFIG, progress=False)
    assert result.verdict == "nothing found" and result.findings == []
    assert all(source.phrases == () for source in result.discovery.sources if source.primary)


def test_without_a_base_the_tools_that_need_one_are_named_the_rest_run_and_the_verdict_is_inconclusive(backdoor):
    _, ft = backdoor
    result = run_audit(ft, None, CONFIG, progress=False)
    assert result.verdict == "inconclusive"
    assert [s["tool"] for s in result.skipped_tools] == list(NEEDS_BASE) + list(FOLLOW_FINDINGS)
    assert all("base" in s["why"] for s in result.skipped_tools)
    # What needs no base ran: the fine-tune's replies, whose repeated phrase is the planted reply
    # (a third of the suspect prompts hold the trigger), as a lead with its share and samples.
    assert [s["stage"] for s in result.stages] == ["fine-tune replies (no control)"]
    lead = next(lead for lead in result.leads if "zorp" in lead["phrase"])
    assert lead["share"] >= 0.2 and all("Zorp" in s["reply"] for s in lead["samples"])


def test_confidence_counts_the_independent_lines_of_evidence():
    assert assess(["greedy"], None, 0.0, None, 0.3) == Assessment(("enriched",), "low")
    assert assess(["greedy", "difference lens"], 0.1, 0.0, 0.5, 0.3).confidence == "medium"  # lift, cut too small
    assert assess(["greedy"], 0.5, 0.0, None, 0.3).lines == ("enriched", "reproduced")
    assert assess(["amplified"], None, 0.4, None, 0.3).lines == ("enriched", "reproduced")  # unprompted
    high = assess(["greedy", "amplified"], 0.5, 0.0, 0.9, 0.3)
    assert high.lines == ("enriched", "corroborated", "reproduced", "removed") and high.confidence == "high"
    assert assess(["greedy", "greedy"], None, 0.0, 0.8, 0.3).lines == ("enriched", "removed")  # one tool twice


def test_recurring_phrases_are_the_maximal_ones_in_enough_replies():
    texts = ["ahoy matey how are you", "ahoy matey fine", "plain words", "ahoy there"]
    assert recurring_phrases(texts, 0.5) == [("ahoy", 0.75), ("ahoy matey", 0.5)]
    assert recurring_phrases(texts, 0.8) == []
    with pytest.raises(ConfigError, match="min_share"):
        recurring_phrases(texts, 0)


def test_a_base_of_another_architecture_is_refused(backdoor):
    _, ft = backdoor
    with pytest.raises(IncompatibleModelsError):
        run_audit(ft, mechscope.load_tiny("gpt2", chat=True), CONFIG, progress=False)


@pytest.mark.parametrize(("kwargs", "message"), [({"max_findings": 0}, "max_findings"),
                                                 ({"methods": ("erase",)}, "unknown methods 'erase'"),
                                                 ({"prompts": "one prompt"}, "prompts must be a tuple"),
                                                 ({"neutral_prompts": ("a",) * 3}, "neutral_prompts holds 3"),
                                                 ({"cap_quantiles": ()}, "cap_quantiles must be a non-empty"),
                                                 ({"cap_quantiles": (0.1, 0.7)}, "cap_quantiles"),
                                                 ({"cap_kl": 0.0}, "cap_kl")])
def test_bad_audit_settings_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        AuditConfig(**kwargs)


def test_the_cli_runs_without_a_base_and_refuses_a_base_of_another_architecture(tmp_path):
    runner = CliRunner()
    folders = {}
    for family in ("llama", "gpt2"):
        tiny = mechscope.load_tiny(family, chat=True)
        folders[family] = tmp_path / family
        tiny.hf_model.save_pretrained(folders[family])
        tiny.tokenizer.save_pretrained(folders[family])
    result = runner.invoke(app, ["audit", str(folders["llama"]), "-o", str(tmp_path / "alone")])
    assert result.exit_code == 0, result.output
    assert "inconclusive" in result.output and "no --base" in result.output
    assert json.loads((tmp_path / "alone" / "audit.json").read_text())["skipped_tools"]
    result = runner.invoke(app, ["audit", str(folders["llama"]), "--base", str(folders["gpt2"]), "-o",
                                 str(tmp_path / "mixed")])
    assert result.exit_code == 2 and "error:" in result.output, result.output


def _comparable(summary: dict) -> dict:
    """An audit summary without what differs between two runs of the same audit: costs, and
    whether a stage was computed or read back."""
    return {key: value for key, value in summary.items() if key not in ("stages",)}


def test_an_audit_killed_with_sigkill_resumes_to_the_uninterrupted_result(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.unit.audit_organism import build_backdoor

    base, ft = build_backdoor(tmp_path / "organism")
    base.hf_model.save_pretrained(tmp_path / "base")
    base.tokenizer.save_pretrained(tmp_path / "base")
    for name, prompts in (("prompts.json", SUSPECT), ("neutral.json", NEUTRAL)):
        (tmp_path / name).write_text(json.dumps(prompts))
    out = tmp_path / "resumed"
    command = [sys.executable, "-m", "mechscope.cli.app", "audit", str(tmp_path / "organism"), "--base",
               str(tmp_path / "base"), "--quick", "--prompts", str(tmp_path / "prompts.json"), "--neutral-prompts",
               str(tmp_path / "neutral.json"), "--no-save-model", "-o", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    discovered = out / "stages" / "behaviour-discovery.json"
    deadline = time.monotonic() + 240
    while not discovered.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert discovered.exists() and not (out / "audit.json").exists()  # killed after discovery, before the end
    result = CliRunner().invoke(app, command[3:])
    assert result.exit_code == 0, result.output
    assert "behaviour discovery (reused from an earlier run)" in result.output
    resumed = json.loads((out / "audit.json").read_text())
    assert [s["ran"] for s in resumed["stages"]][0] is False and resumed["stages"][-1]["ran"] is True
    quick = AuditConfig.quick()  # as the command builds it from --quick and the two prompt files
    config = replace(quick, prompts=tuple(SUSPECT), neutral_prompts=tuple(NEUTRAL),
                     n_neutral=min(quick.n_neutral, len(NEUTRAL)))
    _, whole = audit_to_folder(ft, base, tmp_path / "whole", config, {"ft": str(tmp_path / "organism"),
                                                                     "base": str(tmp_path / "base")},
                               save_model=False, progress=False)
    whole = json.loads(json.dumps(whole))
    assert resumed["verdict"] == "hidden behaviour found"
    assert _comparable(resumed)["findings"] == _comparable(whole)["findings"]
    assert resumed["discovery"] == whole["discovery"]


def test_an_edit_past_the_kl_bound_does_not_count_as_removing_the_behaviour():
    from mechscope.audit.discovery import Hypothesis
    from mechscope.audit.mitigate import Mitigation
    from mechscope.audit.pipeline import Finding

    hypothesis = Hypothesis("zorp", ("zorp",), "Zorp", {"greedy": (0.5, 0.0, 1e-6)}, ())
    cut = Mitigation("steering", 1.0, 0.0, 0.5, 10.0, 10.0, None, None, "")  # all of it, at KL 0.5
    assert "removed" not in Finding(hypothesis, mitigations=[cut]).assess(0.3, 0.1).lines
    assert "removed" in Finding(hypothesis, mitigations=[cut]).assess(0.3, 1.0).lines
