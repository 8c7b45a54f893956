"""Hooks of the `registry` feature, and the k3s `registries.yaml` that points nodes at it.

The router runs three CNCF distribution registries bound to its LAN address, all over TLS with
a certificate from the registry CA made at bake time (ceil.registry_access):
- a pull-through cache of `registry.upstream` on `registry.mirror_port`, for the nodes' `pull`
  account too (it cannot be pushed to, but anyone could fill the router's disk through it);
- the private registry, read-only, on `registry.port`, for the nodes' `pull` account;
- the same storage, writable, on `registry.push_port`, for the workstation's `push` account.
`k3s_registries_yaml` is called by the node role.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import yaml

from ..config import Cluster
from ..errors import ConfigError
from ..registry_access import NODE_CA_PATH, PULL_USER, password, router_files
from ..secrets import SecretStore

REGISTRY_ROOT = "/var/lib/ceil-registry"
DRIVE_LABEL = "ceil-registry"  # ext4 label: a drive carrying it is never formatted again
DOCKER_HUB_HOSTS = {"registry-1.docker.io", "index.docker.io", "docker.io", "registry.hub.docker.com"}


def context(cluster: Cluster, role: str, store: SecretStore) -> dict:
    return {"registry_root": REGISTRY_ROOT, "registry_label": DRIVE_LABEL}


def secret_files(cluster: Cluster, role: str, store: SecretStore) -> dict[str, bytes]:
    """TLS certificate and key, and one htpasswd file per registry (handed over by LoadCredential)."""
    return router_files(cluster, store)


def check(cluster: Cluster, role: str) -> None:
    reg = cluster.registry
    ports = {"registry.port": reg.port, "registry.mirror_port": reg.mirror_port, "registry.push_port": reg.push_port}
    if len(set(ports.values())) < len(ports):
        given = ", ".join(f"{k}: {v}" for k, v in ports.items())
        raise ConfigError(
            f"{given}: the private registry, the pull-through cache and the private registry's"
            " push side need different ports (defaults 5000, 5001 and 5002)"
        )
    # Clashes with the router's other services are refused by the nat-firewall feature's check;
    # the SD card as router.usb_drive by the schema (config/schema.py, _drive).


def drive_root(cluster: Cluster) -> str | None:
    """Where the router's USB drive (router.usb_drive) is mounted once this feature's step has
    prepared it, or None without a drive. The datastore snapshots keep their copies there too."""
    return REGISTRY_ROOT if cluster.router.usb_drive and cluster.registry.enabled else None


def upstream_name(cluster: Cluster) -> str:
    """The registry name images use for the cached upstream (docker.io for Docker Hub)."""
    host = urlsplit(cluster.registry.upstream).netloc
    return "docker.io" if host in DOCKER_HUB_HOSTS else host


def private_registry_names(cluster: Cluster) -> list[str]:
    """Names that address the private registry in image references, e.g.
    ceil-router.ceil.internal:5000, and the push side's names (an image is used under the name it
    was pushed as): all of them are pulled from the read-only side."""
    names = []
    for port in (cluster.registry.port, cluster.registry.push_port):
        names += [f"{cluster.fqdn('router')}:{port}", f"{cluster.network.router_ip}:{port}"]
    return names


def k3s_registries_yaml(cluster: Cluster, store: SecretStore) -> str:
    """/etc/rancher/k3s/registries.yaml for every node: pulls go through the router's cache
    (containerd falls back to the upstream when the cache is down) and private images come from
    the read-only registry with the `pull` account; both verified against the registry CA."""
    if not cluster.registry.enabled:
        return ""
    router, reg = cluster.network.router_ip, cluster.registry
    mirror, private = f"{router}:{reg.mirror_port}", f"{router}:{reg.port}"
    mirrors = {upstream_name(cluster): {"endpoint": [f"https://{mirror}"]}}
    for name in private_registry_names(cluster):
        mirrors[name] = {"endpoint": [f"https://{private}"]}
    tls = {"ca_file": NODE_CA_PATH}
    pull = {"username": PULL_USER, "password": password(store, PULL_USER)}
    configs = {mirror: {"auth": pull, "tls": tls}, private: {"auth": pull, "tls": tls}}
    header = "# ceil: container registries on the router (written at bake time)\n"
    return header + yaml.safe_dump({"mirrors": mirrors, "configs": configs}, sort_keys=False)
