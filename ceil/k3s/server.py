"""Hooks of the `k3s-server` feature: the server's k3s config and its secrets (CA set, tokens)."""

from __future__ import annotations

import yaml

from ..config import Cluster
from .node_config import check_servers, server_config, server_secret_files
from ..secrets import SecretStore


def check(cluster: Cluster, role: str) -> None:
    check_servers(cluster)


def context(cluster: Cluster, role: str, store: SecretStore) -> dict:
    cfg = server_config(cluster, cluster.node(role))
    return {"k3s_config_yaml": yaml.safe_dump(cfg, sort_keys=False)}


def secret_files(cluster: Cluster, role: str, store: SecretStore) -> dict[str, bytes | str]:
    return server_secret_files(cluster, cluster.node(role), store)
