"""Issue 18, finding 1: the k3s binary was trusted from a sums file lying next to it. ceil now
ships the release's published digests (ceil/k3s/digests.py), bakes one into every node, and
refuses a release it has no digest for unless cluster.yaml pins one."""

from __future__ import annotations

import hashlib
import http.server
import re
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path

import pytest

from ceil.catalog import available, load_flavor
from ceil.config import load_cluster
from ceil.config.schema import Kubernetes
from ceil.errors import CeilError, ConfigError
from ceil.k3s import digests, install
from ceil.k3s.release import ASSETS, verified_release_files

REPO = Path(__file__).resolve().parents[2]
UNKNOWN = "v1.36.1+k3s1"


def cluster_yaml(tmp_path: Path, ssh_pubkey: str, kubernetes: str = "", flavor: str = "ubuntu-24.04-raspi") -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(f"flavor: {flavor}\nssh: {{authorized_keys: [\"{ssh_pubkey}\"]}}\n"
                    "router: {uplink: {type: ethernet}}\nnodes: [{name: one, role: server}]\n"
                    + (f"kubernetes: {kubernetes}\n" if kubernetes else ""))
    return path


def release_folder(root: Path, binary: bytes, listed: str | None = None, arch: str = "arm64") -> Path:
    """A workstation's release folder: the binary and a sums file listing `listed` (its own digest
    by default, as a forger who serves both would write it)."""
    names = ASSETS[arch]
    root.mkdir(parents=True, exist_ok=True)
    (root / names["binary"]).write_bytes(binary)
    digest = listed or hashlib.sha256(binary).hexdigest()
    (root / names["sums"]).write_text(f"{digest}  {names['binary']}\n")
    return root


def test_the_default_release_has_a_digest_for_every_architecture_a_users_flavor_runs_but_armhf():
    version = Kubernetes().k3s_version
    arches = {load_flavor(f).arch for f in available() if not load_flavor(f).test_only}
    assert arches - {"armhf"}, arches
    for arch in arches - {"armhf"}:
        assert len(digests.known_digest(version, arch) or "") == 64, (version, arch)


def test_every_shipped_digest_is_sha256_hex_and_every_version_a_k3s_release():
    for version, arches in digests.KNOWN.items():
        assert Kubernetes(k3s_version=version).k3s_version == version
        for arch, digest in arches.items():
            assert arch in ASSETS and re.fullmatch(r"[0-9a-f]{64}", digest), (version, arch)


def test_the_users_pin_wins_and_the_shipped_digest_is_the_default(tmp_path, ssh_pubkey):
    default = load_cluster(cluster_yaml(tmp_path, ssh_pubkey))
    assert digests.expected_digest(default, "arm64") == digests.KNOWN[Kubernetes().k3s_version]["arm64"]
    pinned = load_cluster(cluster_yaml(tmp_path, ssh_pubkey, f"{{k3s_version: {UNKNOWN}, k3s_sha256: {'a' * 64}}}"))
    assert digests.expected_digest(pinned, "arm64") == "a" * 64


def test_a_release_without_a_digest_is_refused_with_the_key_the_value_and_the_fix(tmp_path, ssh_pubkey):
    cluster = load_cluster(cluster_yaml(tmp_path, ssh_pubkey, f"{{k3s_version: {UNKNOWN}}}"))
    with pytest.raises(ConfigError) as e:
        digests.expected_digest(cluster, "arm64")
    text = str(e.value)
    assert "kubernetes.k3s_version" in text and UNKNOWN in text and "kubernetes.k3s_sha256" in text
    assert "https://github.com/k3s-io/k3s/releases/download/v1.36.1%2Bk3s1/sha256sum-arm64.txt" in text
    assert Kubernetes().k3s_version in text  # what it could choose instead


