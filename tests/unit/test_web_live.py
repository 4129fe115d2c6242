"""The app's model views over HTTP against a real server: one worker runs every model job, so
concurrent steered and unsteered requests get exactly what they get alone; bad requests are
refused with messages that name the problem; a closed stream stops its job."""

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

import mechscope
from mechscope.autointerp.backends.server import background_server, listen
from mechscope.errors import ConfigError
from mechscope.files import prepare_output_folder
from mechscope.steering import Direction
from mechscope.store import RunStore
from mechscope.web import Guard, create_app
from mechscope.web.live import sae_layer
from mechscope.web.worker import ModelWorker, WorkerBusyError

TOKEN = "live-token"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    tiny = mechscope.load_tiny("llama")
    sock = listen("127.0.0.1", 0)
    port = sock.getsockname()[1]
    worker = ModelWorker(lambda: tiny)
    root = tmp_path_factory.mktemp("live")
    saved = prepare_output_folder(root / "saved", "direction", ["d.json", "d.safetensors"])
    Direction.from_vector(torch.randn(tiny.cfg.d_model, generator=torch.Generator().manual_seed(1)), 1).save(
        root / "saved" / "d")
    saved.record()
    with RunStore(root / "runs.sqlite") as store:
        record = store.register(root / "saved")
    app = create_app(root / "runs.sqlite", Guard.for_address("127.0.0.1", port, token=TOKEN), worker, "tiny")
    with background_server(app, sock=sock) as url:
        with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {TOKEN}",
                                                              "Origin": url}) as http:
            http.worker = worker
            http.saved = (record.id, next(k for k, v in record.artifacts.items() if v == "d.json"))
            yield http


STEER = {"prompt": "the cat sat on the", "source": "contrast", "positive": "a happy day", "negative": "a sad night",
         "layer": 1, "max_new_tokens": 10}


def steer(client, strength: float) -> tuple[str, str, list[dict]]:
    with client.stream("POST", "/api/steer", json={**STEER, "strength": strength}) as response:
        assert response.status_code == 200, response.read()
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert lines[-1] == {"done": True} and not any("error" in line for line in lines), lines
    steps = [line for line in lines if "steered" in line]
    return "".join(s["unsteered"] for s in steps), "".join(s["steered"] for s in steps), lines


def test_concurrent_requests_are_queued_on_one_worker_and_never_see_each_others_hooks(client):
    alone = {strength: steer(client, strength)[:2] for strength in (0.0, 300.0)}
    assert alone[0.0][0] == alone[0.0][1] and alone[300.0][1] != alone[300.0][0]
    prompt = {"prompt": "the cat sat on the mat", "neurons": ["1:4"]}
    lens_alone = client.post("/api/prompt", json=prompt).json()
    before = client.worker.jobs_run
    with ThreadPoolExecutor(6) as pool:
        steered = [pool.submit(steer, client, strength) for strength in (300.0, 0.0, 300.0, 0.0)]
        lenses = [pool.submit(lambda: client.post("/api/prompt", json=prompt).json()) for _ in range(2)]
        for future, strength in zip(steered, (300.0, 0.0, 300.0, 0.0)):
            assert future.result()[:2] == alone[strength]
        for future in lenses:
            assert future.result() == lens_alone  # no steering hook leaked into these forwards
    assert client.worker.jobs_run == before + 6


@pytest.mark.parametrize(("path", "body", "status", "words"), [
    ("/api/steer", {**STEER, "source": "vibes", "strength": 1}, 422, "contrast"),
    ("/api/steer", {**STEER, "strength": 1, "colour": "red"}, 422, "colour"),
    ("/api/prompt", {"prompt": "hi", "latents": [3]}, 400, "dictionary"),
    ("/api/prompt", {"prompt": "hi", "neurons": ["three"]}, 400, "LAYER:INDEX"),
    ("/api/prompt", {"prompt": "hi", "neurons": ["1:99999"]}, 400, "out of range"),
    ("/api/prompt", {"prompt": "hi", "neurons": ["40:1"]}, 400, "layer"),
    ("/api/attention", {"prompt": "hi", "layer": 40}, 400, "out of range"),
    ("/api/prompt", {"prompt": "hi", "sae_run": 9}, 400, "no run 9"),
])
def test_bad_requests_are_refused_with_the_reason(client, path, body, status, words):
    response = client.post(path, json=body)
    assert response.status_code == status and words in response.text, response.text


