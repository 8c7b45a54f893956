"""Hooks of the `k3s-agent` feature: the agent's k3s config and its only secrets (the agent
token, which pins the server CA by hash, and the node password)."""

from __future__ import annotations

import yaml

from ..config import Cluster
from .node_config import agent_config, agent_secret_files
from ..secrets import SecretStore


def context(cluster: Cluster, role: str, store: SecretStore) -> dict:
    cfg = agent_config(cluster, cluster.node(role))
    return {"k3s_config_yaml": yaml.safe_dump(cfg, sort_keys=False)}


def secret_files(cluster: Cluster, role: str, store: SecretStore) -> dict[str, bytes | str]:
    return agent_secret_files(cluster, cluster.node(role), store)
