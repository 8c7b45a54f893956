"""The first-boot cache: a run whose inputs did not change starts from the last verified first boot.

Under TCG the suite's time goes into the guests' first boots (the router's, with three power
cuts, is ~20 min). Their result is a function of the inputs: the test bed, the code that bakes
and first-boots the machines, the harness, the test cluster.yaml and the run's settings. So, like
the test-bed image, it is cached outside the checkout, keyed by a hash of those inputs:

  <CEIL_CACHE>/firstboot/<key>/
      manifest.json      when, which run, what the key was made of, first-boot timings
      state.json         what the harness must give back: the MAC seed, the fake Cloudflare
      disks/<role>.img   each machine's disk just after it reached ceil-firstboot.target
      disks/<role>.<name>.img  its USB drives at that instant (the router's thumb drive)
      workdir/           the run's SSH key, secrets/ and bake output (not the images)
      logs/              the first boot's serial console logs, for reading later

A cold run records an entry (`Recorder`): each machine's disk is copied the moment it first
reaches ceil-firstboot.target, before any check changes it (after a `sync` in the guest, with
QEMU paused for the copy: one instant of the disk, and no jump in the guest's clock). The entry
is committed only if the session ran the first-boot test and nothing failed. A warm run (`lookup` finds the key)
boots copies of those disks instead of baking: what it skips is exactly what the entry proved,
and every check still runs against booted machines. A change to any input is a new key, hence
a cold run. CEIL_E2E_FRESH=1 ignores the cache (and records a new entry).

What counts as an input: every file git tracks (or would track) in the checkout, except the ones
that cannot change what a guest's disk holds after first boot (GUEST_NEUTRAL: docs, the unit
tests, the check functions); plus the run's settings (SETTINGS), the host's QEMU and Python, and
whether the run can make the WireGuard client (root with wg-quick).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .cluster import REPO, log
from .seed import copy_sparse
from .vm import QEMU, GuestError

SETTINGS = ("CEIL_E2E_ARCH", "CEIL_E2E_FLAVOR", "CEIL_E2E_OVERRIDES", "CEIL_E2E_BAKE_ARGS",
            "CEIL_E2E_CPUS", "CEIL_E2E_MEM_MIB")
# Paths (regular expressions on the repository-relative path) whose content cannot change a
# guest's disk after first boot. The first-boot test itself is NOT neutral: an entry stands for
# "this first boot passed that test".
GUEST_NEUTRAL = re.compile(
    r"^(docs/|bench/|\.ci/|tests/unit/|tests/piwatch/"
    r"|tests/infra/test_[^/]*\.py$"
    r"|tests/e2e/test_(?!power_cut_firstboot\.py$)[^/]*\.py$"
    r"|.*\.md$|LICENSE$|Makefile$|\.gitignore$)"
)
KEEP = 2  # entries kept; each is the machines' disks (~1 GiB each)
LAYOUT = 1  # bump when the entry layout changes


def source_files(repo: Path = REPO) -> list[str] | None:
    """Repository-relative paths of the checkout's files (tracked or not ignored); None without git."""
    try:
        out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return sorted({p for p in out.decode().split("\0") if p})


