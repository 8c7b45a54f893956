"""The local apt repository that stands in for the Debian archive during the QEMU tests.

Owns: the test bed's signing key (made with the image, whose apt trusts it; kept in the cache so
later repository builds can sign; a throwaway key that nothing outside a test bed trusts), the
download of the role packages with their dependencies (the host's apt, configured for the image's
arch and dpkg status, so it fetches exactly what the image lacks: no chroot, no emulation, seconds
not minutes), and a repository with Debian's layout
(`dists/<suite>/main/binary-<arch>/Packages`, `pool/main/`) holding the role packages and their
dependencies, so that `deb <apt_mirror> <suite> main` works unchanged and signed, exactly as a
real mirror would. The harness serves `<repo>/` over HTTP; the guests see it as
http://10.0.2.100/debian.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

KEY_UID = "ceil test bed repository (never trust this outside a test bed)"


@contextmanager
def short_home(home: Path):
    """gpg-agent puts its sockets in the home directory when /run/user/<uid> is missing (root in
    CI), and a socket path is limited to ~108 bytes: go through a short symlink under /tmp."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ceil-gpg-", dir="/tmp") as tmp:
        link = Path(tmp) / "h"
        link.symlink_to(home.resolve())
        try:
            yield link
        finally:
            stop_agent(link)


def _gpg(home: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    cmd = ["gpg", "--batch", "--quiet", "--homedir", str(home), *args]
    proc = subprocess.run(cmd, capture_output=True, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"gpg failed: {' '.join(cmd)}\n{proc.stderr.decode(errors='replace')}")
    return proc


def make_key(home: Path) -> str:
    """Create a signing key in `home`; return the ASCII-armored public key."""
    with short_home(home) as h:
        _gpg(h, "--passphrase", "", "--quick-gen-key", KEY_UID, "ed25519", "sign", "never")
        return _gpg(h, "--armor", "--export", KEY_UID).stdout.decode()


def stop_agent(home: Path) -> None:
    """gpg leaves an agent running per home directory; the build must not leave processes."""
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True)


def download(work: Path, debs: Path, *, status: Path, arch: str, mirror: str, suite: str,
             components: list[str], packages: list[str], log: Path) -> None:
    """Download `packages` + dependencies + recommends, as the image's apt would need them.

    Recommends too: the guest's apt installs them by default, so they must be in the repo.
    """
    d = work / "apt"
    for sub in ("etc/apt/apt.conf.d", "etc/apt/preferences.d", "etc/apt/sources.list.d", "etc/apt/trusted.gpg.d",
                "var/lib/apt/lists/partial", "var/cache/apt/archives/partial", "var/lib/dpkg"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(status, d / "var/lib/dpkg/status")
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    (d / "etc/apt/sources.list").write_text(
        f"deb [arch={arch} signed-by={keyring}] {mirror} {suite} {' '.join(components)}\n")
    conf = d / "apt.conf"
    conf.write_text(
        f'Dir "{d}/";\nAPT::Architecture "{arch}";\nAPT::Architectures "{arch}";\n'
        'APT::Install-Recommends "true";\nAcquire::Retries "3";\nAcquire::Languages "none";\n'
        'Dir::Etc::Trusted "/dev/null";\nDir::Etc::TrustedParts "/dev/null";\n'
    )
    env = {**os.environ, "APT_CONFIG": str(conf), "DEBIAN_FRONTEND": "noninteractive"}
    with open(log, "ab") as out:
        for cmd in (["apt-get", "update"], ["apt-get", "--yes", "--download-only", "install", *packages]):
            out.write(("$ " + " ".join(cmd) + "\n").encode())
            out.flush()
            if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env).returncode != 0:
                tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
                raise RuntimeError(f"downloading the role packages failed ({' '.join(cmd[:2])}); {log}:\n{tail}")
    debs.mkdir(parents=True, exist_ok=True)
    for deb in (d / "var/cache/apt/archives").glob("*.deb"):
        shutil.move(str(deb), debs / deb.name)


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
    _sign(dist, gpg_home)
    with short_home(gpg_home) as h:
        (repo / "ceil-testbed.asc").write_text(_gpg(h, "--armor", "--export", KEY_UID).stdout.decode())
    return count


def _sign(dist: Path, gpg_home: Path, when: int | None = None) -> None:
    """InRelease and Release.gpg for dist/Release, made at `when` (seconds since the epoch) if given."""
    faked = ["--faked-system-time", f"{when}!"] if when is not None else []
    with short_home(gpg_home) as h:
        _gpg(h, *faked, "--yes", "--clearsign", "-o", str(dist / "InRelease"), str(dist / "Release"))
        _gpg(h, *faked, "--yes", "--armor", "--detach-sign", "-o", str(dist / "Release.gpg"), str(dist / "Release"))


def signed_at(repo: Path, dest: Path, gpg_home: Path, when: int) -> Path:
    """The `dists/` of the repository at `repo` as the archive's would be if it was last signed at
    `when`: its Release files dated and signed then (apt and sqv refuse both while a guest's clock
    is earlier). Returns `dest`, to be served as /debian/dists/ beside the original pool."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(repo / "debian" / "dists", dest)
    date = time.strftime("%a, %d %b %Y %H:%M:%S UTC", time.gmtime(when))
    for dist in dest.iterdir():
        release = dist / "Release"
        lines = [f"Date: {date}" if line.startswith("Date:") else line for line in release.read_text().splitlines()]
        release.write_text("\n".join(lines) + "\n")
        _sign(dist, gpg_home, when)
    return dest
