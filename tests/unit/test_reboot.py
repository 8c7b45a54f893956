"""`bake.py reboot` against simulated machines behind a fake ssh: the order (nodes, then the
router), the confirmation by boot id, and a reboot that cuts its own SSH connection."""

from __future__ import annotations

import subprocess

import pytest
from click.testing import CliRunner

from ceil import reboot, workstation
from ceil.config import parse_cluster
from ceil.errors import CeilError

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk9mZ0bH5OzLnPw1mYQ6VtB3s8bLxv0X0oPqg7Ww2Ly t"
CLUSTER = f"""ssh: {{authorized_keys: ["{KEY}"], user: pi-admin}}
nodes: [{{name: one, role: server, ip: 10.42.0.11}}, {{name: two, ip: 10.42.0.12}}]
"""
ADDRESSES = {"10.42.0.1": "router", "10.42.0.11": "one", "10.42.0.12": "two"}


def boot_id(name: str, boots: int) -> str:
    """A boot id as the kernel gives it, telling machine and boot apart."""
    return f"{sum(map(ord, name)):08x}-0000-4000-8000-{boots:012x}"


class Machines:
    """Machines behind a fake `ssh`: each has a boot id; a scheduled reboot takes it down for
    `down_polls` boot-id questions, then it answers with a new id. `cut` machines drop the SSH
    connection of the reboot command itself (exit 255, as a reboot racing sshd does)."""

    def __init__(self, down_polls: int = 2, cut: tuple[str, ...] = (), never_back: tuple[str, ...] = ()):
        self.boot = {name: boot_id(name, 0) for name in ADDRESSES.values()}
        self.down: dict[str, int] = {}
        self.down_polls, self.cut, self.never_back = down_polls, cut, never_back
        self.log: list[tuple[str, str]] = []

    def __call__(self, argv, **kw):
        name, command = ADDRESSES[argv[-2].split("@")[1]], argv[-1]
        self.log.append((name, command))
        if name in self.down:
            if self.down[name] > 0 or name in self.never_back:
                self.down[name] -= 1
                return subprocess.CompletedProcess(argv, 255, "", "ssh: connect to host: No route to host")
            del self.down[name]
            self.boot[name] = boot_id(name, int(self.boot[name][-1]) + 1)
        if command == reboot.BOOT_ID:  # (run merges ssh's warnings into the answer)
            return subprocess.CompletedProcess(argv, 0, self.boot[name] + "\n",
                                               "Warning: Permanently added 'ceil-x' (ED25519) to the list of known hosts.\n")
        assert command == reboot.SCHEDULE_REBOOT
        self.down[name] = self.down_polls
        return subprocess.CompletedProcess(argv, 255 if name in self.cut else 0, "", "")


@pytest.fixture
def config(tmp_path, monkeypatch):
    monkeypatch.setenv("CEIL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(reboot, "POLL_SECONDS", 0)
    (tmp_path / "cluster.yaml").write_text(CLUSTER)
    return tmp_path / "cluster.yaml"


def test_nodes_reboot_first_and_the_router_only_once_they_are_back(config, monkeypatch):
    """A reboot that cuts its own SSH connection (node two: ssh exits 255) is no failure: the new
    boot id says it rebooted. The old Makefile target stopped there, and the router was never rebooted."""
    machines = Machines(cut=("two",))
    monkeypatch.setattr(workstation.subprocess, "run", machines)
    result = CliRunner().invoke(reboot.reboot_command, ["--config", str(config)])
    assert result.exit_code == 0, result.output
    assert machines.boot == {name: boot_id(name, 1) for name in ("router", "one", "two")}
    reboots = [i for i, (_, command) in enumerate(machines.log) if command == reboot.SCHEDULE_REBOOT]
    router_reboot = machines.log.index(("router", reboot.SCHEDULE_REBOOT))
    nodes_back = max(i for i, (name, command) in enumerate(machines.log)
                     if name != "router" and command == reboot.BOOT_ID)
    assert len(reboots) == 3 and nodes_back < router_reboot
    assert "one is back" in result.output and "two is back" in result.output and "router is back" in result.output


def test_only_the_router(config, monkeypatch):
    machines = Machines()
    monkeypatch.setattr(workstation.subprocess, "run", machines)
    result = CliRunner().invoke(reboot.reboot_command, ["--config", str(config), "--on", "router"])
    assert result.exit_code == 0, result.output
    assert machines.boot == {"router": boot_id("router", 1), "one": boot_id("one", 0), "two": boot_id("two", 0)}


def test_a_machine_that_does_not_answer_before_is_not_rebooted_and_the_way_in_is_said(config, monkeypatch):
    machines = Machines()
    machines.down["two"] = 99  # already down: unreachable from here
    monkeypatch.setattr(workstation.subprocess, "run", machines)
    result = CliRunner().invoke(reboot.reboot_command, ["--config", str(config)])
    assert result.exit_code != 0
    said = " ".join(str(result.exception).split())
    assert said.startswith("two did not answer before the reboot, so nothing was rebooted") and "--via ADDRESS" in said
    assert reboot.SCHEDULE_REBOOT not in [command for _, command in machines.log]


def test_a_machine_that_never_comes_back_is_named_after_the_timeout():
    machines = Machines(never_back=("one",))
    ticks = iter(range(0, 10_000, 30))
    with pytest.raises(CeilError, match=r"^one did not answer with a new boot within 60 s"):
        reboot.reboot_group(parse_cluster(CLUSTER), ["one", "two"], None, True, 60, lambda line: None,
                            run=machines, sleep=lambda s: None, clock=lambda: next(ticks))
    assert machines.boot["two"] == boot_id("two", 1)


def test_a_refused_reboot_is_an_error_with_the_machines_words():
    def run(argv, **kw):
        if argv[-1] == reboot.BOOT_ID:
            return subprocess.CompletedProcess(argv, 0, "0b0b0b0b-0000-4000-8000-000000000000\n", "")
        return subprocess.CompletedProcess(argv, 1, "", "sudo: a password is required")

    with pytest.raises(CeilError, match="the reboot was refused on one .one: sudo: a password is required"):
        reboot.reboot_group(parse_cluster(CLUSTER), ["one"], None, True, 60, lambda line: None, run=run)