def inputs_key(testbed_dir: Path, arch: str, env: dict, repo: Path = REPO) -> tuple[str, dict] | None:
    """(key, what it was made of) for this checkout and these settings; None if it cannot be known."""
    files = source_files(repo)
    if files is None:
        return None
    h = hashlib.sha256()
    counted = 0
    for rel in files:
        if GUEST_NEUTRAL.match(rel):
            continue
        path = repo / rel
        if not path.is_file():  # deleted in the working tree but still in the index
            continue
        h.update(rel.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
        counted += 1
    qemu = subprocess.run([QEMU[arch][0], "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    parts = {
        "layout": LAYOUT,
        "testbed": testbed_dir.resolve().name,  # <flavor>-<arch>-<recipe hash>
        "k3s_standin": _standin_build(arch),  # <k3s version>-<arch>-<recipe hash>: what the nodes run
        "settings": {k: env.get(k, "") for k in SETTINGS},
        "qemu": qemu,
        "python": sys.version.split()[0],
        "vpn_client": os.geteuid() == 0 and shutil.which("wg-quick") is not None,
        "files": counted,
        "files_sha256": h.hexdigest(),
    }
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    return key, parts


def _standin_build(arch: str) -> str:
    from testbed import kubenode

    from .fakes import real_cache

    with real_cache():
        build = kubenode.lookup(arch)
    return build.name if build else ""


@dataclass
class Entry:
    dir: Path

    @property
    def manifest(self) -> dict:
        return json.loads((self.dir / "manifest.json").read_text())

    @property
    def state(self) -> dict:
        return json.loads((self.dir / "state.json").read_text())

    def disk(self, role: str) -> Path:
        return self.dir / "disks" / f"{role}.img"

    def describe(self) -> str:
        m = self.manifest
        return f"{self.dir.name} (recorded {m['recorded']} by run {m['artifacts']})"

    def restore_workdir(self, workdir: Path) -> None:
        """The SSH key, secrets and bake output of the recorded run, into a new work directory."""
        shutil.copytree(self.dir / "workdir", workdir, dirs_exist_ok=True, symlinks=True)

    def restore_disks(self, out: Path, roles: list[str]) -> None:
        out.mkdir(parents=True, exist_ok=True)
        for role in roles:
            copy_sparse(self.disk(role), out / f"ceil-{role}.img")
            for drive in self.drives(role):  # ceil-router.usb.img, as the harness names it
                copy_sparse(drive, out / f"ceil-{drive.name}")

    def drives(self, role: str) -> list[Path]:
        """`role`'s USB drives as they were after its first boot (disks/<role>.<name>.img)."""
        return sorted((self.dir / "disks").glob(f"{role}.*.img"))

    def restore_logs(self, artifacts: Path) -> None:
        for log_file in (self.dir / "logs").glob("*"):
            shutil.copy(log_file, artifacts / f"firstboot-cache.{log_file.name}")


def root(cache: str) -> Path:
    return Path(cache) / "firstboot"


def lookup(cache: str, key: str, roles: list[str] | None = None) -> Entry | None:
    """The committed entry for `key` with a disk for every role (default: every recorded role),
    unless CEIL_E2E_FRESH is set."""
    if os.environ.get("CEIL_E2E_FRESH"):
        log("CEIL_E2E_FRESH set: not reusing a cached first boot")
        return None
    entry = Entry(root(cache) / key)
    if not (entry.dir / "manifest.json").is_file():
        log(f"first-boot cache: no entry for {key}; booting from scratch")
        return None
    missing = [r for r in roles or entry.manifest["roles"] if not entry.disk(r).is_file()]
    if missing:
        log(f"first-boot cache {key}: no disk for {', '.join(missing)}; booting from scratch")
        return None
    os.utime(entry.dir)  # most recently used: kept by prune()
    return entry


class Recorder:
    """Records one cluster's first boot into <cache>/firstboot/<key>.partial, then commits it."""

    def __init__(self, cache: str, key: str, parts: dict, roles: list[str]):
        self.final = root(cache) / key
        self.dir = root(cache) / f"{key}.partial-{os.getpid()}"
        self.parts = parts
        self.roles = list(roles)
        self.saved: dict[str, dict] = {}
        self.state: dict = {}
        self.verified = False  # set by the first-boot test when it passed
        self.broken: str | None = None  # why this run cannot record (disk full, copy failed, ...)
        remove_stale(root(cache))
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True, mode=0o700)  # the disks hold the run's secrets
        self.dir.chmod(0o700)  # (mkdir's mode is masked by the umask)
        (self.dir / "disks").mkdir()
        (self.dir / "logs").mkdir()

    def save_machine(self, cluster, role: str) -> None:
        """Copy `role`'s disk as it is now (just after its first boot), once."""
        if role in self.saved or self.broken:
            return
        m = cluster.machines[role]
        t0 = time.monotonic()
        try:
            cluster.ssh.run(role, "sync", timeout=120, check=True)
            disks = {m.guest.image: f"{role}.img"}
            for drive in m.guest.drives:  # out/ceil-router.usb.img -> disks/router.usb.img
                disks[drive] = drive.name.removeprefix("ceil-")
            need = sum(_allocated(d) for d in disks) * 2  # this copy and headroom for the run itself
            free = shutil.disk_usage(self.dir).free
            if free < need:
                raise OSError(f"{free >> 20} MiB free in {self.dir.parent}, {need >> 20} MiB wanted")
            # QEMU paused: the copy is one instant of the disks, not a smear of several.
            with m.guest.paused():
                for disk, name in disks.items():
                    copy_sparse(disk, self.dir / "disks" / name)
                if role == "router" and cluster.extras.cloudflare is not None:
                    # The fake internet remembers the first boot too (the DDNS checks count its
                    # writes); taken in the same instant as the disk that holds the router's side.
                    self.state["cloudflare"] = cluster.extras.cloudflare.export_state()
            shutil.copy(m.guest.serial_log, self.dir / "logs" / m.guest.serial_log.name)
        except (OSError, subprocess.CalledProcessError, AssertionError, GuestError) as exc:
            self.broken = f"{role}: {exc}"
            log(f"first-boot cache: not recording this run ({self.broken})")
            return
        self.saved[role] = dict(m.timings)
        log(f"first-boot cache: saved {role}'s disk in {time.monotonic() - t0:.0f}s")

    def commit(self, cluster, failed: bool) -> Entry | None:
        """Publish the entry if the run proved it: first-boot test passed, no failure, every disk."""
        why = (self.broken or ("the session did not pass (a failed test, or interrupted)" if failed else None)
               or (None if self.verified else "the first-boot test did not pass in this run")
               or (None if set(self.roles) <= set(self.saved) else
                   f"not every machine finished its first boot ({sorted(set(self.roles) - set(self.saved))} missing)"))
        if why:
            log(f"first-boot cache: nothing recorded: {why}")
            shutil.rmtree(self.dir, ignore_errors=True)
            return None
        work = self.dir / "workdir"
        work.mkdir()
        for name in ("id_ed25519", "id_ed25519.pub", "cluster.yaml"):
            shutil.copy2(cluster.workdir / name, work / name)
        for sub in ("secrets", "out"):
            shutil.copytree(cluster.workdir / sub, work / sub, symlinks=True,
                            ignore=shutil.ignore_patterns("*.img"))
        self.state["run_id"] = cluster.run_id
        (self.dir / "state.json").write_text(json.dumps(self.state, indent=1))
        (self.dir / "manifest.json").write_text(json.dumps({
            "recorded": time.strftime("%Y-%m-%d %H:%M:%S"), "artifacts": str(cluster.artifacts),
            "roles": self.roles, "timings": self.saved, "inputs": self.parts}, indent=1))
        shutil.rmtree(self.final, ignore_errors=True)
        os.rename(self.dir, self.final)
        prune(self.final.parent)
        log(f"first-boot cache: recorded {self.final}")
        return Entry(self.final)

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def remove_stale(parent: Path) -> None:
    """Partial entries of runs that died (kill -9, OOM) go; live runs' are left alone."""
    for d in parent.glob("*.partial-*"):
        try:
            os.kill(int(d.name.rsplit("-", 1)[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (OSError, ValueError):
            pass


def prune(parent: Path, keep: int = KEEP) -> None:
    entries = sorted((d for d in parent.iterdir() if d.is_dir() and ".partial-" not in d.name),
                     key=lambda d: d.stat().st_mtime, reverse=True)
    for d in entries[keep:]:
        log(f"first-boot cache: removing old entry {d.name}")
        shutil.rmtree(d, ignore_errors=True)
