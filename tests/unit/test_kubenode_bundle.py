"""The k3s stand-in's packing (testbed/kubenode.py): one self-extracting file that answers
--version like k3s and carries the starter, the binaries and the pause image in an OCI layout
containerd imports. The build itself is `make kubenode`; here a small fake build is packed."""

from __future__ import annotations

import gzip
import io
import json
import re
import subprocess
import tarfile
from pathlib import Path

import pytest

from testbed import kubenode


@pytest.fixture
def fake_build(tmp_path, monkeypatch):
    build = tmp_path / "kubenode" / "v1.36.1+k3s1-amd64-0123456789ab"
    (build / "bin").mkdir(parents=True)
    (build / "bin" / "kubelet").write_bytes(b"\x7fELF not really")
    (build / "manifest.json").write_text('{"k3s": "v1.36.1+k3s1"}')
    r = {"arch": "amd64", "go": "go1.26.8"}
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setattr(kubenode, "_run", lambda step, cmd, cwd, env, logfile, timings: (cwd / "pause").write_bytes(b"#!pause"))
    kubenode._pause_image(r, work, build / "images", tmp_path / "build.log", {})
    monkeypatch.setattr(kubenode, "lookup", lambda arch, stamp=None: build)
    return build


def test_the_bundle_says_its_version_and_unpacks_the_starter_the_binaries_and_the_pause_image(fake_build, tmp_path):
    dest = kubenode.bundle("amd64", "v1.36.1+k3s9", tmp_path / "k3s")
    assert dest.stat().st_mode & 0o111
    out = subprocess.run([str(dest), "--version"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("k3s version v1.36.1+k3s9 ") and "stand-in" in out
    skip = int(re.search(r"tail -n \+(\d+) ", dest.read_text(errors="replace")).group(1))
    listing = subprocess.run(f"tail -n +{skip} {dest} | zstd -dcq | tar -t", shell=True, capture_output=True,
                             text=True, check=True).stdout.split()
    assert {"k3s_standin.py", "bin/kubelet", "images/pause.tar"} <= set(listing)
    # The first payload byte is where the header says: nothing of the header is in the archive.
    head = dest.read_bytes().split(b"\n", skip - 1)[skip - 1][:4]
    assert head == b"\x28\xb5\x2f\xfd"  # zstd's magic number


def test_the_pause_image_is_an_oci_layout_containerd_names_and_runs(fake_build):
    with tarfile.open(fake_build / "images" / "pause.tar") as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    index = json.loads(files["index.json"])
    (desc,) = index["manifests"]
    assert desc["annotations"]["io.containerd.image.name"] == "docker.io/rancher/mirrored-pause:3.6"
    assert desc["platform"] == {"os": "linux", "architecture": "amd64"}
    manifest = json.loads(files[f"blobs/sha256/{desc['digest'].split(':')[1]}"])
    config = json.loads(files[f"blobs/sha256/{manifest['config']['digest'].split(':')[1]}"])
    assert config["config"]["Cmd"] == ["/pause"] and config["architecture"] == "amd64"
    (layer,) = manifest["layers"]
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(files[f"blobs/sha256/{layer['digest'].split(':')[1]}"]))) as t:
        member = t.getmember("pause")
    assert member.mode == 0o755


def test_another_kubernetes_release_than_the_default_is_refused_with_the_reason():
    with pytest.raises(kubenode.BuildError, match="another Kubernetes release"):
        kubenode.recipe("amd64", "v1.37.0+k3s1")


def test_a_cross_compiler_without_its_c_library_is_named_before_the_build(monkeypatch, tmp_path):
    """gcc-aarch64-linux-gnu only recommends libc6-dev-arm64-cross, and setup-host.sh installs
    without recommends: cgo's first file then failed minutes into the build, naming a header."""
    fake_cc = tmp_path / "aarch64-linux-gnu-gcc"  # a cross compiler that finds no stdint.h
    fake_cc.write_text("#!/bin/sh\necho 'fatal error: bits/libc-header-start.h: No such file' >&2\nexit 1\n")
    fake_cc.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{__import__('os').environ['PATH']}")
    monkeypatch.setattr(kubenode, "host_arch", lambda: "amd64")
    with pytest.raises(kubenode.BuildError, match="apt install libc6-dev-arm64-cross"):
        kubenode.check_tools("arm64")
    setup = (Path(__file__).resolve().parents[2] / "scripts" / "setup-host.sh").read_text()
    assert "libc6-dev-arm64-cross" in setup.split("TEST_PKGS=", 1)[1].split('"', 2)[1]
