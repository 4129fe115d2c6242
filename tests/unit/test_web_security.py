"""``mechscope serve``'s security rules, over HTTP against a real server on 127.0.0.1: foreign Host
403, cross-origin state change 403, missing token 401, traversal and symlink probes 404, a
non-loopback bind refused without the flag; and the strict headers on every response."""

import threading
import time

import httpx
import pytest

from mechscope.errors import ConfigError
from mechscope.store import RunStore
from mechscope.web import Guard, check_bind, create_app
from tests.unit.test_store import finished_run


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import uvicorn

    from mechscope.autointerp.backends.server import listen

    root = tmp_path_factory.mktemp("web")
    secret = root / "secret.txt"
    secret.write_text("not for the browser")
    folder = finished_run(root / "cat-run")
    (folder / "units" / "latent_1.json").write_text('{"explanation": "dogs"}')
    with RunStore(root / "runs.sqlite") as store:
        record = store.register(folder)
    # After registration the file is swapped for a symlink to a file outside the run.
    (folder / "units" / "latent_1.json").unlink()
    (folder / "units" / "latent_1.json").symlink_to(secret)
    sock = listen("127.0.0.1", 0)
    port = sock.getsockname()[1]
    guard = Guard.for_address("127.0.0.1", port, token="session-token")
    instance = uvicorn.Server(uvicorn.Config(create_app(root / "runs.sqlite", guard), log_level="warning"))
    thread = threading.Thread(target=instance.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not instance.started:
        time.sleep(0.02)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        client.store = root / "runs.sqlite"
        yield client, port, record
    instance.should_exit = True
    thread.join(10)


AUTH = {"Authorization": "Bearer session-token"}


def test_a_missing_or_wrong_token_gets_401_and_the_url_token_sets_a_strict_cookie(server):
    client, port, _ = server
    assert client.get("/").status_code == 401
    assert client.get("/api/runs", headers={"Authorization": "Bearer guess"}).status_code == 401
    # Odd tokens are refused too, not a server error.
    assert client.get("/api/runs?token=%C3%A9t%C3%A9").status_code == 401
    assert client.get("/api/runs", headers={"Cookie": 'mechscope_token="\\x"; ;;=;'}).status_code == 401
    first = client.get("/?token=session-token")
    assert first.status_code == 200 and "cat-run" in first.text
    cookie = first.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    # The cookie alone is enough afterwards.
    assert client.get("/api/runs", headers={"Cookie": "mechscope_token=session-token"}).status_code == 200
    for response in (first, client.get("/")):
        assert response.headers["content-security-policy"].startswith("default-src 'self'")
        assert response.headers["x-content-type-options"] == "nosniff"


def test_a_foreign_host_gets_403_even_with_the_token(server):
    client, port, _ = server
    assert client.get("/api/runs", headers={**AUTH, "Host": f"evil.example:{port}"}).status_code == 403
    assert client.get("/api/runs", headers={**AUTH, "Host": "evil.example"}).status_code == 403
    assert client.get("/api/runs", headers={**AUTH, "Host": f"localhost:{port}"}).status_code == 200


def test_a_state_change_needs_the_servers_own_origin(server, tmp_path):
    client, port, record = server
    for origin in ("http://evil.example", f"http://127.0.0.1:{port + 1}", None):
        headers = {**AUTH, **({"Origin": origin} if origin else {})}
        assert client.delete(f"/api/runs/{record.id}", headers=headers).status_code == 403
        assert client.post(f"/api/runs/{record.id}", headers=headers).status_code == 403
    assert client.get(f"/api/runs/{record.id}", headers=AUTH).json()["name"] == "cat-run"  # nothing was removed
    with RunStore(client.store) as store:
        other = store.register(finished_run(tmp_path / "to-forget"))
    own = client.delete(f"/api/runs/{other.id}", headers={**AUTH, "Origin": f"http://127.0.0.1:{port}"})
    assert own.status_code == 200 and own.json()["removed"] == other.id
    assert client.get(f"/api/runs/{other.id}", headers=AUTH).status_code == 404


def test_traversal_and_symlink_probes_get_404_and_artifacts_are_served_by_id(server):
    client, port, record = server
    ids = {relpath: key for key, relpath in record.artifacts.items()}
    served = client.get(f"/artifacts/{record.id}/{ids['units/latent_0.json']}", headers=AUTH)
    assert served.status_code == 200 and "fires on the word cat" in served.text
    probes = [f"/artifacts/{record.id}/{ids['units/latent_1.json']}",  # now a symlink to a file outside
              f"/artifacts/{record.id}/..%2F..%2Fsecret.txt", f"/artifacts/{record.id}/../../secret.txt",
              f"/artifacts/{record.id}/%00", f"/artifacts/{record.id}/99999", "/artifacts/..%2Fsecret.txt/1",
              "/artifacts/1/-1", "/static/..%2F..%2F..%2Fsecret.txt", "/runs/1%00"]
    for probe in probes:
        response = client.get(probe, headers=AUTH)
        assert response.status_code == 404, probe
        assert "not for the browser" not in response.text


def test_a_non_loopback_bind_is_refused_without_the_flag_and_warned_with_it():
    with pytest.raises(ConfigError, match="--allow-remote"):
        check_bind("0.0.0.0")
    with pytest.raises(ConfigError, match="not a loopback"):
        check_bind("192.168.1.5")
    assert check_bind("127.0.0.1") is None and check_bind("::1") is None and check_bind("localhost") is None
    assert "warning" in check_bind("0.0.0.0", allow_remote=True)


def test_the_serve_command_refuses_a_remote_bind_before_it_starts(tmp_path):
    from typer.testing import CliRunner

    from mechscope.cli.app import app

    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--store", str(tmp_path / "s.sqlite")])
    assert result.exit_code == 2 and "--allow-remote" in result.output
    assert not (tmp_path / "s.sqlite").exists()  # refused before the store was even opened


def test_run_pages_escape_what_runs_hold(server, tmp_path):
    client, _, _ = server
    with RunStore(client.store) as store:
        odd = store.register(finished_run(tmp_path / "odd", options={"model": "<script>alert(1)</script>"}),
                             name="<b>bold</b>")
    page = client.get(f"/runs/{odd.id}", headers=AUTH)
    assert page.status_code == 200
    assert "<script>alert" not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "&lt;b&gt;bold&lt;/b&gt;" in client.get("/", headers=AUTH).text


def test_the_runs_browser_searches_and_says_when_a_search_is_malformed(server):
    client, _, _ = server
    hit = client.get("/?q=cat", headers=AUTH)
    assert hit.status_code == 200 and "cat-run" in hit.text
    assert "cat-run" not in client.get("/?q=zebra", headers=AUTH).text
    bad = client.get('/?q="unclosed', headers=AUTH)
    assert bad.status_code == 200 and "cannot search" in bad.text
    assert client.get('/api/runs?search="unclosed', headers=AUTH).status_code == 400
