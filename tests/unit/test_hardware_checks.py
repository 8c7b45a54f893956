"""`make verify`'s hardware checks (tests/infra/test_hardware.py) judged on recorded answers of a
Pi, since no Pi is here: the same functions run on real hosts."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "infra"))  # the checks import ceil_infra

from tests.infra.test_hardware import test_the_bootloader_can_try_the_boot_slots as bootloader_check  # noqa: E402
from tests.infra.test_piwatch import (  # noqa: E402
    test_piwatch_runs_on_the_router_and_says_which_gpio as piwatch_gpio_check,
)


class RecordedPi:
    """A host whose commands answer as a real Pi's would (testinfra's run(): rc, stdout, stderr)."""

    def __init__(self, answers: dict[str, str]):
        self.answers = answers

    def run(self, command: str):
        for start, out in self.answers.items():
            if command.startswith(start):
                return SimpleNamespace(rc=0, stdout=out, stderr="")
        return SimpleNamespace(rc=1, stdout="", stderr=f"{command}: no such file")

    def check_output(self, command: str) -> str:
        answer = self.run(command)
        assert answer.rc == 0, answer.stderr
        return answer.stdout.strip()

    def service(self, name: str):
        return SimpleNamespace(is_running=True)


def pi(model: str, built: int | None, virt: str = "none") -> RecordedPi:
    answers = {"systemd-detect-virt": virt + "\n", "tr -d": model}
    if built is not None:
        answers["od -An -tu1 /proc/device-tree/chosen/bootloader/build-timestamp"] = " ".join(
            str(b) for b in built.to_bytes(4, "big")) + "\n"
    return RecordedPi(answers)


SLOTTED = SimpleNamespace(flavor="ubuntu-26.04-raspi")


def test_a_pi4_whose_eeprom_cannot_tryboot_fails_and_says_how_to_update_it():
    with pytest.raises(AssertionError) as e:
        bootloader_check(pi("Raspberry Pi 4 Model B Rev 1.4", 1603843200), "one", SLOTTED)  # 2020-10-28
    assert "rpi-eeprom-update" in str(e.value) and "one" in str(e.value)


def test_a_pi4_with_a_tryboot_eeprom_passes():
    bootloader_check(pi("Raspberry Pi 4 Model B Rev 1.5", 1700000000), "one", SLOTTED)
    bootloader_check(pi("Raspberry Pi Compute Module 4 Rev 1.0", 1616057651), "one", SLOTTED)


def test_a_pi4_that_shows_no_bootloader_time_fails():
    with pytest.raises(AssertionError, match="no bootloader build-timestamp"):
        bootloader_check(pi("Raspberry Pi 4 Model B Rev 1.4", None), "one", SLOTTED)


@pytest.mark.parametrize("host, cluster", [
    (pi("Raspberry Pi 5 Model B Rev 1.0", 1), SLOTTED),           # its EEPROM always could
    (pi("Raspberry Pi 3 Model B Plus Rev 1.3", None), SLOTTED),   # start.elf on the card
    (pi("Raspberry Pi 4 Model B Rev 1.4", 1, virt="qemu"), SLOTTED),  # the twin: the harness's tryboot
    (pi("Raspberry Pi 4 Model B Rev 1.4", 1), SimpleNamespace(flavor="ubuntu-24.04-raspi")),  # no slots
])
def test_other_boards_flavors_and_twins_skip(host, cluster):
    with pytest.raises(pytest.skip.Exception):
        bootloader_check(host, "one", cluster)


# ---- PiWatch's pins (tests/infra/test_piwatch.py) --------------------------------------------

PIWATCH = SimpleNamespace(piwatch=SimpleNamespace(enabled=True, port=8086),
                          network=SimpleNamespace(router_ip="10.42.0.1"))


def piwatch_on(gpio: str, virt: str) -> tuple[RecordedPi, dict]:
    """A router whose PiWatch drives `gpio` pins, on a machine systemd-detect-virt calls `virt`,
    and a node that reads PiWatch's /healthz (what a real one answers: piwatch/app.py)."""
    health = {"status": "ok", "gpio": gpio, "gpio_note": "no GPIO library imported" if gpio == "mock" else ""}
    return pi("Raspberry Pi 4 Model B Rev 1.4", None, virt=virt), {"one": RecordedPi({"curl": json.dumps(health)})}


def test_piwatch_on_mock_pins_on_a_real_pi_fails_and_names_the_missing_backend():
    """Issue 17: on Ubuntu no GPIO library imported, PiWatch fell back to mock pins and the lights
    stayed dark while every check passed. On real hardware mock pins are a failure."""
    router, nodes = piwatch_on("mock", virt="none")
    with pytest.raises(AssertionError, match="mock pins on real hardware.*gpio_packages"):
        piwatch_gpio_check(router, nodes, PIWATCH)