def test_a_pin_that_is_not_the_published_digest_is_warned_about(tmp_path, ssh_pubkey):
    version = Kubernetes().k3s_version
    cluster = load_cluster(cluster_yaml(tmp_path, ssh_pubkey, f"{{k3s_sha256: {'b' * 64}}}"))
    warning = digests.pin_warning(cluster, "arm64")
    assert warning and "b" * 64 in warning and digests.KNOWN[version]["arm64"] in warning
    assert digests.pin_warning(load_cluster(cluster_yaml(tmp_path, ssh_pubkey)), "arm64") is None


def test_a_binary_vouched_for_only_by_the_sums_file_beside_it_is_refused(tmp_path, ssh_pubkey):
    """The finding itself: a forged binary with a matching sums file passed the bake's check."""
    cluster = load_cluster(cluster_yaml(tmp_path, ssh_pubkey))
    folder = release_folder(tmp_path / "release", b"forged k3s")
    with pytest.raises(CeilError, match=digests.KNOWN[Kubernetes().k3s_version]["arm64"]):
        verified_release_files(cluster, "arm64", folder)


def test_a_sums_file_that_disagrees_with_the_shipped_digest_vouches_for_nothing(tmp_path, ssh_pubkey, monkeypatch):
    """The binary is the release's, but the sums file beside it is not: it cannot vouch for the
    air-gap images it lists."""
    binary = b"the release's binary, in this test"
    version = Kubernetes().k3s_version
    monkeypatch.setitem(digests.KNOWN, version, {"arm64": hashlib.sha256(binary).hexdigest()})
    cluster = load_cluster(cluster_yaml(tmp_path, ssh_pubkey))
    folder = release_folder(tmp_path / "release", binary, listed="c" * 64)
    with pytest.raises(CeilError, match="not the sums file of that binary"):
        verified_release_files(cluster, "arm64", folder)
    release_folder(folder, binary)  # the release's own sums file
    assert set(verified_release_files(cluster, "arm64", folder)) == {"k3s-arm64", "sha256sum-arm64.txt"}


def test_every_shipped_image_digest_belongs_to_a_release_and_architecture_with_a_binary_digest():
    """So `k3s digests --check` compares each of them with the release's sums file."""
    for version, assets in digests.KNOWN_IMAGES.items():
        for asset, digest in assets.items():
            arches = [a for a in ASSETS if asset in (ASSETS[a]["images"] + ext for ext in (".tar", ".tar.gz", ".tar.zst"))]
            assert arches and arches[0] in digests.KNOWN[version], (version, asset)
            assert re.fullmatch(r"[0-9a-f]{64}", digest), (version, asset)


def test_the_default_release_ships_the_images_digest_of_arm64_and_amd64():
    """arm64, the real Pis' architecture, and amd64: `--airgap` with the release's tarball needs no
    sums file, and a forged one is refused whatever sums file lies beside it."""
    for arch in ("arm64", "amd64"):
        assert len(digests.known_image_digest(Kubernetes().k3s_version, f"k3s-airgap-images-{arch}.tar.zst")
                   or "") == 64, arch


@pytest.fixture
def release_pair(monkeypatch):
    """The default release's binary and image tarball, as stand-in bytes whose digests are put in
    ceil's tables for this test."""
    binary, images = b"the release's binary, in this test", b"the release's images, in this test"
    version, tarball = Kubernetes().k3s_version, "k3s-airgap-images-arm64.tar.zst"
    monkeypatch.setitem(digests.KNOWN, version, {"arm64": hashlib.sha256(binary).hexdigest()})
    monkeypatch.setitem(digests.KNOWN_IMAGES, version, {tarball: hashlib.sha256(images).hexdigest()})
    return binary, images, tarball


