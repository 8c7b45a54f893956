"""Hooks of the `wireguard` feature: the router's wg0.conf travels as a secret file."""

from __future__ import annotations

from ..config import Cluster
from ..errors import ConfigError
from ..secrets import SecretStore
from ..wireguard import refresh_clients, render_server, server_address

WG_CONF_SECRET = "wireguard/wg0.conf"  # -> /etc/ceil/secrets/wireguard/wg0.conf on the router


def context(cluster: Cluster, role: str, store: SecretStore) -> dict:
    return {"wg_interface": "wg0", "wg_address": str(server_address(cluster))}


def secret_files(cluster: Cluster, role: str, store: SecretStore) -> dict:
    # The client configs say what this router is baked with (endpoint, port, routes): rewritten
    # from their stored keys where the cluster changed since (the CLI says which, before the bake).
    refresh_clients(cluster, store)
    return {WG_CONF_SECRET: render_server(cluster, store)}


def check(cluster: Cluster, role: str) -> None:
    if cluster.vpn.port == 22:
        raise ConfigError("vpn.port: 22 is SSH's port: pick another UDP port (default 51820)")
