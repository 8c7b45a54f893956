"""Hooks of the `nat-firewall` feature: which ports the router opens, and to whom.

One function decides the port lists so the nftables template, the unit tests and the docs agree:
the uplink gets SSH (and the VPN's UDP port); the LAN and the VPN get the router's services.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Cluster
from ..errors import ConfigError
from ..secrets import SecretStore
from ..status import STATUS_PORT
from .dnsmasq import VPN_INTERFACE
from .mdns import MDNS_PORT
from ..k3s.cache import K3S_CACHE_PORT

SSH_PORT = 22


@dataclass(frozen=True)
class Service:
    name: str
    proto: str  # tcp | udp
    port: int


def uplink_services(cluster: Cluster) -> list[Service]:
    """What answers on the uplink: SSH, plus WireGuard when the VPN is on. Nothing else."""
    out = [Service("ssh", "tcp", SSH_PORT)]
    if cluster.vpn.enabled:
        out.append(Service("wireguard", "udp", cluster.vpn.port))
    return out


def lan_services(cluster: Cluster) -> list[Service]:
    """What the LAN and VPN reach on the router itself."""
    out = [
        Service("ssh", "tcp", SSH_PORT),
        Service("dns", "udp", 53),
        Service("dns", "tcp", 53),
        Service("dhcp", "udp", 67),
        Service("ntp", "udp", 123),
        Service("status-board", "tcp", STATUS_PORT),
        # Nodes fetch the k3s binary from the router's cache (firstboot/k3s-cache).
        Service("k3s-cache", "tcp", K3S_CACHE_PORT),
    ]
    if cluster.registry.enabled:
        out.append(Service("registry", "tcp", cluster.registry.port))
        out.append(Service("registry-mirror", "tcp", cluster.registry.mirror_port))
        out.append(Service("registry-push", "tcp", cluster.registry.push_port))
    if cluster.piwatch.enabled:
        out.append(Service("piwatch", "tcp", cluster.piwatch.port))
    return out


def ports(services: list[Service], proto: str) -> list[int]:
    return sorted({s.port for s in services if s.proto == proto})


def context(cluster: Cluster, role: str, store: SecretStore) -> dict:
    lan, up = lan_services(cluster), uplink_services(cluster)
    return {
        "firewall": {
            "lan_interface": cluster.router.lan_interface,
            "uplink_interface": cluster.uplink_interface,
            "vpn_interface": VPN_INTERFACE if cluster.vpn.enabled else None,
            "inside_interfaces": [cluster.router.lan_interface]
            + ([VPN_INTERFACE] if cluster.vpn.enabled else []),
            "masquerade_sources": [str(cluster.network.lan_cidr)]
            + ([str(cluster.vpn.subnet)] if cluster.vpn.enabled else []),
            "lan_tcp": ports(lan, "tcp"),
            "lan_udp": ports(lan, "udp"),
            "uplink_tcp": ports(up, "tcp"),
            "trusted_networks": [str(n) for n in cluster.router.trusted_networks],
            # feature mdns runs exactly when there are trusted networks: they may ask for its name
            "mdns_port": MDNS_PORT,
            "uplink_udp": ports(up, "udp"),
        }
    }


def check_trusted_networks(cluster: Cluster) -> None:
    inside = {"network.lan_cidr": cluster.network.lan_cidr}
    if cluster.vpn.enabled:
        inside["vpn.subnet"] = cluster.vpn.subnet
    for net in cluster.router.trusted_networks:
        if net.prefixlen < 8:
            raise ConfigError(
                f"router.trusted_networks: {net} would let most of the internet into the cluster LAN:"
                " name only your own network on the uplink side, e.g. 192.168.1.0/24")
        for key, other in inside.items():
            if net.overlaps(other):
                raise ConfigError(
                    f"router.trusted_networks: {net} overlaps {key} {other}: a trusted network lies on the"
                    " uplink side (e.g. your home LAN, 192.168.1.0/24), never inside the cluster")


def check(cluster: Cluster, role: str) -> None:
    """Two services on one port would make one of them unreachable: refuse at bake time."""
    check_trusted_networks(cluster)
    seen: dict[tuple[str, int], str] = {}
    for s in lan_services(cluster) + uplink_services(cluster):
        other = seen.get((s.proto, s.port))
        if other and other != s.name:
            raise ConfigError(
                f"port {s.port}/{s.proto} is used by both {other} and {s.name} on the router:"
                " give one of them another port in cluster.yaml (registry.port,"
                " registry.mirror_port, registry.push_port, piwatch.port, vpn.port)"
            )
        seen[(s.proto, s.port)] = s.name
