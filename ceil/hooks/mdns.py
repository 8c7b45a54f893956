"""Hooks of the `mdns` feature: the router's mDNS name on the uplink side (router.trusted_networks)."""

from __future__ import annotations

from ..config import Cluster
from ..secrets import SecretStore
from .dnsmasq import VPN_INTERFACE

MDNS_PORT = 5353  # the firewall opens it to router.trusted_networks (nat-firewall's template)


def context(cluster: Cluster, role: str, store: SecretStore) -> dict:
    deny = [cluster.router.lan_interface] + ([VPN_INTERFACE] if cluster.vpn.enabled else [])
    return {"mdns": {"hostname": cluster.hostname("router"), "deny_interfaces": deny}}
