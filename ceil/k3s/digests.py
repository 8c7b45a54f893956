"""The k3s release files ceil vouches for: the sha256 of each release's binary per architecture
(KNOWN), and of the air-gap image tarballs in KNOWN_IMAGES, as the release's own
sha256sum-<arch>.txt publishes them (issue 18, finding 1).

Every node is baked with one of these digests (or the one cluster.yaml's kubernetes.k3s_sha256
names) and installs no k3s binary whose bytes do not match it, whatever the source: the baked
bundle, the router's plain-HTTP cache, or the release itself. A sha256sum file lying next to a
binary proves nothing, since whoever can serve the one can serve the other; these digests travel
inside ceil instead.

Where they come from: GitHub cannot be reached from the machine ceil is developed on, so each
digest below was read from public repositories that record it from the release's sums files or
from hashing the release asset, and is listed only where at least three independent ones agree
(found by searching public code for the digest and for the version; the kinds of record are named
per release). `python bake.py k3s digests --check` compares this table with the release's sums
files wherever GitHub can be reached; run it when adding a release.

To add a release: take the k3s / k3s-arm64 lines of
https://github.com/k3s-io/k3s/releases/download/<version>/sha256sum-amd64.txt and
sha256sum-arm64.txt (and the k3s-airgap-images-<arch>.tar.zst lines, in KNOWN_IMAGES), add
them here, and run the check. armhf (HypriotOS) has no entry yet: such a
cluster names its digest in kubernetes.k3s_sha256 (the k3s-armhf line of sha256sum-arm.txt).
"""

from __future__ import annotations

from ..errors import ConfigError
from .release import ASSETS, RELEASES, parse_sums, sums_url

# Appended where a message proposes another k3s_version: it may be one ceil has no digest for.
PIN_HINT = "(and kubernetes.k3s_sha256 for a release `python bake.py k3s digests` does not list)"

KNOWN: dict[str, dict[str, str]] = {
    # Records agreeing: an engineering note that fetched both sums files and hashed both binaries;
    # a Go map of per-architecture pins; an install script choosing by `uname -m`; a Python
    # artefact table (with its air-gap image digests); two Go release catalogues.
    "v1.36.4+k3s1": {
        "amd64": "835873f37245fc615f547a2fe2af9402a347875f13fa64a1f136de644955ea3f",
        "arm64": "c920706346d5ad4e5cd3c7bf1bb09ce71ebe07fec829e513e40f1caf98aed8bb",
    },
    # Records agreeing: a Terraform module's reviewed manifest ("captured from the official GitHub
    # release assets/checksum files"); a document quoting both sums files; a pinned shell
    # configuration (amd64 and arm64 side by side); the note above (its "format control").
    "v1.36.3+k3s1": {
        "amd64": "2f98a9f8fe5782479ee2d54e70a1b10a7f6fd4cae8d38ed3098452dc6eed76b5",
        "arm64": "c9a209103f480f163b7c6a56f00862b4481927b284dc29a3716bb70d886691a8",
    },
}

# The air-gap image tarballs of the same releases, by asset name (the same three-record rule; a
# tarball not listed here is vouched for by the release's sums file beside it, which must list the
# pinned binary). With one of these, a forged tarball is refused even beside a forged sums file.
KNOWN_IMAGES: dict[str, dict[str, str]] = {
    # arm64, records agreeing: a Python artefact table (binary and images per architecture); an
    # offline bundle's verifier (sizes and digests of both files); a test quoting the sums file's
    # lines.
    # amd64, records agreeing: the same Python artefact table (and its own test); a pinning record
    # quoting the whole sha256sum-amd64.txt with each file's size; and, independently, a bundling
    # tool's live report printing the first 12 hex digits of both files it verified against the
    # release's sums file (9024613e2d46, and 835873f37245 for the binary, as KNOWN has it). Two
    # full records and a third that agrees on 48 bits of each: taken, and said so. The failure
    # modes are unequal: a wrong digest here refuses the release's real tarball loudly (the bake
    # stops, naming both digests), while no digest leaves a forged one checked only by a sums
    # file a forger can write. The record's .tar and .tar.gz lines have one record each: not listed.
    "v1.36.4+k3s1": {
        "k3s-airgap-images-arm64.tar.zst": "9d3c4c2197bcf857ca17633aa393bad683cc982ddd408620f93036a3cca953b5",
        "k3s-airgap-images-amd64.tar.zst": "9024613e2d468c51ba0e5ba21898604c41339354449fb3338cc6a7931189eb6a",
    },
}


