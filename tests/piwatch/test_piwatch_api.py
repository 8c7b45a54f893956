"""The HTTP API through FastAPI's TestClient, on a mock board the test owns."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from piwatch.app import create_app, get_worker
from piwatch.reactions import load_reactions
from piwatch.tokens import ingest_token
from piwatch.worker import Worker

KUBEWATCH = {
    "eventmeta": {"kind": "pod", "name": "web-1", "namespace": "default", "reason": "created"},
    "text": "A `pod` in namespace `default` has been `created`:\n`web-1`",
    "time": "2024-05-01T12:00:00.123456789Z",
}


@pytest.fixture
def app(settings, lights):
    return create_app(settings, lights=lights)


@pytest.fixture
def client(app):
    with TestClient(app, base_url="http://127.0.0.1:8080") as c:
        yield c


def idle(client) -> None:
    assert client.app.state.worker.wait_idle(5)


def test_kubewatch_event_changes_the_lights(client):
    r = client.post("/kubewatch", json=KUBEWATCH)
    assert r.status_code == 202
    event = r.json()["event"]
    assert (event["direction"], event["colour"], event["alarm"]) == ("north", "green", False)
    assert event["time"].startswith("2024-05-01T12:00:00.123456")
    idle(client)
    lights = client.get("/lights").json()
    assert lights["directions"]["north"] == {"red": "off", "yellow": "off", "green": "on"}
    assert lights["gpio"] == "mock"
    assert lights["stats"]["received"] == 1


def test_legacy_post_path_is_the_same_webhook(client):
    r = client.post("/traffic/kubewatch-webhook",
                    json={**KUBEWATCH, "eventmeta": {**KUBEWATCH["eventmeta"], "reason": "deleted"}})
    assert r.status_code == 202
    idle(client)
    assert client.get("/lights").json()["directions"]["north"]["red"] == "on"


def test_legacy_get_changes_nothing(client, lights):
    """The seed's GET ran the lights: any page could, with an <img> tag (issue 18)."""
    lights.led_pin("east", "yellow").clear_states()
    r = client.get("/traffic/kubewatch-webhook")
    assert r.status_code == 405 and "POST /lights/test" in r.json()["message"]
    idle(client)
    assert True not in [s.state for s in lights.led_pin("east", "yellow").states]


def test_failure_event_raises_an_alarm_and_ack_route_clears_it(client):
    meta = {"kind": "pod", "name": "db-0", "namespace": "shop", "reason": "BackOff"}
    assert client.post("/kubewatch", json={"eventmeta": meta}).status_code == 202
    idle(client)
    state = client.get("/lights").json()
    assert state["directions"]["north"]["red"] == "blink"
    assert state["buzzer"] == "beep"
    assert state["alarms"][0]["event"]["name"] == "db-0"
    assert client.post("/alarm/ack", json={}).json() == {"acknowledged": 1}
    state = client.get("/lights").json()
    assert state["buzzer"] == "off" and state["alarms"][0]["acknowledged"] is True
    assert state["directions"]["north"]["red"] == "on"


def test_minimal_payload_only_needs_a_kind(client):
    r = client.post("/kubewatch", json={"eventmeta": {"kind": "NodeNotReady", "name": "pi-3"}})
    assert r.status_code == 202
    assert r.json()["event"]["direction"] == "south" and r.json()["event"]["alarm"] is True


def test_extra_fields_are_ignored(client):
    body = {**KUBEWATCH, "future": 1, "eventmeta": {**KUBEWATCH["eventmeta"], "uid": "x"}}
    assert client.post("/kubewatch", json=body).status_code == 202


@pytest.mark.parametrize(
    "body,expected",
    [
        (b'{"eventmeta": ', "body is not valid JSON"),
        (b"[1, 2]", "body: Input should be a valid dictionary"),
        (b"{}", "eventmeta: Field required"),
        (b'{"eventmeta": {"name": "x"}}', "eventmeta.kind: Field required"),
        (b'{"eventmeta": {"kind": ""}}', "eventmeta.kind: String should have at least 1 character"),
        (b'{"eventmeta": {"kind": 5}}', "eventmeta.kind: Input should be a valid string"),
        (b'{"eventmeta": "pod"}', "eventmeta: Input should be a valid dictionary"),
        (b'{"eventmeta": {"kind": "pod"}, "time": "yesterday"}', "time: Input should be a valid datetime"),
        (b'{"eventmeta": {"kind": "' + b"x" * 300 + b'"}}', "eventmeta.kind: String should have at most 253"),
    ],
)
@pytest.mark.parametrize("path", ["/kubewatch", "/traffic/kubewatch-webhook"])
def test_malformed_payloads_get_a_clear_422(client, path, body, expected):
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422
    payload = r.json()
    assert expected in payload["message"]
    assert '"eventmeta"' in payload["message"]  # shows what a good payload looks like
    assert isinstance(payload["detail"], list) and payload["detail"]
    assert client.get("/lights").json()["stats"]["received"] == 0
    assert client.get("/healthz").status_code == 200  # still alive


def test_healthz_reports_mock_gpio(client):
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json()["status"] == "ok" and r.json()["gpio"] == "mock"


def test_healthz_is_503_when_the_worker_died(client):
    client.app.state.worker.stop()
    r = client.get("/healthz")
    assert r.status_code == 503 and r.json()["status"] == "worker stopped"


