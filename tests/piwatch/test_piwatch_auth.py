"""Who may change PiWatch's lights (issue 18, finding 7): the token on every state change, taken
from the URL only on kubewatch's webhook, browsers of other sites refused even with it, and the
token kept out of the server's log."""

from __future__ import annotations

import logging
import socket
import threading
import time

import httpx
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from piwatch.app import TokenMissing, create_app
from piwatch.guard import SAFE_METHODS
from piwatch.tokens import ingest_token
from piwatch_testlib import states

TOKEN = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
BEARER = {"authorization": f"Bearer {TOKEN}"}
WEBHOOKS = ("/kubewatch", "/traffic/kubewatch-webhook")
ALARM = {"eventmeta": {"kind": "pod", "name": "db-0", "namespace": "shop", "reason": "BackOff"}}
CREATED = {"eventmeta": {"kind": "pod", "name": "web-1", "namespace": "default", "reason": "created"}}


@pytest.fixture
def guarded(settings, tmp_path):
    """Settings as on the router: a token file, as systemd's LoadCredential hands it over."""
    path = tmp_path / "webhook-token"
    path.write_text(TOKEN + "\n")
    return settings.model_copy(update={"webhook_token_file": path})


@pytest.fixture
def client(guarded, lights):
    with TestClient(create_app(guarded, lights=lights), base_url="http://127.0.0.1:8080") as c:
        yield c


def idle(client) -> None:
    assert client.app.state.worker.wait_idle(5)


def refused(response) -> bool:
    return response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"


def test_acknowledge_needs_the_token(client):
    assert client.post("/kubewatch", json=ALARM, headers=BEARER).status_code == 202
    idle(client)
    assert refused(client.post("/alarm/ack", json={}))
    assert refused(client.post("/alarm/ack", json={}, headers={"authorization": "Bearer wrong"}))
    assert refused(client.post("/alarm/ack", json={}, headers={"authorization": f"Basic {TOKEN}"}))
    state = client.get("/lights").json()
    assert state["buzzer"] == "beep" and state["alarms"][0]["acknowledged"] is False
    assert client.post("/alarm/ack", json={}, headers=BEARER).json() == {"acknowledged": 1}
    assert client.get("/lights").json()["buzzer"] == "off"


def test_self_test_needs_the_token(client, lights):
    lights.buzzer_pin.clear_states()
    assert refused(client.post("/lights/test", json={"buzzer": True}))
    idle(client)
    assert True not in states(lights.buzzer_pin)
    assert client.post("/lights/test", json={"buzzer": True}, headers=BEARER).status_code == 202
    idle(client)
    assert True in states(lights.buzzer_pin)


@pytest.mark.parametrize("path", WEBHOOKS)
def test_the_webhook_takes_the_token_in_the_header_or_the_event_only_token_in_its_url(client, path):
    assert refused(client.post(path, json=CREATED))
    assert client.post(path, json=CREATED, headers=BEARER).status_code == 202
    # kubewatch cannot set a header (piwatch.app says why): its URL carries the event-only token.
    assert client.post(f"{path}?token={ingest_token(TOKEN)}", json=CREATED).status_code == 202
    assert client.post(path, json=CREATED,
                       headers={"Authorization": f"Bearer {ingest_token(TOKEN)}"}).status_code == 202
    assert refused(client.post(f"{path}?token=wrong", json=CREATED))
    # kubewatch logs its URL after every event: the full token never travels in one.
    assert refused(client.post(f"{path}?token={TOKEN}", json=CREATED))


@pytest.mark.parametrize("path", ["/alarm/ack", "/lights/test"])
def test_the_event_only_token_changes_nothing_else(client, path):
    """What leaks through kubewatch's log (its URL) can post events, never silence an alarm."""
    assert refused(client.post(path, json={}, headers={"Authorization": f"Bearer {ingest_token(TOKEN)}"}))
    assert refused(client.post(f"{path}?token={ingest_token(TOKEN)}", json={}))


@pytest.mark.parametrize("path", ["/alarm/ack", "/lights/test"])
def test_only_the_webhook_takes_a_token_in_its_url(client, path):
    """A URL ends up in browser history, proxies and logs: routes people use take the header."""
    assert refused(client.post(f"{path}?token={TOKEN}", json={}))


