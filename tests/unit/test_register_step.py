"""The nodes' "register" step (issue 19: a node baked after the router), run for real against
the real status board on 127.0.0.1; `ip` and the DHCP renewal (`networkctl`) are stubs whose
answers the test sets, the node's MAC comes from a stand-in of /sys/class/net."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ceil.status import report_token
from test_status_board import KEY, board  # noqa: F401  (the fixture)

REPO = Path(__file__).resolve().parents[2]
STEP = REPO / "firstboot/status-report/lib/steps/register"


@pytest.fixture
def node(tmp_path):
    """A scratch node: its registration config, token, MAC, and stubs for ip and networkctl."""
    def make(url: str, name: str, want: str, has: str, after_renew: str) -> dict:
        root = tmp_path / name
        (root / "bin").mkdir(parents=True)
        (root / "net/eth0").mkdir(parents=True)
        (root / "net/eth0/address").write_text("DC:A6:32:00:00:05\n")
        (root / "token").write_text(report_token(KEY, name) + "\n")
        (root / "registration.json").write_text(json.dumps(
            {"url": f"{url}/api/register/{name}", "ip": want, "iface": "eth0", "network": "netplan-networkd"}))
        (root / "addr").write_text(has)
        # `ip -4 -o addr show dev eth0` prints the current address.
        (root / "bin/ip").write_text(
            f"#!/bin/sh\necho \"2: eth0    inet $(cat {root / 'addr'})/24 brd 10.42.0.255 scope global eth0\"\n")
        # A `networkctl reconfigure` gives the next address; `after_renew` may list one per call
        # (the router's reservation not read yet at the first DHCP request), the last one stays.
        (root / "bin/networkctl").write_text(
            f"#!/bin/sh\necho \"$*\" >> {root / 'renewed'}\nn=$(wc -l < {root / 'renewed'})\n"
            f"set -- {after_renew}\nshift $(( n < $# ? n - 1 : $# - 1 ))\necho $1 > {root / 'addr'}\n")
        for stub in ("ip", "networkctl"):
            (root / "bin" / stub).chmod(0o755)
        return {"root": root, "env": {**os.environ, "PATH": f"{root / 'bin'}:{os.environ['PATH']}",
                                      "CEIL_REGISTRATION": str(root / "registration.json"),
                                      "CEIL_REPORT_TOKEN": str(root / "token"), "CEIL_SYS_NET": str(root / "net"),
                                      "CEIL_REGISTER_WAIT": "5", "CEIL_REGISTER_RENEW_EVERY": "1.5"}}
    return make


def run(n: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(STEP)], capture_output=True, text=True, env=n["env"], timeout=60)


def test_a_new_node_registers_renews_its_lease_and_reaches_its_address(board, node):
    url, state = board
    n = node(url, "five", want="10.42.0.15", has="10.42.0.150", after_renew="10.42.0.15")
    done = run(n)
    assert done.returncode == 0, done.stderr
    assert "five registered at 10.42.0.15 (dc:a6:32:00:00:05)" in done.stdout and "eth0 has 10.42.0.15" in done.stdout
    assert (n["root"] / "renewed").read_text().strip() == "reconfigure eth0"
    assert json.loads((state / "registered/five.json").read_text())["mac"] == "dc:a6:32:00:00:05"


def test_a_first_lease_still_from_the_pool_is_asked_for_again(board, node):
    """The board answers before dnsmasq has read the reservation: the first new lease may be the
    pool's again (run ci-art58); the step asks again within the same attempt."""
    url, _ = board
    n = node(url, "five", want="10.42.0.15", has="10.42.0.150", after_renew="10.42.0.150 10.42.0.15")
    done = run(n)
    assert done.returncode == 0, done.stderr
    assert (n["root"] / "renewed").read_text().split("\n")[:2] == ["reconfigure eth0"] * 2


def test_a_node_already_at_its_address_does_nothing(board, node):
    url, state = board
    n = node(url, "one", want="10.42.0.11", has="10.42.0.11", after_renew="10.42.0.11")
    done = run(n)
    assert done.returncode == 0 and "reserved by the router" in done.stdout
    assert not (n["root"] / "renewed").exists() and not (state / "registered").exists()


def test_an_address_the_router_refuses_stops_the_step_for_good(board, node):
    url, _ = board
    n = node(url, "five", want="10.42.0.12", has="10.42.0.150", after_renew="10.42.0.150")
    done = run(n)
    assert done.returncode == 3 and "refused 10.42.0.12" in done.stderr and "belongs to two" in done.stderr


def test_no_router_yet_or_no_new_lease_is_transient(board, node):
    url, _ = board
    n = node("http://127.0.0.1:9", "five", want="10.42.0.15", has="10.42.0.150", after_renew="10.42.0.150")
    n["env"]["CEIL_STEP_WHY"] = str(n["root"] / "why")
    assert run(n).returncode == 1
    # why the step waits, for `bake.py status` (it showed "busy: register" alone)
    assert (n["root"] / "why").read_text().startswith("the router's status board is not reachable yet")
    n = node(url, "six", want="10.42.0.16", has="10.42.0.150", after_renew="10.42.0.150")
    done = run(n)
    assert done.returncode == 1 and "still has ['10.42.0.150'], not 10.42.0.16" in done.stderr
