"""The one QEMU test cluster of a pytest session, shared by tests/e2e and tests/infra.

Both directories' conftests ask `get(config)` for it, so one cluster is baked and booted per
session however the tests are selected, and `shutdown()` (registered with pytest's cleanup and
atexit) releases it. Settings come from the environment (docs/testing.md lists them all):

  CEIL_E2E_ARCH       arm64 (default, the Pi's arch) or amd64 (faster to build)
  CEIL_E2E_FLAVOR     testbed-ubuntu (default) or testbed-raspios: the cluster's base image
  CEIL_E2E_BARE       the test beds test_testbed.py boots bare (space-separated; default: the
                      flavors the cluster does not run on)
  CEIL_E2E_ARTIFACTS  where logs go (default test-artifacts/e2e-<time>)
  CEIL_E2E_WORKDIR    where disks go (default /var/tmp); removed at the end unless CEIL_E2E_KEEP=1
  CEIL_E2E_OVERRIDES  YAML merged into the test cluster.yaml, e.g. '{ddns: {enabled: false}}'
  CEIL_E2E_BAKE_ARGS  extra bake.py arguments, e.g. '--airgap /path/to/k3s-stand-in'
  CEIL_E2E_FRESH      1: boot the main cluster from scratch even if the first-boot cache has it
"""

from __future__ import annotations

import atexit
import concurrent.futures
import os
import shlex
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path

import yaml

from . import firstboot_cache
from .bare import BareTestbed
from .cluster import REPO, TestCluster, deep_merge, log
from .fakes import DNS_ANSWER, DNS_NAME, REAL_CACHE, WEB_BODY

# From the environment as imported, before any test's monkeypatching (tests/conftest.py isolates
# CEIL_CACHE per unit test; the test bed must come from the real cache).
CACHE = REAL_CACHE

_session: dict = {}

# The test-bed flavors. The cluster runs on one (CEIL_E2E_FLAVOR); test_testbed.py boots the
# others bare, so every run boots every flavor. Booting the cluster's own flavor bare as well
# costs ~3 minutes a run on two cores (three guests instead of two beside the broken image) and
# proves little the cluster's own boot does not; CEIL_E2E_BARE chooses otherwise.
BARE_FLAVORS = ("testbed-ubuntu", "testbed-raspios")
# A twin only one test boots (test_boot_slots.py: Ubuntu 26.04's boot slots).
SLOTS_FLAVOR = "testbed-ubuntu-slots"

# Ports probed from the uplink side (uplink_open_ports): each gets a hostfwd at boot.
PROBE_PORTS = (22, 53, 80, 443, 5000, 5001, 5002, 6443, 8080, 8081, 10250)


# One default artefacts directory per pytest process: the clusters of one session (broken image,
# main) and its progress.log belong together.
_STAMP = time.strftime("%Y%m%d-%H%M%S")


def settings() -> dict:
    flavor = os.environ.get("CEIL_E2E_FLAVOR", "testbed-ubuntu")
    others = " ".join(f for f in BARE_FLAVORS if f != flavor)
    return {
        "arch": os.environ.get("CEIL_E2E_ARCH", "arm64"),
        "flavor": flavor,
        "bare": tuple(os.environ.get("CEIL_E2E_BARE", others).split()),
        "artifacts": Path(os.environ.get("CEIL_E2E_ARTIFACTS") or REPO / "test-artifacts" / f"e2e-{_STAMP}"),
        "workdir": Path(os.environ.get("CEIL_E2E_WORKDIR", "/var/tmp")),
    }


def testbed(arch: str, flavor: str):
    """The cached test bed for the current recipe; built here if missing (needs root)."""
    os.environ["CEIL_CACHE"] = CACHE
    sys.path.insert(0, str(REPO))
    from testbed.build import ensure

    t0 = time.monotonic()
    tb = ensure(flavor, arch)
    log(f"test bed {flavor} {arch}: {tb.dir} ({time.monotonic() - t0:.0f}s)")
    return tb