def test_self_test_route(client, lights):
    lights.buzzer_pin.clear_states()
    r = client.post("/lights/test", json={"buzzer": True})
    assert r.status_code == 202 and r.json()["buzzer"] is True
    idle(client)
    assert True in [s.state for s in lights.buzzer_pin.states]
    no_body = client.post("/lights/test", headers={"content-type": "application/json"})
    assert no_body.json()["buzzer"] is False  # the body is optional, JSON is not


def test_events_lists_newest_first(client):
    for name in ("a", "b", "c"):
        client.post("/kubewatch", json={"eventmeta": {"kind": "pod", "name": name, "reason": "created"}})
    names = [e["name"] for e in client.get("/events?limit=2").json()]
    assert names == ["c", "b"]


def test_page_and_openapi(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "PiWatch" in page.text
    spec = client.get("/openapi.json").json()
    for path in ("/kubewatch", "/traffic/kubewatch-webhook", "/healthz", "/lights", "/lights/test"):
        assert path in spec["paths"], path
    assert "EventMeta" in spec["components"]["schemas"]
    assert client.get("/docs").status_code == 200


def test_worker_dependency_can_be_overridden(app, settings):
    from gpiozero.pins.mock import MockFactory

    from piwatch.lights import Lights

    other = Lights(MockFactory(), backend="test-double")
    replacement = Worker(other, load_reactions(), settings)
    app.dependency_overrides[get_worker] = lambda: replacement
    try:
        with TestClient(app, base_url="http://127.0.0.1:8080") as c:
            assert c.get("/healthz").json()["gpio"] == "test-double"
    finally:
        other.close()


def test_settings_come_from_piwatch_env(monkeypatch, tmp_path):
    from piwatch.settings import Settings

    monkeypatch.setenv("PIWATCH_HOST", "10.42.0.1")
    monkeypatch.setenv("PIWATCH_PORT", "8123")
    monkeypatch.setenv("PIWATCH_MOCK_PINS", "true")
    monkeypatch.setenv("PIWATCH_REACTIONS_FILE", str(tmp_path / "r.yaml"))
    s = Settings()
    assert (s.host, s.port, s.mock_pins, s.reactions_file) == ("10.42.0.1", 8123, True, tmp_path / "r.yaml")


def test_a_broken_reactions_file_fails_at_startup(tmp_path, settings):
    from piwatch.reactions import ReactionsError

    bad = tmp_path / "r.yaml"
    bad.write_text("rules: [{colour: purple}]")
    with pytest.raises(ReactionsError, match="rules.0.colour"):
        create_app(settings.model_copy(update={"reactions_file": bad}))


# ---- the guard (issue 18: cross-origin POSTs, DNS rebinding) --------------------------------


@pytest.mark.parametrize("path,body", [("/lights/test", {}), ("/alarm/ack", {}), ("/kubewatch", KUBEWATCH)])
def test_a_cross_site_page_cannot_change_anything(client, lights, path, body):
    lights.led_pin("east", "yellow").clear_states()
    import json as _json

    evil = {"origin": "http://evil.example", "content-type": "application/json"}
    assert client.post(path, content=_json.dumps(body), headers=evil).status_code == 403
    site = {"sec-fetch-site": "cross-site", "content-type": "application/json"}
    assert client.post(path, content=_json.dumps(body), headers=site).status_code == 403
    # A plain HTML form (no preflight) can only send form or text bodies: refused as not JSON.
    form = client.post(path, content="buzzer=true", headers={"content-type": "application/x-www-form-urlencoded"})
    assert form.status_code == 415 and "application/json" in form.json()["message"]
    idle(client)
    assert client.get("/lights").json()["stats"]["received"] == 0
    same = client.post(path, json=body, headers={"origin": "http://127.0.0.1:8080"})
    assert same.status_code in (200, 202)


def test_a_rebound_dns_name_is_refused(client):
    r = client.get("/lights", headers={"host": "attacker.example:8080"})
    assert r.status_code == 400 and "attacker.example" in r.json()["message"]
    assert client.get("/lights", headers={"host": "localhost:8080"}).status_code == 200


def test_the_router_env_names_its_address_and_names(tmp_path):
    from piwatch.bundle import render_env
    from piwatch.settings import Settings

    env = render_env("10.42.0.1", 8080, names=["ceil-router", "ceil-router.ceil.internal"])
    values = dict(line.split("=", 1) for line in env.splitlines() if "=" in line and not line.startswith("#"))
    import os

    old = dict(os.environ)
    try:
        os.environ.update(values)
        allowed = Settings().allowed_host_names
    finally:
        os.environ.clear()
        os.environ.update(old)
    assert {"10.42.0.1", "ceil-router", "ceil-router.ceil.internal", "localhost"} <= set(allowed)


def test_the_webhook_needs_its_token_when_one_is_baked(settings, lights, tmp_path, monkeypatch):
    """Issue 18: any LAN host could post events and drive the lights. With the token systemd hands
    over (LoadCredential webhook-token), both webhook paths answer 401 without it."""
    (tmp_path / "webhook-token").write_text("s3cret-token\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    with TestClient(create_app(settings, lights=lights), base_url="http://127.0.0.1:8080") as client:
        for path in ("/kubewatch", "/traffic/kubewatch-webhook"):
            assert client.post(path, json=KUBEWATCH).status_code == 401
            assert client.post(f"{path}?token=wrong", json=KUBEWATCH).status_code == 401
            assert client.post(f"{path}?token={ingest_token('s3cret-token')}", json=KUBEWATCH).status_code == 202
            bearer = {"authorization": "Bearer s3cret-token"}
            assert client.post(path, json=KUBEWATCH, headers=bearer).status_code == 202
