"""k3s-node.sh and k3s-prep.sh run for real on a scratch root (CEIL_ROOT), with every command
that would touch this machine (systemctl, ip, swapoff, modprobe, sysctl, chronyc) replaced by
a stub that records its arguments. Checks file placement, modes, idempotence and exit codes."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from ceil.catalog import load_flavor
from ceil.config import load_cluster
from ceil.features import RoleContext, render_features
from ceil.secrets import SecretStore
from command_stubs import write_stubs  # tests/unit/command_stubs.py

REPO = Path(__file__).resolve().parents[2]
NODE = REPO / "firstboot/k3s-install/lib/steps/k3s-node.sh"
PREP = REPO / "firstboot/k3s-prep/lib/steps/k3s-prep.sh"
STUBBED = ["systemctl", "ip", "swapoff", "swapon", "modprobe", "sysctl", "chronyc"]


@pytest.fixture
def stubs(tmp_path):
    """A bin/ of stubs; behaviour per command from env STUB_<NAME>_RC / STUB_<NAME>_OUT."""
    bin_dir, log = tmp_path / "stubs", tmp_path / "calls.log"
    write_stubs(bin_dir, log, STUBBED)
    return bin_dir, log


@pytest.fixture
def payload(cluster_yaml, tmp_path):
    """Install a role's rendered payload into a scratch root the way install.sh + ceil-secrets do."""
    cluster = load_cluster(cluster_yaml())
    store = SecretStore(tmp_path / "secrets")

    def install(role: str) -> Path:
        root = tmp_path / f"root-{role}"
        rendered = tmp_path / f"payload-{role}"
        ctx = RoleContext(cluster, role, load_flavor(cluster.flavor), store)
        result = render_features(ctx, rendered)
        (root / "etc/ceil").mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-R", f"{rendered}/etc/.", str(root / "etc/ceil")], check=True)
        (root / "etc/systemd/system").mkdir(parents=True)
        subprocess.run(["cp", "-R", f"{rendered}/units/.", str(root / "etc/systemd/system")], check=True)
        for name, value in result.secrets.items():
            path = root / "etc/ceil/secrets" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(value)
        k3s = root / "usr/local/bin/k3s"
        k3s.parent.mkdir(parents=True)
        k3s.write_text("#!/bin/sh\nexit 0\n")
        k3s.chmod(0o755)
        return root

    return install


def run(script: Path, root: Path, stubs, *args: str, **stub_env: str) -> subprocess.CompletedProcess:
    bin_dir, _ = stubs
    env = {**os.environ, "CEIL_ROOT": str(root), "CEIL_LIB": str(REPO / "firstboot/common/lib"),
           "PATH": f"{bin_dir}:{os.environ['PATH']}", **stub_env}
    for name in STUBBED:  # never reach a real system command from these tests
        assert (bin_dir / name).is_file()
    return subprocess.run(["sh", str(script), *args], env=env, capture_output=True, text=True, timeout=60)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


IP_AGENT = "2: eth0    inet 10.42.0.12/24 brd 10.42.0.255 scope global eth0"
IP_SERVER = "2: end0    inet 10.42.0.11/24 brd 10.42.0.255 scope global end0"


def test_agent_step_writes_config_and_password_and_starts_its_unit(payload, stubs):
    root = payload("two")
    result = run(NODE, root, stubs, "agent", STUB_IP_OUT=IP_AGENT, STUB_SYSTEMCTL_RC="0")
    assert result.returncode == 0, result.stderr
    config = (root / "etc/rancher/k3s/config.yaml").read_text()
    assert "server: https://10.42.0.11:6443" in config and config.endswith("flannel-iface: eth0\n")
    assert mode(root / "etc/rancher/k3s/config.yaml") == 0o600
    password = root / "etc/rancher/node/password"
    assert password.read_bytes() == (root / "etc/ceil/secrets/k3s/node-password").read_bytes()
    assert mode(password) == 0o600
    assert "ExecStart=/usr/local/bin/k3s agent" in (root / "etc/systemd/system/k3s-agent.service").read_text()
    assert not (root / "var/lib/rancher/k3s/server").exists()
    calls = stubs[1].read_text()
    # the unit came with the payload's, before install.sh's one daemon-reload (issue 21)
    assert "daemon-reload" not in calls
    assert "systemctl enable --no-reload k3s-agent.service" in calls and "start --no-block k3s-agent.service" in calls


