"""Fast tests of the first-boot cache (ceil_e2e/firstboot_cache.py), no VM: run by `make test`.

What must hold for a warm e2e run to be honest: the key changes with anything that could change
a guest's first boot and with nothing else; an entry is published only when its run proved it;
a restore gives back exactly what was recorded, the fake internet's memory included.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "e2e"), str(REPO / "tests" / "infra")]

from ceil_e2e import firstboot_cache as fbc  # noqa: E402
from ceil_e2e import vm  # noqa: E402
from tests.fakes.cloudflare import FakeCloudflare  # noqa: E402

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def make_repo(path: Path) -> Path:
    files = {
        "firstboot/router/steps/dnsmasq.sh": "echo dnsmasq\n",
        "ceil/bake.py": "print('bake')\n",
        "tests/e2e/cluster.yaml": "name: t\n",
        "tests/e2e/test_power_cut_firstboot.py": "def test(): pass\n",
        "tests/e2e/test_lifecycle.py": "def test(): pass\n",
        "tests/infra/test_baseline.py": "def test(): pass\n",
        "tests/infra/ceil_infra/converge.py": "X = 1\n",
        "tests/unit/test_config.py": "def test(): pass\n",
        "docs/testing.md": "# testing\n",
        "README.md": "# ceil\n",
    }
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    subprocess.run(["git", "-C", str(path), "add", "."], check=True)
    return path


def key(repo: Path, tb: Path, env: dict | None = None) -> str:
    return fbc.inputs_key(tb, "amd64", env or {}, repo)[0]


@needs_git
def test_the_key_follows_what_shapes_a_first_boot_and_nothing_else(tmp_path):
    repo = make_repo(tmp_path / "repo")
    tb = tmp_path / "testbed-ubuntu-amd64-aaaa"
    tb.mkdir()
    base = key(repo, tb)
    assert key(repo, tb) == base, "the same inputs must give the same key"

    # Docs, unit tests and the check functions cannot change a guest's disk: same key.
    for rel in ("docs/testing.md", "README.md", "tests/unit/test_config.py", "tests/infra/test_baseline.py",
                "tests/e2e/test_lifecycle.py"):
        (repo / rel).write_text((repo / rel).read_text() + "# edited\n")
        assert key(repo, tb) == base, f"{rel} changed the key"

    # Anything that bakes or first-boots a machine, or judges its first boot: a new key.
    changed = set()
    for rel in ("firstboot/router/steps/dnsmasq.sh", "ceil/bake.py", "tests/e2e/cluster.yaml",
                "tests/e2e/test_power_cut_firstboot.py", "tests/infra/ceil_infra/converge.py"):
        before = (repo / rel).read_text()
        (repo / rel).write_text(before + "# edited\n")
        k = key(repo, tb)
        assert k != base, f"{rel} did not change the key"
        changed.add(k)
        (repo / rel).write_text(before)
        assert key(repo, tb) == base
    assert len(changed) == 5

    # A new, not yet committed file counts as well (git would track it).
    (repo / "firstboot" / "router" / "steps" / "new.sh").write_text("echo new\n")
    assert key(repo, tb) != base
    (repo / "firstboot" / "router" / "steps" / "new.sh").unlink()

    # Another test-bed recipe or other run settings: a new key.
    other_tb = tmp_path / "testbed-ubuntu-amd64-bbbb"
    other_tb.mkdir()
    assert key(repo, other_tb) != base
    assert key(repo, tb, {"CEIL_E2E_OVERRIDES": "{ddns: {enabled: false}}"}) != base
    assert key(repo, tb, {"CEIL_E2E_UNRELATED": "x"}) == base


def test_no_git_no_key(tmp_path):
    assert fbc.inputs_key(tmp_path, "amd64", {}, tmp_path / "not-a-repo") is None


class FakeGuest:
    """A real QEMU with no machine in it (`-M none`, so its QMP pause is real) and a sparse disk.

    Two QMP sockets: `qmp_socket` for the recorder, `observer` for the test to ask the state."""

    def __init__(self, path: Path, name: str, drives: tuple[str, ...] = ()):
        self.image = path / f"{name}.img"
        with open(self.image, "wb") as f:
            f.truncate(64 << 20)
            f.seek(1 << 20)
            f.write(b"first boot of " + name.encode())
        self.drives = tuple(path / f"ceil-{name}.{d}.img" for d in drives)  # as cluster.usb_drives names them
        for drive in self.drives:
            with open(drive, "wb") as f:
                f.truncate(32 << 20)
                f.seek(2 << 20)
                f.write(b"registry on " + drive.name.encode())
        self.serial_log = path / f"{name}.serial.log"
        self.serial_log.write_text(f"{name} booted\n")
        self._sockets = Path(tempfile.mkdtemp(prefix="ceil-qmp-"))  # short: unix socket paths
        self.qmp_socket, self.observer = self._sockets / "qmp", self._sockets / "observer"
        self.proc = subprocess.Popen(["qemu-system-x86_64", "-M", "none", "-nodefaults", "-display", "none",
                                      "-qmp", f"unix:{self.qmp_socket},server=on,wait=off",
                                      "-qmp", f"unix:{self.observer},server=on,wait=off"])
        deadline = time.monotonic() + 30
        while not (self.qmp_socket.exists() and self.observer.exists()):
            assert time.monotonic() < deadline and self.proc.poll() is None, "QEMU -M none did not start"
            time.sleep(0.05)

    def paused(self):
        return vm.paused(self.qmp_socket)

    def status(self) -> str:
        qmp = vm.Qmp(self.observer)
        try:
            return qmp.execute("query-status")["status"]
        finally:
            qmp.close()

    def close(self):
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self._sockets, ignore_errors=True)


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    # These tests set CEIL_E2E_FRESH themselves where they need it; a run started with it (to
    # boot its own cluster afresh) must not turn every lookup here into a miss.
    monkeypatch.delenv("CEIL_E2E_FRESH", raising=False)
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("needs qemu-system-x86 (scripts/setup-host.sh)")
    work = tmp_path / "work"
    (work / "secrets" / "wireguard").mkdir(parents=True)
    (work / "secrets" / "wireguard" / "router.key").write_text("secret")
    (work / "out").mkdir()
    (work / "out" / "ceil-router.img").write_bytes(b"baked image: not kept")
    (work / "out" / "kubeconfig").write_text("kubeconfig")
    for name in ("id_ed25519", "id_ed25519.pub", "cluster.yaml"):
        (work / name).write_text(name)
    guests = {"router": FakeGuest(tmp_path, "router", drives=("usb",)), "one": FakeGuest(tmp_path, "one")}
    cf = FakeCloudflare(zone="example.com")
    cf._add_record("home.example.com", "203.0.113.7")
    cf.requests.append({"method": "POST", "path": "/x", "query": {}, "body": {}, "status": 200})
    synced = []

    class Ssh:
        def run(self, role, cmd, timeout, check=False):
            synced.append((role, cmd))

    c = SimpleNamespace(
        workdir=work, artifacts=tmp_path / "artifacts", run_id=4711, ssh=Ssh(), synced=synced,
        extras=SimpleNamespace(cloudflare=cf),
        machines={r: SimpleNamespace(guest=g, timings={"firstboot_s": 100}) for r, g in guests.items()},
    )
    yield c
    for g in guests.values():
        g.close()
    cf.server.server_close()


def record(tmp_path, cluster, roles=("router", "one")) -> fbc.Recorder:
    rec = fbc.Recorder(str(tmp_path / "cache"), "k1", {"files": 3}, list(roles))
    assert oct(rec.dir.stat().st_mode & 0o777) == "0o700", "a partial entry holds secrets too"
    for role in roles:
        rec.save_machine(cluster, role)
        rec.save_machine(cluster, role)  # once per machine: later first-boot waits change nothing
    return rec


def test_an_entry_is_recorded_and_restored_whole(tmp_path, cluster, monkeypatch):
    states = []
    copy = fbc.copy_sparse

    def copy_and_look(src, dst):  # what QEMU's state was while its disk (or drive) was copied
        role = Path(src).name.removeprefix("ceil-").split(".")[0]
        states.append((Path(src).name, cluster.machines[role].guest.status()))
        copy(src, dst)

    monkeypatch.setattr(fbc, "copy_sparse", copy_and_look)
    rec = record(tmp_path, cluster)
    assert cluster.synced == [("router", "sync"), ("one", "sync")], "each disk is synced once before its copy"
    assert states == [("router.img", "paused"), ("ceil-router.usb.img", "paused"), ("one.img", "paused")], (
        "a disk or drive copied while its guest ran")
    for g in cluster.machines.values():
        assert g.guest.status() == "running", "QEMU left paused"
    rec.verified = True
    entry = rec.commit(cluster, failed=False)
    assert entry is not None and entry.dir == tmp_path / "cache" / "firstboot" / "k1"
    assert not list((tmp_path / "cache" / "firstboot").glob("*.partial-*"))
    assert oct(entry.dir.stat().st_mode & 0o777) == "0o700", "the entry holds the run's secrets"

    found = fbc.lookup(str(tmp_path / "cache"), "k1")
    assert found is not None and found.manifest["roles"] == ["router", "one"]
    new = tmp_path / "new-work"
    found.restore_workdir(new)
    found.restore_disks(new / "out", ["router", "one"])
    assert (new / "secrets" / "wireguard" / "router.key").read_text() == "secret"
    assert (new / "out" / "kubeconfig").read_text() == "kubeconfig"
    assert (new / "id_ed25519").read_text() == "id_ed25519"
    for role, g in cluster.machines.items():
        restored = new / "out" / f"ceil-{role}.img"
        assert restored.read_bytes() == g.guest.image.read_bytes()
        assert restored.stat().st_blocks * 512 < 1 << 20, "the disk copy is not sparse"
    # The router's thumb drive comes back beside its disk, under the name the harness boots it by.
    drive = cluster.machines["router"].guest.drives[0]
    assert (new / "out" / "ceil-router.usb.img").read_bytes() == drive.read_bytes()
    assert sorted(p.name for p in (new / "out").glob("*.img")) == ["ceil-one.img", "ceil-router.img", "ceil-router.usb.img"]
    assert found.state["run_id"] == 4711

    cf = FakeCloudflare(zone="example.com")
    try:
        cf.import_state(found.state["cloudflare"])
        assert cf.snapshot()["records"] == cluster.extras.cloudflare.snapshot()["records"]
        assert cf.zone_id == cluster.extras.cloudflare.zone_id
        assert len(cf.writes) == 1
    finally:
        cf.server.server_close()


@pytest.mark.parametrize("why", ["not verified", "failed", "machine missing"])
def test_nothing_is_published_unless_the_run_proved_it(tmp_path, cluster, why):
    rec = record(tmp_path, cluster, roles=("router",) if why == "machine missing" else ("router", "one"))
    if why == "machine missing":
        rec.roles = ["router", "one"]
    rec.verified = why != "not verified"
    assert rec.commit(cluster, failed=why == "failed") is None
    assert list((tmp_path / "cache" / "firstboot").iterdir()) == [], "the partial entry was left behind"
    assert fbc.lookup(str(tmp_path / "cache"), "k1") is None


def test_fresh_ignores_the_cache_and_missing_disks_are_a_miss(tmp_path, cluster, monkeypatch):
    rec = record(tmp_path, cluster)
    rec.verified = True
    entry = rec.commit(cluster, failed=False)
    monkeypatch.setenv("CEIL_E2E_FRESH", "1")
    assert fbc.lookup(str(tmp_path / "cache"), "k1") is None
    monkeypatch.delenv("CEIL_E2E_FRESH")
    assert fbc.lookup(str(tmp_path / "cache"), "k1", ["router", "two"]) is None
    entry.disk("one").unlink()
    assert fbc.lookup(str(tmp_path / "cache"), "k1") is None


def test_old_entries_and_dead_runs_partials_are_removed(tmp_path):
    parent = tmp_path / "firstboot"
    for i, name in enumerate(["a", "b", "c"]):
        (parent / name).mkdir(parents=True)
        os.utime(parent / name, (time.time() - 100 + i, time.time() - 100 + i))
    dead = subprocess.Popen(["true"])
    dead.wait()
    (parent / f"x.partial-{dead.pid}").mkdir()
    (parent / f"y.partial-{os.getpid()}").mkdir()
    fbc.remove_stale(parent)
    fbc.prune(parent, keep=2)
    assert sorted(p.name for p in parent.iterdir()) == ["b", "c", f"y.partial-{os.getpid()}"]


def test_a_full_disk_skips_recording_without_failing_the_run(tmp_path, cluster, monkeypatch):
    monkeypatch.setattr(fbc.shutil, "disk_usage", lambda p: SimpleNamespace(free=1024))
    rec = record(tmp_path, cluster)
    rec.verified = True
    assert rec.broken and "MiB free" in rec.broken
    assert rec.commit(cluster, failed=False) is None


def test_a_guest_that_cannot_be_paused_is_not_recorded(tmp_path, cluster):
    """No QMP answer (QEMU gone): no copy of a disk that might be mid-write, and the run goes on."""
    cluster.machines["one"].guest.close()
    rec = record(tmp_path, cluster)
    rec.verified = True
    assert rec.broken and rec.broken.startswith("one:")
    assert rec.commit(cluster, failed=False) is None
