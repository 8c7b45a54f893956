"""A k3s release's files for one architecture: their names, and the check of each. The binary is
checked against the digest the nodes are baked with (digests.expected_digest); the release's
sha256sum file must list that same digest for it, and then vouches for the air-gap images beside
it. Shared by the node's install (air-gap bundle), the router's cache and `k3s upgrade`, which all
carry copies of the same files.
"""

from __future__ import annotations

import functools
from pathlib import Path

from ..config import Cluster
from ..errors import CeilError
from ..fetch import sha256_file
from .digests import expected_digest

# Release asset names per Debian architecture (as k3s's install.sh names them: the amd64 binary
# has no suffix, and armhf's checksum and image files say "arm").
ASSETS: dict[str, dict[str, str]] = {
    "arm64": {"binary": "k3s-arm64", "sums": "sha256sum-arm64.txt", "images": "k3s-airgap-images-arm64"},
    "armhf": {"binary": "k3s-armhf", "sums": "sha256sum-arm.txt", "images": "k3s-airgap-images-arm"},
    "amd64": {"binary": "k3s", "sums": "sha256sum-amd64.txt", "images": "k3s-airgap-images-amd64"},
}


def parse_sums(text: str, asset: str) -> str | None:
    """The digest of `asset` in a sha256sum file ("<hex>  <name>" or "<hex> *<name>")."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == asset:
            return parts[0].lower()
    return None


def verified_release_files(cluster: Cluster, arch: str, source: Path) -> dict[str, Path]:
    """The release files for `arch` in `source` (a copy of the release's assets): the binary
    checked against the digest the nodes are baked with, the images against the sha256sum file,
    which must agree with that digest. {asset name: path}; empty when the binary is not there. A
    mismatch is an error: a bad file is never baked."""
    names = ASSETS[arch]
    binary = source / names["binary"]
    if not binary.is_file():
        return {}
    expected = expected_digest(cluster, arch)
    _check(binary, expected)
    files = {names["binary"]: binary}
    sums = source / names["sums"]
    if not sums.is_file():
        return files
    listed = parse_sums(sums.read_text(), names["binary"])
    if listed != expected and not cluster.kubernetes.k3s_sha256:
        raise CeilError(
            f"{sums} lists {names['binary']} with sha256 {listed or 'nowhere'}, not the published"
            f" {expected} of k3s {cluster.kubernetes.k3s_version}: it is not that release's sums file, so it"
            f" cannot vouch for the images beside it; download it again from the release"
        )
    files[names["sums"]] = sums
    for image in sorted(source.glob(names["images"] + ".tar*")):
        if digest := parse_sums(sums.read_text(), image.name):
            _check(image, digest)
            files[image.name] = image
    return files


@functools.lru_cache(maxsize=32)
def _sha256(path: Path, ino: int, size: int, mtime_ns: int) -> str:
    # Remembered for this process, keyed like the bake's range cache (size, mtime): the same
    # --airgap files are checked before anything is written and again as each node's root takes
    # them, and the images tarball is hundreds of MB.
    return sha256_file(path)


def _check(path: Path, expected: str) -> None:
    st = path.stat()
    got = _sha256(path.resolve(), st.st_ino, st.st_size, st.st_mtime_ns)
    if got != expected:
        raise CeilError(
            f"{path}: sha256 is {got} but {expected} was expected: the file is corrupt or not the"
            f" release it claims to be; delete it and download it again"
        )
