"""Hooks of the `registry` feature, and the k3s `registries.yaml` that points nodes at it.

The router runs two CNCF distribution registries bound to its LAN address: a pull-through cache
of `registry.upstream` on `registry.mirror_port` and a private registry on `registry.port`
(plain HTTP: they never leave the LAN). `k3s_registries_yaml` is called by the node role.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import yaml

from ..config import Cluster
from ..errors import ConfigError
from ..secrets import SecretStore

REGISTRY_ROOT = "/var/lib/ceil-registry"
DRIVE_LABEL = "ceil-registry"  # ext4 label: a drive carrying it is never formatted again
DOCKER_HUB_HOSTS = {"registry-1.docker.io", "index.docker.io", "docker.io", "registry.hub.docker.com"}


def context(cluster: Cluster, role: str, store: SecretStore) -> dict:
    return {"registry_root": REGISTRY_ROOT, "registry_label": DRIVE_LABEL}


def check(cluster: Cluster, role: str) -> None:
    reg = cluster.registry
    if reg.port == reg.mirror_port:
        raise ConfigError(
            f"registry.port and registry.mirror_port are both {reg.port}: the private registry"
            " and the pull-through cache need different ports (defaults 5000 and 5001)"
        )
    # Clashes with the router's other services are refused by the nat-firewall feature's check.
    drive = cluster.router.usb_drive
    if drive and drive.startswith("/dev/mmcblk"):
        raise ConfigError(
            f"router.usb_drive: {drive} is the SD card the router boots from, and the drive is"
            " wiped on first boot: name the USB drive instead (usually /dev/sda)"
        )


def upstream_name(cluster: Cluster) -> str:
    """The registry name images use for the cached upstream (docker.io for Docker Hub)."""
    host = urlsplit(cluster.registry.upstream).netloc
    return "docker.io" if host in DOCKER_HUB_HOSTS else host


def private_registry_names(cluster: Cluster) -> list[str]:
    """Names that address the private registry in image references, e.g. ceil-router.ceil.internal:5000."""
    port = cluster.registry.port
    return [f"{cluster.fqdn('router')}:{port}", f"{cluster.network.router_ip}:{port}"]


def k3s_registries_yaml(cluster: Cluster) -> str:
    """/etc/rancher/k3s/registries.yaml for every node: pulls go through the router's cache
    (containerd falls back to the upstream when the cache is down) and the private registry is
    reached over plain HTTP."""
    if not cluster.registry.enabled:
        return ""
    router = cluster.network.router_ip
    mirrors = {upstream_name(cluster): {"endpoint": [f"http://{router}:{cluster.registry.mirror_port}"]}}
    for name in private_registry_names(cluster):
        mirrors[name] = {"endpoint": [f"http://{router}:{cluster.registry.port}"]}
    header = "# ceil: container registries on the router (written at bake time)\n"
    return header + yaml.safe_dump({"mirrors": mirrors}, sort_keys=False)
