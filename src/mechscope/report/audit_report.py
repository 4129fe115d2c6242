"""The report of ``mechscope audit``: ``audit.json`` (every number), plotly figures and one
self-contained ``report.html``, all drawn from the JSON summary alone. The page opens with the
verdict; each claim sits next to the numbers behind it, and the last sections list every tool
run with its cost and the tools that could not run."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from mechscope.files import atomic_text
from mechscope.report.markup import FIGURES, STYLE, num, pct, table, write_figures

REPORT = "report.html"
SHOWN_CANDIDATES = 10
# Where in a finding's section each line of evidence is shown: the verdict links each claim there.
EVIDENCE_ANCHORS = {"enriched": "discovery", "corroborated": "support", "reproduced": "triggers",
                    "removed": "mitigation"}


def _evidence_links(index: int, lines: list[str]) -> str:
    """A finding's lines of evidence, each a link to the part of its section that shows it."""
    return ", ".join(f'<a href="#finding-{index + 1}-{EVIDENCE_ANCHORS.get(line, "discovery")}">{html.escape(line)}</a>'
                     for line in lines) or "none"


def audit_figures(summary: dict) -> dict[str, go.Figure]:
    """Per finding: the residual patching effect by layer, probe AUROC by layer, and the
    checked trigger candidates' behaviour rates."""
    figures = {}
    for index, finding in enumerate(summary["findings"]):
        label = finding["hypothesis"]["label"]
        local = finding.get("localisation")
        if local:
            layers = local.get("layers") or list(range(len(local["layer_effect"])))
            figure = go.Figure([go.Scatter(y=values, x=layers, name=group)
                                for group, values in local["patching"].items()])
            figure.update_layout(title=f"{label!r}: activation patching of resid_pre, by layer and position group",
                                 xaxis_title="layer", yaxis_title="share of the trigger's effect restored")
            figures[f"finding{index}-patching"] = figure
        if finding.get("probes"):
            figure = go.Figure([go.Scatter(x=[r["layer"] for r in rows], y=[r["auroc"] for r in rows], name=kind)
                                for kind, rows in finding["probes"].items()])
            figure.update_layout(title=f"{label!r}: probe AUROC, triggered vs untriggered prompts", xaxis_title="layer",
                                 yaxis_title="AUROC")
            figures[f"finding{index}-probes"] = figure
        checked = [c for c in finding["triggers"] if c["rate"] is not None]
        if checked:
            figure = go.Figure([go.Bar(x=[repr(c["text"]) for c in checked], y=[c["rate"] for c in checked],
                                       name="with the candidate"),
                                go.Bar(x=[repr(c["text"]) for c in checked], y=[c["control_rate"] for c in checked],
                                       name="without")])
            figure.update_layout(title=f"{label!r}: behaviour rate with each checked trigger candidate",
                                 yaxis_title="share of replies", barmode="group")
            figures[f"finding{index}-triggers"] = figure
    return figures


def _verdict(summary: dict) -> str:
    verdict = summary["verdict"]
    lines = [f"<h2>Verdict: {html.escape(verdict)}</h2>"]
    if verdict == "nothing found":
        lines.append("<p>No phrase was significantly more frequent in the fine-tune's replies (greedy or amplified) "
                     "than in its base's at the family-wise threshold; the null control of every source is the base "
                     "itself.</p>")
    elif verdict == "inconclusive":
        lines.append("<p>No base model was given, so the tools that compare against it, and those that follow "
                     "a finding, did not run (listed below). What ran: the fine-tune's greedy replies to generic "
                     "prompts, and the phrases it repeats across them. With no control these are leads to check, "
                     "not findings: every model repeats some phrases.</p>")
        leads = [[lead["phrase"], pct(lead["share"]), (lead["samples"] or [{"reply": ""}])[0]["reply"][:100]]
                 for lead in summary.get("leads", [])]
        lines.append(table(leads, ["phrase", "share of replies", "a reply with it"]) if leads
                     else "<p>No phrase recurs in enough replies to be a lead.</p>")
    rows = []
    for index, finding in enumerate(summary["findings"]):
        hypothesis, trigger = finding["hypothesis"], finding["trigger"]
        best = max(finding["mitigations"], key=lambda m: m["reduction"] or 0, default=None)
        assessment = finding.get("assessment") or {"confidence": "-", "lines": []}
        rows.append([assessment["confidence"], _evidence_links(index, assessment["lines"]),
                     f'<a href="#finding-{index + 1}">{html.escape(hypothesis["label"])}</a>',
                     hypothesis["surface"], num(hypothesis["p_value"], 2),
                     ", ".join(hypothesis["tools"]),
                     f"{trigger['text']!r} at the {trigger['place']}: {pct(trigger['rate'])} (without {pct(trigger['control_rate'])})"
                     if trigger else "none found",
                     f"{best['method']}: {pct(best['rate_before'])} -> {pct(best['rate_after'])}, KL {best['neutral_kl']:.3f}"
                     if best else "not run"])
    if rows:
        lines.append(table(rows, ["confidence", "lines of evidence", "behaviour", "as written", "p (corrected)",
                                  "evidence from", "trigger", "best mitigation"], raw_columns=(1, 2)))
        lines.append("<p>Hypotheses ranked by confidence: <b>high</b> when, beyond the enrichment that made it a "
                     "finding, at least two of <i>corroborated</i> (a second tool points at it), <i>reproduced</i> "
                     "(a checked trigger, or the fine-tune unprompted, shows it on enough prompts) and "
                     "<i>removed</i> (a mitigation cut it by 80% or more within the neutral KL bound) hold; <b>medium</b> with one; <b>low</b> "
                     "with none. The enrichment threshold is the one the null organism is calibrated against: the "
                     "same settings find nothing there.</p>")
    return "".join(lines)


