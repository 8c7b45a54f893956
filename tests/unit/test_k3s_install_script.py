"""k3s-install.sh run for real (sh, curl, sha256sum) on a scratch root, against HTTP servers on
127.0.0.1 standing in for the router's cache and the upstream release. The "binary" is a
script that would leave a mark if it ever ran: no test may find that mark."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import subprocess
import threading
from pathlib import Path

import pytest

from ceil.k3s.release import ASSETS

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "firstboot/k3s-install/lib/steps/k3s-install.sh"
VERSION = "v1.31.4+k3s1"


def fake_binary(mark: Path, flavor: str = "good") -> bytes:
    return f"#!/bin/sh\n# {flavor}\ntouch {mark}\n".encode()


def release_dir(root: Path, arch: str, binary: bytes) -> Path:
    """A copy of a release's assets: the binary and a sha256sum file listing it (as a forger who
    serves both would write it)."""
    names = ASSETS[arch]
    d = root / "k3s" / VERSION
    d.mkdir(parents=True, exist_ok=True)
    (d / names["binary"]).write_bytes(binary)
    digest = hashlib.sha256(binary).hexdigest()
    other = hashlib.sha256(b"images").hexdigest()
    (d / names["sums"]).write_text(f"{other}  {names['images']}.tar.zst\n{digest}  {names['binary']}\n")
    return d


class Server:
    def __init__(self, directory: Path):
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def servers():
    started: list[Server] = []

    def start(directory: Path) -> Server:
        s = Server(directory)
        started.append(s)
        return s

    yield start
    for s in started:
        s.close()


@pytest.fixture
def node(tmp_path):
    root = tmp_path / "root"
    (root / "usr/local/bin").mkdir(parents=True)
    return root


def run(node: Path, tmp_path: Path, arch="arm64", sha="", cache="http://127.0.0.1:9/none",
        upstream="http://127.0.0.1:9/none", airgap=None) -> subprocess.CompletedProcess:
    env_file = tmp_path / "install.env"
    env_file.write_text(
        f"K3S_VERSION='{VERSION}'\nK3S_SHA256='{sha}'\nK3S_AIRGAP_DIR='{airgap or tmp_path / 'no-airgap'}'\n"
        f"K3S_CACHE_URL='{cache}'\nK3S_UPSTREAM_URL='{upstream}'\n"
    )
    env = {**os.environ, "CEIL_ROOT": str(node), "CEIL_K3S_INSTALL_ENV": str(env_file), "K3S_ARCH": arch,
           "CEIL_LIB": str(Path(__file__).resolve().parents[2] / "firstboot/common/lib")}
    return subprocess.run(["sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)


def leftovers(node: Path) -> list[str]:
    return sorted(p.name for p in (node / "usr/local/bin").iterdir() if p.name != "k3s")


def test_installs_from_the_router_cache_verified_by_the_baked_pin(node, tmp_path, servers):
    mark = tmp_path / "ran"
    binary = fake_binary(mark)
    cache = servers(tmp_path / "cache")
    release_dir(tmp_path / "cache", "arm64", binary)
    result = run(node, tmp_path, sha=hashlib.sha256(binary).hexdigest(), cache=f"{cache.url}/k3s/{VERSION}")
    assert result.returncode == 0, result.stderr
    installed = node / "usr/local/bin/k3s"
    assert installed.read_bytes() == binary and os.access(installed, os.X_OK)
    assert "verified against" in result.stderr and "router cache" in result.stderr
    assert leftovers(node) == [] and not mark.exists()
    record = (node / "var/lib/ceil/k3s-install.verified").read_text()
    assert hashlib.sha256(binary).hexdigest() in record and "router cache" in record


@pytest.mark.parametrize("arch", ["armhf", "amd64"])
def test_asset_names_per_architecture(node, tmp_path, servers, arch):
    binary = fake_binary(tmp_path / "ran", arch)
    cache = servers(tmp_path / "cache")
    release_dir(tmp_path / "cache", arch, binary)
    result = run(node, tmp_path, arch=arch, sha=hashlib.sha256(binary).hexdigest(), cache=f"{cache.url}/k3s/{VERSION}")
    assert result.returncode == 0, result.stderr
    assert ASSETS[arch]["binary"] in result.stderr
    assert (node / "usr/local/bin/k3s").read_bytes() == binary


def test_wrong_digest_deletes_the_download_and_asks_for_a_retry(node, tmp_path, servers):
    mark = tmp_path / "ran"
    bad = fake_binary(mark, "tampered")
    cache = servers(tmp_path / "cache")
    release_dir(tmp_path / "cache", "arm64", bad)
    pinned = hashlib.sha256(fake_binary(mark, "good")).hexdigest()
    result = run(node, tmp_path, sha=pinned, cache=f"{cache.url}/k3s/{VERSION}")
    assert result.returncode == 1, result.stderr  # transient: the unit retries
    assert "SHA256 MISMATCH" in result.stderr
    assert pinned in result.stderr and hashlib.sha256(bad).hexdigest() in result.stderr
    assert not (node / "usr/local/bin/k3s").exists()
    assert leftovers(node) == [] and not mark.exists()


def test_an_image_without_a_pin_installs_nothing_from_any_source(node, tmp_path, servers):
    """Issue 18 #1: a LAN host served a binary with a matching sums file, and it was installed.
    A bake always pins a digest now; an install.env without one trusts no source at all, the
    baked bundle included, and says to re-bake (exit 3: not retried)."""
    mark = tmp_path / "ran"
    forged = fake_binary(mark, "forged")
    cache = servers(tmp_path / "cache")
    release_dir(tmp_path / "cache", "arm64", forged)  # its sums file matches the forged binary
    airgap = release_dir(tmp_path / "airgap", "arm64", forged)
    result = run(node, tmp_path, cache=f"{cache.url}/k3s/{VERSION}", upstream=f"{cache.url}/k3s/{VERSION}",
                 airgap=airgap)
    assert result.returncode == 3, result.stderr
    assert "no k3s digest was baked" in result.stderr and "re-bake" in result.stderr
    assert not (node / "usr/local/bin/k3s").exists() and leftovers(node) == [] and not mark.exists()


def test_falls_back_to_upstream_when_the_cache_lacks_it(node, tmp_path, servers):
    binary = fake_binary(tmp_path / "ran")
    cache = servers(tmp_path / "empty-cache")
    (tmp_path / "empty-cache").mkdir()
    upstream = servers(tmp_path / "upstream")
    release_dir(tmp_path / "upstream", "arm64", binary)
    result = run(node, tmp_path, sha=hashlib.sha256(binary).hexdigest(),
                 cache=f"{cache.url}/k3s/{VERSION}", upstream=f"{upstream.url}/k3s/{VERSION}")
    assert result.returncode == 0, result.stderr
    assert "upstream release" in result.stderr
    assert (node / "usr/local/bin/k3s").read_bytes() == binary


def test_baked_airgap_bundle_comes_first_and_its_images_are_placed(node, tmp_path, servers):
    binary = fake_binary(tmp_path / "ran")
    airgap = release_dir(tmp_path / "airgap", "arm64", binary)
    images = airgap / "k3s-airgap-images-arm64.tar.zst"
    images.write_bytes(b"images")
    result = run(node, tmp_path, sha=hashlib.sha256(binary).hexdigest(), airgap=airgap)  # cache and upstream unreachable
    assert result.returncode == 0, result.stderr
    assert "air-gap bundle" in result.stderr
    assert (node / "var/lib/rancher/k3s/agent/images/k3s-airgap-images-arm64.tar.zst").read_bytes() == b"images"


def test_corrupt_airgap_bundle_is_permanent(node, tmp_path):
    airgap = release_dir(tmp_path / "airgap", "arm64", fake_binary(tmp_path / "ran", "bad"))
    result = run(node, tmp_path, sha=hashlib.sha256(b"good").hexdigest(), airgap=airgap)
    assert result.returncode == 3, result.stderr
    assert not (node / "usr/local/bin/k3s").exists()


def test_no_source_reachable_is_transient(node, tmp_path):
    result = run(node, tmp_path, sha=hashlib.sha256(b"k3s").hexdigest())
    assert result.returncode == 1
    assert "retrying" in result.stderr


def test_rerun_with_a_verified_binary_downloads_nothing(node, tmp_path):
    binary = fake_binary(tmp_path / "ran")
    (node / "usr/local/bin/k3s").write_bytes(binary)
    (node / "usr/local/bin/.k3s.ceil-download").write_bytes(b"half a download from before a power cut")
    result = run(node, tmp_path, sha=hashlib.sha256(binary).hexdigest())
    assert result.returncode == 0, result.stderr
    assert "already installed" in result.stderr
    assert leftovers(node) == []
    assert "verified against the digest pinned at bake time" in (node / "var/lib/ceil/k3s-install.verified").read_text()


def test_a_refused_download_leaves_no_record(node, tmp_path, servers):
    cache = servers(tmp_path / "cache")
    release_dir(tmp_path / "cache", "arm64", fake_binary(tmp_path / "ran"))
    result = run(node, tmp_path, sha=hashlib.sha256(b"something else").hexdigest(), cache=f"{cache.url}/k3s/{VERSION}")
    assert result.returncode == 1, result.stderr
    assert not (node / "var/lib/ceil/k3s-install.verified").exists()