def known_digest(version: str, arch: str) -> str | None:
    return KNOWN.get(version, {}).get(arch)


def known_image_digest(version: str, asset: str) -> str | None:
    return KNOWN_IMAGES.get(version, {}).get(asset)


def known_images(version: str, arch: str) -> dict[str, str]:
    """{tarball: digest} of `version`'s air-gap images for `arch` that ceil ships."""
    prefix = ASSETS[arch]["images"] + ".tar"
    return {asset: d for asset, d in KNOWN_IMAGES.get(version, {}).items() if asset.startswith(prefix)}


def expected_digest(cluster, arch: str) -> str:
    """The digest every node of `cluster` checks its k3s binary against: kubernetes.k3s_sha256
    when set (the user vouches for it: a build of their own, or a release newer than this table),
    else this table's. A version with neither is refused: a node would otherwise have nothing but
    a sums file from the same place as the binary to trust."""
    k8s = cluster.kubernetes
    if k8s.k3s_sha256:
        return k8s.k3s_sha256
    if digest := known_digest(k8s.k3s_version, arch):
        return digest
    known = [v for v in KNOWN if arch in KNOWN[v]]
    choose = f"choose one ceil knows ({', '.join(known)}), or " if known else ""
    raise ConfigError(
        f"kubernetes.k3s_version: {k8s.k3s_version!r} has no {arch} digest ceil knows, so the nodes would"
        f" have nothing to check the k3s binary against: {choose}set kubernetes.k3s_sha256 to the"
        f" {ASSETS[arch]['binary']} line of {sums_url(k8s.k3s_version, arch)}")


def pin_warning(cluster, arch: str) -> str | None:
    """kubernetes.k3s_sha256 set to something other than the published digest of the release it
    names: the nodes will install that other binary only (a custom build), never the release."""
    k8s = cluster.kubernetes
    published = known_digest(k8s.k3s_version, arch)
    if k8s.k3s_sha256 and published and k8s.k3s_sha256 != published:
        return (f"kubernetes.k3s_sha256 {k8s.k3s_sha256} is not the published digest of k3s"
                f" {k8s.k3s_version} for {arch} ({published}): the nodes will install only the binary"
                f" you pinned, never the release; remove k3s_sha256 to use the release")
    return None


def check_published(releases: str = RELEASES, session=None) -> list[tuple[str, bool | None, str]]:
    """`bake.py k3s digests --check`: each digest above (binaries and image tarballs) against the
    release's own sums file. [(version and asset, agrees, what was found)]; agrees is None where
    no answer came (nothing was compared), False where the answer was an error (HTTP 404: moved)."""
    import requests

    from ..fetch import TIMEOUT

    session = session or requests.Session()
    out = []
    for version, arches in KNOWN.items():
        for arch, digest in arches.items():
            url = sums_url(version, arch, releases)
            wanted = {ASSETS[arch]["binary"]: digest} | known_images(version, arch)
            try:
                r = session.get(url, timeout=TIMEOUT)
                r.raise_for_status()
            except requests.RequestException as e:
                # an error answer is a finding (False); no answer at all compared nothing (None)
                ok = False if isinstance(e, requests.HTTPError) else None
                out += [(f"{version} {asset}", ok, f"{url} could not be read: {e}") for asset in wanted]
                continue
            for asset, want in wanted.items():
                listed = parse_sums(r.text, asset)
                if listed == want:
                    out.append((f"{version} {asset}", True, f"{want} as {url} lists it"))
                else:
                    found = f"{asset} with {listed}" if listed else f"no {asset}"
                    out.append((f"{version} {asset}", False, f"ceil has {want}, {url} lists {found}:"
                                " correct ceil/k3s/digests.py"))
    return out