def test_server_step_installs_the_ca_set_byte_exact(payload, stubs):
    root = payload("one")
    result = run(NODE, root, stubs, "server", STUB_IP_OUT=IP_SERVER)
    assert result.returncode == 0, result.stderr
    tls = root / "var/lib/rancher/k3s/server/tls"
    secrets = root / "etc/ceil/secrets/k3s/tls"
    names = sorted(str(p.relative_to(secrets)) for p in secrets.rglob("*") if p.is_file())
    assert len(names) == 10
    for name in names:
        assert (tls / name).read_bytes() == (secrets / name).read_bytes(), name
        assert mode(tls / name) == (0o600 if name.endswith(".key") else 0o644)
    assert mode(tls) == 0o700
    assert "flannel-iface: end0" in (root / "etc/rancher/k3s/config.yaml").read_text()


def test_rerun_after_success_changes_nothing_and_restarts_nothing(payload, stubs):
    root = payload("one")
    assert run(NODE, root, stubs, "server", STUB_IP_OUT=IP_SERVER).returncode == 0
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    stubs[1].write_text("")
    again = run(NODE, root, stubs, "server", STUB_IP_OUT=IP_SERVER)  # is-active -> 0 (running)
    assert again.returncode == 0, again.stderr
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == before
    assert "restart" not in stubs[1].read_text()
    assert "daemon-reload" not in stubs[1].read_text()


def test_a_payload_without_the_k3s_unit_is_permanent(payload, stubs):
    root = payload("two")
    (root / "etc/systemd/system/k3s-agent.service").unlink()
    result = run(NODE, root, stubs, "agent", STUB_IP_OUT=IP_AGENT)
    assert result.returncode == 3
    assert "k3s-agent.service is missing" in result.stderr and "re-bake" in result.stderr


def test_no_lan_address_yet_is_transient(payload, stubs):
    root = payload("two")
    result = run(NODE, root, stubs, "agent", STUB_IP_OUT="2: eth0    inet 192.168.1.5/24 scope global eth0")
    assert result.returncode == 1
    assert "no interface has the node address 10.42.0.12" in result.stderr
    assert not (root / "etc/rancher/k3s/config.yaml").exists()


def test_incomplete_payload_is_permanent(payload, stubs):
    root = payload("two")
    (root / "etc/ceil/secrets/k3s/node-password").unlink()
    result = run(NODE, root, stubs, "agent", STUB_IP_OUT=IP_AGENT)
    assert result.returncode == 3 and "re-bake" in result.stderr


def test_prep_installs_modules_sysctls_registries_and_disables_swap(payload, stubs):
    root = payload("two")
    (root / "etc/fstab").write_text("/dev/mmcblk0p2 / ext4 defaults 0 1\n/swapfile none swap sw 0 0\n")
    result = run(PREP, root, stubs)
    assert result.returncode == 0, result.stderr
    assert "br_netfilter" in (root / "etc/modules-load.d/ceil-k3s.conf").read_text()
    assert "net.bridge.bridge-nf-call-iptables = 1" in (root / "etc/sysctl.d/90-ceil-k3s.conf").read_text()
    registries = root / "etc/rancher/k3s/registries.yaml"
    assert registries.read_bytes() == (root / "etc/ceil/secrets/k3s/registries.yaml").read_bytes()
    assert mode(registries) == 0o600
    assert (root / "etc/fstab").read_text().splitlines()[1].startswith("#ceil (k3s-prep, no swap): /swapfile")
    calls = stubs[1].read_text()
    for expected in ("swapoff -a", "modprobe overlay", "modprobe br_netfilter", "chronyc waitsync"):
        assert expected in calls
    again = run(PREP, root, stubs)
    assert again.returncode == 0 and (root / "etc/fstab").read_text().count("#ceil") == 1


def test_prep_waits_for_the_clock(payload, stubs):
    result = run(PREP, payload("two"), stubs, STUB_CHRONYC_RC="1")
    assert result.returncode == 1 and "not synchronised" in result.stderr


