"""A k3s release's files for one architecture: their names, and the check of each. The binary is
checked against the digest the nodes are baked with (digests.expected_digest); the air-gap images
against the release's digest ceil ships, else the release's sha256sum file, which must list that
same binary digest. Shared by the node's install (air-gap bundle), the router's cache and
`k3s upgrade`, which all carry copies of the same files.
"""

from __future__ import annotations

import functools
from pathlib import Path
from urllib.parse import quote

from ..config import Cluster
from ..errors import CeilError
from ..fetch import sha256_file

RELEASES = "https://github.com/k3s-io/k3s/releases"

# Release asset names per Debian architecture (as k3s's install.sh names them: the amd64 binary
# has no suffix, and armhf's checksum and image files say "arm").
ASSETS: dict[str, dict[str, str]] = {
    "arm64": {"binary": "k3s-arm64", "sums": "sha256sum-arm64.txt", "images": "k3s-airgap-images-arm64"},
    "armhf": {"binary": "k3s-armhf", "sums": "sha256sum-arm.txt", "images": "k3s-airgap-images-arm"},
    "amd64": {"binary": "k3s", "sums": "sha256sum-amd64.txt", "images": "k3s-airgap-images-amd64"},
}


def download_url(version: str, releases: str = RELEASES) -> str:
    """Where a release's assets are downloaded from (its tag's "+" escaped)."""
    return f"{releases}/download/{quote(version, safe='')}"


def sums_url(version: str, arch: str, releases: str = RELEASES) -> str:
    return f"{download_url(version, releases)}/{ASSETS[arch]['sums']}"


def parse_sums(text: str, asset: str) -> str | None:
    """The digest of `asset` in a sha256sum file ("<hex>  <name>" or "<hex> *<name>")."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == asset:
            return parts[0].lower()
    return None


def verified_release_files(cluster: Cluster, arch: str, source: Path) -> dict[str, Path]:
    """The release files for `arch` in `source` (a copy of the release's assets): the binary
    checked against the digest the nodes are baked with; each air-gap image tarball against the
    release's published digest where ceil ships one (digests.KNOWN_IMAGES), else against the
    sha256sum file, which must then list that same binary digest. {asset name: path}; empty when
    the binary is not there. A mismatch is an error: a bad file is never baked.

    What the sums file is worth: the binary's digest is public, so a forger can copy its line; a
    tarball ceil has no digest for is only as good as the sums file the user downloaded with it
    over HTTPS. What the sums check stops is a sums file of another release or another build."""
    from .digests import expected_digest, known_digest, known_image_digest  # digests.py names files by ASSETS

    names = ASSETS[arch]
    binary = source / names["binary"]
    if not binary.is_file():
        return {}
    expected = expected_digest(cluster, arch)
    k8s = cluster.kubernetes
    published = expected == known_digest(k8s.k3s_version, arch)
    pin = ("kubernetes.k3s_sha256" if k8s.k3s_sha256 else
           f"the published digest of k3s {k8s.k3s_version} that ceil ships (python bake.py k3s digests)")
    _check(binary, expected, f"{expected}, {pin}, was expected: the file is not that binary (another"
                             f" release, a build of another, or corrupt); download it again, or correct"
                             f" kubernetes.k3s_version / kubernetes.k3s_sha256")
    files = {names["binary"]: binary}
    sums = source / names["sums"]
    listing = None
    if sums.is_file():
        listing = sums.read_text()
        listed = parse_sums(listing, names["binary"])
        if listed != expected:
            found = f"with sha256 {listed}" if listed else "nowhere"
            raise CeilError(
                f"{sums} lists {names['binary']} {found}, not {expected} ({pin}): it is not the sums file"
                f" of that binary, so it cannot vouch for the images beside it; download it again from"
                f" {sums_url(k8s.k3s_version, arch)} (a build of your own: write its own sums file)"
            )
        files[names["sums"]] = sums
    for image in sorted(source.glob(names["images"] + ".tar*")):
        # The release's own tarball: ceil's digest. A sums file beside it that says otherwise is
        # not the release's and is refused (the node checks the baked tarball against a baked sums
        # file too, and would refuse it for good). A build of your own (a pin that is not the
        # release's) has its own images, vouched for by its sums file.
        if published and (digest := known_image_digest(k8s.k3s_version, image.name)):
            if listing and (listed := parse_sums(listing, image.name)) and listed != digest:
                raise CeilError(
                    f"{sums} lists {image.name} with sha256 {listed}, but k3s {k8s.k3s_version} publishes"
                    f" {digest} (python bake.py k3s digests): it is not the release's sums file; download"
                    f" it again from {sums_url(k8s.k3s_version, arch)}")
            _check(image, digest, f"{digest}, the published digest of k3s {k8s.k3s_version}'s"
                                  f" {image.name} that ceil ships, was expected: the file is corrupt or"
                                  f" not the release's; delete it and download it again")
        elif listing and (digest := parse_sums(listing, image.name)):
            _check(image, digest, f"{digest}, as {sums} lists it, was expected: the file is corrupt or"
                                  f" not the release's; delete it and download it again")
        else:
            continue
        files[image.name] = image
    return files


def unvouched_images(arch: str, source: Path, files: dict[str, Path]) -> list[str]:
    """The air-gap image tarballs in `source` that `verified_release_files` left out (`files`, its
    answer): neither ceil nor a sums file has a digest for them, so they are never baked."""
    return sorted(p.name for p in source.glob(ASSETS[arch]["images"] + ".tar*") if p.name not in files)


@functools.lru_cache(maxsize=32)
def _sha256(path: Path, ino: int, size: int, mtime_ns: int) -> str:
    # Remembered for this process, keyed like the bake's range cache (size, mtime): the same
    # --airgap files are checked before anything is written and again as each node's root takes
    # them, and the images tarball is hundreds of MB.
    return sha256_file(path)


def _check(path: Path, expected: str, why: str) -> None:
    """`why`: the expected digest, where it comes from, and the fix."""
    st = path.stat()
    got = _sha256(path.resolve(), st.st_ino, st.st_size, st.st_mtime_ns)
    if got != expected:
        raise CeilError(f"{path}: sha256 is {got}, but {why}")
