"""router.trusted_networks (issue 19): the home LAN on the uplink side reaches the cluster LAN and
the router's LAN services through the router, with a route on the workstation; any other uplink
source still reaches only SSH. The rendered nftables ruleset, loaded in network namespaces
(router_lan_lab.py); the workstation is the lab's "inet" namespace, whose route to the cluster
LAN goes through the router's uplink address, as `python bake.py route --add` makes it.

Needs root (ip netns) and nft; skipped otherwise. About 5 s.
"""

from __future__ import annotations

import os
import shutil
import sys

import pytest

from router_lan_lab import INET_IP, ROUTER_UPLINK_IP, RouterLanLab
from router_lan_render import cluster_from, render

from ceil.errors import ConfigError
from ceil.hooks import nat_firewall

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("ip", "nft")),
    reason="needs root, ip and nft (scripts/setup-host.sh --test)",
)
UNTRUSTED_IP = "198.18.5.5"  # another host on the uplink side, outside router.trusted_networks


def probe(lab: RouterLanLab, source: str, host: str, ports: list[int]) -> set[int]:
    """TCP ports of `ports` on `host` that accept a connection from `source` in the inet namespace."""
    code = ("import socket,sys\nopen_=[]\nfor p in sys.argv[3:]:\n s=socket.socket()\n s.settimeout(1.5)\n"
            " s.bind((sys.argv[1],0))\n try:\n  s.connect((sys.argv[2],int(p)));open_.append(p)\n except OSError:\n  pass\n"
            " s.close()\nprint(' '.join(open_))")
    out = lab.run("inet", sys.executable, "-c", code, source, host, *map(str, ports)).stdout
    return {int(p) for p in out.split()}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    work = tmp_path_factory.mktemp("trusted-lab")
    cluster = cluster_from({
        "router": {"lan_interface": "br0", "uplink": {"type": "ethernet"},  # flavor's enx*
                   "trusted_networks": [f"{INET_IP}/32"]},
    })
    out = render(cluster, "router", work)
    lab = RouterLanLab(work)
    try:
        lab.run("rtr", "nft", "-f", str(out / "etc/nftables/ceil.nft"))
        lab.run("rtr", "sysctl", "-q", "-p", str(out / "etc/sysctl/60-ceil-router.conf"))
        lab.run("inet", "ip", "addr", "add", f"{UNTRUSTED_IP}/32", "dev", "eth0")
        lab.listen_tcp("rtr", 22)
        lab.listen_tcp("rtr", 8081)    # the status board's port
        lab.listen_tcp("node", 22)
        lab.listen_tcp("node", 6443)   # the Kubernetes API on the server
        yield lab
    finally:
        lab.close()


def test_the_trusted_network_reaches_the_nodes_and_the_routers_lan_services(lab):
    assert probe(lab, INET_IP, "10.42.0.11", [22, 6443]) == {22, 6443}
    assert probe(lab, INET_IP, "10.42.0.1", [22, 8081]) == {22, 8081}
    assert probe(lab, INET_IP, ROUTER_UPLINK_IP, [8081]) == {8081}


def test_any_other_uplink_source_still_reaches_only_ssh(lab):
    assert probe(lab, UNTRUSTED_IP, "10.42.0.11", [22, 6443]) == set()
    assert probe(lab, UNTRUSTED_IP, ROUTER_UPLINK_IP, [22, 8081]) == {22}


@pytest.mark.parametrize("net, words", [
    ("0.0.0.0/0", "most of the internet"),
    ("10.42.0.0/16", "overlaps network.lan_cidr"),
    ("10.8.0.0/24", "overlaps vpn.subnet"),
])
def test_a_trusted_network_inside_the_cluster_or_too_wide_is_refused(net, words):
    cluster = cluster_from({"router": {"trusted_networks": [net]}, "vpn": {"enabled": True, "subnet": "10.8.0.0/24"}})
    with pytest.raises(ConfigError, match=words):
        nat_firewall.check(cluster, "router")
