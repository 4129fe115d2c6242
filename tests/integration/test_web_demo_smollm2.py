"""The demo behind ``mechscope serve --demo`` on the bundled SmolLM2 (smaller sizes than the
default, same steps): IOI heads, an IOI circuit, an explained dictionary and its dashboard, a
direction; all registered in the demo's store, and every run's page served without an error."""

import json

import httpx

from mechscope.autointerp.backends.server import background_server, listen
from mechscope.store import RunStore
from mechscope.web import Guard, create_app
from mechscope.web.demo import DemoConfig, build_demo


def test_the_smollm2_demo_is_built_registered_and_served(smollm2, tmp_path):
    config = DemoConfig(prompts=6, circuit_edges=40, d_sae=256, k=8, sae_tokens=20_000, harvest_contexts=32,
                        explained_latents=6, explain_contexts=32)
    store_path = build_demo(smollm2, tmp_path / "demo", config, say=lambda line: None, progress=False)
    with RunStore(store_path) as store:
        runs = {record.name: record for record in store.runs()}
        assert set(runs) == {"ioi-heads", "ioi-circuit", "dictionary", "dictionary-explained",
                             "dictionary-dashboard", "direction"}
        assert 0 < store.features(runs["dictionary-dashboard"].id)[1] <= 6
        identity = runs["ioi-heads"].models["model"]
        assert identity["name"] == "smollm2-135m-instruct" and len(identity["weights_sha256"]) == 64
    sock = listen("127.0.0.1", 0)
    guard = Guard.for_address("127.0.0.1", sock.getsockname()[1], token="t")
    with background_server(create_app(store_path, guard), sock=sock) as url:
        with httpx.Client(base_url=url, headers={"Authorization": "Bearer t"}, timeout=30) as client:
            for record in runs.values():
                page = client.get(f"/runs/{record.id}")
                assert page.status_code == 200 and "class=error" not in page.text, record.name
            circuit = client.get(f"/runs/{runs['ioi-circuit'].id}").text
            kept = json.loads((runs["ioi-circuit"].path / "circuit.json").read_text())["n_edges"]
            assert 0 < kept <= 40 and f"{kept} edges of" in circuit and "logits" in circuit
            listed = client.get(f"/api/runs/{runs['dictionary-dashboard'].id}/features").json()["features"]
            first = listed[0]["latent"]
            feature = client.get(f"/api/runs/{runs['dictionary-dashboard'].id}/features/{first}")
            assert feature.status_code == 200 and feature.json()["latent"] == first and feature.json()["top"]
