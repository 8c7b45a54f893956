"""Hooks of the `k3s-cache` feature: the router serves k3s release files to the nodes over HTTP.

The router's root file system gets a copy of the release assets the workstation has in
~/.cache/ceil/k3s/<version>/ (k3s-arm64, sha256sum-arm64.txt, ...); the bake never downloads
them. Nodes fetch http://<router>:K3S_CACHE_PORT/k3s/<version>/<asset> and verify every byte
against the digest baked into them (k3s-install), so the cache needs no trust: a bad copy is
refused, never run.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..config import Cluster
from ..errors import CeilError, ConfigError
from ..secrets import SecretStore
from .release import ASSETS, unvouched_images, verified_release_files

K3S_CACHE_PORT = 8088
CACHE_ROOT_ON_ROUTER = "/var/lib/ceil/cache"  # served as http://router:port/ (so /k3s/<version>/...)


def cache_url(cluster: Cluster) -> str:
    version = cluster.kubernetes.k3s_version
    return f"http://{cluster.network.router_ip}:{K3S_CACHE_PORT}/k3s/{version}"


def workstation_cache(version: str) -> Path:
    """Where the workstation keeps release files (CEIL_K3S_CACHE overrides, e.g. in tests)."""
    base = os.environ.get("CEIL_K3S_CACHE") or Path.home() / ".cache" / "ceil" / "k3s"
    return Path(base) / version


def context(cluster: Cluster, role: str, store: SecretStore) -> dict:
    return {"k3s_cache": {"port": K3S_CACHE_PORT, "root": CACHE_ROOT_ON_ROUTER,
                          "bind": str(cluster.network.router_ip)}}


def cache_files(cluster: Cluster, arches: list[str], source: Path | None = None) -> dict[str, Path]:
    """{absolute path in the router's root fs: workstation file} for every architecture whose
    release files are present and verify; empty when the workstation has none (the nodes then
    fall back to the upstream release)."""
    version = cluster.kubernetes.k3s_version
    source = source or workstation_cache(version)
    out: dict[str, Path] = {}
    for arch in arches:
        for name, path in verified_release_files(cluster, arch, source).items():
            out[f"{CACHE_ROOT_ON_ROUTER}/k3s/{version}/{name}"] = path
    return out


def check(cluster: Cluster, role: str) -> None:
    """Before anything is written: the workstation's release files, if any, are the release the
    nodes are baked to trust (a mismatch would otherwise stop the bake after other images)."""
    from ..catalog import load_flavor

    try:
        cache_files(cluster, [load_flavor(cluster.flavor).arch])
    except ConfigError:
        raise
    except CeilError as e:  # a file that does not match: listed with the other problems
        raise ConfigError(str(e)) from None


def warnings(cluster: Cluster, role: str) -> list[str]:
    """An images tarball in the workstation's cache that nothing vouches for is left out of the
    router's cache; said here, or the nodes would pull every image from upstream unexplained.
    (`--airgap` refuses the same file outright: a node baked for no internet would not start.)"""
    from ..catalog import load_flavor

    arch = load_flavor(cluster.flavor).arch
    source = workstation_cache(cluster.kubernetes.k3s_version)
    try:
        files = verified_release_files(cluster, arch, source)
    except CeilError:
        return []  # check() reports it as a problem
    if not files or not (left := unvouched_images(arch, source, files)):
        return []
    return [f"{source}: {', '.join(left)} is not in the router's cache: neither ceil (python bake.py k3s"
            f" digests) nor a {ASSETS[arch]['sums']} beside it lists its sha256, so it cannot be checked;"
            f" the nodes will pull their images from the internet instead. Put the release's own"
            f" {ASSETS[arch]['sums']} there (it lists every asset), or remove the file"]


def rootfs_files(ctx) -> dict[str, Path]:
    """The router's cache, filled at bake time from the workstation's k3s files (if any)."""
    return cache_files(ctx.cluster, [ctx.flavor.arch])
