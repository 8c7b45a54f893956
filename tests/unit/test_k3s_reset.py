"""`bake.py k3s reset` (issue 19, day two: the seed's k8s-remove and teardown): the node-side
script run for real on a scratch root with stub commands, and the workstation's order."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from ceil import k3s_reset, workstation
from ceil.config import parse_cluster

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "firstboot/k3s-install/lib/ceil-k3s-reset"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk9mZ0bH5OzLnPw1mYQ6VtB3s8bLxv0X0oPqg7Ww2Ly me@ws"
CLUSTER = (f"ssh: {{authorized_keys: ['{KEY}']}}\nrouter: {{uplink: {{type: ethernet}}}}\n"
           "nodes: [{name: one, role: server}, {name: two}, {name: three}]\n")


def scratch_node(tmp_path: Path, unit: str) -> tuple[Path, dict]:
    root = tmp_path / "root"
    for d in ("etc/systemd/system", "var/lib/rancher/k3s/server/db", "var/lib/kubelet/pods", "var/lib/cni",
              "etc/rancher/k3s", "etc/rancher/node", "etc/ceil/secrets/k3s", "var/lib/ceil/done", "proc/self", "bin"):
        (root / d).mkdir(parents=True)
    (root / "etc/systemd/system" / unit).write_text("[Service]\n")
    (root / "var/lib/rancher/k3s/server/db/state.db").write_text("the cluster\n")
    (root / "etc/rancher/k3s/config.yaml").write_text("node-ip: 10.42.0.11\n")
    (root / "etc/rancher/node/password").write_text("stable\n")
    (root / "etc/ceil/secrets/k3s/token").write_text("baked\n")
    step = "k3s-server" if unit == "k3s.service" else "k3s-agent"
    (root / "var/lib/ceil/done" / step).write_text("")
    (root / "var/lib/ceil/done/addons").write_text("")
    (root / "etc/systemd/system/ceil-addons.service").write_text("[Service]\n")
    (root / "proc/self/mounts").write_text(f"tmpfs {root}/run/k3s/containerd/x tmpfs rw 0 0\n/dev/vda2 / ext4 rw 0 0\n")
    log = tmp_path / "calls"
    for cmd in ("systemctl", "pkill", "umount", "ip"):
        (root / "bin" / cmd).write_text(f'#!/bin/sh\necho "{cmd} $*" >> {log}\n')
        (root / "bin" / cmd).chmod(0o755)
    env = {**os.environ, "CEIL_ROOT": str(root), "PATH": f"{root / 'bin'}:{os.environ['PATH']}"}
    return root, env


@pytest.mark.parametrize("unit,step", [("k3s.service", "k3s-server"), ("k3s-agent.service", "k3s-agent")])
def test_reset_deletes_k3s_state_keeps_the_baked_card_and_runs_the_step_again(tmp_path, unit, step):
    root, env = scratch_node(tmp_path, unit)
    done = subprocess.run(["dash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[0] == f"systemctl disable --no-reload --now {unit}"
    assert "pkill -9 -f containerd-shim" in calls and f"umount -l {root}/run/k3s/containerd/x" in calls
    assert "ip link delete cni0" in calls and "ip link delete flannel.1" in calls
    again = f"ceil-{step}.service" + (" ceil-addons.service" if step == "k3s-server" else "")
    # restart: the step's oneshot unit (RemainAfterExit=yes) is still active on a machine not
    # rebooted since its first boot, and `start` did nothing there (review; k3s stayed off).
    assert calls[-1] == f"systemctl restart --no-block {again}"
    assert (root / "var/lib/ceil/done/addons").exists() == (step == "k3s-agent")  # the add-ons go on again
    assert not (root / "var/lib/rancher/k3s").exists() and not (root / "var/lib/kubelet").exists()
    assert not (root / "etc/rancher/k3s/config.yaml").exists() and not (root / "var/lib/ceil/done" / step).exists()
    assert (root / "etc/rancher/node/password").read_text() == "stable\n"   # rejoins as itself
    assert (root / "etc/ceil/secrets/k3s/token").exists()                   # the baked card stays


@pytest.mark.parametrize("unit,step", [("k3s.service", "k3s-server"), ("k3s-agent.service", "k3s-agent")])
def test_remove_leaves_k3s_off_also_after_a_reboot(tmp_path, unit, step):
    """Found in review: --remove deleted the steps' done marks, so ceil-firstboot.target (which runs
    every step not done at each boot) brought k3s and the add-ons back at the next boot."""
    root, env = scratch_node(tmp_path, unit)
    done = subprocess.run(["dash", str(SCRIPT), "--remove"], capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 0 and "k3s removed" in done.stdout
    assert not any("start" in c for c in (tmp_path / "calls").read_text().splitlines())
    assert not (root / "var/lib/rancher/k3s").exists()
    assert (root / "var/lib/ceil/done" / step).exists() and (root / "var/lib/ceil/done/addons").exists()


def test_a_reset_cut_short_leaves_its_steps_to_run_at_the_next_boot(tmp_path):
    """A power cut after k3s was stopped and disabled must not leave its step marked done (k3s
    would never come back): the marks go before anything is stopped."""
    root, env = scratch_node(tmp_path, "k3s.service")
    (root / "bin" / "systemctl").write_text("#!/bin/sh\nkill -9 $PPID\n")  # the cut, at the first stop
    subprocess.run(["dash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=30)
    assert not (root / "var/lib/ceil/done/k3s-server").exists() and not (root / "var/lib/ceil/done/addons").exists()


def test_a_machine_without_k3s_is_left_alone(tmp_path):
    root, env = scratch_node(tmp_path, "other.service")
    done = subprocess.run(["dash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 0 and "no k3s on this machine" in done.stdout
    assert (root / "var/lib/rancher/k3s/server/db/state.db").exists()


def test_agents_go_first_and_come_back_last():
    cluster = parse_cluster(CLUSTER)
    assert k3s_reset.reset_plan(cluster, remove=True) == [
        (["two", "three"], f"{k3s_reset.RESET} --remove"), (["one"], f"{k3s_reset.RESET} --remove")]
    assert k3s_reset.reset_plan(cluster, remove=False)[2:] == [(["one"], k3s_reset.RESET), (["two", "three"], k3s_reset.RESET)]


def test_the_command_stops_at_the_first_failure(tmp_path, monkeypatch):
    (tmp_path / "cluster.yaml").write_text(CLUSTER)
    ran = []

    def fake(cluster, names, command, via):
        ran.append((tuple(names), command))
        return {n: (1 if n == "two" else 0, f"did {command}") for n in names}

    monkeypatch.setattr(workstation, "run_everywhere", fake)
    result = CliRunner().invoke(k3s_reset.k3s_group, ["reset", "--config", str(tmp_path / "cluster.yaml"), "--yes"])
    assert result.exit_code != 0 and "failed on two" in str(result.exception or result.output)
    assert ran == [(("two", "three"), f"{k3s_reset.RESET} --remove")]  # the servers were never touched


def test_machines_ssh_could_not_reach_are_told_the_way_in(tmp_path, monkeypatch):
    """A cluster not reachable from here (no VPN, no route) ended in "failed on two, three: see
    the lines above, then run it again", which would fail the same way."""
    (tmp_path / "cluster.yaml").write_text(CLUSTER)
    monkeypatch.setattr(workstation, "run_everywhere", lambda cluster, names, command, via: {
        n: (255, "ssh: connect to host 10.42.0.3 port 22: Network is unreachable") for n in names})
    result = CliRunner().invoke(k3s_reset.k3s_group, ["reset", "--config", str(tmp_path / "cluster.yaml"), "--yes"])
    said = str(result.exception)
    assert "failed on two, three" in said and "two, three not reached over SSH (exit 255" in said, said
    assert "the VPN, or --via ADDRESS" in said, said


def test_reset_pins_the_host_keys_of_the_secrets_folder_given(tmp_path, monkeypatch):
    """`ssh`, `run`, `k3s upgrade`, `node remove` and `datastore` take --secrets; `k3s reset` had
    none and pinned host keys only from secrets/ beside the config."""
    from ceil.host_keys import host_key, public_line
    from ceil.secrets import SecretStore

    monkeypatch.setenv("CEIL_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cluster.yaml").write_text(CLUSTER)
    mine = public_line(host_key(SecretStore(tmp_path / "elsewhere"), "one"))
    monkeypatch.setattr(workstation, "run_everywhere", lambda cluster, names, command, via: {n: (0, "") for n in names})
    result = CliRunner().invoke(k3s_reset.k3s_group, ["reset", "--config", str(tmp_path / "cluster.yaml"),
                                                      "--secrets", str(tmp_path / "elsewhere"), "--yes"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cache/known_hosts-ceil").read_text() == f"ceil-one {mine}\n"