def _finding_section(index: int, finding: dict, parts: dict[str, str]) -> str:
    hypothesis = finding["hypothesis"]
    anchor = f"finding-{index + 1}"
    out = [f"<h2 id={anchor}>Finding {index + 1}: {html.escape(hypothesis['label'])!s}</h2>"]
    rows = [[name, f"{pct(s['ft_rate'])}", f"{pct(s['control_rate'])}", num(s["p_value"], 2)]
            for name, s in hypothesis["sources"].items()]
    out.append(f"<h3 id={anchor}-discovery>Discovery</h3>" + table(rows, ["source", "fine-tune side", "control",
                                                                          "p (corrected)"]))
    support = [[s["tool"], s["where"], repr(s["token"])] for s in hypothesis["support"][:20]]
    out.append(f"<p id={anchor}-support>Tokens that spell it (other tools pointing at it):</p>"
               + table(support, ["tool", "where", "token"]) if support
               else f"<p id={anchor}-support>No other tool pointed at it.</p>")
    rows = [[repr(c["text"]), c["place"], c["found_by"], num(c["gain"], 3),
             "" if c["rate"] is None else f"{pct(c['rate'])}", "" if c["control_rate"] is None else
             f"{pct(c['control_rate'])}"] for c in finding["triggers"][:SHOWN_CANDIDATES]]
    out.append(f"<h3 id={anchor}-triggers>Trigger candidates</h3>" + table(rows, ["candidate", "place", "found by", "objective gain (nats)",
                                                            "behaviour rate with it", "without"]))
    out.append(parts.get(f"finding{index}-triggers", ""))
    for item in finding["attributions"][:3]:
        cells = " ".join(f"{t!r}:{d:+.2f}" for t, d in zip(item["tokens"], item["ablation"]))
        out.append(f"<p class=mono>ablation attribution on {html.escape(item['prompt'])!s}: {html.escape(cells)}</p>")
    local = finding.get("localisation")
    if local:
        chosen = local["chosen"]
        out.append(f"<h3 id={anchor}-localisation>Localisation</h3>" + parts.get(f"finding{index}-patching", ""))
        out.append(table([[c["name"], num(c["score"], 3)] for c in local["components"]],
                         ["component (EAP-IG node)", "score"]))
        out.append(_direction_text(chosen, local["clean_logit_diff"]))
    if finding.get("probes"):
        rows = []
        for kind, scores in finding["probes"].items():
            best = max(scores, key=lambda s: s["auroc"])
            rows.append([kind, best["layer"], num(best["auroc"], 3), f"{pct(best['tpr'])}"])
        out.append(f"<h3 id={anchor}-probes>Detection without the trigger</h3>" + table(rows, ["probe", "best layer (picked on "
                                                                          "these prompts: optimistic)", "AUROC",
                                                                          "TPR at 1% FPR (neutral chat)"]))
        out.append(parts.get(f"finding{index}-probes", ""))
    if finding["mitigations"]:
        rows = [[m["method"], f"{pct(m['rate_before'])}", f"{pct(m['rate_after'])}",
                 "n/a" if m["reduction"] is None else f"{pct(m['reduction'])}", num(m["neutral_kl"], 3),
                 f"{m['perplexity_before']:.2f} -> {m['perplexity_after']:.2f}",
                 f"{num(m['ioi_before'], 3)} -> {num(m['ioi_after'], 3)}", m["sample"][:80]]
                for m in finding["mitigations"]]
        out.append(f"<h3 id={anchor}-mitigation>Mitigation</h3>" + table(rows, ["method", "rate before", "after", "cut", "neutral KL",
                                                        "perplexity", "IOI logit diff", "a reply after"]))
    if not finding["mitigations"]:
        out.append(f"<p id={anchor}-mitigation>No mitigation was run for this finding.</p>")
    for note in finding["notes"]:
        out.append(f"<p class=note>{html.escape(note)}</p>")
    return "".join(out)


