"""Issue 19: a node baked after the router, on the booted router (its real status board under
DynamicUser, ceil-lan-hosts.path and dnsmasq's hostsdir), without re-flashing the router.

The node side (the "register" step) is run for real in tests/unit/test_register_step.py and the
DHCP reservation with the real dnsmasq in tests/unit/test_router_lan_netns.py; this checks the
router's wiring: a registration made from the LAN with a token baked from the cluster's secrets
becomes a name the router serves, and `bake.py node remove`'s router cleanup (run here as that
command runs it) takes the names, the status-board entry and the DHCP lease away.
"""

from __future__ import annotations

import json
import shlex

import pytest
import yaml
from ceil_infra.helpers import resolves, wait_for

from ceil.config import parse_cluster
from ceil.nodes import LEASES, STATUS_BOARD_DIR, router_cleanup_command
from ceil.secrets import SecretStore
from ceil.status import BOARD_KEY_SECRET, STATUS_PORT, report_token
from ceil_e2e import session

pytestmark = pytest.mark.e2e

NEW = {"name": "five", "ip": "10.42.0.15", "mac": "02:00:00:00:aa:05"}


def test_a_node_baked_after_the_router_gets_its_reservation_and_names(router, nodes, request):
    # The fixtures wait for the machines' first boot: from the first-boot cache this test may be
    # the session's first to reach them (it failed so, at SSH, while they still booted).
    c = session.get()
    domain = c.config.get("domain", "ceil.internal")
    router_ip = c.config.get("network", {}).get("router_ip", "10.42.0.1")
    key = SecretStore(c.workdir / "secrets").read(BOARD_KEY_SECRET).decode().strip()
    node = nodes["two"]
    fqdn = f"{NEW['name']}.{domain}"
    assert not resolves(node, fqdn, router_ip)
    body = json.dumps({"ip": NEW["ip"], "mac": NEW["mac"]})
    # Signed as the node's own steps sign (the helper the status-report feature installs).
    code = ("import sys;sys.path.insert(0,'/usr/local/lib/ceil');import ceil_board;"
            "print(ceil_board.post(sys.argv[1],sys.argv[2],sys.argv[3].encode()))")
    url = f"http://{router_ip}:{STATUS_PORT}/api/register/{NEW['name']}"
    # Whatever happens below, the later tests must not find `five` on the board or dnsmasq down
    # (run ci-art35: this test stopped half-way, and the status board's check failed after it).
    leftovers = (f"rm -f {STATUS_BOARD_DIR}/{NEW['name']}.json {STATUS_BOARD_DIR}/registered/{NEW['name']}.json;"
                 " systemctl is-active -q dnsmasq || systemctl start dnsmasq")
    request.addfinalizer(lambda: session.get().host("router").run(f"sudo sh -c {shlex.quote(leftovers)}"))
    out = node.check_output(f"python3 -c {shlex.quote(code)} {url} {report_token(key, NEW['name'])} {shlex.quote(body)}")
    assert f"registered at {NEW['ip']}" in out
    # ceil-lan-hosts.path runs ceil-lan-hosts (root), dnsmasq reads the new files by itself.
    wait_for(f"the router to serve {fqdn}", lambda: resolves(node, fqdn, router_ip) == NEW["ip"], timeout=60, every=3)
    assert resolves(node, f"ceil-{NEW['name']}.{domain}", router_ip) == NEW["ip"]
    with router.sudo():
        assert router.file(f"/var/lib/ceil/lan-hosts/dhcp/{NEW['name']}").content_string == \
            f"{NEW['mac']},ceil-{NEW['name']},{NEW['ip']},12h\n"
    # Its status report, signed with its own token, as its first boot would send it.
    status_url = f"http://{router_ip}:{STATUS_PORT}/api/status/{NEW['name']}"
    node.check_output(f"python3 -c {shlex.quote(code)} {status_url} {report_token(key, NEW['name'])}"
                      f" {shlex.quote(json.dumps({'steps': {'packages': {'state': 'done'}}}))}")
    # And a DHCP lease, as the machine would hold once booted (none boots here): the line dnsmasq
    # writes, put in while dnsmasq is stopped (it reads its lease file only at start).
    # Its expiry by the router's clock, not this machine's: the suite's NTP twin serves a time 30
    # days ahead, and dnsmasq drops an expired lease as it reads the file (run ci-art36).
    now = int(router.check_output("date +%s"))
    lease = f"{now + 43200} {NEW['mac']} {NEW['ip']} ceil-{NEW['name']} 01:{NEW['mac']}"
    script = f"systemctl stop dnsmasq && echo {shlex.quote(lease)} >> {LEASES} && systemctl start dnsmasq"
    router.check_output(f"sudo sh -c {shlex.quote(script)}")
    with router.sudo():
        leases_before = router.file(LEASES).content_string
        assert router.file(f"{STATUS_BOARD_DIR}/{NEW['name']}.json").exists
    assert f" {NEW['ip']} " in leases_before

    # What `bake.py node remove five` runs on the router, from the cluster.yaml that names five.
    grown = parse_cluster(yaml.safe_dump({**c.config, "nodes": [*c.config["nodes"], NEW]}))
    router.check_output(router_cleanup_command(grown, NEW["name"]))
    with router.sudo():
        leases_after = router.file(LEASES).content_string
        for gone in (f"{STATUS_BOARD_DIR}/{NEW['name']}.json", f"{STATUS_BOARD_DIR}/registered/{NEW['name']}.json"):
            assert not router.file(gone).exists, gone
    # dnsmasq rewrites its file as it likes (order, expiry times): compared by address.
    def addresses(text: str) -> set[str]:
        return {line.split()[2] for line in text.splitlines() if len(line.split()) > 2}

    assert addresses(leases_after) == addresses(leases_before) - {NEW["ip"]}
    assert router.service("dnsmasq").is_running
    wait_for(f"the router to forget {fqdn}", lambda: not resolves(node, fqdn, router_ip), timeout=60, every=3)
    # The other machines keep their names.
    assert resolves(node, f"ceil-one.{domain}", router_ip)
