"""A test cluster in QEMU: bake it with bake.py, boot router + nodes, reach them over SSH.

Owns one run's resources, all released by `close()` (also on failure or Ctrl-C): the QEMU
processes, the fake internet servers, the SSH control sockets and the work directory with the
disk images. The artefacts directory (serial logs, QEMU command lines, bake log, ssh_config,
diagnostics of failed guests) is kept for debugging.

Topology (docs/testing.md has a picture):
  router  eth0 = LAN (L2 segment shared with the nodes), uplink = QEMU user net (restrict=on;
          SSH via hostfwd 127.0.0.1:<port>; fakes via guestfwd): eth1 (virtio) on the Pi OS twin,
          a USB adapter named enx<MAC> on the Ubuntu twin (the test bed's manifest, "twin");
          the fake internet DNS/NTP segment on the next virtio NIC, found by its MAC
  nodes   eth0 = LAN only; reached by ProxyJump over the router once it serves DHCP
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ceil_infra.ssh import Endpoint, SshConfig, generate_key

from . import fakes as fakes_mod
from . import l2dns, readiness
from .drives import thumb_drive_as_sold
from .uplink_guard import UplinkGuard
from .vm import UPLINK_GUEST_IP, Guest, Lan, Uplink, Wire

REPO = Path(__file__).resolve().parents[3]
BASE_ENV = dict(os.environ)  # captured at import, before any test's monkeypatching
CLUSTER_TEMPLATE = Path(__file__).resolve().parents[1] / "cluster.yaml"


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free port on 127.0.0.1, never one this process handed out before: the kernel may offer a
    closed port again at once, and QEMU refuses two forwards on one port (run e2e20: the router's
    8080 and 10250 probes got the same port, and QEMU exited at its first start)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


LOG = logging.getLogger("ceil.e2e")


def log(msg: str) -> None:
    """Progress: live with `pytest -o log_cli=true` (make e2e), always in <artefacts>/progress.log."""
    LOG.info(msg)


def log_to(path: Path) -> None:
    if not any(getattr(h, "baseFilename", None) == str(path) for h in LOG.handlers):
        h = logging.FileHandler(path)
        h.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        LOG.addHandler(h)
    LOG.setLevel(logging.INFO)


# Hostile twin (docs/testing.md): a real upstream time server is not there the moment a Pi
# boots (uplink still coming up, DNS, a slow pool). The fake one stays silent this long after the
# cluster is made, so the first boots run on the clock the card brought (its bake time).
NTP_DELAY = float(os.environ.get("CEIL_E2E_NTP_DELAY", "300"))
# ... and at least this long after the router's first cloud-init is done: the router's packages
# step makes its first apt attempt after the Ubuntu twin releases apt's locks (240 s after
# cloud-final starts), and a card booted long after its bake must meet the archive with its stale
# clock there, or the twin never bites (run e2e24: no machine did).
NTP_AFTER_CLOUD_INIT = float(os.environ.get("CEIL_E2E_NTP_AFTER_CLOUD_INIT", "300"))
# ... and until this long after some card first fetched the archive's release files, so that the
# first fetch meets the archive on a card's own clock, however slow the machine (CI's run on
# db17f7d: the router's first apt attempt came after those 300 s and no machine was refused);
# but no longer than NTP_HOLD_MAX after the router's cloud-init, should nothing ever fetch.
NTP_AFTER_ARCHIVE = float(os.environ.get("CEIL_E2E_NTP_AFTER_ARCHIVE", "60"))
NTP_HOLD_MAX = float(os.environ.get("CEIL_E2E_NTP_HOLD_MAX", "1200"))
# The side host's frames and the router's pass a guard in this process (uplink_guard.py); 0 puts
# the router's NIC straight on the hub, where direct TCP from the side host is reset (e2e24, e2e29).
UPLINK_GUARD = os.environ.get("CEIL_E2E_UPLINK_GUARD", "1") != "0"
# The router's thumb drive (router.usb_drive in tests/e2e/cluster.yaml): sparse, so its size costs
# little until the registry and the datastore snapshots write to it.
USB_DRIVE_GIB = 2
# Hostile twin (docs/testing.md): a card first booted long after its bake. Its clock starts at the
# bake time, but the world is this many days later: the fake upstream time server answers that far
# ahead, and the package archive was last signed halfway in between, after the bake, so apt refuses
# it ("not valid yet", "Not live until") until the card has network time. 0 turns it off.
BOOTED_AFTER_BAKE_DAYS = float(os.environ.get("CEIL_E2E_BOOTED_AFTER_BAKE_DAYS", "30"))


@dataclass
class Timeouts:
    """Seconds. Generous: TCG guests on a busy 2-core machine boot 3-5x slower than on a laptop."""

    ssh: float = float(os.environ.get("CEIL_E2E_SSH_TIMEOUT", 1200))
    cloud_init: float = float(os.environ.get("CEIL_E2E_CLOUD_INIT_TIMEOUT", 900))
    firstboot: float = float(os.environ.get("CEIL_E2E_FIRSTBOOT_TIMEOUT", 2400))


@dataclass
class Machine:
    name: str               # role name: router, one, two, ...
    guest: Guest
    hostname: str           # <cluster>-<role>
    ip: str | None          # LAN address (nodes: as reserved in cluster.yaml)
    timings: dict = field(default_factory=dict)


def load_template(pubkey: str, overrides: dict | None = None) -> dict:
    data = yaml.safe_load(CLUSTER_TEMPLATE.read_text())
    data["ssh"]["authorized_keys"] = [pubkey.strip()]
    return deep_merge(data, overrides or {})


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def stand_in_pin(root: Path, arch: str) -> dict:
    """cluster.yaml's kubernetes keys for the k3s stand-in: its version and its binary's digest."""
    from testbed.apiserver import STAND_IN_K3S

    fakes_mod.k3s_release_stand_in(root, STAND_IN_K3S, arch)
    return {"k3s_version": STAND_IN_K3S, "k3s_sha256": fakes_mod.stand_in_sha256(root, STAND_IN_K3S, arch)}


class TestCluster:
    __test__ = False  # not a pytest test class

    def __init__(self, name: str, testbed, arch: str, artifacts: Path, workdir: Path, *,
                 overrides: dict | None = None, roles: list[str] | None = None, cache: str | None = None,
                 bake_args: list[str] | None = None):
        self.bake_args = bake_args or []
        self.name = name
        self.testbed = testbed
        self.arch = arch
        self.artifacts = artifacts
        self.workdir = workdir
        self.cache = cache
        self.timeouts = Timeouts()
        artifacts.mkdir(parents=True, exist_ok=True)
        workdir.mkdir(parents=True, exist_ok=True)
        log_to(artifacts.parent / "progress.log")
        self.run_id = int.from_bytes(os.urandom(2), "big")
        self.key = generate_key(workdir / "id_ed25519")
        ahead = BOOTED_AFTER_BAKE_DAYS * 86400
        dists = None
        self.archive_signed_at: int | None = None
        # time.time() of events the stale-clock twin depends on (clock_twin_timeline)
        self.events: dict[str, float] = {}
        if ahead:
            from testbed.repo import signed_at

            self.archive_signed_at = int(time.time() + ahead / 2)
            dists = signed_at(testbed.repo, workdir / "dists", testbed.dir / "gnupg", self.archive_signed_at)
        self.internet = fakes_mod.standard_internet(testbed.repo, artifacts / "fakes.log", dists=dists)
        self.extras = fakes_mod.wire_service_fakes(self.internet)
        self.config = load_template(Path(f"{self.key}.pub").read_text(), deep_merge(self.extras.overrides, overrides or {}))
        # Nodes install only a k3s binary whose digest ceil or cluster.yaml vouches for. The
        # stand-in is no k3s release, so the cluster names the release it plays and pins its
        # digest, as a user with a build of their own does (testbed/apiserver.py STAND_IN_K3S).
        self.k3s_releases = workdir / "k3s"  # the workstation's k3s cache (CEIL_K3S_CACHE), filled here
        self.config = deep_merge({"kubernetes": stand_in_pin(self.k3s_releases, arch)}, self.config)
        self.vpn_client = None  # ceil_e2e.vpn_client.NetnsVpnClient, made by bake()
        self.vpn_wire: Wire | None = None
        vpn = self.config.get("vpn") or {}
        if vpn.get("enabled") and os.geteuid() == 0 and shutil.which("wg-quick"):
            # The client sits beside the router's uplink (vpn_client.py says why not a forward)
            # and dials the uplink's own address, as it would dial the router's public address.
            self.vpn_wire = Wire.random()
            self.config["vpn"]["endpoint"] = UPLINK_GUEST_IP
        # The router's NIC reaches the uplink's hub through uplink_guard.UplinkGuard, so that QEMU's
        # user network cannot reset the side host's connections to the router in its name.
        self.uplink_guard: UplinkGuard | None = None
        if self.vpn_wire is not None and UPLINK_GUARD:
            self.uplink_guard = UplinkGuard(Wire.random(), Wire.random())
        self.config_path = workdir / "cluster.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        shutil.copy(self.config_path, artifacts / "cluster.yaml")
        all_roles = ["router"] + [n["name"] for n in self.config["nodes"]]
        self.roles = roles or all_roles
        self.lan = Lan.random()
        # The fake upstream DNS and NTP (network.upstream_dns, ntp_servers in tests/e2e/cluster.yaml)
        # on the router's eth2; NTP answers only NTP_DELAY seconds after the guests power on.
        self.dns = l2dns.SegmentDns(Lan.random(), {fakes_mod.DNS_NAME: fakes_mod.DNS_ANSWER},
                                    ntp_after=NTP_DELAY, ntp_ahead=ahead)
        self.ssh_port = free_port()
        self.probe_ports: dict[int, int] = {}  # guest uplink port -> 127.0.0.1 port (hostfwd)
        self.machines: dict[str, Machine] = {}
        self.ssh = self._ssh_config()
        self.cluster = None  # ceil.config.Cluster, after bake()
        self.first_boot_cache = None  # firstboot_cache.Entry this run restored instead of baking
        self._ntp_held = False  # the upstream's silence after the router's first cloud-init, once
        self._archive_first_fetch: float | None = None  # time.time() of the first release-file fetch
        self.recorder = None  # firstboot_cache.Recorder: saves each disk at its first boot

    # -- configuration ------------------------------------------------------------------------
    @property
    def user(self) -> str:
        return self.config["ssh"].get("user", "ceil")

    def node_ip(self, role: str) -> str | None:
        for n in self.config["nodes"]:
            if n["name"] == role:
                return n.get("ip")
        return None

    def server_roles(self) -> set[str]:
        return {n["name"] for n in self.config["nodes"] if n.get("role") == "server"}

    def _ssh_config(self) -> SshConfig:
        ends = [Endpoint("router", "127.0.0.1", self.ssh_port)]
        domain = self.config.get("domain", "ceil.internal")
        for n in self.config["nodes"]:
            # The router resolves the jump target: a reserved IP works before DNS does.
            ends.append(Endpoint(n["name"], n.get("ip") or f"{n['name']}.{domain}", 22, jump="router"))
        return SshConfig(self.artifacts / "ssh_config", self.user, self.key, ends, self.artifacts / "known_hosts")

    def probe_port(self, guest_port: int) -> int:
        self.probe_ports[guest_port] = free_port()
        return self.probe_ports[guest_port]

    # -- bake ---------------------------------------------------------------------------------
    def bake(self) -> float:
        out = self.workdir / "out"
        cmd = [sys.executable, str(REPO / "bake.py"), "--config", str(self.config_path),
               "--base-image", str(self.testbed.image), "--out", str(out), "--secrets", str(self.workdir / "secrets")]
        for r in self.roles:
            cmd += ["--role", r]
        cmd += self.bake_args
        # The environment as it was when the harness was imported: tests/conftest.py points
        # XDG_CACHE_HOME at placeholder wheels for unit tests, and a cluster made inside a test
        # would otherwise bake a PiWatch bundle that cannot install.
        env = {**BASE_ENV}
        if self.cache:
            env["CEIL_CACHE"] = self.cache
        from ceil.config import load_cluster
        from ceil.datastore import runs_sqlite

        self.cluster = load_cluster(self.config_path)
        # The router's k3s cache gets the stand-in release stand_in_pin wrote, as a workstation
        # with downloaded release files would fill it; the nodes install it from there.
        env["CEIL_K3S_CACHE"] = str(self._k3s_releases_for(self.cluster.kubernetes.k3s_version))
        t0 = time.monotonic()
        if "router" in self.roles and self.config.get("vpn", {}).get("endpoint"):
            self._make_vpn_client(env)
        if self.cluster.server.name in self.roles and runs_sqlite(self.cluster):
            self._stage_datastore_snapshot(env)
        log(f"baking {', '.join(self.roles)} from {self.testbed.image.name}")
        with open(self.artifacts / "bake.log", "w") as f:
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        if proc.returncode != 0:
            tail = (self.artifacts / "bake.log").read_text()[-3000:]
            raise AssertionError(f"bake.py failed (exit {proc.returncode}); {self.artifacts / 'bake.log'}:\n{tail}")
        self._pin_host_keys(self.roles)
        return time.monotonic() - t0

    def _pin_host_keys(self, names: list[str]) -> None:
        """The host keys the bake made, into the session's known_hosts before any machine boots,
        as `bake.py` does into the workstation's: every login of the run, the first included,
        is checked against the baked key (a machine answering with another is refused)."""
        from ceil.host_keys import pinned_keys
        from ceil.secrets import SecretStore
        from ceil.workstation import pin_host_key

        keys = pinned_keys(SecretStore(self.workdir / "secrets", make_new=False), names)
        assert set(keys) == set(names), f"the bake made no host key for {sorted(set(names) - set(keys))}"
        for name, public in keys.items():
            pin_host_key(self.artifacts / "known_hosts", name, public)

    def _stage_datastore_snapshot(self, env: dict) -> None:
        """`bake.py datastore restore` as a user runs it before re-baking a lost server, with a
        small kine database holding one ConfigMap: the server's card carries it through the FAT
        partition, its k3s-server step installs it, and the server's API serves the ConfigMap
        (tests/infra/test_nodes.py checks both; a snapshot of a live API server is
        tests/apiserver/test_datastore_restore.py)."""
        import sqlite3

        snap = self.workdir / "datastore-snapshot.db"
        snap.unlink(missing_ok=True)
        _kine_schema(snap)
        name = f"ceil-e2e-restored-{os.urandom(8).hex()}"
        value = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "data": {"restored": "yes"},
                            "metadata": {"name": name, "namespace": "default", "uid": str(uuid.uuid4()),
                                         "creationTimestamp": "2026-01-01T00:00:00Z"}}).encode()
        db = sqlite3.connect(snap)
        # A create as kine writes one: the row's id is its revision, no previous revision.
        cur = db.execute("INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value,"
                         " old_value) VALUES (?, 1, 0, 0, 0, 0, ?, NULL)", (f"/registry/configmaps/default/{name}", value))
        db.execute("UPDATE kine SET create_revision = id WHERE id = ?", (cur.lastrowid,))
        db.commit()
        db.close()
        cmd = [sys.executable, str(REPO / "bake.py"), "datastore", "restore", str(snap),
               "--config", str(self.config_path), "--secrets", str(self.workdir / "secrets")]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
        if proc.returncode != 0:
            raise AssertionError(f"bake.py datastore restore failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")

    def _make_vpn_client(self, env: dict) -> None:
        """`bake.py vpn-client e2e` as a user runs it (before the router bake, which takes the
        peer in), and the netns beside the router's uplink that will use the config. The command
        only uses the router's VPN key: a user's `bake.py init` made it, here it is made as the
        router's bake would (this harness writes its own cluster.yaml)."""
        from ceil.secrets import SecretStore
        from ceil.wireguard import server_private_key

        server_private_key(SecretStore(self.workdir / "secrets"))
        cmd = [sys.executable, str(REPO / "bake.py"), "vpn-client", "e2e", "--config", str(self.config_path),
               "--secrets", str(self.workdir / "secrets")]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
        if proc.returncode != 0:
            raise AssertionError(f"bake.py vpn-client failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        self._attach_vpn_client()

    def _attach_vpn_client(self) -> None:
        from .vpn_client import NetnsVpnClient

        conf = self.workdir / "secrets" / "wireguard" / "clients" / "e2e.conf"
        self.vpn_client = NetnsVpnClient(self.workdir, conf.read_text(), self.vpn_wire)
        self.vpn_client.create_link()

    def restore(self, entry) -> None:
        """Instead of bake(): the disks, secrets and MAC seed of a cached first boot.

        `entry` is a firstboot_cache.Entry whose work directory (SSH key, secrets, bake output)
        was copied into this run's before it was made; the disks come now.
        """
        recorded = yaml.safe_load((entry.dir / "workdir" / "cluster.yaml").read_text())
        if recorded != self.config:
            raise AssertionError(
                f"the cached first boot {entry.dir} was baked from another cluster.yaml than this run's: "
                "its key misses an input (tests/e2e/ceil_e2e/firstboot_cache.py). Run with CEIL_E2E_FRESH=1 "
                "or remove that directory.")
        from ceil.config import load_cluster

        self.cluster = load_cluster(self.config_path)
        self.run_id = entry.state["run_id"]  # the MACs the machines were installed with
        entry.restore_disks(self.workdir / "out", self.roles)
        entry.restore_logs(self.artifacts)
        if self.extras.cloudflare is not None and "cloudflare" in entry.state:
            self.extras.cloudflare.import_state(entry.state["cloudflare"])
        if self.vpn_wire is not None:
            self._attach_vpn_client()
        self.first_boot_cache = entry
        log(f"restored the first boot of {', '.join(self.roles)} from the first-boot cache {entry.describe()}")

    def image(self, role: str) -> Path:
        return self.workdir / "out" / f"ceil-{role}.img"

    # -- guests -------------------------------------------------------------------------------
    def make_guests(self, disk_gib: int = 8) -> None:
        cpus = int(os.environ.get("CEIL_E2E_CPUS", 1))
        for i, role in enumerate(self.roles):
            img = self.image(role)
            # Like a bigger SD card: first boot grows the root partition (cloud-init growpart).
            if img.stat().st_size < disk_gib << 30:
                os.truncate(img, disk_gib << 30)
            uplink = None
            segments = ()
            if role == "router":
                guard = self.uplink_guard
                uplink = Uplink(self.ssh_port, self.internet.guestfwds(), self.extras.hostfwds,
                                side_wire=self.vpn_wire, guard=guard and (guard.nic_wire, guard.hub_wire))
                segments = (self.dns.segment,)
            # A server runs the k3s stand-in's control plane as five separate upstream programs,
            # heavier than k3s's one process (0.7 GiB resident together on the booted server,
            # beside first boot's apt and cloud-init): 2 GiB for it.
            default_mib = 2048 if role in self.server_roles() else 1024
            mem = int(os.environ.get("CEIL_E2E_MEM_MIB", default_mib))
            g = Guest(role, img, self.arch, self.artifacts, lan=self.lan, uplink=uplink, index=i,
                      run_id=self.run_id, memory_mib=mem, cpus=cpus, segments=segments,
                      uplink_nic=self.testbed.manifest.get("twin", {}).get("uplink_nic", "virtio"),
                      drives=self.usb_drives(role), board=self.testbed.manifest.get("twin", {}).get("board"))
            hostname = f"{self.config.get('name', 'ceil')}-{role}"
            self.machines[role] = Machine(role, g, hostname, self.node_ip(role) if role != "router"
                                          else str(self.config.get("network", {}).get("router_ip", "10.42.0.1")))

    def add_node(self, name: str, ip: str, disk_gib: int = 8) -> tuple[Machine, Path]:
        """A node added to cluster.yaml after the others booted, as a user adds one: its own
        cluster.yaml (this cluster's stays as the other tests know it), baked with the same
        secrets and k3s release, booted on the LAN. Returns the machine and that cluster.yaml;
        `forget_node` takes it back out."""
        config = copy.deepcopy(self.config)
        config["nodes"].append({"name": name, "role": "agent", "ip": ip})
        path = self.workdir / f"cluster-with-{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        self._added = {**getattr(self, "_added", {}), name: self.config}
        self.config = config
        self.ssh = self._ssh_config()
        return self._bake_and_boot(name, path, ip, disk_gib, self._new_board_index()), path

    def replace_card(self, name: str, disk_gib: int = 8) -> Machine:
        """A new card for a node added with `add_node`, whose old card died: baked again from the
        same cluster.yaml and secrets, booted as another board (another MAC). Its host key is the
        name's, the one the session already holds: the new card must answer with it."""
        path = self.workdir / f"cluster-with-{name}.yaml"
        index = self._new_board_index()  # while the dead card's guest still counts
        old = self.machines.pop(name)
        old.guest.cleanup()
        self.ssh.drop_master(name)
        return self._bake_and_boot(name, path, old.ip, disk_gib, index)

    def _k3s_releases_for(self, version: str) -> Path:
        """The workstation's k3s cache, which holds the stand-in's release files for `version`."""
        assert (self.k3s_releases / version).is_dir(), \
            f"the stand-in's release files are for {sorted(p.name for p in self.k3s_releases.iterdir())}, not {version}"
        return self.k3s_releases

    def _new_board_index(self) -> int:
        """A guest index no machine of this cluster has: its MAC (which follows the index) is
        another board's."""
        return 1 + max(g.index for g in self.guests)

    def _bake_and_boot(self, name: str, path: Path, ip: str, disk_gib: int, index: int) -> Machine:
        out = self.workdir / f"out-{name}"
        from ceil.config import load_cluster

        # The release the others were baked with.
        env = {**BASE_ENV, "CEIL_K3S_CACHE": str(self._k3s_releases_for(load_cluster(path).kubernetes.k3s_version))}
        if self.cache:
            env["CEIL_CACHE"] = self.cache
        cmd = [sys.executable, str(REPO / "bake.py"), "--config", str(path), "--base-image", str(self.testbed.image),
               "--out", str(out), "--secrets", str(self.workdir / "secrets"), "--role", name]
        with open(self.artifacts / f"bake-{name}.log", "a") as f:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        if proc.returncode != 0:
            raise AssertionError(f"bake.py --role {name} failed: {(self.artifacts / f'bake-{name}.log').read_text()[-3000:]}")
        self._pin_host_keys([name])
        img = out / f"ceil-{name}.img"
        os.truncate(img, max(img.stat().st_size, disk_gib << 30))
        g = Guest(name, img, self.arch, self.artifacts, lan=self.lan, index=index, run_id=self.run_id,
                  memory_mib=int(os.environ.get("CEIL_E2E_MEM_MIB", 1024)), cpus=int(os.environ.get("CEIL_E2E_CPUS", 1)),
                  uplink_nic=self.testbed.manifest.get("twin", {}).get("uplink_nic", "virtio"),
                  board=self.testbed.manifest.get("twin", {}).get("board"))
        self.machines[name] = Machine(name, g, f"{self.config.get('name', 'ceil')}-{name}", ip)
        log(f"booting {name}, added after the others ({self.arch}, serial log {g.serial_log})")
        g.start()
        return self.machines[name]

    def forget_node(self, name: str) -> None:
        """Stop an added node's guest and take it out of the harness's cluster again."""
        m = self.machines.pop(name, None)
        if m is not None:
            m.guest.cleanup()
        before = getattr(self, "_added", {}).pop(name, None)
        if before is not None:
            self.config = before
            self.ssh = self._ssh_config()

    def usb_drives(self, role: str) -> tuple[Path, ...]:
        """The router's thumb drive when cluster.yaml names one (router.usb_drive): a drive as
        sold (drives.py) the first time; the same one at every later boot (and from the first-boot
        cache, beside the router's disk)."""
        if role != "router" or not (self.config.get("router") or {}).get("usb_drive"):
            return ()
        drive = self.workdir / "out" / f"ceil-{role}.usb.img"
        if not drive.exists():
            thumb_drive_as_sold(drive, USB_DRIVE_GIB << 10)
        return (drive,)

    def start_all(self) -> None:
        # The upstream's time from the router's power-on (run e2e24: counted from before the
        # bake, the silence could end before the router's first apt attempt).
        self.dns.hold_ntp()
        self.events["powered on"] = time.time()
        if self._stale_clock_meets_the_archive():
            # From power-on too, not only once the harness has seen the router's cloud-init: the
            # router's cloud-init took 240-298 s here, so on a slower machine the NTP_DELAY silence
            # ended before the harness could extend it, the router set its clock, and no card met
            # the archive on its own (CI's runs on db17f7d and 64127d4: the twin did not bite).
            self.dns.hold_ntp_until(self._archive_fetched_ago, NTP_AFTER_ARCHIVE, NTP_HOLD_MAX)
        for m in self.machines.values():
            log(f"booting {m.name} ({m.guest.arch}, serial log {m.guest.serial_log})")
            m.guest.start()

    @property
    def guests(self) -> list[Guest]:
        return [m.guest for m in self.machines.values()]

    def wait_ready(self, role: str, firstboot: bool = True) -> Machine:
        """SSH login, cloud-init done, then ceil-firstboot.target (unless firstboot=False)."""
        m = self.machines[role]
        others = [g for g in self.guests if g is not m.guest]
        via = "" if role == "router" else " (through the router: ProxyJump; needs the router's DHCP and SSH)"
        m.timings["ssh_s"] = readiness.wait_ssh(self.ssh, role, self.timeouts.ssh, [m.guest, *others], via)
        log(f"{role}: SSH after {time.monotonic() - m.guest.started_at:.0f}s of boot")
        readiness.wait_cloud_init(self.ssh, role, self.timeouts.cloud_init)
        if role == "router":
            # Not ceil's doing: the test bed's "internet DNS" segment (l2dns) is outside cluster.yaml.
            # Found by its MAC: its name depends on the twin's NICs (eth2 beside a virtio uplink).
            mac = m.guest.segment_mac(0)
            find = f"ip -br link | awk '$3 == \"{mac}\" {{print $1; exit}}'"
            # NetworkManager (the Pi OS twin) runs DHCP on every Ethernet port it is not told about
            # and flushes the port's addresses each time that fails: it must leave this one alone
            # (run e2e12: the router lost its upstream time server after a reboot).
            unmanage = "{ ! command -v nmcli >/dev/null || sudo nmcli device set \"$dev\" managed no; }"
            # The address is added behind NetworkManager's back, so its dispatcher never tells
            # chrony (Debian's 20-chrony-onoffline): chrony marked the fake upstream offline while
            # the port had no address, and kept it so for good (run e2e15: the router served its
            # own clock after every reboot). Ask chrony to look again, where it is installed.
            recheck = "{ ! command -v chronyc >/dev/null || sudo chronyc onoffline >/dev/null || true; }"
            self.ssh.run(role, f"dev=$({find}) && test -n \"$dev\" && {unmanage} && "
                               f"sudo ip addr replace {l2dns.ROUTER_IP}/{l2dns.PREFIX} dev \"$dev\" && "
                               f"sudo ip link set \"$dev\" up && {recheck}", timeout=60, check=True)
            self.events.setdefault("router's cloud-init seen done", time.time())
            if not self._ntp_held and self._stale_clock_meets_the_archive():
                self._ntp_held = True
                self.dns.hold_ntp(NTP_AFTER_CLOUD_INIT)
                self.dns.hold_ntp_until(self._archive_fetched_ago, NTP_AFTER_ARCHIVE, NTP_HOLD_MAX)
                log(f"router: the upstream's time stays silent for {NTP_AFTER_CLOUD_INIT:.0f}s more, and until "
                    f"{NTP_AFTER_ARCHIVE:.0f}s after the archive's first fetch (at most {NTP_HOLD_MAX:.0f}s)")
        m.timings["cloud_init_s"] = round(time.monotonic() - m.guest.started_at)
        log(f"{role}: cloud-init done after {m.timings['cloud_init_s']}s")
        if firstboot:
            last = [""]

            def progress(s: str) -> None:
                if s != last[0]:
                    log(f"{role}: {s}")
                    last[0] = s

            readiness.wait_firstboot(self.ssh, role, self.timeouts.firstboot, [m.guest, *others], progress)
            m.timings["firstboot_s"] = round(time.monotonic() - m.guest.started_at)
            log(f"{role}: ceil-firstboot.target reached after {m.timings['firstboot_s']}s")
            self._log_profile(role)
            if self.recorder is not None and role in self.roles:  # not a node added later (add_node)
                self.recorder.save_machine(self, role)  # once per machine: its first first boot
        return m

    def clock_twin_timeline(self) -> str:
        """What the stale-clock twin did, in order (for a failure message: CI shows no artefacts)."""
        def at(t: float | None) -> str:
            return time.strftime("%H:%M:%S", time.gmtime(t)) if t else "never"

        self._archive_fetched_ago()
        fetches = [r.at for r in self.internet["apt"].requests_to("/debian/dists/")]
        ntp = self.dns.ntp_first_answer
        lines = [f"first-boot cache: {'restored' if self.first_boot_cache is not None else 'not used'}"]
        if self.archive_signed_at:
            days = (self.archive_signed_at - time.time()) / 86400
            lines.append(f"archive signed {days:+.1f} days from now; NTP serves {BOOTED_AFTER_BAKE_DAYS:+.0f} days")
        events = {**self.events, "first release-file fetch": self._archive_first_fetch,
                  "NTP first asked": self.dns.ntp_first_request, "NTP first answered": ntp}
        lines += [f"{at(t)} {name}" for name, t in sorted(events.items(), key=lambda kv: kv[1] or float("inf"))]
        lines.append(f"release-file fetches: {len(fetches)}, {sum(1 for t in fetches if ntp is None or t < ntp)} before NTP "
                     f"answered; NTP requests {self.dns.ntp_requests}, answered {self.dns.ntp_answered}")
        return "\n".join(lines)

    def _stale_clock_meets_the_archive(self) -> bool:
        """This run's first boots must meet the archive on the card's stale clock (a restored
        first-boot cache has no first boot; BOOTED_AFTER_BAKE_DAYS=0 turns the twin off)."""
        return self.first_boot_cache is None and bool(BOOTED_AFTER_BAKE_DAYS)

    def _archive_fetched_ago(self) -> float | None:
        """Seconds since a guest first asked the fake archive for its release files (None: not yet)."""
        if self._archive_first_fetch is None:
            asked = self.internet["apt"].requests_to("/debian/dists/")
            if asked:
                self._archive_first_fetch = min(r.at for r in asked)
        return None if self._archive_first_fetch is None else time.time() - self._archive_first_fetch

    def _log_profile(self, role: str) -> None:
        """The slowest first-boot steps (as `bake.py status --times` shows them), so every run's
        progress.log measures where first boots spend their time."""
        from ceil.status import step_profile

        out = self.ssh.run(role, "sudo /usr/local/lib/ceil/ceil-status --json", timeout=60, check=False)
        try:
            rows = step_profile(json.loads(out.stdout))
        except ValueError:
            return
        top = [f"{r['step']} {r['took']:.0f}s ({100 * r['share']:.0f}%)" for r in rows[:6] if r["share"] is not None]
        if top:
            log(f"{role}: slowest first-boot steps: {', '.join(top)}")

    def host(self, role: str):
        return self.ssh.testinfra_host(role)

    # -- life cycle helpers for reliability tests ---------------------------------------------
    def _affected(self, role: str) -> list[str]:
        # Node connections go through the router: its restart kills them all.
        return list(self.machines) if role == "router" else [role]

    def power_cut(self, role: str, wait: bool = True, firstboot: bool = True) -> None:
        """Kill the guest without shutdown and boot it again from the same disk."""
        m = self.machines[role]
        log(f"{role}: power cut")
        m.guest.power_cut()
        for r in self._affected(role):
            self.ssh.drop_master(r)
        m.guest.start()
        if wait:
            self.wait_ready(role, firstboot=firstboot)

    def reboot(self, role: str, wait: bool = True, firstboot: bool = True) -> None:
        """Clean reboot from inside the guest; QEMU restarts it re-reading the boot partition."""
        m = self.machines[role]
        log(f"{role}: reboot")
        boots = m.guest.boots
        self.ssh.run(role, "sudo systemctl reboot", timeout=30)
        for r in self._affected(role):
            self.ssh.drop_master(r)
        deadline = time.monotonic() + 300
        while m.guest.boots == boots:
            m.guest.poll()  # restarts it once the kernel says "Restarting system"
            if time.monotonic() > deadline:
                raise readiness.NotReady(f"{role}: did not reboot within 300s; serial:\n{m.guest.serial_tail()}")
            time.sleep(1)
        if wait:
            self.wait_ready(role, firstboot=firstboot)

    # -- diagnostics and teardown -------------------------------------------------------------
    def collect(self, reason: str = "") -> Path:
        dest = self.artifacts / "diagnostics"
        for role in self.machines:
            written = readiness.collect(self.ssh, role, dest / role)
            log(f"{role}: {len(written)} diagnostics files in {dest / role}" + (f" ({reason})" if reason else ""))
        return dest

    def close(self) -> None:
        for m in self.machines.values():
            try:
                m.guest.cleanup()
            except Exception as exc:  # keep tearing down the rest
                log(f"{m.name}: cleanup: {exc}")
        try:
            self.ssh.close()
        finally:
            self.internet.close()
            self.extras.close()
            self.dns.close()
            if self.vpn_client is not None:
                self.vpn_client.close()
            if self.uplink_guard is not None:
                self.uplink_guard.close()
            if os.environ.get("CEIL_E2E_KEEP"):
                log(f"CEIL_E2E_KEEP set: keeping {self.workdir}")
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)


def _kine_schema(path: Path) -> None:
    """An empty kine database, made by kine itself (the k3s stand-in's build, for this machine):
    started on it until it has made its tables, then stopped."""
    import sqlite3

    from testbed import kubenode

    with fakes_mod.real_cache():
        build = kubenode.lookup(kubenode.host_arch())
    if build is None:
        raise AssertionError("no k3s stand-in build for this machine: run `make kubenode ARCH=amd64`"
                             " (python -m testbed.kubenode --arch host)")
    kine = subprocess.Popen([str(build / "bin" / "kine"), "--listen-address", f"127.0.0.1:{free_port()}",
                             "--endpoint", f"sqlite://{path}?_journal=WAL&cache=shared"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
                if db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'kine'").fetchone()[0]:
                    db.close()
                    break
                db.close()
            except sqlite3.Error:
                pass
            if kine.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"kine made no schema in {path}: {kine.stderr.read().decode(errors='replace')}")
            time.sleep(0.2)
    finally:
        kine.terminate()
        kine.wait(timeout=30)
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute("PRAGMA journal_mode=DELETE")  # one file: what `datastore restore` takes
    db.close()
