"""Hooks of the `dnsmasq` feature: the DHCP reservations and DNS names of the cluster LAN.

The names are computed here (not in the template) so the template stays a flat list and the
unit tests can check the same data the router serves.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Cluster
from ..errors import ConfigError
from ..secrets import SecretStore

VPN_INTERFACE = "wg0"  # the wireguard feature's interface name
LAN_HOSTS_DIR = "/var/lib/ceil/lan-hosts"  # nodes baked after the router (ceil-lan-hosts)


@dataclass(frozen=True)
class LanHost:
    """One machine on the LAN: its DHCP reservation and the DNS names that point at it."""

    hostname: str  # what the machine sends in DHCP option 12, e.g. ceil-one
    ip: str
    names: tuple[str, ...]  # DNS names, the canonical FQDN first (it also gets the PTR)
    mac: str | None = None


def lan_hosts(cluster: Cluster) -> list[LanHost]:
    """The router and every node, each under `<cluster>-<name>.<domain>` and `<name>.<domain>`."""
    d = cluster.domain
    hosts = [
        LanHost(
            hostname=cluster.hostname("router"),
            ip=str(cluster.network.router_ip),
            names=(cluster.fqdn("router"), f"router.{d}"),
        )
    ]
    for n in cluster.nodes:
        hosts.append(
            LanHost(
                hostname=cluster.hostname(n.name),
                ip=str(n.ip),
                names=(cluster.fqdn(n.name), f"{n.name}.{d}"),
                mac=n.mac,
            )
        )
    return hosts


def warnings(cluster: Cluster, role: str) -> list[str]:
    """Nodes reserved by host name only (issue 18 #9): said once, when the router is baked."""
    if role != "router":
        return []
    by_name = [n.name for n in cluster.nodes if not n.mac]
    if not by_name:
        return []
    example = by_name[0]
    return [
        f"nodes without a MAC in cluster.yaml ({', '.join(by_name)}) get their addresses by host name:"
        f" while {example} is off and its lease has run out, any LAN device announcing"
        f" {cluster.hostname(example)} gets {cluster.node(example).ip}. Give each node its MAC"
        f" (nodes[].mac, e.g. `mac: dc:a6:32:12:34:56` from `ip link` on the Pi) to reserve by MAC;"
        f" see docs/router-lan.md"
    ]


def listen_interfaces(cluster: Cluster) -> list[str]:
    """DNS/DHCP listen on the LAN (and the VPN); never on the uplink."""
    ifaces = [cluster.router.lan_interface]
    if cluster.vpn.enabled:
        ifaces.append(VPN_INTERFACE)
    return ifaces


def context(cluster: Cluster, role: str, store: SecretStore) -> dict:
    net = cluster.network
    return {
        "lan_dns": {
            "hosts": lan_hosts(cluster),
            "interfaces": listen_interfaces(cluster),
            "uplink_interface": cluster.uplink_interface,
            "vpn_interface": VPN_INTERFACE if cluster.vpn.enabled else None,
            "netmask": str(net.lan_cidr.netmask),
            "apps_domain": f"apps.{cluster.domain}",
            "ingress_hosts": served_ingress_hosts(cluster),
            "lease_file": "/var/lib/misc/dnsmasq.leases",
            "lan_hosts_dir": LAN_HOSTS_DIR,
        }
    }


def served_ingress_hosts(cluster: Cluster) -> list[str]:
    """Add-on UIs (grafana.<domain>, traefik.<domain>, ...) answered with the ingress address
    (by the router's DNS, and in the workstation's hosts file: `bake.py route --dns`)."""
    if not cluster.addons.enabled:
        return []
    from ..addons.render import ingress_hosts

    return ingress_hosts(cluster)


def check(cluster: Cluster, role: str) -> None:
    net = cluster.network
    for i, ip in enumerate(net.upstream_dns):
        if ip in net.lan_cidr or (cluster.vpn.enabled and ip in cluster.vpn.subnet) or ip.is_loopback:
            raise ConfigError(
                f"network.upstream_dns[{i}]: {ip} is the router itself or inside the cluster"
                f" (LAN {net.lan_cidr}): dnsmasq would forward to itself in a loop; give the"
                " internet resolvers the router should ask, e.g. [1.1.1.1, 9.9.9.9]"
            )
