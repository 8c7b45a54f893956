"""Hooks of the `k3s-install` feature: where a node gets the k3s binary, and how it checks it.

Sources, in order: a bundle baked into the image (/usr/local/lib/ceil/airgap/), the router's
cache (feature k3s-cache), the upstream GitHub release. Every source is checked against the
pinned `kubernetes.k3s_sha256`, or else against the release's sha256sum file from that source.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from ..config import Cluster
from ..secrets import SecretStore
from .cache import cache_url
from .release import verified_release_files

UPSTREAM = "https://github.com/k3s-io/k3s/releases/download"
AIRGAP_ON_TARGET = "/usr/local/lib/ceil/airgap"


def upstream_url(version: str) -> str:
    return f"{UPSTREAM}/{quote(version, safe='')}"


def context(cluster: Cluster, role: str, store: SecretStore) -> dict:
    k8s = cluster.kubernetes
    return {
        "k3s_install": {
            "version": k8s.k3s_version,
            "sha256": k8s.k3s_sha256 or "",
            "cache_url": cache_url(cluster),
            "upstream_url": upstream_url(k8s.k3s_version),
            "airgap_dir": AIRGAP_ON_TARGET,
        }
    }


def airgap_files(cluster: Cluster, arch: str, source: Path) -> dict[str, Path]:
    """For `bake.py --airgap`: {absolute path in the node's root fs: workstation file}."""
    return {f"{AIRGAP_ON_TARGET}/{name}": path for name, path in verified_release_files(cluster, arch, source).items()}


def rootfs_files(ctx) -> dict[str, Path]:
    """`bake.py --airgap DIR`: the verified k3s release files go into the node's image."""
    return airgap_files(ctx.cluster, ctx.flavor.arch, ctx.airgap) if ctx.airgap else {}
