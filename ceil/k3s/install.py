"""Hooks of the `k3s-install` feature: where a node gets the k3s binary, and how it checks it.

Sources, in order: a bundle baked into the image (/usr/local/lib/ceil/airgap/), the router's
cache (feature k3s-cache), the upstream GitHub release. Every source is checked against the
digest baked into the node: kubernetes.k3s_sha256, or the release's published digest that ceil
ships (digests.py). A version with neither is refused before anything is baked.
"""

from __future__ import annotations

from pathlib import Path

from ..catalog import load_flavor
from ..config import Cluster
from ..errors import CeilError
from ..secrets import SecretStore
from .cache import cache_url
from .digests import expected_digest, pin_warning
from .release import ASSETS, download_url, unvouched_images, verified_release_files

AIRGAP_ON_TARGET = "/usr/local/lib/ceil/airgap"


def check(cluster: Cluster, role: str) -> None:
    """Before anything is written: the nodes must have a digest to check k3s against."""
    expected_digest(cluster, load_flavor(cluster.flavor).arch)


def warnings(cluster: Cluster, role: str) -> list[str]:
    return [w] if (w := pin_warning(cluster, load_flavor(cluster.flavor).arch)) else []


def context(cluster: Cluster, role: str, store: SecretStore) -> dict:
    k8s = cluster.kubernetes
    return {
        "k3s_install": {
            "version": k8s.k3s_version,
            "sha256": expected_digest(cluster, load_flavor(cluster.flavor).arch),
            "cache_url": cache_url(cluster),
            "upstream_url": download_url(k8s.k3s_version),
            "airgap_dir": AIRGAP_ON_TARGET,
        }
    }


def airgap_files(cluster: Cluster, arch: str, source: Path) -> dict[str, Path]:
    """For `bake.py --airgap`: {absolute path in the node's root fs: workstation file}. A folder
    without the release's binary is refused: the nodes would be baked without the bundle asked for."""
    files = verified_release_files(cluster, arch, source)
    names, version = ASSETS[arch], cluster.kubernetes.k3s_version
    if not files:
        found = ("does not exist" if not source.exists() else "is not a folder" if not source.is_dir()
                 else "is empty" if not any(source.iterdir()) else f"holds no {names['binary']}")
        raise CeilError(
            f"--airgap {source} {found}: expected the k3s {version} release files for {arch}"
            f" ({names['binary']}, {names['sums']}, and {names['images']}.tar.zst for a node without"
            f" internet) from {download_url(version)}; download them there, or bake without --airgap"
        )
    if unchecked := unvouched_images(arch, source, files):
        raise CeilError(
            f"--airgap {source}: {', '.join(unchecked)} is not listed in {source / names['sums']}, so it"
            f" cannot be checked and would not be baked: put the release's own {names['sums']} beside it"
            f" (it lists every asset), or remove the file"
        )
    return {f"{AIRGAP_ON_TARGET}/{name}": path for name, path in files.items()}


def rootfs_files(ctx) -> dict[str, Path]:
    """`bake.py --airgap DIR`: the verified k3s release files go into the node's image."""
    return airgap_files(ctx.cluster, ctx.flavor.arch, ctx.airgap) if ctx.airgap else {}