def test_forged_images_beside_a_forged_sums_file_are_refused(tmp_path, ssh_pubkey, release_pair):
    """The sums file's binary line is public, so a forger can copy it next to a tarball of their
    own: the tarball is checked against ceil's digest, not the sums file's line."""
    binary, images, tarball = release_pair
    cluster = load_cluster(cluster_yaml(tmp_path, ssh_pubkey))
    folder = release_folder(tmp_path / "release", binary)
    forged = b"images of someone else's choosing"
    (folder / tarball).write_bytes(forged)
    with (folder / "sha256sum-arm64.txt").open("a") as sums:
        sums.write(f"{hashlib.sha256(forged).hexdigest()}  {tarball}\n")
    with pytest.raises(CeilError, match="it is not the release's sums file"):
        verified_release_files(cluster, "arm64", folder)
    (folder / tarball).write_bytes(images)  # the release's own tarball beside the forged sums file
    with pytest.raises(CeilError, match="it is not the release's sums file"):
        verified_release_files(cluster, "arm64", folder)
    release_folder(folder, binary)  # the sums file without the tarball's line: ceil's digest alone
    assert set(verified_release_files(cluster, "arm64", folder)) == {"k3s-arm64", "sha256sum-arm64.txt", tarball}
    (folder / tarball).write_bytes(forged)
    with pytest.raises(CeilError, match=f"{tarball} that ceil ships"):
        verified_release_files(cluster, "arm64", folder)


def test_the_releases_other_tarballs_are_still_vouched_for_by_its_sums_file(tmp_path, ssh_pubkey, release_pair):
    """A tarball of the release ceil has no digest for (another compression, here): the sums file
    beside the binary vouches for it, and a wrong line there is refused."""
    binary, images, _ = release_pair
    cluster = load_cluster(cluster_yaml(tmp_path, ssh_pubkey))
    folder = release_folder(tmp_path / "release", binary)
    other = "k3s-airgap-images-arm64.tar.gz"
    (folder / other).write_bytes(images)
    with (folder / "sha256sum-arm64.txt").open("a") as sums:
        sums.write(f"{hashlib.sha256(images).hexdigest()}  {other}\n")
    assert other in verified_release_files(cluster, "arm64", folder)
    (folder / other).write_bytes(b"someone else's images")
    with pytest.raises(CeilError, match="as .* lists it"):
        verified_release_files(cluster, "arm64", folder)


def test_the_releases_images_need_no_sums_file_when_ceil_ships_their_digest(tmp_path, ssh_pubkey, release_pair):
    binary, images, tarball = release_pair
    cluster = load_cluster(cluster_yaml(tmp_path, ssh_pubkey))
    folder = tmp_path / "release"
    folder.mkdir()
    (folder / "k3s-arm64").write_bytes(binary)
    (folder / tarball).write_bytes(images)
    assert set(verified_release_files(cluster, "arm64", folder)) == {"k3s-arm64", tarball}
    files = install.airgap_files(cluster, "arm64", folder)
    assert sorted(Path(p).name for p in files) == sorted(["k3s-arm64", tarball])


def test_a_build_of_your_own_brings_its_own_images_under_its_own_sums_file(tmp_path, ssh_pubkey, release_pair):
    """A pin that is not the release's: the release's image digest is not applied to its images
    (they are the build's), the build's sums file vouches for them."""
    _, _, tarball = release_pair
    build, build_images = b"my own k3s build", b"my own build's images"
    pin = hashlib.sha256(build).hexdigest()
    cluster = load_cluster(cluster_yaml(tmp_path, ssh_pubkey, f"{{k3s_sha256: {pin}}}"))
    folder = release_folder(tmp_path / "release", build)
    (folder / tarball).write_bytes(build_images)
    with (folder / "sha256sum-arm64.txt").open("a") as sums:
        sums.write(f"{hashlib.sha256(build_images).hexdigest()}  {tarball}\n")
    assert tarball in verified_release_files(cluster, "arm64", folder)