def test_a_saved_direction_from_the_store_steers(client):
    run_id, artifact = client.saved
    body = {**STEER, "source": "file", "direction_run": run_id, "direction_artifact": artifact}
    for strength, same in ((0.0, True), (300.0, False)):
        lines = [json.loads(x) for x in client.post("/api/steer", json={**body, "strength": strength}).text.splitlines()]
        assert lines[0]["direction"]["method"] == "user" and lines[0]["direction"]["layer"] == 1, lines[0]
        steps = [line for line in lines if "steered" in line]
        unsteered, steered = ("".join(s[key] for s in steps) for key in ("unsteered", "steered"))
        assert (unsteered == steered) == same
    missing = client.post("/api/steer", json={**body, "direction_artifact": 10_000, "strength": 1}).text
    assert "has no artifact 10000" in missing
    assert "choose a direction" in client.get("/steer").text and "d.json" in client.get("/steer").text


@pytest.mark.parametrize(("change", "words"), [
    ({"positive": ""}, "missing: positive"),
    ({"strength": 1e9}, "strength"),
    ({"source": "feature"}, "missing: sae_run, latent"),
    ({"source": "file"}, "missing: direction_run, direction_artifact"),
    ({"source": "feature", "sae_run": 1, "latent": -3}, "latent"),
])
def test_a_bad_steering_request_is_refused_with_the_field(client, change, words):
    response = client.post("/api/steer", json={**STEER, "strength": 1, **change})
    assert response.status_code == 422 and words in response.text, response.text


def test_what_only_the_model_can_tell_is_said_in_the_stream(client):
    run_id, _ = client.saved
    for change, words in (({"layer": 40}, "out of range"),
                          ({"positive": "same", "negative": "same"}, "same mean"),
                          ({"source": "feature", "sae_run": run_id, "latent": 0}, "holds no dictionary"),
                          ({"source": "file", "direction_run": 777, "direction_artifact": 1}, "no run 777")):
        lines = [json.loads(x) for x in client.post("/api/steer", json={**STEER, "strength": 1, **change}).text.splitlines()]
        assert words in lines[0].get("error", ""), lines
        assert lines[-1] == {"done": True}


def test_a_model_that_fails_to_load_is_named_and_a_full_queue_is_refused(tmp_path):
    def broken():
        raise RuntimeError("no weights here")

    release = threading.Event()
    sock = listen("127.0.0.1", 0)
    port = sock.getsockname()[1]
    app = create_app(tmp_path / "runs.sqlite", Guard.for_address("127.0.0.1", port, token=TOKEN),
                     ModelWorker(broken, max_pending=1), "broken")
    with background_server(app, sock=sock) as url, httpx.Client(
            base_url=url, timeout=30, headers={"Authorization": f"Bearer {TOKEN}", "Origin": url}) as http:
        lines = [json.loads(x) for x in http.post("/api/steer", json={**STEER, "strength": 1}).text.splitlines()]
        assert "no weights here" in lines[0]["error"] and lines[-1] == {"done": True}
        failed = http.post("/api/prompt", json={"prompt": "hi"})
        assert failed.status_code == 500 and "no weights here" in failed.text
    busy = ModelWorker(lambda: object(), max_pending=1)
    held = busy.submit(lambda model: release.wait(10))
    with pytest.raises(WorkerBusyError, match="already waiting"):
        busy.submit(lambda model: None)
    release.set()
    assert held.result(10) is True and busy.run(lambda model: "free again") == "free again"
    busy.close()


def test_a_closed_stream_stops_its_job():
    started, finished = threading.Event(), threading.Event()
    emitted = []

    def job(model, emit, cancelled):
        started.set()
        for step in range(10_000):
            if cancelled():
                break
            emit(step)
            emitted.append(step)
            threading.Event().wait(0.001)
        finished.set()

    worker = ModelWorker(lambda: object())
    items = worker.stream(job)
    assert next(items) == 0 and next(items) == 1
    items.close()
    assert finished.wait(10) and len(emitted) < 10_000
    assert worker.run(lambda model: "next job runs") == "next job runs"
    worker.close()


def test_sae_layer_steers_after_what_the_dictionary_read():
    assert sae_layer("blocks.3.hook_resid_pre") == 3
    assert sae_layer("blocks.3.hook_resid_post") == 4 and sae_layer("blocks.2.hook_mlp_out") == 3
    with pytest.raises(ConfigError, match="layer"):
        sae_layer("hook_embed")