@pytest.mark.parametrize("gpio, virt", [("lgpio", "none"), ("rpigpio", "none"), ("mock", "qemu"), ("mock", "kvm")])
def test_piwatch_on_real_pins_or_mock_pins_in_a_vm_passes(gpio, virt):
    piwatch_gpio_check(*piwatch_on(gpio, virt), PIWATCH)


# ---- The add-on UIs' login (tests/infra/test_addons.py) -------------------------------------

class Ingress:
    """A router asking the ingress with curl, answered as Traefik would (`open_to_all`: a UI
    published without its login, the fault issue 18 #2 found)."""

    def __init__(self, password: str, open_to_all: bool = False):
        self.password, self.open_to_all = password, open_to_all

    def run(self, command: str):
        words = shlex.split(command)
        url = words[-1]
        login = words[words.index("-u") + 1] if "-u" in words else None
        if url.startswith("http://"):
            code = "200" if self.open_to_all else "404"  # the UI's route is on websecure only
        elif self.open_to_all or login == f"admin:{self.password}":
            code = "200"
        else:
            code = "401"
        return SimpleNamespace(rc=0, stdout=code, stderr="")


def test_make_verify_fails_when_a_ui_answers_without_the_login():
    from ceil.config import parse_cluster
    from tests.infra.test_addons import test_uis_without_a_login_of_their_own_ask_for_the_ui_login as ui_check

    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk9mZ0bH5OzLnPw1mYQ6VtB3s8bLxv0X0oPqg7Ww2Ly me@ws"
    cluster = parse_cluster(f"ssh: {{authorized_keys: ['{key}']}}\nrouter: {{uplink: {{type: ethernet}}}}\n"
                            "nodes: [{name: one, role: server}, {name: two}]\n")
    ui_check({}, Ingress("s3cret"), cluster, "admin:s3cret", "monitoring", "prometheus", "/", {"200"})
    with pytest.raises(AssertionError, match="answered without a login"):
        ui_check({}, Ingress("s3cret", open_to_all=True), cluster, "admin:s3cret", "monitoring", "prometheus", "/",
                 {"200"})
    with pytest.raises(AssertionError, match="answered 401 with the UI login"):
        ui_check({}, Ingress("another"), cluster, "admin:s3cret", "monitoring", "prometheus", "/", {"200"})


# ---- The tunnel's connections (tests/infra/test_addons.py) ---------------------------------

class Kube:
    def __init__(self, pods):
        self.pods = pods

    def list(self, api_version, kind, namespace=None, field_selector=None):
        return self.pods if (api_version, kind, namespace) == ("v1", "Pod", "tunnel") else []


def connector(name: str, ip: str) -> dict:
    return {"metadata": {"name": name, "labels": {"app.kubernetes.io/name": "cloudflared"}},
            "status": {"phase": "Running", "podIP": ip}}


# What cloudflared's /metrics answers (its supervisor's gauge; other lines around it).
METRICS = "# HELP cloudflared_tunnel_ha_connections Number of active ha connections\n" \
          "# TYPE cloudflared_tunnel_ha_connections gauge\ncloudflared_tunnel_ha_connections {n}\n" \
          "cloudflared_tunnel_total_requests 12\n"


def test_make_verify_fails_when_a_tunnel_connector_holds_no_connection():
    from ceil.config import parse_cluster
    from tests.infra.test_addons import test_the_tunnel_holds_its_connections_to_cloudflare as tunnel_check

    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk9mZ0bH5OzLnPw1mYQ6VtB3s8bLxv0X0oPqg7Ww2Ly me@ws"
    cluster = parse_cluster(f"ssh: {{authorized_keys: ['{key}']}}\nrouter: {{uplink: {{type: ethernet}}}}\n"
                            "nodes: [{name: one, role: server}, {name: two}]\n"
                            "tunnel: {enabled: true, token: " + "eyJh" + "A" * 80 + "}\n")
    pods = Kube([connector("cloudflared-a", "10.52.0.7"), connector("cloudflared-b", "10.52.1.4")])
    server = RecordedPi({"curl -s --max-time 10 http://10.52.0.7:2000/metrics": METRICS.format(n=4),
                         "curl -s --max-time 10 http://10.52.1.4:2000/metrics": METRICS.format(n=4)})
    tunnel_check({}, pods, server, cluster)
    server.answers["curl -s --max-time 10 http://10.52.1.4:2000/metrics"] = METRICS.format(n=0)
    with pytest.raises(AssertionError, match="cloudflared-b: 0 connections to Cloudflare"):
        tunnel_check({}, pods, server, cluster)
    with pytest.raises(AssertionError, match="no cloudflared pod runs"):
        tunnel_check({}, Kube([]), server, cluster)


