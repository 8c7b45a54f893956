"""Hooks of the `k3s-server` feature: the server's k3s config and its secrets (CA set, tokens)."""

from __future__ import annotations

import yaml

from ..config import Cluster
from ..datastore import restore_secret_files
from .node_config import check_servers, init_server, server_config, server_secret_files
from ..secrets import SecretStore


def check(cluster: Cluster, role: str) -> None:
    check_servers(cluster)


def context(cluster: Cluster, role: str, store: SecretStore) -> dict:
    cfg = server_config(cluster, cluster.node(role))
    return {"k3s_config_yaml": yaml.safe_dump(cfg, sort_keys=False)}


def secret_files(cluster: Cluster, role: str, store: SecretStore) -> dict[str, bytes | str]:
    files = server_secret_files(cluster, cluster.node(role), store)
    if cluster.node(role) == init_server(cluster):
        files.update(restore_secret_files(cluster, store))  # a snapshot staged by `datastore restore`
    return files
