"""Hooks of the `status-board` and `status-report` features: the board's config (who may report,
where it listens), the router's reporting key and each node's token derived from it."""

from __future__ import annotations

from ..config import Cluster
from ..secrets import SecretStore
from ..status import BOARD_KEY_SECRET, REPORT_TOKEN_SECRET, STATUS_PORT, report_token


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


def secret_files(cluster: Cluster, role: str, store: SecretStore) -> dict[str, str]:
    key = store.token(BOARD_KEY_SECRET)
    if role == "router":
        return {BOARD_KEY_SECRET: key + "\n"}
    return {REPORT_TOKEN_SECRET: report_token(key, role) + "\n"}