def _direction_text(chosen: dict | None, clean: float) -> str:
    if chosen is None:
        return "<p>No behaviour direction kept the neutral KL within the bound.</p>"
    after = chosen["ablated_fraction"] * clean if chosen["ablated_fraction"] is not None else None
    return (f"<p>Behaviour direction: difference of means entering layer {html.escape(str(chosen['layer']))}; "
            "ablated from every "
            f"layer, the behaviour's logit difference (its first token against the untriggered first choice) goes "
            f"from {clean:.2f} to {num(after, 3)}, at neutral KL {chosen['kl']:.3f} nats.</p>")


def _discovery_section(discovery: dict | None) -> str:
    if not discovery:
        return ""
    out = ["<h2>Discovery sources</h2>"]
    latents = [[e["where"].split(";")[0], " ".join(repr(t) for t in e["tokens"]),
                e["where"].partition("explained: ")[2]]
               for e in discovery.get("evidence", []) if e["tool"].startswith("crosscoder")]
    if latents:
        out.append("<h3>Fine-tune-only latents (crosscoder), explained</h3>"
                   "<p>Each latent's explanation is the tokens explainer's, written from half of its transcript "
                   "windows and scored by the lexicon scorer (balanced accuracy, 95% bootstrap interval; chance "
                   "0.5) on the other half.</p>" + table(latents, ["latent", "top tokens", "explanation (score)"]))
    for source in discovery["sources"]:
        rows = [[p["text"], f"{pct(p['ft_rate'])}", f"{pct(p['control_rate'])}", num(p["p_value"], 2)]
                for p in source["phrases"][:15]]
        out.append(f"<h3>{html.escape(source['name'])} ({'primary' if source['primary'] else 'supporting'}, "
                   f"{html.escape(str(source['n']))} prompts)</h3>")
        out.append(table(rows, ["phrase", "fine-tune side", "control", "p (corrected)"]) if rows
                   else "<p>No enriched phrase.</p>")
        samples = [[s["prompt"][:60], s["ft"][:100], s["control"][:100]] for s in source["samples"][:4]]
        out.append(table(samples, ["prompt", "fine-tune side", "control"]))
    return "".join(out)


def _tools_section(summary: dict) -> str:
    rows = [[s["stage"], f"{s['seconds']:.1f}", "this run" if s.get("ran", True) else "an earlier run (resumed)"]
            for s in summary["stages"]]
    out = "<h2>Tools run</h2>" + table(rows, ["stage", "seconds", "computed in"])
    if summary["skipped_tools"]:
        out += "<h2>Tools not run</h2>" + table([[s["tool"], s["why"]] for s in summary["skipped_tools"]],
                                                ["tool", "why"])
    return out


def audit_report_body(summary: dict, parts: dict[str, str]) -> str:
    """The report's sections (verdict, findings, discovery, tools) from an audit summary, with the
    figures given as HTML ``parts`` {name: markup} (the file embeds plotly; ``mechscope serve``
    draws them from JSON). Each claim in the verdict links to the section that shows its evidence."""
    body = "".join(_finding_section(i, f, parts) for i, f in enumerate(summary["findings"]))
    return f"{_verdict(summary)}{body}{_discovery_section(summary.get('discovery'))}{_tools_section(summary)}"


def write_audit_report(summary: dict, folder: str | Path) -> dict[str, Any]:
    """Write ``folder/figures/*.json`` and ``folder/report.html`` from an audit summary
    (``AuditResult.to_json()`` plus "models"); returns the paths written, relative to ``folder``."""
    folder = Path(folder)
    figures = audit_figures(summary)
    written, parts = write_figures(figures, folder)
    title = f"mechscope audit: {summary.get('models', {}).get('ft', '')}"
    document = (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
                f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{audit_report_body(summary, parts)}"
                f"<p class=note>Every number: audit.json; figures as plotly JSON: {FIGURES}/.</p></body></html>")
    atomic_text(folder / REPORT, document)
    return {"report": REPORT, "summary": "audit.json", "figures": written}


__all__ = ["audit_figures", "audit_report_body", "write_audit_report"]