def test_prep_refuses_a_synchronised_time_before_the_bake(payload, stubs):
    """A router with a stale clock and no upstream serves a time before this card was baked:
    k3s must not start on it (issue 17). The payload carries the bake time as etc/clock-floor."""
    import time

    root = payload("two")
    assert abs(int((root / "etc/ceil/clock-floor").read_text()) - time.time()) < 600  # the bake's own time
    (root / "etc/ceil/clock-floor").write_text(f"{int(time.time()) + 86400}\n")  # baked "tomorrow"
    result = run(PREP, root, stubs)
    assert result.returncode == 1 and "before this card was baked" in result.stderr


def test_prep_missing_kernel_module_is_permanent(payload, stubs):
    result = run(PREP, payload("two"), stubs, STUB_MODPROBE_RC="1")
    assert result.returncode == 3 and "cannot be loaded" in result.stderr


def test_prep_swap_still_on_is_transient(payload, stubs):
    result = run(PREP, payload("two"), stubs, STUB_SWAPON_OUT="/swapfile file 1G 0B -2")
    assert result.returncode == 1 and "swap is still active" in result.stderr


def test_server_step_starts_k3s_on_a_staged_datastore_snapshot(payload, stubs, tmp_path):
    """`bake.py datastore restore` staged a snapshot: the init server's payload carries it and its
    step installs it as state.db before it starts k3s; no copy stays among the card's secrets."""
    import sqlite3

    from ceil.datastore import RESTORE_SECRET

    snap = tmp_path / "snap.db"
    db = sqlite3.connect(snap)
    db.execute("CREATE TABLE kine (id INTEGER PRIMARY KEY, name TEXT, value BLOB)")
    db.commit()
    db.close()
    SecretStore(tmp_path / "secrets").write(RESTORE_SECRET, snap.read_bytes())
    root = payload("one")
    assert (root / "etc/ceil/secrets" / RESTORE_SECRET).is_file()
    result = run(NODE, root, stubs, "server", STUB_IP_OUT=IP_SERVER)
    assert result.returncode == 0, result.stderr
    state = root / "var/lib/rancher/k3s/server/db/state.db"
    assert state.read_bytes() == snap.read_bytes() and mode(state) == 0o600
    assert not (root / "etc/ceil/secrets" / RESTORE_SECRET).exists()
    calls = stubs[1].read_text().splitlines()
    assert any("start --no-block k3s.service" in c for c in calls)
    assert not (payload("two") / "etc/ceil/secrets" / RESTORE_SECRET).exists()  # an agent: never


@pytest.mark.parametrize("role, unit", [("one", "k3s.service"), ("two", "k3s-agent.service")])
def test_k3s_never_starts_on_a_clock_before_the_bake_at_any_boot(payload, stubs, role, unit, tmp_path):
    """Issue 17: k3s-prep checks the bake-time floor at the first boot only. At a later boot
    chrony-wait lets time-sync.target pass once chrony has synced, to whatever the router serves;
    a router rebooted without upstream NTP serves its own stale time, and k3s started on it. Now
    k3s's own unit refuses to start (and Restart= tries again) until the clock is past the floor."""
    import time

    root = payload(role)
    lines = (root / "etc/systemd/system" / unit).read_text().splitlines()
    pre = [line for line in lines if line.startswith("ExecStartPre=")]
    assert pre[0] == "ExecStartPre=/usr/local/lib/ceil/ceil-clock-floor"  # no "-": its failure counts
    assert "Restart=always" in lines
    check = REPO / "firstboot/common/lib/ceil-clock-floor"  # installed as /usr/local/lib/ceil/ by install.sh
    env = {**os.environ, "CEIL_ROOT": str(root)}
    floor = root / "etc/ceil/clock-floor"
    assert subprocess.run([str(check)], env=env, capture_output=True).returncode == 0  # baked just now
    floor.write_text(f"{int(time.time()) + 86400}\n")  # baked "tomorrow": the clock is behind it
    behind = subprocess.run([str(check)], env=env, capture_output=True, text=True)
    assert behind.returncode == 1 and "before this card was baked" in behind.stderr
    floor.write_text("garbage\n")  # a damaged floor never keeps k3s down for good
    assert subprocess.run([str(check)], env=env, capture_output=True).returncode == 0
