"""What runs hold reaches the app's pages escaped: a circuit, a dictionary's features and a run's
name carrying markup are shown as text, never as HTML; artifacts open sandboxed (an HTML file runs
no script, a script file is served as text); malformed or missing feature data is a 4xx that
says what is wrong, not a server error."""

import json

import httpx
import pytest

from mechscope.autointerp.backends.server import background_server, listen
from mechscope.files import prepare_output_folder
from mechscope.store import RunStore
from mechscope.web import Guard, create_app

EVIL = "<script>alert(1)</script>"


def _feature(latent: int, explanation: str) -> dict:
    window = {"tokens": [" a", EVIL, " c"], "values": [0.0, 1.0, 0.5], "at": 1}
    return {"latent": latent, "density": 0.01, "max_activation": 1.0,
            "histogram": {"edges": [0.0, 0.5, 1.0], "counts": [3, 1]}, "top": [window],
            "quantiles": [{"band": EVIL, "contexts": [window]}], "promoted": [[EVIL, 0.5]], "suppressed": [],
            "explanation": {"text": explanation, "scores": {EVIL: {"value": 0.7, "low": 0.6, "high": 0.8,
                                                                   "above_chance": True}}},
            "nearest": [{"latent": 1, "cosine": 0.5}]}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("views")
    circuit = prepare_output_folder(root / "circuit", "circuit", ["circuit.json", "page.html", "tool.js"])
    (root / "circuit" / "circuit.json").write_text(json.dumps({
        "method": EVIL, "level": "edge", "graph_edges": EVIL, "n_edges": 1,
        "edges": [{"from": EVIL, "to": "logits", "score": 1.0}]}))
    (root / "circuit" / "page.html").write_text(f"<p>hi</p>{EVIL}")
    (root / "circuit" / "tool.js").write_text("alert(1)")
    circuit.record()
    dashboard = prepare_output_folder(root / "dash", "sae dashboard", ["features.jsonl"])
    lines = [{"format": "mechscope-features", "version": 1}, _feature(0, EVIL), _feature(1, "fine"),
             {"latent": 2, "density": 0.1, "max_activation": 1.0}]  # indexable, but no page data
    (root / "dash" / "features.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    dashboard.record()
    with RunStore(root / "runs.sqlite") as store:
        ids = {name: store.register(root / name, name=f"{name}{EVIL}").id for name in ("circuit", "dash")}
        artifacts = {v: k for k, v in store.get(ids["circuit"]).artifacts.items()}
    sock = listen("127.0.0.1", 0)
    guard = Guard.for_address("127.0.0.1", sock.getsockname()[1], token="t")
    with background_server(create_app(root / "runs.sqlite", guard), sock=sock) as url:
        with httpx.Client(base_url=url, headers={"Authorization": "Bearer t"}, timeout=30) as http:
            yield http, ids, artifacts, root


def test_markup_from_runs_is_escaped_on_every_page(client):
    http, ids, _, _ = client
    pages = ["/", f"/runs/{ids['circuit']}", f"/runs/{ids['dash']}", f"/runs/{ids['dash']}?fq=script",
             f"/runs/{ids['dash']}/features/0"]
    for path in pages:
        response = http.get(path)
        assert response.status_code == 200, (path, response.text[:300])
        assert EVIL not in response.text, path  # neither as markup nor inside the page's JSON
        assert "&lt;script&gt;" in response.text or "\\u003cscript\\u003e" in response.text, path


def test_artifacts_open_sandboxed_and_scripts_come_as_text(client):
    http, ids, artifacts, _ = client
    page = http.get(f"/artifacts/{ids['circuit']}/{artifacts['page.html']}")
    assert page.status_code == 200 and "sandbox" in page.headers.get_list("content-security-policy")[0]
    script = http.get(f"/artifacts/{ids['circuit']}/{artifacts['tool.js']}")
    assert script.headers["content-type"].startswith("text/plain") and script.headers["x-content-type-options"] == "nosniff"


def test_bad_feature_requests_are_4xx_with_the_reason(client):
    http, ids, _, root = client
    assert http.get(f"/runs/{ids['dash']}/features/-1").status_code == 422
    assert http.get(f"/runs/{ids['dash']}/features/9").status_code == 404
    assert http.get("/runs/²").status_code == 404 and http.get(f"/artifacts/{ids['dash']}/²").status_code == 404
    assert http.get(f"/api/runs/{ids['dash']}/features?search=²").status_code == 200
    malformed = http.get(f"/runs/{ids['dash']}/features/2")
    assert malformed.status_code == 409 and "malformed" in malformed.text
    (root / "dash" / "features.jsonl").rename(root / "dash" / "moved.jsonl")
    try:
        gone = http.get(f"/api/runs/{ids['dash']}/features/1")
        assert gone.status_code == 409 and "moved or deleted" in gone.text
    finally:
        (root / "dash" / "moved.jsonl").rename(root / "dash" / "features.jsonl")
