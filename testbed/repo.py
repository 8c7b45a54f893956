"""The local apt repository that stands in for the Debian archive during the QEMU tests.

Owns: a per-build signing key (the private half never leaves the build's temporary directory; the
public half goes into the test bed's trusted keys), and a repository with Debian's layout
(`dists/<suite>/main/binary-<arch>/Packages`, `pool/main/`) holding the role packages and their
dependencies, so that `deb <apt_mirror> <suite> main` works unchanged and signed, exactly as a
real mirror would. The harness serves `<repo>/` over HTTP; the guests see it as
http://10.0.2.100/debian.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

KEY_UID = "ceil test bed repository (never trust this outside a test bed)"


def _gpg(home: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    cmd = ["gpg", "--batch", "--quiet", "--homedir", str(home), *args]
    proc = subprocess.run(cmd, capture_output=True, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"gpg failed: {' '.join(cmd)}\n{proc.stderr.decode(errors='replace')}")
    return proc


def make_key(home: Path) -> str:
    """Create a signing key in `home`; return the ASCII-armored public key."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    _gpg(home, "--passphrase", "", "--quick-gen-key", KEY_UID, "ed25519", "sign", "never")
    return _gpg(home, "--armor", "--export", KEY_UID).stdout.decode()


def build(repo: Path, debs: Path, suite: str, arch: str, components: list[str], gpg_home: Path) -> int:
    """Lay out `debs` as a signed Debian-style repository under `repo/debian`; return the count."""
    root = repo / "debian"
    pool = root / "pool" / "main"
    pool.mkdir(parents=True, exist_ok=True)
    count = 0
    for deb in sorted(debs.glob("*.deb")):
        shutil.move(str(deb), pool / deb.name)
        count += 1
    dist = root / "dists" / suite
    for comp in components:
        bindir = dist / comp / f"binary-{arch}"
        bindir.mkdir(parents=True, exist_ok=True)
        packages = subprocess.run(
            ["apt-ftparchive", "packages", f"pool/{comp}"], cwd=root, capture_output=True, check=True
        ).stdout
        (bindir / "Packages").write_bytes(packages)
        (bindir / "Packages.gz").write_bytes(gzip.compress(packages, mtime=0))
    release = subprocess.run(
        [
            "apt-ftparchive",
            "-o", "APT::FTPArchive::Release::Origin=ceil-testbed",
            "-o", "APT::FTPArchive::Release::Label=ceil-testbed",
            "-o", f"APT::FTPArchive::Release::Suite={suite}",
            "-o", f"APT::FTPArchive::Release::Codename={suite}",
            "-o", f"APT::FTPArchive::Release::Architectures={arch}",
            "-o", f"APT::FTPArchive::Release::Components={' '.join(components)}",
            "release", ".",
        ],
        cwd=dist, capture_output=True, check=True,
    ).stdout
    (dist / "Release").write_bytes(release)
    _gpg(gpg_home, "--yes", "--clearsign", "-o", str(dist / "InRelease"), str(dist / "Release"))
    _gpg(gpg_home, "--yes", "--armor", "--detach-sign", "-o", str(dist / "Release.gpg"), str(dist / "Release"))
    (repo / "ceil-testbed.asc").write_text(_gpg(gpg_home, "--armor", "--export", KEY_UID).stdout.decode())
    return count