def _sigterm(signum, frame):
    raise KeyboardInterrupt("SIGTERM")  # so pytest runs its finalizers: QEMU, fakes, disks


def remove_stale_workdirs(parent: Path) -> None:
    """Work directories of runs that were killed (kill -9, OOM) are removed by the next run."""
    for d in parent.glob("ceil-e2e-*"):
        try:
            pid = int((d / "pid").read_text())
            os.kill(pid, 0)
        except ProcessLookupError:
            log(f"removing {d}: left behind by a killed run (pid {pid})")
            shutil.rmtree(d, ignore_errors=True)
        except (OSError, ValueError):
            pass


def new_cluster(name: str = "main", overrides: dict | None = None, roles: list[str] | None = None,
                after_bake=None, reuse: bool = False, record: bool = False) -> TestCluster:
    """A baked, booted (not yet awaited) test cluster; the caller must close() it.

    `after_bake(cluster)` may change the baked images before the first boot (e.g. break them).
    `reuse`: boot the first-boot cache's disks instead of baking when it has this run's inputs;
    `record`: otherwise record this run's first boots into it (firstboot_cache.py).
    """
    s = settings()
    tb = testbed(s["arch"], s["flavor"])
    artifacts = s["artifacts"] / name
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _sigterm)
    remove_stale_workdirs(s["workdir"])
    workdir = Path(tempfile.mkdtemp(prefix=f"ceil-e2e-{name}-", dir=s["workdir"]))
    (workdir / "pid").write_text(str(os.getpid()))
    entry = key = None
    if reuse or record:
        key = firstboot_cache.inputs_key(tb.dir, s["arch"], os.environ)
        if key is None:
            log("first-boot cache off: no git checkout to hash")
    if key and reuse:
        entry = firstboot_cache.lookup(CACHE, key[0], roles)
        if entry is not None:
            entry.restore_workdir(workdir)  # before the cluster is made: it keeps the SSH key found
    over = {"flavor": tb.manifest["flavor"]}  # the arch's twin, e.g. testbed-ubuntu-amd64
    over = deep_merge(deep_merge(over, yaml.safe_load(os.environ.get("CEIL_E2E_OVERRIDES") or "{}") or {}),
                      overrides or {})
    c = TestCluster(name, tb, s["arch"], artifacts, workdir, overrides=over, roles=roles, cache=CACHE,
                    bake_args=shlex.split(os.environ.get("CEIL_E2E_BAKE_ARGS", "")))
    try:
        c.extras.hostfwds += [f"tcp:127.0.0.1:{c.probe_port(p)}-:{p}" for p in PROBE_PORTS if p != 22]
        if entry is not None:
            c.restore(entry)
        else:
            t = c.bake()
            log(f"baked in {t:.0f}s")
            if after_bake:
                after_bake(c)
            if key and record:
                c.recorder = firstboot_cache.Recorder(CACHE, key[0], key[1], c.roles)
        c.make_guests()
        c.start_all()
    except BaseException:
        c.close()
        raise
    return c


def get(pytest_config=None) -> TestCluster:
    """The session's main cluster (router + nodes of tests/e2e/cluster.yaml)."""
    if "error" in _session:
        raise _session["error"]
    if "cluster" not in _session:
        try:
            _session["cluster"] = new_cluster("main", reuse=True, record=True)
        except BaseException as exc:
            _session["error"] = exc
            raise
        if pytest_config is not None:
            pytest_config.add_cleanup(shutdown)
        atexit.register(shutdown)
    return _session["cluster"]


def active() -> TestCluster | None:
    return _session.get("cluster")


def ready(role: str) -> None:
    """Wait once per role for its first boot; remember a failure so later tests fail fast with it."""
    c = get()
    key = ("ready", role)
    if key in _session:
        if isinstance(_session[key], BaseException):
            raise _session[key]
        return
    try:
        if role != "router":
            ready("router")
        c.wait_ready(role, firstboot=True)
        _session[key] = True
    except BaseException as exc:
        _session[key] = exc
        raise