def test_a_bake_of_a_release_without_a_digest_writes_nothing(tmp_path, ssh_pubkey):
    """Refused with every other problem, before the first image (the router's comes first)."""
    cluster_yaml(tmp_path, ssh_pubkey, f"{{k3s_version: {UNKNOWN}}}")
    done = subprocess.run([sys.executable, str(REPO / "bake.py"), "--all"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "nothing was baked" in done.stderr and "kubernetes.k3s_sha256" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "secrets").exists()


class _Sums(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def releases(tmp_path):
    """A local stand-in for github.com/k3s-io/k3s/releases on loopback, serving sums files."""
    root = tmp_path / "releases"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Sums, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def publish(root: Path, version: str, arch: str, digest: str, images: str | None = None) -> None:
    """The release's sums file: the binary's line, and its image tarball's (ceil's digest for it
    where ceil ships one, unless `images` says otherwise)."""
    d = root / "download" / version  # the URL's %2B reaches the handler decoded
    d.mkdir(parents=True, exist_ok=True)
    tarball = f"{ASSETS[arch]['images']}.tar.zst"
    images = images or digests.known_image_digest(version, tarball) or "0" * 64
    (d / ASSETS[arch]["sums"]).write_text(f"{images}  {tarball}\n{digest}  {ASSETS[arch]['binary']}\n")


def test_check_agrees_with_the_published_sums_and_names_a_difference(releases, monkeypatch):
    root, url = releases
    for version, arches in digests.KNOWN.items():
        for arch, digest in arches.items():
            publish(root, version, arch, digest)
    assert all(ok for _, ok, _ in digests.check_published(url))
    version, arch = next(iter(digests.KNOWN)), "arm64"
    publish(root, version, arch, "d" * 64)
    bad = [(what, message) for what, ok, message in digests.check_published(url) if not ok]
    assert bad == [(f"{version} {ASSETS[arch]['binary']}", bad[0][1])] and "d" * 64 in bad[0][1]
    monkeypatch.setenv("CEIL_K3S_RELEASES", url)
    done = subprocess.run([sys.executable, str(REPO / "bake.py"), "k3s", "digests", "--check"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "FAIL" in done.stdout and "d" * 64 in done.stdout, done.stdout + done.stderr
    # a tarball digest ceil ships is checked against the release's sums file too
    [(version, images)] = [(v, a) for v, assets in digests.KNOWN_IMAGES.items() for a in assets][:1]
    arch = next(a for a in ASSETS if images.startswith(ASSETS[a]["images"] + ".tar"))
    publish(root, version, arch, digests.KNOWN[version][arch], images="e" * 64)
    bad = [(what, message) for what, ok, message in digests.check_published(url) if not ok]
    assert [what for what, _ in bad] == [f"{version} {images}"] and "e" * 64 in bad[0][1], bad


def test_the_listing_shows_every_shipped_digest():
    done = subprocess.run([sys.executable, str(REPO / "bake.py"), "k3s", "digests"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for arches in [*digests.KNOWN.values(), *digests.KNOWN_IMAGES.values()]:
        for digest in arches.values():
            assert digest in done.stdout


def test_a_pinned_build_needs_its_own_sums_file_to_vouch_for_images(tmp_path, ssh_pubkey):
    """With kubernetes.k3s_sha256 set, a sums file listing another binary (the release's, say)
    vouches for nothing beside it either."""
    binary = b"my own k3s build"
    pin = hashlib.sha256(binary).hexdigest()
    cluster = load_cluster(cluster_yaml(tmp_path, ssh_pubkey, f"{{k3s_version: {UNKNOWN}, k3s_sha256: {pin}}}"))
    folder = release_folder(tmp_path / "release", binary, listed="c" * 64)
    with pytest.raises(CeilError, match="kubernetes.k3s_sha256"):
        verified_release_files(cluster, "arm64", folder)
    release_folder(folder, binary)  # its own sums file
    assert set(verified_release_files(cluster, "arm64", folder)) == {"k3s-arm64", "sha256sum-arm64.txt"}


def test_a_router_bake_refuses_a_forged_pair_in_the_workstations_folder_before_writing(tmp_path, ssh_pubkey):
    """The router's cache is filled from ~/.cache/ceil/k3s/<version>/: a forged binary with a
    matching sums file there is listed with the other problems, and nothing is written."""
    cluster_yaml(tmp_path, ssh_pubkey)
    version = Kubernetes().k3s_version
    release_folder(tmp_path / "k3s" / version, b"forged k3s")
    done = subprocess.run([sys.executable, str(REPO / "bake.py"), "--role", "router"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "CEIL_K3S_CACHE": str(tmp_path / "k3s")})
    said = " ".join(done.stderr.split())
    assert done.returncode == 1 and "nothing was baked" in said, said
    assert digests.KNOWN[version]["arm64"] in said and "Traceback" not in said
    assert not (tmp_path / "out").exists() and not (tmp_path / "secrets").exists()


def test_the_bake_warns_of_a_pin_that_is_not_the_releases(tmp_path, ssh_pubkey):
    """Printed before anything is written (here the bake then stops at a base image that is not
    the flavor's)."""
    cluster_yaml(tmp_path, ssh_pubkey, f"{{k3s_sha256: {'b' * 64}}}")
    (tmp_path / "none.img").write_bytes(b"not the flavor's image")
    done = subprocess.run([sys.executable, str(REPO / "bake.py"), "--all", "--base-image", str(tmp_path / "none.img")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    said = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 1 and "warning:" in said and "is not the published digest of k3s" in said, said
    assert not (tmp_path / "out").exists()


def test_an_images_tarball_nothing_vouches_for_is_left_out_of_the_routers_cache_and_said(tmp_path, ssh_pubkey, monkeypatch):
    """The router's cache used to skip such a tarball without a word (the nodes then pulled every
    image from the internet, unexplained); `--airgap` refuses the same folder outright."""
    from ceil.features import preflight
    from ceil.k3s import cache

    binary = b"my own k3s build"
    pin = hashlib.sha256(binary).hexdigest()
    cluster = load_cluster(cluster_yaml(tmp_path, ssh_pubkey, f"{{k3s_version: {UNKNOWN}, k3s_sha256: {pin}}}"))
    folder = release_folder(tmp_path / "k3s" / UNKNOWN, binary)
    monkeypatch.setenv("CEIL_K3S_CACHE", str(tmp_path / "k3s"))
    assert cache.warnings(cluster, "router") == []
    (folder / "k3s-airgap-images-arm64.tar.zst").write_bytes(b"images nobody lists")
    assert "k3s-airgap-images-arm64.tar.zst" not in " ".join(cache.cache_files(cluster, ["arm64"]))
    said = " ".join(preflight(cluster, ["router"], load_flavor(cluster.flavor)))
    assert f"{folder}: k3s-airgap-images-arm64.tar.zst is not in the router's cache" in said, said
    assert "sha256sum-arm64.txt" in said and "remove the file" in said
    with pytest.raises(CeilError, match="k3s-airgap-images-arm64.tar.zst is not listed"):
        install.airgap_files(cluster, "arm64", folder)
    (folder / "sha256sum-arm64.txt").write_text(
        f"{pin}  k3s-arm64\n{hashlib.sha256(b'images nobody lists').hexdigest()}  k3s-airgap-images-arm64.tar.zst\n")
    assert cache.warnings(cluster, "router") == []
    assert any(p.endswith("k3s-airgap-images-arm64.tar.zst") for p in cache.cache_files(cluster, ["arm64"]))


def test_an_unreachable_release_is_not_checked_rather_than_called_wrong(monkeypatch):
    """Offline, --check ended with "a digest ceil ships is not what the release publishes": a
    false conclusion from a name that did not resolve."""
    monkeypatch.setenv("CEIL_K3S_RELEASES", "http://127.0.0.1:9/releases")
    assert {ok for _, ok, _ in digests.check_published("http://127.0.0.1:9/releases")} == {None}
    done = subprocess.run([sys.executable, str(REPO / "bake.py"), "k3s", "digests", "--check"],
                          capture_output=True, text=True, timeout=120)
    said = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 1 and "not checked" in said and "nothing was compared" in said, said
    assert "FAIL" not in said and "is not what the release publishes" not in said


def test_a_sums_file_that_is_gone_is_a_failure_not_unchecked(releases):
    """The release answered, with 404: that is a finding (moved or withdrawn), not "no internet"."""
    root, url = releases  # nothing published: every sums file answers 404
    assert {ok for _, ok, _ in digests.check_published(url)} == {False}
