"""Hooks of the `k3s-prep` feature: the containerd registry config every node gets.

registries.yaml travels as a secret file (root-only on the node) because a private registry's
credentials may live in it; k3s reads it from /etc/rancher/k3s/registries.yaml.
"""

from __future__ import annotations

from ..config import Cluster
from ..hooks.registry import k3s_registries_yaml
from ..registry_access import ensure_ca as ensure_registry_ca
from ..secrets import SecretStore

REGISTRIES_FILE = "k3s/registries.yaml"
REGISTRY_CA_FILE = "k3s/registry-ca.crt"


def secret_files(cluster: Cluster, role: str, store: SecretStore) -> dict[str, str | bytes]:
    """registries.yaml (with the read-only `pull` account) and the registry CA it names."""
    if not cluster.registry.enabled:
        return {}
    return {
        REGISTRIES_FILE: k3s_registries_yaml(cluster, store),
        REGISTRY_CA_FILE: ensure_registry_ca(store).cert_pem,
    }
