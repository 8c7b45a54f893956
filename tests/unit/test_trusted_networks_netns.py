"""router.trusted_networks (issue 19): the home LAN on the uplink side reaches the cluster LAN and
the router's LAN services through the router, with a route on the workstation; any other uplink
source still reaches only SSH. The rendered nftables ruleset, loaded in network namespaces
(router_lan_lab.py); the workstation is the lab's "inet" namespace, whose route to the cluster
LAN goes through the router's uplink address, as `python bake.py route --add` makes it.

The router's mDNS name (feature mdns) is answered by a real avahi-daemon with the rendered
configuration, in the router's namespace.

Needs root (ip netns) and nft (avahi-daemon for the mDNS checks); skipped otherwise. About 10 s.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "infra"))

from router_lan_lab import INET_IP, ROUTER_UPLINK_DEV, ROUTER_UPLINK_IP, RouterLanLab  # noqa: E402
from router_lan_render import cluster_from, render  # noqa: E402

from ceil.errors import ConfigError  # noqa: E402
from ceil.hooks import nat_firewall  # noqa: E402
from ceil.hooks.mdns import MDNS_PORT  # noqa: E402
from ceil_infra.helpers import input_accepts  # noqa: E402

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


def lab_cluster():
    return cluster_from({
        "router": {"lan_interface": "br0", "uplink": {"type": "ethernet"},  # flavor's enx*
                   "trusted_networks": [f"{INET_IP}/32"]},
    })


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    work = tmp_path_factory.mktemp("trusted-lab")
    cluster = lab_cluster()
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
        if shutil.which("avahi-daemon"):
            # A private /run/avahi-daemon (pid file, socket) in the namespace's own mount table.
            os.makedirs("/run/avahi-daemon", exist_ok=True)
            lab.start("rtr", "sh", "-c", "mount -t tmpfs tmpfs /run/avahi-daemon && exec avahi-daemon"
                      f" --no-drop-root --no-chroot --no-rlimits -f {out / 'etc/avahi/avahi-daemon.conf'}",
                      log="avahi.log")
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


def test_the_infra_checks_read_the_live_ruleset_as_the_firewall_applies_it(lab):
    """tests/infra reads the router's ports from `nft list table inet ceil`, where the trusted
    rules name sets (@lan_tcp) rather than list ports (CI run of stop 21 failed on that)."""
    cluster = lab_cluster()
    table = lab.run("rtr", "nft", "list", "table", "inet", "ceil").stdout
    lan, up = nat_firewall.lan_services(cluster), nat_firewall.uplink_services(cluster)
    # 68 and 546: the router's own DHCP and DHCPv6 client replies
    assert input_accepts(table, cluster.uplink_interface) == {
        "tcp": set(nat_firewall.ports(up, "tcp")), "udp": set(nat_firewall.ports(up, "udp")) | {68, 546}}
    assert input_accepts(table, cluster.uplink_interface, trusted=True) == {
        "tcp": set(nat_firewall.ports(lan, "tcp")), "udp": set(nat_firewall.ports(lan, "udp")) | {MDNS_PORT}}


MDNS_QUERY = (Path(__file__).resolve().parent / "mdnsmini.py").read_text()


def mdns_lookup(lab: RouterLanLab, ns: str, source: str, name: str, seconds: float) -> str:
    return lab.run(ns, sys.executable, "-c", MDNS_QUERY, source, name, str(seconds), timeout=seconds + 10).stdout.strip()


needs_avahi = pytest.mark.skipif(not shutil.which("avahi-daemon"), reason="needs avahi-daemon (scripts/setup-host.sh --test)")


@needs_avahi
def test_the_trusted_network_finds_the_router_by_its_mdns_name(lab):
    """ceil-router.local answers with the router's uplink address (avahi probes its name first,
    so the first seconds may pass without an answer)."""
    assert mdns_lookup(lab, "inet", INET_IP, "ceil-router.local", 20) == ROUTER_UPLINK_IP


@needs_avahi
def test_the_mdns_name_is_not_told_to_other_uplink_hosts_nor_the_cluster_lan(lab):
    assert mdns_lookup(lab, "inet", INET_IP, "ceil-router.local", 20) == ROUTER_UPLINK_IP  # it is up
    assert mdns_lookup(lab, "inet", UNTRUSTED_IP, "ceil-router.local", 4) == "no answer"  # the firewall
    assert mdns_lookup(lab, "node", "10.42.0.11", "ceil-router.local", 4) == "no answer"
    # Not even behind the firewall: avahi itself stays off the cluster LAN (deny-interfaces).
    log = (lab.dir / "avahi.log").read_text()
    assert f"New relevant interface {ROUTER_UPLINK_DEV}.IPv4" in log and "interface br0" not in log, log


def test_mdns_comes_with_trusted_networks_only():
    from ceil.features import features_for

    with_trust = cluster_from({"router": {"trusted_networks": ["192.168.1.0/24"]}})
    assert "mdns" in [f.name for f in features_for(with_trust, "router")]
    assert "mdns" not in [f.name for f in features_for(cluster_from({}), "router")]
    assert "mdns" not in [f.name for f in features_for(with_trust, "one")]


@pytest.mark.parametrize("net, words", [
    ("0.0.0.0/0", "most of the internet"),
    ("10.42.0.0/16", "overlaps network.lan_cidr"),
    ("10.8.0.0/24", "overlaps vpn.subnet"),
])
def test_a_trusted_network_inside_the_cluster_or_too_wide_is_refused(net, words):
    cluster = cluster_from({"router": {"trusted_networks": [net]}, "vpn": {"enabled": True, "subnet": "10.8.0.0/24"}})
    with pytest.raises(ConfigError, match=words):
        nat_firewall.check(cluster, "router")


def test_avahi_runs_ceils_config_without_dbus_as_a_simple_service(tmp_path):
    """ceil's avahi-daemon.conf turns D-Bus off, so the packaged unit's Type=dbus would never see
    the daemon ready and systemd would kill it at its start timeout (run e2e21: every attempt of
    the mdns step failed). A drop-in makes it a simple service; it travels with ceil's units, so
    the payload installer places it before avahi-daemon is installed and the step needs no
    daemon-reload of its own (issue 21: 7-20 s each under TCG)."""
    out = render(cluster_from({"router": {"trusted_networks": ["192.168.1.0/24"]}}), "router", tmp_path)
    assert "enable-dbus=no" in (out / "etc/avahi/avahi-daemon.conf").read_text()
    dropin = (out / "units/avahi-daemon.service.d/ceil.conf").read_text()
    assert "[Service]\nType=simple\n" in dropin
    # From its first start (the packages step's install, or a boot after a power cut before the
    # mdns step) avahi reads ceil's file, never the packaged one that answers on every interface.
    assert "\nExecStart=\nExecStart=/usr/sbin/avahi-daemon -s -f /etc/ceil/avahi/avahi-daemon.conf\n" in dropin
    assert "/etc/avahi/avahi-daemon.conf" not in (out / "lib/steps/mdns.sh").read_text()
    lines = (out / "lib/steps/mdns.sh").read_text().splitlines()
    reload = lines.index("    systemctl daemon-reload")
    # only where systemd has not read the drop-in yet
    assert lines[reload - 1] == 'if [ "$(systemctl show -p Type --value avahi-daemon.service)" != simple ]; then'
    assert reload < lines.index("systemctl restart avahi-daemon.service")