def test_every_route_that_changes_something_needs_the_token(client):
    """A route added later without the token dependency fails here."""
    changing = [(route.path, method) for route in client.app.routes if isinstance(route, APIRoute)
                for method in route.methods - SAFE_METHODS]
    assert {path for path, _ in changing} >= {"/alarm/ack", "/lights/test", *WEBHOOKS}
    for path, method in changing:
        assert refused(client.request(method, path, json={})), (method, path)
    assert client.get("/lights").json()["stats"]["received"] == 0


@pytest.mark.parametrize("path,body", [("/alarm/ack", {}), ("/lights/test", {}),
                                       ("/kubewatch", CREATED)])
def test_another_site_is_refused_even_with_the_token(client, path, body):
    """The page keeps the token in sessionStorage, which another site cannot read; should it
    learn the token some other way, a browser still tells PiWatch where the request comes from."""
    for where in ({"origin": "http://evil.example"}, {"sec-fetch-site": "cross-site"}):
        assert client.post(path, json=body, headers={**BEARER, **where}).status_code == 403
    # A header like Authorization makes the browser ask first; PiWatch never says yes.
    preflight = client.options(path, headers={"origin": "http://evil.example",
                                              "access-control-request-method": "POST",
                                              "access-control-request-headers": "authorization,content-type"})
    assert "access-control-allow-origin" not in preflight.headers
    idle(client)
    assert client.get("/lights").json()["stats"]["received"] == 0
    assert client.post(path, json=body, headers={**BEARER, "origin": "http://127.0.0.1:8080"}).status_code in (200, 202)


def test_no_other_site_may_frame_the_page(client):
    page = client.get("/")
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


def test_no_token_is_refused_beyond_loopback(settings, guarded, lights):
    with pytest.raises(TokenMissing, match="10.42.0.1 with no token"):
        create_app(settings.model_copy(update={"host": "10.42.0.1"}), lights=lights)
    create_app(guarded.model_copy(update={"host": "10.42.0.1"}), lights=lights)
    guarded.webhook_token_file.write_text("\n")  # an empty token would match an empty ?token=
    with pytest.raises(TokenMissing, match="empty"):
        create_app(guarded, lights=lights)


def test_python_m_piwatch_says_why_it_will_not_start_without_a_token(monkeypatch, capsys):
    from piwatch.__main__ import main

    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setenv("PIWATCH_HOST", "10.42.0.1")
    monkeypatch.setenv("PIWATCH_MOCK_PINS", "true")
    assert main() == 2
    assert "no token" in capsys.readouterr().err


def test_the_server_logs_no_token(guarded, lights, caplog, capfd):
    """uvicorn as `python -m piwatch` runs it: the token on kubewatch's URL must not reach the
    journal, through logging (caplog) or uvicorn's own handlers on stdout/stderr (capfd)."""
    import uvicorn

    from piwatch.__main__ import server_options

    caplog.set_level(logging.DEBUG)
    app = create_app(guarded, lights=lights)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # the kernel picks a free port
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    srv = uvicorn.Server(uvicorn.Config(app, **server_options(guarded)))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not srv.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        assert httpx.post(f"{base}/kubewatch?token={ingest_token(TOKEN)}", json=CREATED).status_code == 202
        wrong = {"authorization": f"Bearer {TOKEN}x"}
        assert httpx.post(f"{base}/alarm/ack", json={}, headers=wrong).status_code == 401
    finally:
        srv.should_exit = True
        thread.join(10)
        sock.close()
    out, err = capfd.readouterr()
    # The test's own client logs the URL it calls; the server's side is everything else.
    server = [r.getMessage() for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    logged = "\n".join([*server, out, err])
    assert "event default/web-1 pod created" in logged  # the capture works
    assert "refused POST /alarm/ack from 127.0.0.1: wrong token" in logged
    assert TOKEN not in logged


def test_a_malformed_event_is_401_without_the_token_and_422_with_it(client):
    """What tests/infra/test_piwatch.py asks of the router: the body is looked at only once the
    caller has shown the token."""
    bad = {"eventmeta": 1}
    assert refused(client.post("/kubewatch", json=bad))
    assert client.post("/kubewatch", json=bad, headers=BEARER).status_code == 422
