"""Hooks of the `k3s-prep` feature: the containerd registry config every node gets.

registries.yaml travels as a secret file (root-only on the node) because a private registry's
credentials may live in it; k3s reads it from /etc/rancher/k3s/registries.yaml.
"""

from __future__ import annotations

from ..config import Cluster
from ..hooks.registry import k3s_registries_yaml
from ..secrets import SecretStore

REGISTRIES_FILE = "k3s/registries.yaml"


def registries_yaml(cluster: Cluster) -> str | None:
    """The registry feature's registries.yaml (pull-through cache + private registry)."""
    if not cluster.registry.enabled:
        return None
    return k3s_registries_yaml(cluster) or None


def secret_files(cluster: Cluster, role: str, store: SecretStore) -> dict[str, str]:
    text = registries_yaml(cluster)
    return {REGISTRIES_FILE: text} if text else {}