# ---- Flux in sync (tests/infra/test_addons.py) ------------------------------------------------

def flux_object(ready: str, reason: str, **status) -> dict:
    return {"status": {"conditions": [{"type": "Ready", "status": ready, "reason": reason, "message": reason}],
                       **status}}


class FluxKube:
    """Answers GitRepository and Kustomization flux-system/ceil from recorded lists, one per ask."""

    def __init__(self, repos, syncs):
        self.answers = {"GitRepository": list(repos), "Kustomization": list(syncs)}

    def get(self, api_version, kind, name, namespace):
        assert (name, namespace) == ("ceil", "flux-system")
        answers = self.answers[kind]
        return answers.pop(0) if len(answers) > 1 else answers[0]


def test_make_verify_waits_out_a_flux_reconcile_and_fails_on_a_source_that_cannot_fetch(monkeypatch):
    """Real runs against Flux's controllers are in tests/apiserver/test_gitops_flux.py; these are
    the recorded answers between them: a reconcile under way (Ready Unknown) is waited out, a
    Kustomization still Ready on its last revision does not hide a source that fails."""
    from ceil.config import parse_cluster
    from tests.infra import test_addons
    from tests.infra.test_addons import test_flux_is_in_sync_with_the_repository as flux_check

    monkeypatch.setattr(test_addons.time, "sleep", lambda s: None)
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk9mZ0bH5OzLnPw1mYQ6VtB3s8bLxv0X0oPqg7Ww2Ly me@ws"
    cluster = parse_cluster(f"ssh: {{authorized_keys: ['{key}']}}\nrouter: {{uplink: {{type: ethernet}}}}\n"
                            "nodes: [{name: one, role: server}, {name: two}]\n"
                            "gitops: {enabled: true, url: 'https://git.example.com/me/cluster.git'}\n")
    at = {"artifact": {"revision": "main@sha1:abc"}}
    busy = flux_object("Unknown", "Progressing")
    flux_check({}, FluxKube([busy, flux_object("True", "Succeeded", **at)],
                            [busy, busy, flux_object("True", "ReconciliationSucceeded", lastAppliedRevision="main@sha1:abc")]),
               cluster)
    applied_before = flux_object("True", "ReconciliationSucceeded", lastAppliedRevision="main@sha1:abc")
    with pytest.raises(AssertionError, match="cannot fetch https://git.example.com/me/cluster.git .*gitops.token"):
        flux_check({}, FluxKube([flux_object("False", "GitOperationFailed", **at)], [applied_before]), cluster)
    # Just after a push: the source is ahead of the Kustomization, which catches up.
    flux_check({}, FluxKube([flux_object("True", "Succeeded", artifact={"revision": "main@sha1:def"})],
                            [applied_before, applied_before,
                             flux_object("True", "ReconciliationSucceeded", lastAppliedRevision="main@sha1:def")]),
               cluster)
    monkeypatch.setattr(test_addons, "FLUX_SETTLE_SECONDS", 0)
    with pytest.raises(pytest.fail.Exception, match="has not settled after 0 s: .*Ready Unknown"):
        flux_check({}, FluxKube([busy], [applied_before]), cluster)
    with pytest.raises(pytest.fail.Exception, match="applied main@sha1:abc"):
        flux_check({}, FluxKube([flux_object("True", "Succeeded", artifact={"revision": "main@sha1:def"})],
                                [applied_before]), cluster)
    with pytest.raises(AssertionError, match="no GitRepository flux-system/ceil"):
        flux_check({}, FluxKube([None], [applied_before]), cluster)


def test_an_addon_check_skips_when_cluster_yaml_leaves_the_addon_off():
    """Found in a read-through: a second `_enabled` (returning a bool) had replaced the one that
    skips, so the UI-login, ingress and tunnel checks ran against add-ons that were off."""
    from ceil.config import parse_cluster
    from tests.infra import test_addons

    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk9mZ0bH5OzLnPw1mYQ6VtB3s8bLxv0X0oPqg7Ww2Ly me@ws"
    cluster = parse_cluster(f"ssh: {{authorized_keys: ['{key}']}}\nrouter: {{uplink: {{type: ethernet}}}}\n"
                            "nodes: [{name: one, role: server}]\n")
    assert not test_addons._enabled(cluster, "tunnel")
    with pytest.raises(pytest.skip.Exception, match="add-on tunnel is not enabled"):
        test_addons._require(cluster, "tunnel")
    test_addons._require(cluster, "traefik")  # on by default: no skip
