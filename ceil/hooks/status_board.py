"""Hooks of the `status-board` feature: the board's config (who may report, where it listens)."""

from __future__ import annotations

from ..config import Cluster
from ..secrets import SecretStore
from ..status import STATUS_PORT


def context(cluster: Cluster, role: str, store: SecretStore) -> dict:
    return {
        "status_board": {
            "bind": str(cluster.network.router_ip),
            "port": STATUS_PORT,
            "cluster": cluster.name,
            "nodes": [n.name for n in cluster.nodes],
            "hostnames": {r: cluster.hostname(r) for r in cluster.roles},
            "state_dir": "/var/lib/ceil-status-board",
        }
    }
