"""Explanations where units are shown: feature dashboards, labels read back from an explain run,
and the audit report's fine-tune-only latents."""

import json

import pytest

from mechscope.autointerp.results import label, latent_labels, read_explanations, read_labels
from mechscope.autointerp.run import run_explain
from mechscope.autointerp.units import sae_units
from mechscope.data.contexts import default_contexts
from mechscope.errors import FileFormatError, MissingFileError
from mechscope.models.tiny import load_tiny
from mechscope.report.audit_report import _discovery_section
from mechscope.sae.dashboard import sae_dashboards

from .test_autointerp_run import _options, planted_sae

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def explained(tmp_path_factory):
    model = load_tiny("llama")
    sae = planted_sae(model)
    out = tmp_path_factory.mktemp("explain") / "run"
    run_explain(model, sae_units(model, sae, range(4)), _options(), out, progress=False)
    return model, sae, out


def test_labels_read_back_from_an_explain_run(explained, tmp_path):
    _, _, out = explained
    results = read_explanations(out)
    assert results["latent 0"]["explanation"] == '"e"'
    labels = latent_labels(out)
    assert labels[0].startswith('"e" (lexicon ') and labels[3] == "dead (never fires)"
    assert float(labels[0].split()[2]) > 0.95
    assert read_labels(out)["latent 1"] == label(results["latent 1"])
    (tmp_path / "labels.json").write_text(json.dumps({"L0H1": "previous token"}))
    assert read_labels(tmp_path / "labels.json") == {"L0H1": "previous token"}
    (tmp_path / "bad.json").write_text(json.dumps(["not", "a", "map"]))
    with pytest.raises(FileFormatError, match="name -> text"):
        read_labels(tmp_path / "bad.json")
    with pytest.raises(MissingFileError, match="explain"):
        read_explanations(tmp_path)


def test_dashboards_show_each_latents_explanation(explained, tmp_path):
    model, sae, out = explained
    contexts = default_contexts(model, 4, 33)
    index = sae_dashboards(model, sae, contexts, [0, 1], tmp_path / "dash", progress=False,
                           explanations=latent_labels(out))
    page = (tmp_path / "dash" / "feature_0000.html").read_text()
    assert "<b>explanation:</b> &quot;e&quot; (lexicon" in page
    assert "&quot;t&quot; (lexicon" in index.read_text()


def test_the_audit_report_lists_fine_tune_only_latents_with_their_explanations():
    discovery = {"sources": [], "evidence": [
        {"tool": "crosscoder (ft-only latents)", "where": 'latent 7 (peak 3.1); explained: "Z" (lexicon 0.91 '
                                                          "[0.80, 1.00])", "tokens": ["Z", "orp"]},
        {"tool": "difference lens", "where": "layer 3", "tokens": ["x"]}]}
    section = _discovery_section(discovery)
    assert "Fine-tune-only latents (crosscoder), explained" in section
    assert "latent 7 (peak 3.1)" in section and "lexicon 0.91" in section and "layer 3" not in section
