"""Issue 7 proof on the machines: PiWatch on the router, fed from the LAN, closed to the uplink.

Plain testinfra functions, the same against QEMU (make e2e: gpiozero's mock pins) and real Pis
(make verify: the event below blinks a red light on the board for a moment, without the buzzer).
"""

from __future__ import annotations

import json
import shlex

import pytest

from ceil_infra.helpers import each_node, fake, wait_for
from piwatch.tokens import ingest_token

pytestmark = pytest.mark.e2e

# What kubewatch's webhook handler posts for a deleted pod (piwatch/events.py); "deleted" maps
# to a red light that stays on, no alarm and no buzzer (piwatch/reactions.yaml).
EVENT = {
    "eventmeta": {"kind": "pod", "name": "ceil-verify-probe", "namespace": "default", "reason": "deleted"},
    "text": "A `pod` in namespace `default` has been `deleted`:\n`default/ceil-verify-probe`",
}


def piwatch_url(cluster) -> str:
    if not cluster.piwatch.enabled:
        pytest.skip("piwatch.enabled is false")
    return f"http://{cluster.network.router_ip}:{cluster.piwatch.port}"


def webhook_token(targets) -> str:
    """PiWatch's webhook token, from the secrets the cluster was baked with."""
    path = targets.secrets_dir / "piwatch-webhook-token" if targets.secrets_dir else None
    if path is None or not path.exists():
        pytest.skip("the workstation's secrets/ folder (piwatch-webhook-token) is not here (CEIL_SECRETS)")
    return path.read_text().strip()


def get_json(host, url: str) -> dict | list:
    return json.loads(host.check_output(f"curl -fsS --max-time 20 {shlex.quote(url)}"))


def test_piwatch_runs_on_the_router_and_says_which_gpio(router, nodes, cluster):
    url = piwatch_url(cluster)
    assert router.service("ceil-piwatch").is_running
    _, node = each_node(nodes)[0]
    health = get_json(node, f"{url}/healthz")
    assert health["status"] == "ok", health
    # QEMU has no GPIO: PiWatch runs on mock pins and says so; a Pi must drive real pins
    # (lgpio or rpigpio), or the lights stay dark while every check is green.
    assert health["gpio"] in ("mock", "lgpio", "rpigpio"), health
    if health["gpio"] == "mock":
        assert health["gpio_note"], "mock pins in use but /healthz does not say why"
        virt = router.run("systemd-detect-virt").stdout.strip()
        assert virt not in ("", "none"), (
            f"PiWatch runs on mock pins on real hardware ({health['gpio_note']}): the flavor's GPIO"
            " backend (images/<flavor>.yaml gpio_packages) is missing; see journalctl -u ceil-piwatch")


def test_an_event_posted_from_a_node_changes_the_lights(nodes, cluster, targets):
    url = piwatch_url(cluster)
    _, node = each_node(nodes)[0]
    before = get_json(node, f"{url}/lights")
    body = shlex.quote(json.dumps(EVENT))
    # Without the webhook's token (issue 18): 401, and nothing changes.
    refused = node.check_output(f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 20"
                                f" -H 'Content-Type: application/json' -d {body} {url}/kubewatch")
    assert refused == "401"
    hook = shlex.quote(f"{url}/kubewatch?token={ingest_token(webhook_token(targets))}")
    reply = json.loads(node.check_output(
        f"curl -fsS --max-time 20 -H 'Content-Type: application/json' -d {body} {hook}"))
    event = reply["event"]
    direction, colour = event["direction"], event["colour"]
    assert colour == "red", reply

    def lit():
        now = get_json(node, f"{url}/lights")
        return now if now["directions"][direction][colour] != "off" and now["stats"] != before["stats"] else None

    after = wait_for(f"{direction} {colour} to light up after the event", lit, timeout=60, every=2)
    assert after["buzzer"] == "off", "a deleted pod must not sound the buzzer"
    recent = get_json(node, f"{url}/events?limit=5")
    assert any(e["name"] == "ceil-verify-probe" for e in recent), recent


def test_malformed_events_are_refused_with_422(nodes, cluster, targets):
    url = piwatch_url(cluster)
    _, node = each_node(nodes)[0]
    # With the token: without it, the refusal is 401 before the body is looked at.
    code = node.check_output(
        f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 20 -H 'Content-Type: application/json'"
        f" -H 'Authorization: Bearer {webhook_token(targets)}' -d '{{\"eventmeta\": 1}}' {url}/kubewatch")
    assert code == "422"


def test_piwatch_is_not_reachable_from_the_uplink(cluster, fakes):
    if not cluster.piwatch.enabled:
        pytest.skip("piwatch.enabled is false")
    probe = fake(fakes, "uplink_open_ports")
    assert probe([cluster.piwatch.port]) == set()


def test_piwatch_refuses_cross_site_requests_and_foreign_host_names(nodes, cluster):
    """A web page a LAN user opens cannot drive the lights or silence an alarm (issue 18)."""
    url = piwatch_url(cluster)
    _, node = each_node(nodes)[0]

    def code(args: str) -> str:
        return node.check_output(f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 20 {args}")

    assert code(f"-X POST -H 'Origin: http://evil.example' -H 'Content-Type: application/json' -d '{{}}' {url}/alarm/ack") == "403"
    assert code(f"-X POST -H 'Content-Type: text/plain' -d 'x' {url}/lights/test") == "415"
    assert code(f"-H 'Host: rebound.example' {url}/lights") == "400"
    assert code(f"{url}/traffic/kubewatch-webhook") == "405"


def test_only_the_token_holder_silences_an_alarm_or_runs_the_self_test(nodes, cluster, targets):
    """A LAN neighbour's plain JSON POST (curl) got past the cross-site guard: every change now
    needs the cluster's PiWatch token, as a Bearer header (issue 18)."""
    url = piwatch_url(cluster)
    _, node = each_node(nodes)[0]
    token = webhook_token(targets)

    def code(args: str) -> str:
        return node.check_output(f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 20"
                                 f" -X POST -H 'Content-Type: application/json' -d '{{}}' {args}")

    for path in ("/alarm/ack", "/lights/test"):
        assert code(f"{url}{path}") == "401", path
        assert code(f"-H 'Authorization: Bearer not-the-token' {url}{path}") == "401", path
    assert code(f"-H 'Authorization: Bearer {token}' {url}/alarm/ack") == "200"
