"""The Makefile's day-two targets (the seed's habits) call commands and options that exist: each
target's `bake.py` lines, as `make -n` prints them for a real cluster.yaml, parse with the real
command line (its arguments checked, nothing run)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys

import click
import pytest

from ceil.cli import cli
from tests.bake_cli import REPO

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk9mZ0bH5OzLnPw1mYQ6VtB3s8bLxv0X0oPqg7Ww2Ly t"
TARGETS = ["uptime", "df", "check-ip", "router-check-ip", "k8s-check-ip", "router-reboot", "reboot-all", "teardown",
           "k8s-remove", "k8s-reset", "datastore-backup", "datastore-from-router", "k3s-upgrade", "nodes-show",
           "pods-show", "dashboard-token", "status", "kubeconfig", "route", "route-add", "k8s-proxy", "one-ssh",
           "all-delete"]


def printed(target: str, config, **variables: str) -> list[list[str]]:
    """The `bake.py` command lines `make -n TARGET` prints, as argument lists after bake.py."""
    extra = [f"{name}={value}" for name, value in variables.items()]
    done = subprocess.run(["make", "-n", "--no-print-directory", target, f"CONFIG={config}", f"PY={sys.executable}",
                           *extra], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [shlex.split(line) for line in done.stdout.splitlines() if " bake.py " in f" {line} "]
    return [words[words.index("bake.py") + 1:] for words in lines]


def parses(args: list[str]) -> None:
    """`args` accepted by the real command line down to its last subcommand (no callback runs)."""
    command: click.Command = cli
    ctx = click.Context(cli)
    while isinstance(command, click.Group) and args and not args[0].startswith("-"):
        ctx = click.Context(command, parent=ctx)
        name, args = args[0], args[1:]
        command = command.get_command(ctx, name)
        assert command is not None, f"no command {name!r}"
    command.make_context(command.name, list(args), parent=ctx)


@pytest.fixture
def config(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("needs make")
    path = tmp_path / "cluster.yaml"
    path.write_text(f'ssh: {{authorized_keys: ["{KEY}"]}}\nnodes: [{{name: one, role: server}}, {{name: two}}]\n')
    return path


@pytest.mark.parametrize("target", TARGETS)
def test_each_day_two_target_calls_a_command_line_that_exists(config, target):
    lines = printed(target, config) + printed(target, config, VIA="192.168.1.50")
    assert lines, f"make -n {target} printed no bake.py line"
    for args in lines:
        parses(args)


def test_the_node_targets_name_each_node_and_not_the_router(config):
    assert printed("k8s-check-ip", config) == [["run", "--config", str(config), "--nodes", "--",
                                                "ip", "-4", "-brief", "address"]]


def test_reboot_all_is_one_command_that_orders_the_machines_itself(config):
    """It was two `run ... sudo systemctl reboot` lines: a reboot cutting its SSH connection (exit
    255) stopped make after the nodes, and the router was never rebooted (bake.py reboot orders
    the machines and judges each by its new boot id)."""
    assert printed("reboot-all", config) == [["reboot", "--config", str(config)]]
    assert printed("router-reboot", config, VIA="192.168.1.50") == [
        ["reboot", "--config", str(config), "--via", "192.168.1.50", "--on", "router"]]


def test_df_lists_each_drive_once_and_not_the_kubelets_volume_mounts(config, tmp_path):
    """Each Longhorn volume is mounted twice under /var/lib/kubelet (CSI staging and the pod's
    path), so `make df` listed every volume twice beside the drive that holds its bytes. The
    printed command runs as `bake.py run` sends it (shlex.join, then the machine's shell), with a
    `df` that prints a node's real shape."""
    [args] = printed("df", config)
    command = args[args.index("--") + 1:]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "df"
    stub.write_text("#!/bin/sh\ncat <<'EOF'\n"
                    "Filesystem                    Size  Used Avail Use% Mounted on\n"
                    "/dev/mmcblk0p2                 29G  4.1G   24G  15% /\n"
                    "/dev/mmcblk0p1                510M   62M  448M  13% /boot/firmware\n"
                    "/dev/sda1                     117G  2.0G  109G   2% /var/lib/longhorn\n"
                    "/dev/longhorn/pvc-0b1c        2.0G   24M  1.9G   2% /var/lib/kubelet/plugins/kubernetes.io/csi/"
                    "driver.longhorn.io/5d1e/globalmount\n"
                    "/dev/longhorn/pvc-0b1c        2.0G   24M  1.9G   2% /var/lib/kubelet/pods/9a7f/volumes/"
                    "kubernetes.io~csi/pvc-0b1c/mount\n"
                    "EOF\n")
    stub.chmod(0o755)
    done = subprocess.run(["sh", "-c", shlex.join(command)], capture_output=True, text=True, timeout=30,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    mounts = [line.split()[-1] for line in done.stdout.splitlines()]
    assert mounts == ["on", "/", "/boot/firmware", "/var/lib/longhorn"], done.stdout


def test_kubectl_targets_read_the_kubeconfig_bake_py_writes_next_to_the_config(config):
    """`bake.py kubeconfig` writes out/kubeconfig beside cluster.yaml; with CONFIG outside the
    checkout, nodes-show read ./out/kubeconfig (missing, or another cluster's)."""
    for variables, name in (({}, "kubeconfig"), ({"VIA": "192.168.1.50"}, "kubeconfig-tunnel")):
        done = subprocess.run(["make", "-n", "--no-print-directory", "nodes-show", "pods-show", f"CONFIG={config}",
                               f"PY={sys.executable}", *[f"{k}={v}" for k, v in variables.items()]],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        kubectl = [shlex.split(line) for line in done.stdout.splitlines() if line.startswith("kubectl ")]
        assert len(kubectl) == 2, done.stdout + done.stderr
        for words in kubectl:
            assert words[words.index("--kubeconfig") + 1] == str(config.parent / "out" / name)


def test_make_help_shows_no_unexpanded_variable():
    done = subprocess.run(["make", "--no-print-directory", "help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "$(" not in done.stdout, done.stdout


def test_the_open_targets_open_the_clusters_own_domain(config):
    """httpd-open and prometheus-open name the hosts under cluster.yaml's domain, not the example's."""
    config.write_text(config.read_text() + "domain: lab.example.internal\n")
    for target, url in (("httpd-open", "http://httpd.lab.example.internal/"),
                        ("prometheus-open", "https://prometheus.lab.example.internal/")):
        done = subprocess.run(["make", "-n", "--no-print-directory", target, f"CONFIG={config}", f"PY={sys.executable}"],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert f"browse {url}" in done.stdout, done.stdout