def bare(flavor: str) -> BareTestbed:
    """The bare test bed of `flavor` in this session (test_testbed.py), started on the first call."""
    started = _session.setdefault("bare", {})
    if flavor not in started:
        s = settings()
        tb = testbed(s["arch"], flavor)
        if not started:
            remove_stale_workdirs(s["workdir"])
            atexit.register(close_bare)
        started[flavor] = BareTestbed(tb, s["arch"], s["artifacts"] / f"bare-{flavor}", s["workdir"]).start()
    return started[flavor]


def close_bare(flavor: str | None = None) -> None:
    """Shut down the bare test bed of `flavor`, or all of them."""
    started = _session.get("bare", {})
    for name in [flavor] if flavor else list(started):
        b = started.pop(name, None)
        if b is not None:
            b.close()


def first_boot_verified(c: TestCluster) -> None:
    """The first-boot test passed: this run's first boots may go into the first-boot cache."""
    if c.recorder is not None:
        c.recorder.verified = True


def finish(passed: bool) -> None:
    """pytest_sessionfinish: whether the whole session passed (the cache records only then)."""
    _session["passed"] = passed


def shutdown() -> None:
    close_bare()
    c = _session.pop("cluster", None)
    if c is not None:
        if c.recorder is not None:
            try:
                c.recorder.commit(c, failed=not _session.get("passed", False))
            except Exception as exc:  # a cache problem must not hide the run's result
                log(f"first-boot cache: recording failed: {exc}")
                c.recorder.discard()
        c.close()
        log(f"artefacts: {c.artifacts}")


class E2EFakes:
    """What tests/infra's checks may ask of the fake internet (`fakes` fixture); None = absent."""

    dns_name = DNS_NAME  # answered by the fake upstream on the router's eth2 (l2dns)
    dns_answer = DNS_ANSWER

    def __init__(self, cluster: TestCluster):
        self.cluster = cluster
        self.http_url = cluster.internet.url("web", "/")
        self.http_body = WEB_BODY.decode()
        self.cloudflare = cluster.extras.cloudflare
        self.upstream_registry = cluster.extras.upstream_registry
        self.internet = cluster.internet
        self.dns_asked = cluster.dns.asked  # names the fake upstream was asked, live
        self.ntp = cluster.dns              # .ntp_requests / .ntp_answered: the fake NTP server
        self.vpn_client = cluster.vpn_client  # None unless root with wg-quick (tests/fakes/vpn_client.py)

    def reboot_router(self) -> None:
        self.cluster.reboot("router")

    def uplink_open_ports(self, ports) -> set[int]:
        """TCP ports of `ports` that answer on the router's uplink address, probed from outside.

        Through QEMU's hostfwd a connect always succeeds (slirp accepts first), so a port counts
        as open only if the guest's service sends something back within a few seconds.
        """
        with concurrent.futures.ThreadPoolExecutor(len(ports) or 1) as ex:
            results = ex.map(self._answers, ports)
        return {p for p, ok in zip(ports, results) if ok}

    def _answers(self, port: int) -> bool:
        hp = self.cluster.ssh_port if port == 22 else self.cluster.probe_ports.get(port)
        if hp is None:
            raise ValueError(f"port {port} has no uplink probe forward; add it to session.PROBE_PORTS")
        try:
            with socket.create_connection(("127.0.0.1", hp), timeout=8) as s:
                s.settimeout(8)
                if port == 53:
                    q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01"
                    s.sendall(struct.pack(">H", len(q)) + q)
                elif port != 22:
                    s.sendall(b"GET / HTTP/1.0\r\nHost: probe\r\n\r\n")
                return bool(s.recv(1))
        except OSError:
            return False
